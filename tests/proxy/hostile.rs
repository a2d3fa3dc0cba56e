//! Clients that try to confuse the proxy: silent or stalled connections, a target that names
//! another host than `Host`, `Upgrade: h2c` smuggling, and conflicting body framing.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads until the proxy closes the connection (a reset counts: closing with unread input
/// makes the kernel send one); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("the proxy closes the connection", stream.read(&mut buf)).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upstream that keeps the headers of the last request it saw.
async fn recording_upstream(name: &'static str) -> (Upstream, Arc<Mutex<Option<HeaderMap>>>) {
    let seen: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let store = Arc::clone(&seen);
    let upstream = Upstream::start(move |request| {
        *store.lock().expect("lock") = Some(request.headers().clone());
        async move { Response::new(full(name)) }
    })
    .await;
    (upstream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed() {
    let up = Upstream::named("x").await;
    let proxy = proxy_with(
        &service("s", "{}", &[("v", &[up.addr], 1)]),
        "defaults: { timeouts: { request_headers: 200ms } }",
    )
    .await;
    // Regression: hyper's protocol sniffing had no timeout, so these stayed open forever.
    for opening in [&b""[..], b"PRI * HT", b"GET / HT"] {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{opening:?}: {answer:?}"
        );
    }
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_wins_over_the_host_header() {
    let (a, a_seen) = recording_upstream("a").await;
    let (b, _) = recording_upstream("b").await;
    let services = service("a", "{ hosts: [a.test] }", &[("v", &[a.addr], 1)])
        + &service("b", "{ hosts: [b.test] }", &[("v", &[b.addr], 1)]);
    let proxy = proxy(&services).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET http://a.test/abs HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with('a'),
        "{answer:?}"
    );
    let headers = a_seen.lock().expect("lock").clone().expect("a got the request");
    assert_eq!(
        headers["host"], "a.test",
        "routed by the target, so forwarded with the target's host"
    );
    assert_eq!(b.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_offers_are_not_passed_on() {
    let (up, seen) = recording_upstream("ok").await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = "GET / HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let headers = seen.lock().expect("lock").clone().expect("upstream got the request");
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the upstream: {headers:?}");
    }
    proxy.shutdown().await;
}

/// hyper handles this itself (RFC 9112 §6.3): `Transfer-Encoding` wins, `Content-Length` is
/// dropped, and the connection is closed after the answer, so a request smuggled behind the
/// body is never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_closes_the_connection_and_smuggles_nothing() {
    let (up, seen) = recording_upstream("x").await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let smuggle = "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
        GET /smuggled HTTP/1.1\r\nHost: s\r\n\r\n";
    stream.write_all(smuggle.as_bytes()).await.expect("write");
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "nothing after the ambiguous request is served: {answer:?}"
    );
    assert!(answer.contains("connection: close"), "{answer:?}");
    assert_eq!(up.hits(), 1, "the smuggled GET never reached the upstream");
    let headers = seen.lock().expect("lock").clone().expect("upstream got the request");
    assert!(
        headers.get("content-length").is_none(),
        "the conflicting length is not passed on: {headers:?}"
    );
    proxy.shutdown().await;
}
