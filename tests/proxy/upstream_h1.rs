//! sluice's own HTTP/1.1 client, against raw-socket upstreams that do what hyper-based test
//! servers never do: close a pooled connection under a request, answer before the upload ends,
//! send trailers, frame a body by closing, and send bytes of the new protocol with a 101.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn request_line(head: &str) -> String {
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_upstream_closed_are_replaced_without_failing_requests() {
    // Answers one request per connection, without `Connection: close`, then closes.
    let (addr, connections) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce")
                .await;
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let client = http1_client();
    for i in 0..20 {
        let (status, body) = get(&client, &proxy.url(&format!("/{i}")), None).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"once"[..]), "request {i}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 20, "one connection per answer");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_the_upstream_dropped_on_a_reused_connection_is_sent_again_but_a_post_is_not() {
    // Answers the first request of each connection; reads the second and closes unanswered,
    // as a server shutting an idle connection does when a request crosses its close.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let (addr, connections) = raw_upstream(move |_, mut stream| {
        let log = Arc::clone(&log);
        async move {
            let mut buf = Vec::new();
            for answered in [true, false] {
                let Some(head) = read_request_head(&mut stream, &mut buf).await else {
                    return;
                };
                log.lock().expect("log").push(request_line(&head));
                if answered {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            }
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let client = http1_client();

    let (status, _) = get(&client, &proxy.url("/first"), None).await;
    assert_eq!(status, StatusCode::OK);
    // Goes out on the pooled connection, which the upstream closes: sent again on a new one.
    let (status, body) = get(&client, &proxy.url("/again"), None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // A POST with a body is not repeated: its fate on the closed connection is unknown.
    let request = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/once"))
        .body(full("data"))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        *seen.lock().expect("log"),
        [
            "GET /first HTTP/1.1",
            "GET /again HTTP/1.1",
            "GET /again HTTP/1.1",
            "POST /once HTTP/1.1"
        ]
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_the_upload_ends_reaches_the_client() {
    // Refuses the upload after its head, then reads the rest of it away and closes.
    let (addr, _) = raw_upstream(move |_, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
            .await;
        let mut chunk = vec![0u8; 64 << 10];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let (tx, body) = channel_body(4);
    let request = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/upload"))
        .body(body)
        .expect("request");
    let client = http1_client();
    let sending = tokio::spawn(async move {
        // 1 MiB now; the rest never comes until the answer is in.
        let _ = tx.send(http_body::Frame::data(pattern(0, 1 << 20))).await;
        tx
    });
    let response = within("the early answer", client.request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"too big\n");
    drop(sending.await.expect("sender"));
    proxy.shutdown().await;
}

/// Sends `rounds` requests with `TE: trailers` from an h2c client through sluice to a raw
/// HTTP/1.1 upstream that gives every one `answer`; checks each ends cleanly with `body` and
/// returns the trailers of each.
async fn trailers_to_an_h2_client(answer: &'static str, rounds: usize, body: &'static [u8]) -> Vec<http::HeaderMap> {
    let (addr, _) = raw_upstream(move |_, mut stream| async move {
        let mut buf = Vec::new();
        while read_request_head(&mut stream, &mut buf).await.is_some() {
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let client = h2c_client();
    let mut all = Vec::new();
    for _ in 0..rounds {
        let request = Request::builder()
            .uri(proxy.url("/stream"))
            .header("te", "trailers")
            .body(empty())
            .expect("request");
        let response = client.request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.expect("the stream ends cleanly");
        all.push(collected.trailers().cloned().expect("trailers arrive"));
        assert_eq!(collected.to_bytes(), Bytes::from_static(body));
    }
    proxy.shutdown().await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_trailers_from_an_http1_upstream_reach_an_h2_client() {
    let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n\
        5\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n";
    for trailers in trailers_to_an_h2_client(answer, 3, b"hello world").await {
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_framed_by_close_arrives_whole_and_its_connection_is_not_reused() {
    let (addr, connections) = raw_upstream(|n, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_some() {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close {n}");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let client = http1_client();
    for n in 0..3 {
        let (status, body) = get(&client, &proxy.url("/"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("until close {n}").into_bytes());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_a_101_reach_the_client_first() {
    let (addr, _) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        // The 101 and the new protocol's first bytes in one write, then an echo.
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: demo\r\nconnection: upgrade\r\n\r\nhello first")
            .await;
        let mut chunk = [0u8; 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 || stream.write_all(&chunk[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /up HTTP/1.1\r\nHost: p.test\r\nUpgrade: demo\r\nConnection: upgrade\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"hello first") {
        let n = within("the 101 and the first bytes", stream.read(&mut chunk))
            .await
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    stream.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    within("the echo", stream.read_exact(&mut echo)).await.expect("echo");
    assert_eq!(&echo, b"ping");
}

/// The client's upload breaks (here: past `max_request_body`) after the upstream
/// answered and while it still waits for the rest of the upload. The upstream can never finish
/// its answer, so the proxy must end it (abort the answer / close) instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_fails_after_the_answer_head_ends_the_answer() {
    let (addr, _) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        // Answers at once, then streams the rest once the whole upload is in.
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nstart\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(b"0\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = stream.write_all(b"3\r\nend\r\n0\r\n\r\n").await;
    })
    .await;
    let proxy = proxy_with(
        &service("p", "{}", &[("v", &[addr], 1)]),
        "defaults: { max_request_body: 1KiB }",
    )
    .await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(
            b"POST /duplex HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n",
        )
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"start") {
        let n = within("the answer head", client.read(&mut chunk)).await.expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    // Past the limit: the proxy stops forwarding the upload.
    let big = vec![b'x'; 4096];
    client.write_all(b"1000\r\n").await.expect("write");
    client.write_all(&big).await.expect("write");
    client.write_all(b"\r\n").await.expect("write");
    // The answer must end (the proxy closes or resets the connection) within a deadline.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the answer never ended; the client got:\n{}",
        String::from_utf8_lossy(&got)
    );
    proxy.shutdown().await;
}

/// Each pooled connection keeps one timer, armed for the request it was set for and moved on
/// only when it fires early: a later request on the connection must not be timed out by it,
/// and a request that gets no answer must still be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_deadline_holds_per_request_on_a_reused_connection() {
    // On one connection: the first answer after 700 ms, the second 600 ms after its request
    // (so the timer set for the first, at 1 s, fires while the second waits), then none.
    let (addr, connections) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        for delay in [700, 600] {
            if read_request_head(&mut stream, &mut buf).await.is_none() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = read_request_head(&mut stream, &mut buf).await;
        let _ = stream.read(&mut [0u8; 1]).await;
    })
    .await;
    let proxy = proxy_with(
        &service("p", "{}", &[("v", &[addr], 1)]),
        "defaults: { timeouts: { response_headers: 1s } }",
    )
    .await;
    let client = http1_client();
    let mut statuses = Vec::new();
    for path in ["/first", "/second", "/unanswered"] {
        statuses.push(get(&client, &proxy.url(path), None).await.0);
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::GATEWAY_TIMEOUT]);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "all three on one connection");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_both_a_coding_and_a_length_is_framed_by_the_coding_and_not_reused() {
    let (addr, connections) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        while read_request_head(&mut stream, &mut buf).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n\
                2\r\nok\r\n0\r\n\r\n";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    let client = http1_client();
    for _ in 0..2 {
        let response = client
            .request(Request::get(proxy.url("/")).body(empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers().get("content-length").is_none(),
            "the stale length reached the client: {:?}",
            response.headers()
        );
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the faulty connection is not reused"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_reach_an_http1_upstream_in_the_chunked_body() {
    let body = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&body);
    let (addr, _) = raw_upstream(move |_, mut stream| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buf = Vec::new();
            if read_request_head(&mut stream, &mut buf).await.is_none() {
                return;
            }
            let mut chunk = [0u8; 4096];
            while !buf.ends_with(b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            *seen.lock().expect("body") = buf;
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        }
    })
    .await;
    let proxy = proxy(&service("p", "{}", &[("v", &[addr], 1)])).await;
    // An h2 client sends data, then trailers.
    let (tx, request_body) = channel_body(4);
    let request = Request::post(proxy.url("/upload")).body(request_body).expect("request");
    let sending = tokio::spawn(async move {
        let _ = tx.send(http_body::Frame::data(Bytes::from_static(b"hello"))).await;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("7"));
        let _ = tx.send(http_body::Frame::trailers(trailers)).await;
    });
    let response = within("the answer", h2c_client().request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    sending.await.expect("sender");
    let wire = String::from_utf8(body.lock().expect("body").clone()).expect("utf-8");
    assert_eq!(wire, "5\r\nhello\r\n0\r\nx-checksum: 7\r\n\r\n");
    proxy.shutdown().await;
}

/// An HTTP/1.1 upstream's trailers that carry connection-specific fields (`Connection`,
/// `Keep-Alive`, `Transfer-Encoding`, which HTTP/2 forbids) still end an h2c client's stream
/// cleanly: those fields (and the one `Connection` names) are dropped, the others arrive, and
/// the body is whole. Before the fix the client's stream was reset (CANCEL) at the trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_trailers_from_an_http1_upstream_do_not_break_an_h2_stream() {
    let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n\
        5\r\nhello\r\n0\r\ngrpc-status: 0\r\nconnection: x-hop\r\nkeep-alive: timeout=5\r\n\
        transfer-encoding: chunked\r\nx-hop: 1\r\n\r\n";
    for trailers in trailers_to_an_h2_client(answer, 2, b"hello").await {
        assert_eq!(trailers["grpc-status"], "0");
        for name in ["connection", "keep-alive", "transfer-encoding", "x-hop"] {
            assert!(!trailers.contains_key(name), "{name} in {trailers:?}");
        }
    }
}
