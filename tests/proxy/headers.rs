//! Hop-by-hop headers, X-Forwarded-*, Host, and a WebSocket upgrade, over raw TCP so the test
//! controls every byte the client sends.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads from `stream` until the end of a response head; returns the head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("response head", stream.read(&mut byte)).await.expect("read");
        assert!(n > 0, "connection closed mid-head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("utf-8 head")
}

fn header_lines(head: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_and_forwarded_headers_set() {
    let received: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let store = Arc::clone(&received);
    let up = Upstream::start(move |request| {
        *store.lock().expect("lock") = Some(request.headers().clone());
        async move {
            Response::builder()
                .header("keep-alive", "timeout=99")
                .header("connection", "x-upstream-private")
                .header("x-upstream-private", "secret")
                .header("x-upstream-public", "yes")
                .body(full("ok"))
                .expect("response")
        }
    })
    .await;
    let proxy = proxy(&service("h", "{}", &[("v", &[up.addr], 1)])).await;

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = "GET /h?q=1 HTTP/1.1\r\nHost: shop.test:8080\r\nConnection: keep-alive, x-secret\r\n\
        X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\
        X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Host: spoofed\r\nX-Kept: yes\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = header_lines(&head);
    assert!(lines.contains(&"x-upstream-public: yes".to_owned()), "{lines:?}");
    for gone in ["x-upstream-private", "keep-alive"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(gone)),
            "{gone} must not reach the client: {lines:?}"
        );
    }

    let headers = received
        .lock()
        .expect("lock")
        .clone()
        .expect("upstream got the request");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} must not reach the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(headers["host"], "shop.test:8080", "Host is kept");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.test:8080");
    proxy.shutdown().await;
}

/// The common case takes a short path (one `Connection` value, `keep-alive` or `close`): the
/// headers it names and the other hop-by-hop ones still go, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_keep_alive_alone_is_removed_with_its_companions() {
    let received: Arc<Mutex<Option<HeaderMap>>> = Arc::default();
    let store = Arc::clone(&received);
    let up = Upstream::start(move |request| {
        *store.lock().expect("lock") = Some(request.headers().clone());
        async move {
            Response::builder()
                .header("connection", "keep-alive")
                .header("keep-alive", "timeout=99")
                .header("proxy-connection", "keep-alive")
                .header("upgrade", "websocket")
                .body(full("ok"))
                .expect("response")
        }
    })
    .await;
    let proxy = proxy(&service("h", "{}", &[("v", &[up.addr], 1)])).await;
    for connection in ["keep-alive", "Close"] {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let request = format!(
            "GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: {connection}\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lines = header_lines(&head);
        for gone in ["keep-alive", "proxy-connection", "upgrade"] {
            assert!(
                !lines.iter().any(|l| l.starts_with(gone)),
                "{gone} must not reach the client: {lines:?}"
            );
        }
        let headers = received.lock().expect("lock").take().expect("upstream got the request");
        assert!(
            headers.get("connection").is_none() && headers.get("keep-alive").is_none(),
            "{headers:?}"
        );
        assert_eq!(headers["te"], "trailers", "TE: trailers is end to end");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_both_ways() {
    let up = Upstream::start(|mut request| async move {
        if request.headers().get("upgrade").map(|v| v.as_bytes()) != Some(b"websocket") {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full("want an upgrade"))
                .expect("response");
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.expect("upstream upgrade"));
            let mut buf = [0u8; 1024];
            loop {
                let n = io.read(&mut buf).await.expect("read");
                if n == 0 {
                    return;
                }
                io.write_all(&buf[..n]).await.expect("echo");
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .expect("response")
    })
    .await;
    let proxy = proxy(&service("ws", "{}", &[("v", &[up.addr], 1)])).await;

    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = "GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lines = header_lines(&head);
    assert!(lines.contains(&"upgrade: websocket".to_owned()), "{lines:?}");
    assert!(
        lines.contains(&"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=".to_owned()),
        "{lines:?}"
    );

    // A masked text frame "hello", then a second one: each must come back byte for byte.
    for message in [
        &[
            0x81u8,
            0x85,
            1,
            2,
            3,
            4,
            b'h' ^ 1,
            b'e' ^ 2,
            b'l' ^ 3,
            b'l' ^ 4,
            b'o' ^ 1,
        ][..],
        b"second message",
    ] {
        stream.write_all(message).await.expect("write frame");
        let mut echoed = vec![0u8; message.len()];
        within("echo", stream.read_exact(&mut echoed)).await.expect("read echo");
        assert_eq!(echoed, message);
    }
    proxy.shutdown().await;
}

/// `X-Forwarded-*` are added once per hop on every way a request goes out: to an HTTP/1.1 and
/// an HTTP/2 upstream, and after a failed connect sent the request to another endpoint (the
/// version's first endpoint is dead: a request P2C sends there goes out a second time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_fields_are_added_once_on_every_path() {
    for protocol in ["http1", "http2"] {
        let received: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let store = Arc::clone(&received);
        let up = Upstream::start(move |request| {
            store.lock().expect("lock").push(request.headers().clone());
            async move { Response::new(full("ok")) }
        })
        .await;
        let dead = dead_addr().await;
        let services = speaking(&service("f", "{}", &[("v", &[dead, up.addr], 1)]), protocol);
        let proxy = proxy(&services).await;
        for _ in 0..12 {
            let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
            let request = "GET /f HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
                X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).await.expect("write");
            let head = read_head(&mut stream).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{protocol}: {head}");
        }
        let seen = received.lock().expect("lock").clone();
        assert_eq!(
            seen.len(),
            12,
            "{protocol}: every request reached the live endpoint once"
        );
        for headers in &seen {
            let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
            assert_eq!(xff, ["203.0.113.9, 127.0.0.1"], "{protocol}: {headers:?}");
            assert_eq!(headers.get_all("x-forwarded-proto").iter().count(), 1, "{protocol}");
            assert_eq!(headers["x-forwarded-proto"], "http", "{protocol}");
            assert_eq!(headers["x-forwarded-host"], "shop.test", "{protocol}");
        }
        proxy.shutdown().await;
    }
}

/// A request's trailer section loses what its head would lose (hop-by-hop fields, sluice's own
/// `x-sluice-*`) and what must not be a trailer (`Content-Length`, `Host`, `Trailer`), on both
/// upstream protocols; other trailers pass. Before the fix, a chunked upload's trailers reached
/// the upstream unfiltered: a client could mark itself a shadow copy through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_lose_what_the_head_would_lose() {
    for protocol in ["http1", "http2"] {
        let names = trailers_reaching_upstream(
            protocol,
            "Connection: close\r\n",
            "X-Checksum: 42\r\nX-Sluice-Shadow: 1\r\nX-Sluice-Flags: admin\r\nKeep-Alive: timeout=5\r\n\
             Content-Length: 2\r\nHost: elsewhere\r\nTrailer: X-Checksum\r\n",
        )
        .await;
        assert_eq!(names, ["x-checksum"], "{protocol}");
    }
}

/// The trailer sections an upstream received, one entry per request.
type ReceivedTrailers = Arc<Mutex<Vec<Option<HeaderMap>>>>;

/// A proxy in front of an upstream speaking `protocol` that records each request's trailers.
async fn trailer_recording_proxy(protocol: &str) -> (TestProxy, Upstream, ReceivedTrailers) {
    let received = ReceivedTrailers::default();
    let store = Arc::clone(&received);
    let up = Upstream::start(move |request| {
        let store = Arc::clone(&store);
        async move {
            let collected = request.into_body().collect().await.expect("request body");
            store.lock().expect("lock").push(collected.trailers().cloned());
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = proxy(&speaking(&service("t", "{}", &[("v", &[up.addr], 1)]), protocol)).await;
    (proxy, up, received)
}

/// The trailer names (sorted) of the one request the upstream received.
fn received_trailer_names(received: &ReceivedTrailers, what: &str) -> Vec<String> {
    let seen = received.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{what}");
    let mut names: Vec<String> = seen[0]
        .clone()
        .unwrap_or_default()
        .keys()
        .map(|n| n.as_str().to_owned())
        .collect();
    names.sort();
    names
}

/// Sends one chunked POST over raw TCP with `extra_head` lines in its head and
/// `trailer_section` as its trailers, to an upstream speaking `protocol`; returns the trailer
/// names (sorted) the upstream received.
async fn trailers_reaching_upstream(protocol: &str, extra_head: &str, trailer_section: &str) -> Vec<String> {
    let (proxy, _up, received) = trailer_recording_proxy(protocol).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!(
        "POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{extra_head}\r\n2\r\nok\r\n0\r\n{trailer_section}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{protocol}: {head}");
    let names = received_trailer_names(&received, protocol);
    proxy.shutdown().await;
    names
}

/// RFC 9110 §7.6.1 has a proxy remove "any header or trailer field(s)" named by a `Connection`
/// option: the head's `Connection: x-secret` removes `x-secret` from the trailers too, on both
/// upstream protocols. (Found by review: the field reached the upstream as a trailer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_named_by_the_heads_connection_are_removed() {
    for protocol in ["http1", "http2"] {
        let names = trailers_reaching_upstream(
            protocol,
            "Connection: keep-alive, x-secret\r\nX-Secret: head\r\n",
            "X-Secret: trailer\r\nX-Checksum: 42\r\n",
        )
        .await;
        assert_eq!(
            names,
            ["x-checksum"],
            "{protocol}: a Connection-named field passed as a trailer"
        );
    }
}

/// A client's `X-Forwarded-Host` and `X-Forwarded-Proto` never reach an upstream in the head
/// (sluice sets them); sent as trailers they do not either. (Found by review: they passed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cannot_carry_the_forwarded_fields_sluice_sets() {
    for protocol in ["http1", "http2"] {
        let names = trailers_reaching_upstream(
            protocol,
            "",
            "X-Forwarded-Host: admin.internal\r\nX-Forwarded-Proto: https\r\nX-Checksum: 42\r\n",
        )
        .await;
        assert_eq!(
            names,
            ["x-checksum"],
            "{protocol}: spoofed X-Forwarded-* passed as trailers"
        );
    }
}

/// The same filter on hyper's HTTP/2 server path (an h2c client's trailers), to both
/// upstream protocols, including a trailer section left empty by the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_trailers_are_filtered_too() {
    use http::{HeaderValue, Request};
    use http_body::Frame;
    for protocol in ["http1", "http2"] {
        for only_removed in [false, true] {
            let (proxy, _up, received) = trailer_recording_proxy(protocol).await;
            let (tx, body) = channel_body(4);
            tx.send(Frame::data("ok".into())).await.expect("data");
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sluice-shadow", HeaderValue::from_static("1"));
            trailers.insert("x-sluice-flags", HeaderValue::from_static("admin"));
            if !only_removed {
                trailers.insert("x-checksum", HeaderValue::from_static("42"));
            }
            tx.send(Frame::trailers(trailers)).await.expect("trailers");
            drop(tx);
            let request = Request::post(proxy.url("/t")).body(body).expect("request");
            let response = within("h2c response", h2c_client().request(request))
                .await
                .expect("h2c request");
            assert_eq!(response.status(), StatusCode::OK, "{protocol} {only_removed}");
            let names = received_trailer_names(&received, protocol);
            let want: &[&str] = if only_removed { &[] } else { &["x-checksum"] };
            assert_eq!(names, want, "{protocol} {only_removed}");
            proxy.shutdown().await;
        }
    }
}
