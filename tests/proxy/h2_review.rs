//! Review of sluice's HTTP/2 server (`src/server/h2.rs`): what hyper's server handled, checked
//! against the new one with the `h2` crate's client (for resets, HEAD, CONNECT and raw frames)
//! and raw-socket upstreams.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A proxy with its admin API (for `/metrics`): one service `s`, version `v` on `upstream`.
async fn controlled_proxy(name: &str, upstream: std::net::SocketAddr, defaults: &str) -> Controlled {
    let path = temp_dir(name).join("sluice.yaml");
    let services = service("s", "{ path_prefix: /app }", &[("v", &[upstream], 1)]);
    write_config(
        &path,
        &format!("listeners: [{{ name: t, address: 127.0.0.1:0 }}]\n{defaults}\nservices:\n{services}"),
    );
    controlled(&path, Options::default()).await
}

/// A raw upstream that answers every request head with `answer` (and keeps the connection).
async fn answering(answer: &'static str) -> std::net::SocketAddr {
    raw_upstream(move |_, mut stream| async move {
        let mut buf = Vec::new();
        while read_request_head(&mut stream, &mut buf).await.is_some() {
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

// ---------------------------------------------------------------------------------------------
// Answers: broken bodies, connection-specific fields, HEAD, empty bodies.

/// An upstream body that breaks part-way must reach the h2 client as a reset stream, never as a
/// clean (short) end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_breaks_mid_answer_resets_the_h2_stream() {
    let (addr, _) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 1000]).await;
        }
        // Closed here, 99 000 bytes short.
    })
    .await;
    let proxy = proxy(&service("s", "{}", &[("v", &[addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::get(proxy.url("/cut")).body(()).expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    // The reset may overtake the head (`h2` drops the frames of a stream it resets).
    let read = match within("answer head", response).await {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            h2_read_body(&mut response.into_body()).await.map(|_| ())
        }
        Err(error) => Err(error),
    };
    let error = read.expect_err("a cut-short answer must not end cleanly");
    assert_eq!(error.reason(), Some(h2::Reason::INTERNAL_ERROR), "{error:?}");
    proxy.shutdown().await;
}

/// hyper's server removed `TE` from every HTTP/2 answer (`strip_connection_headers`); sluice's
/// keeps a `TE` whose value is `trailers` in any case, and `h2` refuses to send anything but
/// the exact lower-case `trailers`: the answer is lost to a stream reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_a_te_field_reaches_an_h2_client() {
    let addr = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nTE: Trailers\r\n\r\nok").await;
    let proxy = proxy(&service("s", "{}", &[("v", &[addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::get(proxy.url("/te")).body(()).expect("request");
    let (parts, body) = h2_exchange(&mut client, request)
        .await
        .expect("the answer reaches the client (not a reset stream)");
    assert_eq!((parts.status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert!(
        !parts.headers.contains_key("te"),
        "TE is connection-specific: {:?}",
        parts.headers
    );
    proxy.shutdown().await;
}

/// A `HEAD` answered by the proxy itself (no service: `404`) must carry no body over HTTP/2
/// (RFC 9110 §9.3.2); the `h2` client treats DATA on a HEAD stream as a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_the_proxy_answers_itself_gets_no_body_over_h2() {
    let up = Upstream::named("never").await;
    let proxy = proxy(&service("s", "{ path_prefix: /app }", &[("v", &[up.addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::head(proxy.url("/elsewhere")).body(()).expect("request");
    let answer = h2_exchange(&mut client, request).await;
    let (parts, body) = answer.expect("a HEAD answer without a body, not a stream error");
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

/// A `HEAD` proxied to an upstream: the upstream's `Content-Length` reaches the client, and no
/// body; answers without a body (`204`, `304`, `Content-Length: 0`) end cleanly with their head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_reach_an_h2_client_with_their_head() {
    let up = Upstream::start(|request| async move {
        let mut response = Response::new(full(if request.method() == Method::HEAD { "" } else { "hello" }));
        match request.uri().path() {
            "/head" => {
                response.headers_mut().insert("content-length", 5.into());
            }
            "/204" => *response.status_mut() = StatusCode::NO_CONTENT,
            "/304" => *response.status_mut() = StatusCode::NOT_MODIFIED,
            _ => *response.body_mut() = empty(),
        }
        response
    })
    .await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;

    let request = Request::head(proxy.url("/head")).body(()).expect("request");
    let (parts, body) = h2_exchange(&mut client, request).await.expect("HEAD");
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["content-length"], "5");
    assert!(body.is_empty());

    for (path, status) in [
        ("/204", StatusCode::NO_CONTENT),
        ("/304", StatusCode::NOT_MODIFIED),
        ("/empty", StatusCode::OK),
    ] {
        let request = Request::get(proxy.url(path)).body(()).expect("request");
        let (parts, body) = h2_exchange(&mut client, request).await.expect(path);
        assert_eq!(parts.status, status, "{path}");
        assert!(body.is_empty(), "{path}: {body:?}");
        assert!(parts.headers.contains_key("date"), "{path}");
    }
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Resets, slots and metrics.

/// A client that resets its stream while the answer's body streams: the upstream connection is
/// closed (never pooled with half an answer in it), the request counts once, nothing stays in
/// flight, and the same client connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_during_the_answer_body_frees_the_upstream_connection_and_counts_once() {
    let senders: Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Frame<Bytes>>>>> = Arc::default();
    let kept = Arc::clone(&senders);
    let up = Upstream::start(move |request| {
        let kept = Arc::clone(&kept);
        async move {
            if request.uri().path() != "/app/stream" {
                return Response::new(full("quick"));
            }
            let (tx, body) = channel_body(4);
            tx.send(Frame::data(Bytes::from_static(b"first"))).await.expect("first");
            kept.lock().expect("lock").push(tx);
            Response::new(body)
        }
    })
    .await;
    let proxy = controlled_proxy("h2-review-reset-body", up.addr, "").await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::get(proxy.url("/app/stream")).body(()).expect("request");
    let (response, mut stream) = client.send_request(request, true).expect("send");
    let response = within("answer head", response).await.expect("answer");
    let mut body = response.into_body();
    let first = within("first chunk", body.data())
        .await
        .expect("a chunk")
        .expect("data");
    assert_eq!(&first[..], b"first");
    stream.send_reset(h2::Reason::CANCEL);

    wait_until("the upstream connection is closed", || up.open_connections() == 0).await;
    let (parts, bytes) = h2_exchange(
        &mut client,
        Request::get(proxy.url("/app/next")).body(()).expect("request"),
    )
    .await
    .expect("the connection serves on");
    assert_eq!((parts.status, &bytes[..]), (StatusCode::OK, &b"quick"[..]));
    assert_eq!(up.connections(), 2, "a fresh upstream connection for the next request");
    let samples = metrics_until(&proxy, "both requests are counted", |s| counted_for_v(s) >= 2.0).await;
    assert_eq!(counted_for_v(&samples), 2.0, "{samples:?}");
    assert_eq!(samples.get("sluice_requests_in_flight"), Some(&0.0), "{samples:?}");
    drop(senders);
    proxy.shutdown().await;
}

/// h2 connections give their `max_connections` slot back when they close, also when a
/// request is held upstream as the client goes away; the held request counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_give_back_their_slots_and_abandoned_requests_count_once() {
    let release = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::held(Arc::clone(&release)).await;
    let proxy = controlled_proxy(
        "h2-review-slots",
        up.addr,
        "defaults: { limits: { max_connections: 2 } }",
    )
    .await;
    for round in 0..3 {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
        let (mut client, connection) = within("h2 handshake", h2::client::handshake(tcp))
            .await
            .expect("handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        client = within("ready", client.ready()).await.expect("ready");
        let request = Request::get(proxy.url("/app/held")).body(()).expect("request");
        let (_response, _stream) = client.send_request(request, true).expect("send");
        wait_until("the upstream holds the request", || up.hits() == round + 1).await;
        // The client goes away with its request in flight.
        driver.abort();
        drop(client);
        let _ = driver.await;
        metrics_until(&proxy, "the slot and the request are released", |s| {
            s.get("sluice_connections_open") == Some(&0.0) && s.get("sluice_requests_in_flight") == Some(&0.0)
        })
        .await;
    }
    let samples = metrics_until(&proxy, "three abandoned requests counted", |s| counted_for_v(s) >= 3.0).await;
    assert_eq!(counted_for_v(&samples), 3.0, "{samples:?}");
    assert_eq!(samples.get(&requests_of_v("error")), Some(&3.0), "{samples:?}");
    release.notify_waiters();
    proxy.shutdown().await;
}

/// More streams than the 200 a connection may have open: the client waits for room, every one
/// is answered, and each counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_200_concurrent_streams_on_one_connection_are_all_answered() {
    // A short drain (below): the shutdown at the end must not depend on the GOAWAY (see
    // `shutdown_sends_goaway_to_connections_that_started_with_a_burst_of_streams`).
    let (open, gate) = tokio::sync::watch::channel(false);
    let up = Upstream::gated(gate).await;
    // The upstream speaks HTTP/2 too, so the 200 held requests share one upstream connection: with
    // HTTP/1.1, the 50 that follow open new connections while the 200 are being given back, and
    // on this machine some of those connects took longer than the 1 s connect timeout (502),
    // which is not what this test is about.
    let path = temp_dir("h2-review-streams").join("sluice.yaml");
    let services = speaking(&service("s", "{ path_prefix: /app }", &[("v", &[up.addr], 1)]), "http2");
    write_config(
        &path,
        &format!("listeners: [{{ name: t, address: 127.0.0.1:0 }}]\ndefaults: {{ timeouts: {{ drain: 1s }} }}\nservices:\n{services}"),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = h2c_client();
    const STREAMS: usize = 250;
    let pending: Vec<_> = (0..STREAMS)
        .map(|i| {
            let client = client.clone();
            let url = proxy.url(&format!("/app/{i}"));
            tokio::spawn(async move { send(&client, Request::get(url).body(empty()).expect("request")).await })
        })
        .collect();
    wait_until("200 streams reach the upstream", || up.hits() == 200).await;
    let _ = open.send(true);
    for request in pending {
        let (status, _, body) = within("answer", request).await.expect("task");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"released"[..]));
    }
    assert_eq!(up.hits(), STREAMS);
    let samples = metrics_until(&proxy, "every stream counted", |s| counted_for_v(s) >= STREAMS as f64).await;
    assert_eq!(
        samples.get(&requests_of_v("2xx")),
        Some(&(STREAMS as f64)),
        "{samples:?}"
    );
    assert_eq!(samples.get("sluice_requests_in_flight"), Some(&0.0));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Request bodies.

/// Over `max_request_body` from an h2 client: announced (refused before the upstream hears of
/// it) or found mid-stream (no `Content-Length`): `413` both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upload_over_the_limit_is_413() {
    let up = Upstream::body_length().await;
    let proxy = proxy_with(
        &service("small", "{}", &[("v", &[up.addr], 1)]),
        "defaults: { max_request_body: 1KiB }",
    )
    .await;
    let mut client = h2_connection(proxy.addr).await;

    let request = Request::post(proxy.url("/announced"))
        .header("content-length", "2000")
        .body(())
        .expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    stream.send_data(Bytes::from(vec![b'x'; 2000]), true).expect("data");
    let response = within("answer", response).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.hits(), 0);

    let request = Request::post(proxy.url("/streamed")).body(()).expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    for _ in 0..4 {
        stream.send_data(Bytes::from(vec![b'y'; 512]), false).expect("data");
    }
    stream.send_data(Bytes::new(), true).expect("end");
    let response = within("answer", response).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let request = Request::get(proxy.url("/after")).body(()).expect("request");
    let (parts, body) = h2_exchange(&mut client, request)
        .await
        .expect("the connection serves on");
    assert_eq!((parts.status, &body[..]), (StatusCode::OK, &b"got 0"[..]));
    proxy.shutdown().await;
}

/// A body that does not match its `Content-Length` (short or long) never reaches the upstream
/// as a complete request: `h2` resets the stream, and the upstream sees its body break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_that_contradicts_its_content_length_never_arrives_complete() {
    let (up, log) = body_logging_upstream().await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    for (path, length, data) in [("/short", "10", &b"hello"[..]), ("/long", "3", &b"hello"[..])] {
        let request = Request::post(proxy.url(path))
            .header("content-length", length)
            .body(())
            .expect("request");
        let (response, mut stream) = client.send_request(request, false).expect("send");
        stream.send_data(Bytes::from_static(data), true).expect("data");
        let answer = within("the stream ends", response).await;
        assert!(
            answer.is_err() || answer.as_ref().is_ok_and(|r| r.status().is_client_error()),
            "{path}: {answer:?}"
        );
    }
    let request = Request::get(proxy.url("/after")).body(()).expect("request");
    let (parts, _) = h2_exchange(&mut client, request)
        .await
        .expect("the connection serves on");
    assert_eq!(parts.status, StatusCode::OK);
    let lines = log.lock().expect("lock").clone();
    assert!(
        lines
            .iter()
            .all(|line| !line.ends_with(" 10") && !line.ends_with(" 3") && !line.ends_with(" 5")),
        "no complete body: {lines:?}"
    );
    proxy.shutdown().await;
}

/// An upload the proxy refuses from its head (`404`) while the client still sends: the client
/// gets the answer, the stream ends, and the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_refused_early_gets_its_answer_and_the_connection_serves_on() {
    let up = Upstream::named("ok").await;
    let proxy = proxy(&service("s", "{ path_prefix: /app }", &[("v", &[up.addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::post(proxy.url("/nowhere")).body(()).expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    stream
        .send_data(Bytes::from(vec![b'z'; 32 << 10]), false)
        .expect("data");
    let response = within("the early answer", response).await.expect("answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let mut body = response.into_body();
    assert!(h2_read_body(&mut body).await.is_ok());
    let request = Request::get(proxy.url("/app")).body(()).expect("request");
    let (parts, body) = h2_exchange(&mut client, request)
        .await
        .expect("the connection serves on");
    assert_eq!((parts.status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// CONNECT.

/// hyper's server gave a CONNECT request an empty body (RFC 9110 §9.3.6: a CONNECT request has
/// no content); sluice's hands the stream over as the request body, which would go to an
/// HTTP/1.1 upstream chunked. It cannot get there: an authority-form target has no path, no
/// service matches it, and the proxy answers `404` itself. Pinned here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connect_is_answered_404_and_never_reaches_the_upstream() {
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&heads);
    let (addr, _) = raw_upstream(move |_, mut stream| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buf = Vec::new();
            if let Some(head) = read_request_head(&mut stream, &mut buf).await {
                seen.lock().expect("lock").push(head);
                let _ = stream
                    .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            }
        }
    })
    .await;
    let proxy = proxy(&service("s", "{}", &[("v", &[addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri("example.com:443")
        .body(())
        .expect("request");
    let (response, mut stream) = client.send_request(request, false).expect("send");
    stream
        .send_data(Bytes::from_static(b"\x16\x03\x01 tunnel bytes"), false)
        .expect("data");
    let answer = within("the CONNECT's answer", response).await;
    let status = answer.expect("an answer").status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let heads = heads.lock().expect("lock").clone();
    assert!(heads.is_empty(), "a CONNECT reached the upstream: {heads:?}");
    proxy.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown and keep-alive: the connection task's wake-ups.

/// A raw HTTP/2 client: frames written and read by hand, so a test decides exactly what
/// reaches the proxy in one segment, and sees every frame the proxy sends.
struct RawH2 {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET header block for `authority` and `/`: `:method GET`, `:scheme http`, `:path /` from
/// HPACK's static table, `:authority` as a literal with an indexed name.
fn get_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    block
}

impl RawH2 {
    /// Connects and writes, in one go, the preface, `settings` (id, value pairs) and `then`.
    async fn open(addr: std::net::SocketAddr, settings: &[(u16, u32)], then: &[u8]) -> RawH2 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        out.extend(frame(SETTINGS, 0, 0, &payload));
        out.extend_from_slice(then);
        tcp.write_all(&out).await.expect("write");
        RawH2 { tcp, buf: Vec::new() }
    }

    /// The next frame (type, flags, stream, payload), answering PINGs and acknowledging
    /// SETTINGS on the way; `None` once the proxy closed the connection.
    async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    if kind == PING && flags & ACK == 0 {
                        let _ = self.tcp.write_all(&frame(PING, ACK, 0, &payload)).await;
                    }
                    if kind == SETTINGS && flags & ACK == 0 {
                        let _ = self.tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    return Some((kind, flags, stream, payload));
                }
            }
            let mut chunk = [0u8; 16 << 10];
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// `stop`'s future is polled once to register the connection's task, then only when the watch
/// says it changed (`src/server/h2.rs`, `serve`). But `wait_for` is cooperative: when the task
/// has spent its budget in that poll (a burst of streams in a connection's first poll does it),
/// the first poll returns `Pending` without registering anything, and the stop never wakes the
/// task. An idle connection then gets no GOAWAY, and the shutdown waits for the whole drain
/// limit. Whether a burst spends the budget before the first registration depends on timing,
/// so several connections are tried; each must get its GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_to_connections_that_started_with_a_burst_of_streams() {
    const CONNECTIONS: usize = 8;
    const STREAMS: u32 = 190;
    let up = Upstream::named("ok").await;
    let proxy = proxy_with(
        &service("s", "{}", &[("v", &[up.addr], 1)]),
        "defaults: { timeouts: { drain: 60s } }",
    )
    .await;
    let authority = proxy.addr.to_string();
    let burst: Vec<u8> = (0..STREAMS)
        .flat_map(|i| frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &get_block(&authority)))
        .collect();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = RawH2::open(proxy.addr, &[], &burst).await;
        let mut ended = std::collections::BTreeSet::new();
        while ended.len() < STREAMS as usize {
            let (kind, flags, stream, _) = within("every stream's answer", client.next())
                .await
                .expect("the connection stays open");
            if (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 || kind == RST_STREAM {
                ended.insert(stream);
            }
        }
        // (Some streams may have been answered `502`: this many upstream connects at once can
        // overflow a listen backlog. Every stream ended; that is what matters here.)
        clients.push(client);
    }

    // Every connection is idle now; the proxy shuts down.
    let shutdown = tokio::spawn(proxy.shutdown());
    let waits = clients.iter_mut().map(|client| {
        tokio::time::timeout(DEADLINE, async {
            loop {
                match client.next().await {
                    Some((GOAWAY, ..)) => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
    });
    let missed: Vec<_> = futures_util::future::join_all(waits)
        .await
        .into_iter()
        .enumerate()
        .filter(|(_, goaway)| *goaway != Ok(true))
        .collect();
    assert!(
        missed.is_empty(),
        "connections without a GOAWAY after the shutdown began (Err: none within {DEADLINE:?}; \
         Ok(false): closed without one): {missed:?}"
    );
    for client in &mut clients {
        while client.next().await.is_some() {}
    }
    within("shutdown", shutdown).await.expect("shutdown task");
}

/// Seconds of CPU this process (the proxy runs in it) has used, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// SPEC: "a client that does not answer a ping (sent every 30 s) within 20 s is closed". A client
/// that stalls mid-download (reads nothing, so the proxy's socket buffer is full) never answers.
/// After the timeout `serve` calls `abrupt_shutdown` and `continue`s; the GOAWAY cannot be
/// written, so `poll_accept` stays `Pending`, and `KeepAlive::poll_timed_out` (timer still
/// elapsed, still waiting) says "timed out" again at once: the connection's task loops without
/// ever returning `Pending` (a core at 100 %, a tokio worker lost), and the connection is never
/// closed. The proxy runs on a runtime of its own so that the test's client and clock keep
/// working (and the test ends) even if that runtime wedges. Takes about a minute: the interval
/// and the timeout are constants.
#[test]
fn a_stalled_client_that_misses_its_ping_is_closed_without_spinning() {
    use http_body_util::BodyExt;
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("proxy runtime");
    let (up, proxy) = server.block_on(async {
        let up = Upstream::start(|_| async {
            let chunks =
                futures_util::stream::repeat_with(|| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 64 << 10]))));
            Response::new(http_body_util::StreamBody::new(chunks).boxed())
        })
        .await;
        let proxy = controlled_proxy("h2-review-stalled", up.addr, "").await;
        (up, proxy)
    });
    let client_side = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let outcome = client_side.block_on(async {
        let authority = proxy.addr.to_string();
        // Windows as large as the protocol allows, so only the socket holds the answer back.
        let mut then = frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes());
        let mut block = vec![0x82, 0x86, 0x04, 8];
        block.extend_from_slice(b"/app/big");
        block.extend_from_slice(&[0x01, authority.len() as u8]);
        block.extend_from_slice(authority.as_bytes());
        then.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        // Never read from.
        let _client = RawH2::open(proxy.addr, &[(0x4, 0x7fff_ffff)], &then).await;
        wait_until("the upstream streams the answer", || up.hits() == 1).await;

        // 30 s to the ping, 20 s to the timeout, then some slack.
        let start = tokio::time::Instant::now();
        let mut cpu = std::collections::VecDeque::new();
        let mut last_answer = None;
        loop {
            let scrape = tokio::time::timeout(std::time::Duration::from_secs(2), metric_samples(&proxy)).await;
            let open = scrape.as_ref().ok().and_then(|s| s.get("sluice_connections_open").copied());
            if open == Some(0.0) {
                return Ok(());
            }
            if open.is_some() {
                last_answer = Some((start.elapsed().as_secs_f64().round(), open));
            }
            cpu.push_back((tokio::time::Instant::now(), cpu_seconds()));
            while cpu.len() > 2 && cpu[0].0.elapsed() > std::time::Duration::from_secs(10) {
                cpu.pop_front();
            }
            if start.elapsed() > std::time::Duration::from_secs(70) {
                let (first, last) = (cpu[0], cpu[cpu.len() - 1]);
                return Err(format!(
                    "the stalled connection is still open {:.0} s on; /metrics last answered (seconds in, \
                     sluice_connections_open) {last_answer:?}, and not within 2 s since; the process used {:.1} s of CPU in the last {:.1} s",
                    start.elapsed().as_secs_f64(),
                    last.1 - first.1,
                    (last.0 - first.0).as_secs_f64()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // The client's socket closes here, which ends any spinning.
    });
    drop(client_side);
    drop((up, proxy));
    server.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Err(message) = outcome {
        panic!("{message}");
    }
}
