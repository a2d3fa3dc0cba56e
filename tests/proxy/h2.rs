//! HTTP/2: h2c clients on the shared listener, gRPC-style trailers end to end over an
//! `protocol: http2` upstream, and client bodies that break on their way to one.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_reaches_an_http1_upstream() {
    let up = Upstream::start(|request| async move {
        let host = request
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap_or("?").to_owned());
        Response::new(full(format!(
            "{:?} host={host:?} path={}",
            request.version(),
            request.uri()
        )))
    })
    .await;
    let proxy = proxy(&service("h2", "{}", &[("v", &[up.addr], 1)])).await;
    let client = h2c_client();
    for i in 0..3 {
        let request = Request::get(proxy.url(&format!("/item/{i}?x=1")))
            .body(empty())
            .expect("request");
        let response = within("h2 response", client.request(request))
            .await
            .expect("h2 request");
        assert_eq!(response.version(), Version::HTTP_2, "client spoke h2c to the proxy");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let want = format!("HTTP/1.1 host={:?} path=/item/{i}?x=1", Some(proxy.addr.to_string()));
        assert_eq!(String::from_utf8_lossy(&body), want);
    }
    assert_eq!(up.hits(), 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_end_to_end_over_http2() {
    let up = Upstream::start(|request| async move {
        let te = request.headers().get("te").cloned();
        let version = request.version();
        let collected = request.into_body().collect().await.expect("request body");
        let request_trailer = collected.trailers().and_then(|t| t.get("x-request-checksum").cloned());
        let data = collected.to_bytes();
        let (tx, body) = channel_body(4);
        tokio::spawn(async move {
            let echo = format!(
                "{version:?} te={te:?} trailer={request_trailer:?} data={}",
                String::from_utf8_lossy(&data)
            );
            tx.send(Frame::data(echo.into())).await.expect("data");
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("done"));
            tx.send(Frame::trailers(trailers)).await.expect("trailers");
        });
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .expect("response")
    })
    .await;
    let upstream = speaking(&service("grpc", "{}", &[("v", &[up.addr], 1)]), "http2");
    let proxy = proxy(&upstream).await;

    let (tx, body) = channel_body(4);
    tx.send(Frame::data("\0\0\0\0\x05hello".into())).await.expect("data");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-checksum", HeaderValue::from_static("abc"));
    tx.send(Frame::trailers(trailers)).await.expect("trailers");
    drop(tx);
    let request = Request::post(proxy.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let response = within("grpc response", h2c_client().request(request))
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = within("grpc body", response.into_body().collect()).await.expect("body");
    let trailers = collected.trailers().cloned().expect("response trailers must arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    assert_eq!(
        String::from_utf8_lossy(&collected.to_bytes()),
        "HTTP/2.0 te=Some(\"trailers\") trailer=Some(\"abc\") data=\0\0\0\0\x05hello"
    );
    proxy.shutdown().await;
}

/// A request body fed from a channel that can also fail, so a test can break a client's upload
/// part-way (hyper then resets the stream).
struct FailingBody(tokio::sync::mpsc::Receiver<Result<Frame<bytes::Bytes>, BoxError>>);

impl http_body::Body for FailingBody {
    type Data = bytes::Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

/// The lines `log` holds for requests to `path`.
fn logged(log: &BodyLog, path: &str) -> Vec<String> {
    log.lock()
        .expect("lock")
        .iter()
        .filter(|line| line.split(' ').nth(2) == Some(path))
        .cloned()
        .collect()
}

/// A proxy in front of a logging upstream spoken to in `protocol`, after four requests whose
/// bodies broke part-way, each once the upstream had the request: an h2c client whose body
/// fails (hyper resets the stream), then on sluice's own HTTP/1.1 codec a client that closes
/// inside a `Content-Length` body, one that closes inside a chunked body, and a chunk size that
/// is not hex. Checks that the upstream saw each end in error, never a complete request;
/// returns the answer to the bad chunk.
async fn break_client_bodies(name: &str, protocol: &str, extra: &str) -> (Controlled, Upstream, BodyLog, String) {
    use tokio::io::AsyncWriteExt;
    let (up, log) = body_logging_upstream().await;
    let services = speaking(&service("s", "{}", &[("v", &[up.addr], 1)]), protocol) + extra;
    let path = temp_dir(name).join("sluice.yaml");
    write_config(
        &path,
        &format!("listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n{services}"),
    );
    let proxy = controlled(&path, Options::default()).await;
    let version = if protocol == "http2" { "HTTP/2.0" } else { "HTTP/1.1" };
    let broken = |target: &str| [format!("{version} POST {target} broken")];

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = Request::post(proxy.url("/h2-reset"))
        .body(BodyExt::boxed(FailingBody(rx)))
        .expect("request");
    let pending = tokio::spawn({
        let client = h2c_client();
        async move { client.request(request).await.map(|r| r.status()) }
    });
    tx.send(Ok(Frame::data("hello".into()))).await.expect("send");
    wait_until("the upstream has the h2c request", || up.hits() == 1).await;
    tx.send(Err("the client gives up".into())).await.expect("send");
    let sent = within("the h2c request ends", pending).await.expect("client task");
    assert!(sent.is_err(), "a reset request gets no answer: {sent:?}");
    wait_until("the upstream's stream ends", || !logged(&log, "/h2-reset").is_empty()).await;
    assert_eq!(logged(&log, "/h2-reset"), broken("/h2-reset"));

    let chunked = "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let cases = [
        ("/length-cut", "Content-Length: 100\r\n\r\nhello", None),
        ("/chunked-cut", chunked, None),
        ("/bad-chunk", chunked, Some("zz\r\nworld\r\n0\r\n\r\n")),
    ];
    let mut answer = String::new();
    for (n, (target, start, then)) in cases.into_iter().enumerate() {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
        stream
            .write_all(format!("POST {target} HTTP/1.1\r\nHost: s\r\n{start}").as_bytes())
            .await
            .expect("write");
        wait_until("the upstream has the request", || up.hits() == n + 2).await;
        match then {
            None => drop(stream),
            Some(rest) => {
                // The proxy may close before it has read everything: a failed write is fine.
                let _ = stream.write_all(rest.as_bytes()).await;
                answer = read_until_closed(&mut stream).await;
            }
        }
        wait_until("the upstream's stream ends", || !logged(&log, target).is_empty()).await;
        assert_eq!(
            logged(&log, target),
            broken(target),
            "the upstream never sees a complete request"
        );
    }
    (proxy, up, log, answer)
}

/// Polls `/metrics` until version `v` has counted `n` requests, whatever their codes.
async fn counted(proxy: &Controlled, n: f64) -> std::collections::HashMap<String, f64> {
    metrics_until(proxy, &format!("{n} requests are counted"), |samples| {
        counted_for_v(samples) == n
    })
    .await
}

/// A client body that breaks part-way while it streams to a `protocol: http2` upstream (cut
/// off, malformed, or reset by an h2c client; see [`break_client_bodies`]) reaches the upstream
/// as a stream that ends in error, never as a complete request. The bad chunk's connection gets
/// one answer and is closed; the proxy keeps serving both client protocols on new connections;
/// every request is counted once, and none stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_that_breaks_reaches_an_http2_upstream_incomplete_and_the_proxy_keeps_serving() {
    let (proxy, _up, log, answer) = break_client_bodies("h2-broken-body", "http2", "").await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer: {answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

    for client in [http1_client(), h2c_client()] {
        let (status, body) = get(&client, &proxy.url("/after"), None).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(
        logged(&log, "/after"),
        ["HTTP/2.0 GET /after 0", "HTTP/2.0 GET /after 0"]
    );
    let samples = counted(&proxy, 6.0).await;
    assert_eq!(samples.get(&requests_of_v("2xx")), Some(&2.0), "{samples:?}");
    for gauge in [
        "sluice_requests_in_flight",
        "sluice_inflight_requests{service=\"s\",version=\"v\"}",
    ] {
        assert_eq!(samples.get(gauge), Some(&0.0), "{gauge} after every request ended");
    }
    proxy.shutdown().await;
}

/// SPEC ("A broken chunked body", "Failures", "Metrics"): a client body that breaks is the
/// client's fault: the bad chunk gets `400`, not a `502` blaming the upstream; no broken
/// request counts as `5xx`, as an upstream error, as a guardrail error, or toward outlier
/// detection (here ejecting after three failures in a row, as many as the HTTP/1.1 cases).
async fn broken_client_bodies_are_the_clients_fault(protocol: &str) {
    let outlier = "    outlier_detection: { consecutive_failures: 3, ejection: 1h, max_ejected_percent: 100 }\n";
    let (proxy, _up, log, answer) =
        break_client_bodies(&format!("broken-body-fault-{protocol}"), protocol, outlier).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "the bad chunk: {answer}");

    let (status, body) = get(&http1_client(), &proxy.url("/after"), None).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"ok"[..]),
        "the endpoint is not ejected"
    );
    assert_eq!(logged(&log, "/after").len(), 1);
    let (_, view) = proxy.api("GET", "/api/v1/services/s", None).await;
    assert_eq!(view["service"]["versions"][0]["endpoints"][0]["ejections"], 0, "{view}");

    let samples = counted(&proxy, 5.0).await;
    let count = |code: &str| samples.get(&requests_of_v(code)).copied().unwrap_or(0.0);
    // The clients that left or reset may count as `4xx` (the proxy's answer to a broken body)
    // or as `error` (no answer could be sent); never as `5xx`.
    assert_eq!(
        count("5xx"),
        0.0,
        "a broken client body is not the upstream's fault: {samples:?}"
    );
    assert!(count("4xx") >= 1.0, "the bad chunk's 400: {samples:?}");
    assert_eq!(count("4xx") + count("error"), 4.0, "{samples:?}");
    for kind in ["connect", "timeout", "reset", "status"] {
        let sample = format!("sluice_upstream_errors_total{{service=\"s\",version=\"v\",kind=\"{kind}\"}}");
        assert_eq!(samples.get(&sample), Some(&0.0), "{sample}");
    }
    let (_, stats) = proxy.api("GET", "/api/v1/services/s/stats", None).await;
    assert_eq!(stats["versions"][0]["version"], "v", "{stats}");
    assert_eq!(
        stats["versions"][0]["windows"]["10s"]["errors"], 0,
        "no guardrail errors: {stats}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_client_bodies_are_the_clients_fault_to_an_http1_upstream() {
    broken_client_bodies_are_the_clients_fault("http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_client_bodies_are_the_clients_fault_to_an_http2_upstream() {
    broken_client_bodies_are_the_clients_fault("http2").await;
}

// sluice's HTTP/2 server (`src/server/h2.rs`): flow control, resets, its own answers, shutdown.

/// Sends a GET for `path` on `client`: the answer's status and body.
async fn h2_get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(StatusCode, bytes::Bytes), h2::Error> {
    let request = Request::get(format!("http://{addr}{path}")).body(()).expect("request");
    h2_exchange(client, request)
        .await
        .map(|(parts, body)| (parts.status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_both_ways_keep_to_http2_flow_control() {
    // The upstream echoes what it is sent; the client's windows are the protocol's 64 KiB, so
    // both directions wait for window updates many times over.
    let up =
        Upstream::start(|request| async move { Response::new(request.into_body().map_err(BoxError::from).boxed()) })
            .await;
    let proxy = proxy(&service("echo", "{}", &[("v", &[up.addr], 1)])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build_http::<Body>();
    const SIZE: usize = 3 << 20;
    let exchanges = (0..4).map(|_| {
        let request = Request::post(proxy.url("/echo"))
            .body(full(pattern(0, SIZE)))
            .expect("request");
        async {
            let response = within("echo answer", client.request(request))
                .await
                .expect("echo request");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), Version::HTTP_2);
            check_pattern(response.into_body(), || {}).await
        }
    });
    let echoed = futures_util::future::join_all(exchanges).await;
    assert_eq!(
        echoed,
        vec![Ok(SIZE as u64); 4],
        "every stream got its whole body back, in order"
    );
    assert_eq!(up.hits(), 4);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_by_the_client_cancels_its_upstream_request_and_the_connection_serves_on() {
    let up = Upstream::start(|request| async move {
        if request.uri().path() == "/held" {
            std::future::pending::<()>().await;
        }
        Response::new(full("quick"))
    })
    .await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let mut client = h2_connection(proxy.addr).await;
    let request = Request::get(proxy.url("/held")).body(()).expect("request");
    let (_answer, mut held) = client.send_request(request, true).expect("send");
    wait_until("the upstream holds the request", || {
        up.hits() == 1 && up.open_connections() == 1
    })
    .await;

    held.send_reset(h2::Reason::CANCEL);
    // The only way to cancel an HTTP/1.1 request is to close its connection.
    wait_until("the upstream request is cancelled", || up.open_connections() == 0).await;

    let (status, body) = h2_get(&mut client, proxy.addr, "/quick").await.expect("next stream");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"quick"[..]), "same connection");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluices_own_answers_to_http2_clients_carry_a_date_and_their_length() {
    let up = Upstream::named("x").await;
    let proxy = proxy(&service("only", "{ path_prefix: /app }", &[("v", &[up.addr], 1)])).await;
    let client = h2c_client();
    for path in ["/elsewhere", "/app"] {
        let (status, headers, body) =
            send(&client, Request::get(proxy.url(path)).body(empty()).expect("request")).await;
        let length = headers
            .get("content-length")
            .map(|v| v.to_str().expect("text").to_owned());
        assert_eq!(length, Some(body.len().to_string()), "{path}: {status}");
        let date = headers.get("date").map(|d| d.to_str().expect("text").to_owned());
        let parsed = date.as_deref().map(httpdate::parse_http_date);
        assert!(matches!(parsed, Some(Ok(_))), "{path}: {status} with date {date:?}");
        assert_eq!(headers.get_all("date").iter().count(), 1, "{path}: one date");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_http2_stream_finish_and_refuses_new_ones() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = std::sync::Arc::clone(&release);
    let up = Upstream::start(move |request| {
        let gate = std::sync::Arc::clone(&gate);
        async move {
            if request.uri().path() == "/held" {
                gate.notified().await;
            }
            Response::new(full("done"))
        }
    })
    .await;
    let proxy = proxy(&service("s", "{}", &[("v", &[up.addr], 1)])).await;
    let addr = proxy.addr;
    let mut client = h2_connection(addr).await;
    let held = tokio::spawn({
        let mut client = client.clone();
        async move { h2_get(&mut client, addr, "/held").await }
    });
    wait_until("the upstream holds the request", || up.hits() == 1).await;

    let shutdown = tokio::spawn(proxy.shutdown());
    // Streams opened before the GOAWAY arrives are served; after it, the client refuses to open
    // one (or the server refuses it).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let refused = loop {
        match h2_get(&mut client, addr, "/quick").await {
            Ok((status, _)) => assert_eq!(status, StatusCode::OK),
            Err(error) => break error,
        }
        assert!(tokio::time::Instant::now() < deadline, "no GOAWAY came");
        tokio::task::yield_now().await;
    };
    assert!(
        refused.is_go_away() || refused.reason() == Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );
    assert!(!shutdown.is_finished(), "the held stream holds the shutdown");

    release.notify_waiters();
    let (status, body) = within("held answer", held).await.expect("task").expect("held stream");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"done"[..]));
    within("shutdown", shutdown).await.expect("shutdown task");
}
