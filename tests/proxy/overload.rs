//! `defaults.limits`: past `max_connections` new connections are closed at once; past
//! `max_in_flight` requests get `503` at once, without touching an upstream. On raw sockets,
//! with the counts checked on the upstream and in `/metrics`.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n";

/// A config file with one service on `upstream` and `limits` under `defaults.limits`.
fn limited(name: &str, upstream: std::net::SocketAddr, limits: &str) -> std::path::PathBuf {
    let path = temp_dir(name).join("sluice.yaml");
    let services = service("s", "{}", &[("v", &[upstream], 1)]);
    write_config(
        &path,
        &format!(
            "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\ndefaults: {{ limits: {limits} }}\nservices:\n{services}"
        ),
    );
    path
}

/// The value of an unlabelled series in `/metrics`.
async fn metric(proxy: &Controlled, name: &str) -> u64 {
    let (_, text) = proxy.api_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .parse()
        .expect("a number")
}

/// Sends a GET on a kept-alive connection and reads the answer's status line.
async fn get_on(stream: &mut TcpStream) -> Option<String> {
    stream.write_all(GET).await.ok()?;
    let (head, _) = read_response(stream).await?;
    head.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_and_the_others_keep_working() {
    let up = Upstream::named("ok").await;
    let path = limited("max-connections", up.addr, "{ max_connections: 2 }");
    let proxy = controlled(&path, Options::default()).await;
    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    for stream in [&mut first, &mut second] {
        assert_eq!(get_on(stream).await.as_deref(), Some("http/1.1 200 ok"));
    }
    assert_eq!(metric(&proxy, "sluice_connections_open").await, 2);

    // The third is accepted by the kernel, then closed by the proxy without an answer.
    let mut third = TcpStream::connect(proxy.addr).await.expect("connect");
    let _ = third.write_all(GET).await;
    assert_eq!(
        read_until_closed(&mut third).await,
        "",
        "the third connection gets no answer"
    );
    assert_eq!(
        up.hits(),
        2,
        "the third connection's request never reached the upstream"
    );
    assert_eq!(metric(&proxy, "sluice_connections_refused_total").await, 1);

    // The first two are untouched.
    for stream in [&mut first, &mut second] {
        assert_eq!(get_on(stream).await.as_deref(), Some("http/1.1 200 ok"));
    }
    assert_eq!(up.hits(), 4);

    // Once one closes, its slot is free again: the proxy notices the close on its own time,
    // so new connections are tried until one is served.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        let mut next = TcpStream::connect(proxy.addr).await.expect("connect");
        if let Some(status) = get_on(&mut next).await {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(status, "http/1.1 200 ok");
    assert_eq!(up.hits(), 5);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_in_flight_get_503_at_once_and_never_reach_the_upstream() {
    let release = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::held(Arc::clone(&release)).await;
    let path = limited("max-in-flight", up.addr, "{ max_in_flight: 1 }");
    let proxy = controlled(&path, Options::default()).await;

    let mut held = TcpStream::connect(proxy.addr).await.expect("connect");
    held.write_all(GET).await.expect("write");
    wait_until("the first request reaches the upstream", || up.hits() == 1).await;
    assert_eq!(metric(&proxy, "sluice_requests_in_flight").await, 1);

    // The upstream holds the first answer until released, so an answer now was not queued.
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    second.write_all(GET).await.expect("write");
    let (head, body) = read_response(&mut second)
        .await
        .expect("an answer while the first is held");
    assert!(head.starts_with("http/1.1 503 "), "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert_eq!(body, "overloaded: retry shortly\n");
    assert_eq!(up.hits(), 1, "the shed request never reached the upstream");
    assert_eq!(metric(&proxy, "sluice_requests_shed_total").await, 1);

    release.notify_one();
    let (head, body) = read_response(&mut held).await.expect("the held answer");
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert_eq!(body, "released");

    // The slot is freed once the first answer's body is sent, which the client may see a
    // moment before the proxy does: retry on the kept-alive connection until served.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        release.notify_one();
        let status = get_on(&mut second).await.expect("an answer");
        if status == "http/1.1 200 ok" {
            break;
        }
        assert_eq!(status, "http/1.1 503 service unavailable");
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests were never admitted again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(up.hits(), 2, "exactly the admitted requests reached the upstream");
    assert_eq!(metric(&proxy, "sluice_requests_in_flight").await, 0);
    proxy.shutdown().await;
}

/// A streamed answer holds its slot until its body ends, not only until its head is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_answer_holds_its_slot_until_the_body_ends() {
    let (tx, body) = channel_body(1);
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let up = Upstream::start(move |_| {
        let first = body.lock().expect("lock").take();
        async move { http::Response::new(first.unwrap_or_else(|| full("second"))) }
    })
    .await;
    let path = limited("streaming-slot", up.addr, "{ max_in_flight: 1 }");
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    let request = http::Request::get(proxy.url("/")).body(empty()).expect("request");
    let response = within("the streaming answer's head", client.request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);

    let mut other = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(
        get_on(&mut other).await.as_deref(),
        Some("http/1.1 503 service unavailable"),
        "the first request is still in flight while its body streams"
    );
    drop(tx);
    use http_body_util::BodyExt;
    within("the body ends", response.into_body().collect())
        .await
        .expect("body");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while get_on(&mut other).await.as_deref() != Some("http/1.1 200 ok") {
        assert!(tokio::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

/// `max_connections` and `max_in_flight` apply on reload, at the next decision;
/// `max_request_headers` is set on the listener's connections and needs a restart, as the
/// reload says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_limits_at_once() {
    let up = Upstream::named("ok").await;
    let path = limited("reload-limits", up.addr, "{ max_connections: 1 }");
    let proxy = controlled(&path, Options::default()).await;
    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(get_on(&mut first).await.as_deref(), Some("http/1.1 200 ok"));
    let mut refused = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(get_on(&mut refused).await, None, "one connection is the limit");

    let raised = limited(
        "reload-limits",
        up.addr,
        "{ max_connections: 2, max_request_headers: 16KiB }",
    );
    assert_eq!(raised, path);
    let (status, body) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains("defaults.limits.max_request_headers changed: restart sluice to apply it"),
        "{body}"
    );
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(
        get_on(&mut second).await.as_deref(),
        Some("http/1.1 200 ok"),
        "the raised limit admits a second connection"
    );
    assert_eq!(get_on(&mut first).await.as_deref(), Some("http/1.1 200 ok"));
    assert_eq!(up.hits(), 3);

    // Compared with what the process runs on, not with the last reload: another change keeps
    // the warning (the head limit is still not applied), and going back to the started value
    // drops it.
    let restart = "defaults.limits.max_request_headers changed";
    limited(
        "reload-limits",
        up.addr,
        "{ max_connections: 3, max_request_headers: 16KiB }",
    );
    let (status, body) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert!(body["warnings"].to_string().contains(restart), "{body}");
    limited("reload-limits", up.addr, "{ max_connections: 3 }");
    let (status, body) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    assert!(!body["warnings"].to_string().contains(restart), "{body}");
    proxy.shutdown().await;
}

/// An upgraded (WebSocket) tunnel outlives its HTTP connection and still counts as one open
/// connection, until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_counts_as_a_connection_until_it_ends() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start(|mut request| async move {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.expect("upstream upgrade"));
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        http::Response::builder()
            .status(http::StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(empty())
            .expect("response")
    })
    .await;
    let path = limited("tunnel-slot", up.addr, "{ max_connections: 1 }");
    let proxy = controlled(&path, Options::default()).await;
    let mut tunnel = TcpStream::connect(proxy.addr).await.expect("connect");
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut tunnel).await.expect("the upgrade answer");
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    tunnel.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    within("echo", tunnel.read_exact(&mut echoed)).await.expect("read echo");
    assert_eq!(&echoed, b"ping");

    assert_eq!(
        metric(&proxy, "sluice_connections_open").await,
        1,
        "the tunnel counts once"
    );
    let mut refused = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(get_on(&mut refused).await, None, "the tunnel holds the only slot");

    drop(tunnel);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut next = TcpStream::connect(proxy.addr).await.expect("connect");
        // Any answer will do (this upstream answers 101 even to a plain GET): it was admitted.
        if get_on(&mut next).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel's slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    proxy.shutdown().await;
}

/// HTTP/2 requests count stream by stream: with one in flight, the next one the h2c client sends
/// is shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_past_max_in_flight_get_503() {
    let release = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::held(Arc::clone(&release)).await;
    let path = limited("h2-in-flight", up.addr, "{ max_in_flight: 1 }");
    let proxy = controlled(&path, Options::default()).await;
    let client = h2c_client();
    let first = {
        let (client, url) = (client.clone(), proxy.url("/"));
        tokio::spawn(async move { send(&client, http::Request::get(url).body(empty()).expect("request")).await })
    };
    wait_until("the first stream reaches the upstream", || up.hits() == 1).await;
    let (status, headers, body) = send(
        &client,
        http::Request::get(proxy.url("/")).body(empty()).expect("request"),
    )
    .await;
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body, "overloaded: retry shortly\n");
    assert_eq!(up.hits(), 1);
    release.notify_one();
    let (status, _, _) = within("the first answer", first).await.expect("first");
    assert_eq!(status, http::StatusCode::OK);
    proxy.shutdown().await;
}

/// `max_in_flight` follows a reload at the next arrival, while requests admitted under the old
/// limit keep running: raised from 1 to 2 with one request held, a second is served at once
/// (it was shed before); lowered back to 1 with two held, a new arrival is shed and both held
/// requests still finish with their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_max_in_flight_for_new_requests_while_others_are_held() {
    // `/hold` waits until released (a watch, so a release is never missed); anything else is
    // answered at once.
    let (release, released) = tokio::sync::watch::channel(false);
    let up = Upstream::start(move |request| {
        let mut released = released.clone();
        async move {
            if request.uri().path() == "/hold" {
                let _ = released.wait_for(|r| *r).await;
                http::Response::new(full("released"))
            } else {
                http::Response::new(full("fast"))
            }
        }
    })
    .await;
    let path = limited("reload-in-flight", up.addr, "{ max_in_flight: 1 }");
    let proxy = controlled(&path, Options::default()).await;
    const HOLD: &[u8] = b"GET /hold HTTP/1.1\r\nHost: s\r\n\r\n";

    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    first.write_all(HOLD).await.expect("write");
    wait_until("the first request is held at the upstream", || up.hits() == 1).await;
    let mut other = TcpStream::connect(proxy.addr).await.expect("connect");
    let (head, body) = read_response_to(&mut other, GET).await;
    assert!(head.starts_with("http/1.1 503 "), "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert_eq!(body, "overloaded: retry shortly\n");
    assert_eq!(up.hits(), 1, "the shed request never reached the upstream");

    assert_eq!(limited("reload-in-flight", up.addr, "{ max_in_flight: 2 }"), path);
    let (status, result) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, http::StatusCode::OK, "{result}");
    assert_eq!(result["result"], "ok", "{result}");
    assert!(
        !result["warnings"].to_string().contains("max_in_flight"),
        "max_in_flight needs no restart: {result}"
    );
    // The same kept-alive connection that was shed is served now, the first still held.
    let (head, body) = read_response_to(&mut other, GET).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert_eq!(body, "fast");
    assert_eq!(up.hits(), 2);

    // Two held under a limit of 2; lowered to 1, the next arrival is shed and the two held
    // requests are not disturbed. (The fast answer's slot is freed once the proxy has sent
    // its body, which the client may see a moment before the proxy does.)
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while metric(&proxy, "sluice_requests_in_flight").await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast answer's slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut second = TcpStream::connect(proxy.addr).await.expect("connect");
    second.write_all(HOLD).await.expect("write");
    wait_until("the second request is held at the upstream", || up.hits() == 3).await;
    assert_eq!(metric(&proxy, "sluice_requests_in_flight").await, 2);
    limited("reload-in-flight", up.addr, "{ max_in_flight: 1 }");
    let (status, result) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, http::StatusCode::OK, "{result}");
    assert_eq!(result["result"], "ok", "{result}");
    let (head, _) = read_response_to(&mut other, GET).await;
    assert!(head.starts_with("http/1.1 503 "), "lowered below the count: {head}");
    assert_eq!(up.hits(), 3, "the shed request never reached the upstream");
    assert_eq!(metric(&proxy, "sluice_requests_shed_total").await, 2);

    release.send(true).expect("release");
    for held in [&mut first, &mut second] {
        let (head, body) = read_response(held).await.expect("the held answer");
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert_eq!(body, "released");
    }
    // Both slots free again (the proxy may see the bodies end a moment after the client):
    // the lowered limit of 1 admits one request at a time.
    wait_until_served(&mut other).await;
    assert_eq!(up.hits(), 4, "exactly the admitted requests reached the upstream");
    proxy.shutdown().await;
}

/// Writes `request` on a kept-alive connection and reads the answer's head and body.
async fn read_response_to(stream: &mut TcpStream, request: &[u8]) -> (String, String) {
    stream.write_all(request).await.expect("write");
    read_response(stream).await.expect("an answer")
}

/// Sends GETs on `stream` until one is answered `200` (the others must be shed `503`s).
async fn wait_until_served(stream: &mut TcpStream) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let status = get_on(stream).await.expect("an answer");
        if status == "http/1.1 200 ok" {
            return;
        }
        assert_eq!(status, "http/1.1 503 service unavailable");
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests were never admitted again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
