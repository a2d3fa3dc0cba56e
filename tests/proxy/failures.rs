//! The proxy's own answers: 502, 503, 504, 413, 400, and the one retry after a failed connect.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502() {
    let dead = dead_addr().await;
    let proxy = proxy(&service("gone", "{}", &[("v", &[dead], 1)])).await;
    let (status, body) = get(&http1_client(), &proxy.url("/"), None).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::BAD_GATEWAY, &b"upstream unavailable\n"[..])
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connect_is_retried_once_on_another_endpoint() {
    let dead = dead_addr().await;
    let live = Upstream::named("live").await;
    let proxy = proxy(&service("half", "{}", &[("v", &[dead, live.addr], 1)])).await;
    let client = http1_client();
    for i in 0..40 {
        let request = Request::post(proxy.url("/"))
            .body(full(format!("body {i}")))
            .expect("request");
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"live"[..]), "request {i}");
    }
    assert_eq!(live.hits(), 40, "every request reached the live endpoint exactly once");
    proxy.shutdown().await;
}

/// The `response_headers` deadline holds for HTTP/1.1 upstreams (one timer per connection) and
/// HTTP/2 ones (a timeout around the exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_response_headers_in_time_is_504() {
    for protocol in ["http1", "http2"] {
        let release = Arc::new(Notify::new());
        let up = Upstream::held(Arc::clone(&release)).await;
        let proxy = proxy_with(
            &speaking(&service("slow", "{}", &[("v", &[up.addr], 1)]), protocol),
            "defaults: { timeouts: { response_headers: 200ms } }",
        )
        .await;
        let (status, body) = get(&http1_client(), &proxy.url("/"), None).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::GATEWAY_TIMEOUT, &b"upstream timed out\n"[..]),
            "{protocol}"
        );
        assert_eq!(up.hits(), 1, "{protocol}");
        release.notify_waiters();
        proxy.shutdown().await;
    }
}

/// Over `max_request_body`: 413, whether the length is announced or found mid-stream, to either
/// upstream protocol (an HTTP/2 upstream's stream reset is not taken for the upstream's fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    for protocol in ["http1", "http2"] {
        let up = Upstream::body_length().await;
        let proxy = proxy_with(
            &speaking(&service("small", "{}", &[("v", &[up.addr], 1)]), protocol),
            "defaults: { max_request_body: 1KiB }",
        )
        .await;
        let client = http1_client();

        // Announced by Content-Length: refused before the upstream hears of it.
        let request = Request::post(proxy.url("/"))
            .body(full(vec![b'x'; 2000]))
            .expect("request");
        let (status, _, _) = send(&client, request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{protocol}");
        assert_eq!(up.hits(), 0, "{protocol}");

        // At the limit exactly: passes.
        let request = Request::post(proxy.url("/"))
            .body(full(vec![b'x'; 1024]))
            .expect("request");
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"got 1024"[..]), "{protocol}");

        // Chunked, discovered mid-stream: the upstream request is aborted and the client gets 413.
        let (tx, body) = channel_body(8);
        for _ in 0..4 {
            tx.send(Frame::data(vec![b'y'; 512].into())).await.expect("chunk");
        }
        drop(tx);
        let request = Request::post(proxy.url("/")).body(body).expect("request");
        let (status, _, _) = send(&http1_client(), request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{protocol}");
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_is_400() {
    let up = Upstream::named("x").await;
    let proxy = proxy(&service("any", "{}", &[("v", &[up.addr], 1)])).await;
    for garbage in ["GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(garbage.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        within("400 and close", stream.read_to_end(&mut answer))
            .await
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{garbage:?} got {answer:?}");
    }
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

/// An upstream that reads a request head, counts it, and closes without answering.
pub async fn hanging_up_upstream(received: Arc<std::sync::atomic::AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_sending_is_502_and_never_retried() {
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first = hanging_up_upstream(Arc::clone(&received)).await;
    let second = hanging_up_upstream(Arc::clone(&received)).await;
    let proxy = proxy(&service("flaky", "{}", &[("v", &[first, second], 1)])).await;
    let client = http1_client();
    for i in 0..5 {
        let request = Request::post(proxy.url("/pay"))
            .body(full(format!("charge {i}")))
            .expect("request");
        let (status, _, _) = send(&client, request).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    // Each request was sent once: the request may have had effects, so it is not replayed.
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 5);
    proxy.shutdown().await;
}
