//! Shadow traffic: copies reach the shadow intact, percents hold, a slow or broken shadow never
//! touches the client's answer, bodies are bounded, and answers are compared.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::Notify;

use crate::support::*;

/// blue (primary, weight 1) plus shadow versions, and the `mirror:` entries.
fn config(blue: std::net::SocketAddr, shadows: &[(&str, std::net::SocketAddr)], mirrors: &str, extra: &str) -> String {
    let versions: String = shadows
        .iter()
        .map(|(n, a)| format!("      {n}: {{ endpoints: [{a}] }}\n"))
        .collect();
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\n{extra}\nservices:\n  - name: app\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n{versions}    routing: {{ weights: {{ blue: 1 }} }}\n    mirror:\n{mirrors}\n"
    )
}

async fn start(name: &str, yaml: &str) -> Controlled {
    let dir = temp_dir(name);
    let path = dir.join("sluice.yaml");
    write_config(&path, yaml);
    controlled(&path, Options::default()).await
}

/// The admin API's view of the mirror of `version`.
async fn mirror_view(proxy: &Controlled, version: &str) -> Value {
    let (_, view) = proxy.api("GET", "/api/v1/services/app", None).await;
    view["service"]["mirror"]
        .as_array()
        .expect("mirror")
        .iter()
        .find(|m| m["version"] == version)
        .expect("mirror entry")
        .clone()
}

/// `sluice_requests_total` of green's shadow role with `code`, from `/metrics`.
async fn shadow_answers(proxy: &Controlled, code: &str) -> f64 {
    let request = Request::get(format!("http://{}/metrics", proxy.admin))
        .body(empty())
        .expect("request");
    let (_, _, text) = send(&http1_client(), request).await;
    let sample = format!("sluice_requests_total{{service=\"app\",version=\"green\",role=\"shadow\",code=\"{code}\"}} ");
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(&sample))
        .map_or(0.0, |v| v.parse().expect("numeric sample"))
}

/// Polls the admin view of the mirror of `version` until `check` holds; returns that view.
async fn mirror_until(proxy: &Controlled, version: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let view = mirror_view(proxy, version).await;
        if check(&view) {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: never, {view}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits until the mirror of `version` has no copy in flight; returns its view.
async fn settled(proxy: &Controlled, version: &str) -> Value {
    mirror_until(proxy, version, "no copies in flight", |view| view["in_flight"] == 0).await
}

/// What a recording upstream saw of each request: target, head fields, whole body.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, bytes::Bytes)>>>;

/// An upstream that answers `name` and records every request it receives.
async fn recording_upstream(name: &'static str) -> (Upstream, Seen) {
    let seen: Seen = Arc::default();
    let store = Arc::clone(&seen);
    let upstream = Upstream::start(move |request| {
        let store = Arc::clone(&store);
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            store
                .lock()
                .expect("lock")
                .push((parts.uri.to_string(), parts.headers, body));
            Response::new(full(name))
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_gets_an_intact_marked_copy() {
    let blue = Upstream::named("blue").await;
    let (green, seen) = recording_upstream("green").await;
    let proxy = start(
        "shadow-copy",
        &config(
            blue.addr,
            &[("green", green.addr)],
            "      - { version: green, percent: 100 }",
            "",
        ),
    )
    .await;
    let request = Request::post(proxy.url("/orders?id=7"))
        .header("host", "shop.test:8080")
        .header("x-test", "1")
        .body(full("order body"))
        .expect("request");
    let (status, _, body) = send(&http1_client(), request).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"blue"[..]),
        "the client gets the primary's answer"
    );
    wait_until("the shadow receives the copy", || seen.lock().expect("lock").len() == 1).await;
    let (uri, headers, body) = seen.lock().expect("lock")[0].clone();
    assert_eq!(uri, "/orders?id=7");
    assert_eq!(&body[..], b"order body");
    assert_eq!(headers["host"], "shop.test-shadow:8080", "-shadow goes before the port");
    assert_eq!(headers["x-sluice-shadow"], "true");
    assert_eq!(headers["x-test"], "1");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");

    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 1);
    let (_, stats) = proxy.api("GET", "/api/v1/services/app/stats", None).await;
    let green_primary = stats["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == "green")
        .expect("green");
    assert_eq!(
        green_primary["windows"]["10s"]["requests"], 0,
        "shadow answers never count as the version's primary traffic"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percents_hold_for_two_mirrors() {
    let (blue, green, canary) = (
        Upstream::named("blue").await,
        Upstream::named("g").await,
        Upstream::named("c").await,
    );
    let mirrors = "      - { version: green, percent: 100 }\n      - { version: canary, percent: 30 }";
    let proxy = start(
        "shadow-percent",
        &config(
            blue.addr,
            &[("green", green.addr), ("canary", canary.addr)],
            mirrors,
            "",
        ),
    )
    .await;
    let client = http1_client();
    for _ in 0..1000 {
        assert_eq!(get(&client, &proxy.url("/"), None).await.0, StatusCode::OK);
    }
    settled(&proxy, "green").await;
    settled(&proxy, "canary").await;
    assert_eq!(blue.hits(), 1000);
    assert_eq!(green.hits(), 1000, "100% means every request");
    // 30% of 1000: sd = 14.5; the band is about ±4 sd.
    assert!(
        (240..=360).contains(&canary.hits()),
        "canary got {} of 1000 at 30%",
        canary.hits()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_holds_the_client_and_its_copies_are_bounded() {
    let blue = Upstream::named("blue").await;
    // Holds every request until the gate opens, and answers at once after that. (Copies may
    // reach it pipelined on one connection, so some are read only after the gate opens.)
    let (open, gate) = tokio::sync::watch::channel(false);
    let green = Upstream::gated(gate).await;
    let mirrors = "      - { version: green, percent: 100, max_in_flight: 4 }";
    let proxy = start("shadow-hang", &config(blue.addr, &[("green", green.addr)], mirrors, "")).await;
    let client = http1_client();
    // Every client request completes while the shadow holds every copy it got.
    for _ in 0..40 {
        let (status, body) = get(&client, &proxy.url("/"), None).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
    }
    // The slots are taken as copies are made: 4 in flight, the other 36 dropped, none queued.
    let view = mirror_view(&proxy, "green").await;
    assert_eq!(view["in_flight"], 4, "{view}");
    assert_eq!(
        view["dropped"]["max_in_flight"], 36,
        "past max_in_flight, copies are dropped, not queued: {view}"
    );
    wait_until("the shadow has a copy", || green.hits() >= 1).await;
    assert!(green.hits() <= 4, "{} copies reached the shadow", green.hits());
    open.send_replace(true);
    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 4);
    assert_eq!(green.hits(), 4, "each held copy arrives once");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_resets_changes_nothing_for_the_client() {
    let blue = Upstream::named("blue").await;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let green = crate::failures::hanging_up_upstream(Arc::clone(&received)).await;
    let proxy = start(
        "shadow-reset",
        &config(
            blue.addr,
            &[("green", green)],
            "      - { version: green, percent: 100 }",
            "",
        ),
    )
    .await;
    let client = http1_client();
    for _ in 0..20 {
        let request = Request::post(proxy.url("/")).body(full("x")).expect("request");
        let (status, _, body) = send(&client, request).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
    }
    settled(&proxy, "green").await;
    let (_, stats) = proxy.api("GET", "/api/v1/services/app/stats", None).await;
    let blue_window = &stats["versions"][0]["windows"]["10s"];
    assert_eq!(
        (blue_window["requests"].as_u64(), blue_window["errors"].as_u64()),
        (Some(20), Some(0))
    );
    let sample = "sluice_requests_total{service=\"app\",version=\"green\",role=\"shadow\",code=\"5xx\"} 20";
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let request = Request::get(format!("http://{}/metrics", proxy.admin))
            .body(empty())
            .expect("request");
        let (_, _, text) = send(&http1_client(), request).await;
        if String::from_utf8_lossy(&text).contains(sample) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {sample}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20mb_upload_streams_while_its_oversized_copy_is_dropped() {
    let first_bytes = Arc::new(Notify::new());
    let blue = pattern_checking_upstream(Arc::clone(&first_bytes)).await;
    let green = Upstream::named("green").await;
    let mirrors = "      - { version: green, percent: 100, max_body: 1MiB }";
    let proxy = start(
        "shadow-upload",
        &config(
            blue.addr,
            &[("green", green.addr)],
            mirrors,
            "defaults: { max_request_body: 32MiB }",
        ),
    )
    .await;
    let (status, body) = upload_streamed(proxy.url("/upload"), &first_bytes).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (StatusCode::OK, format!("ok {UPLOAD_TOTAL}"))
    );
    let view = settled(&proxy, "green").await;
    assert_eq!(view["dropped"]["max_body"], 1, "{view}");
    assert_eq!(green.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatches_are_counted_and_sampled() {
    let blue = Upstream::start(|_| async { Response::new(full("primary answer")) }).await;
    let failing =
        Upstream::start(|_| async { Response::builder().status(500).body(full("oops")).expect("response") }).await;
    let different = Upstream::start(|_| async { Response::new(full("other answer")) }).await;
    let same = Upstream::start(|_| async { Response::new(full("primary answer")) }).await;
    let mirrors = "      - { version: failing, percent: 100, compare: status }\n      - { version: different, percent: 100, compare: body }\n      - { version: same, percent: 100, compare: body }";
    let shadows = [
        ("failing", failing.addr),
        ("different", different.addr),
        ("same", same.addr),
    ];
    let proxy = start("shadow-compare", &config(blue.addr, &shadows, mirrors, "")).await;
    let client = http1_client();
    for i in 0..5 {
        let (status, _) = get(&client, &proxy.url(&format!("/item/{i}")), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (failing_view, different_view) = loop {
        let (f, d) = (
            mirror_view(&proxy, "failing").await,
            mirror_view(&proxy, "different").await,
        );
        if f["mismatches"] == 5 && d["mismatches"] == 5 {
            break (f, d);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mismatches never counted: {f} {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    let samples = failing_view["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 5);
    assert_eq!(
        (
            samples[0]["method"].as_str(),
            samples[0]["primary_status"].as_u64(),
            samples[0]["shadow_status"].as_u64()
        ),
        (Some("GET"), Some(200), Some(500))
    );
    assert!(samples.iter().any(|s| s["path"] == "/item/3"), "{samples:?}");
    assert_eq!(different_view["samples"][0]["body_differs"], true);
    let same_view = settled(&proxy, "same").await;
    assert_eq!(
        (same_view["sent"].as_u64(), same_view["mismatches"].as_u64()),
        (Some(5), Some(0)),
        "identical answers are no mismatch"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_stalls_mid_body_gives_its_slot_back() {
    let blue = Upstream::named("blue").await;
    let green = Upstream::start(|_| async {
        let (tx, body) = channel_body(1);
        tokio::spawn(async move {
            let _ = tx.send(Frame::data("partial".into())).await;
            // Hold the sender: the body never ends.
            std::future::pending::<()>().await;
        });
        Response::new(body)
    })
    .await;
    let mirrors = "      - { version: green, percent: 100, max_in_flight: 1 }";
    let extra = "defaults: { timeouts: { response_headers: 300ms } }";
    let proxy = start(
        "shadow-stall",
        &config(blue.addr, &[("green", green.addr)], mirrors, extra),
    )
    .await;
    let client = http1_client();
    assert_eq!(get(&client, &proxy.url("/"), None).await.0, StatusCode::OK);
    // Regression: the stalled body held the only slot forever, so no copy was ever sent again.
    settled(&proxy, "green").await;
    assert_eq!(get(&client, &proxy.url("/"), None).await.0, StatusCode::OK);
    wait_until("the second copy is sent", || green.hits() == 2).await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_never_mirrored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Upstream::start(|mut request| async move {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 16];
                if let Ok(n) = io.read(&mut buf).await {
                    let _ = io.write_all(&buf[..n]).await;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(empty())
            .expect("response")
    })
    .await;
    let green = Upstream::named("green").await;
    let proxy = start(
        "shadow-upgrade",
        &config(
            blue.addr,
            &[("green", green.addr)],
            "      - { version: green, percent: 100 }",
            "",
        ),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await
        .expect("write");
    let mut head = vec![0u8; 12];
    within("101", stream.read_exact(&mut head)).await.expect("read");
    assert_eq!(&head, b"HTTP/1.1 101");
    let view = settled(&proxy, "green").await;
    assert_eq!((view["sent"].as_u64(), green.hits()), (Some(0), 0), "{view}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_pass_off_a_request_as_a_shadow_copy() {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let store = Arc::clone(&seen);
    let blue = Upstream::start(move |request| {
        store.lock().expect("lock").push(request.headers().clone());
        async { Response::new(full("blue")) }
    })
    .await;
    let green = Upstream::named("green").await;
    let proxy = start(
        "shadow-spoof",
        &config(
            blue.addr,
            &[("green", green.addr)],
            "      - { version: green, percent: 0 }",
            "",
        ),
    )
    .await;
    let request = Request::get(proxy.url("/"))
        .header("x-sluice-shadow", "true")
        .body(empty())
        .expect("request");
    let (status, _, _) = send(&http1_client(), request).await;
    assert_eq!(status, StatusCode::OK);
    // Regression: the client's marker reached the primary unchanged.
    assert!(seen.lock().expect("lock")[0].get("x-sluice-shadow").is_none());
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_slow_upload_frees_its_slot_at_once() {
    let blue = Upstream::body_length().await;
    let green = Upstream::named("green").await;
    let mirrors = "      - { version: green, percent: 100, max_body: 1KiB, max_in_flight: 1 }";
    let proxy = start(
        "shadow-slow-upload",
        &config(blue.addr, &[("green", green.addr)], mirrors, ""),
    )
    .await;
    let (tx, body) = channel_body(2);
    let request = Request::post(proxy.url("/upload")).body(body).expect("request");
    let client = http1_client();
    let response = tokio::spawn(async move { send(&client, request).await });
    tx.send(Frame::data(vec![b'x'; 2048].into()))
        .await
        .expect("chunk over max_body");
    // Regression: the slot stayed taken until the client finished its upload, so one slow
    // client stopped mirroring for everyone.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let view = mirror_view(&proxy, "green").await;
        if view["in_flight"] == 0 && view["dropped"]["max_body"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot still held mid-upload: {view}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(get(&http1_client(), &proxy.url("/small"), None).await.0, StatusCode::OK);
    wait_until("another request is mirrored meanwhile", || green.hits() == 1).await;
    tx.send(Frame::data(vec![b'y'; 10].into())).await.expect("last chunk");
    drop(tx);
    let (status, _, body) = within("upload response", response).await.expect("client task");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"got 2058"[..]));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_not_compared() {
    let (dead_primary, dead_shadow) = (dead_addr().await, dead_addr().await);
    let mirrors = "      - { version: green, percent: 100, compare: body }";
    let proxy = start(
        "shadow-both-down",
        &config(dead_primary, &[("green", dead_shadow)], mirrors, ""),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(&http1_client(), &proxy.url("/"), None).await.0,
            StatusCode::BAD_GATEWAY
        );
    }
    let view = settled(&proxy, "green").await;
    // Regression: the proxy's own 502 was compared with a failed copy and counted as a mismatch.
    assert_eq!(
        (view["sent"].as_u64(), view["mismatches"].as_u64()),
        (Some(3), Some(0)),
        "{view}"
    );
    proxy.shutdown().await;
}

/// Copies of many concurrent requests go out pipelined: each reaches the shadow once, intact,
/// and each answer (chunked, empty, or to a HEAD) is read and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_each_arrive_once_and_every_answer_is_read() {
    let blue = Upstream::named("blue").await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = Arc::clone(&seen);
    let green = Upstream::start(move |request| {
        store
            .lock()
            .expect("lock")
            .push(format!("{} {}", request.method(), request.uri()));
        let path = request.uri().path().to_owned();
        async move {
            if path.ends_with("/empty") {
                let mut response = Response::new(full(""));
                *response.status_mut() = StatusCode::NO_CONTENT;
                return response;
            }
            // Two frames and no length: hyper sends it chunked.
            let frames = futures_util::stream::iter([
                Ok::<_, BoxError>(Frame::data(bytes::Bytes::from_static(b"gr"))),
                Ok(Frame::data(bytes::Bytes::from_static(b"een"))),
            ]);
            Response::new(http_body_util::StreamBody::new(frames).boxed())
        }
    })
    .await;
    let mirrors = "      - { version: green, percent: 100, max_in_flight: 1000 }";
    let proxy = start(
        "shadow-pipelined",
        &config(blue.addr, &[("green", green.addr)], mirrors, ""),
    )
    .await;
    let client = http1_client();
    let mut tasks = Vec::new();
    for task in 0..50 {
        let (client, base) = (client.clone(), proxy.url(""));
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let (method, path) = match i % 3 {
                    0 => ("GET", format!("/p/{task}/{i}")),
                    1 => ("HEAD", format!("/p/{task}/{i}")),
                    _ => ("GET", format!("/p/{task}/{i}/empty")),
                };
                let request = Request::builder()
                    .method(method)
                    .uri(format!("{base}{path}"))
                    .body(Body::default())
                    .expect("request");
                let response = client.request(request).await.expect("response");
                assert_eq!(response.status(), StatusCode::OK);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 500, "{view}");
    let shadow_2xx = shadow_answers(&proxy, "2xx").await;
    assert_eq!(shadow_2xx, 500.0, "every answer read as a 2xx");
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    let mut want: Vec<String> = (0..50)
        .flat_map(|task| {
            (0..10).map(move |i| match i % 3 {
                0 => format!("GET /p/{task}/{i}"),
                1 => format!("HEAD /p/{task}/{i}"),
                _ => format!("GET /p/{task}/{i}/empty"),
            })
        })
        .collect();
    want.sort();
    assert_eq!(seen, want, "each copy arrives exactly once");
    assert!(
        green.connections() < 500,
        "connections are reused: {}",
        green.connections()
    );
    proxy.shutdown().await;
}

/// A shadow that answers `Connection: close` and closes has not read the copies pipelined
/// behind that answer: they are sent again on connections of their own, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_closes_after_each_answer_still_gets_every_copy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Upstream::named("blue").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shadow = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = Arc::clone(&seen);
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                // Only the first request is read; whatever follows it is left unread.
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
                store.lock().expect("lock").push(line);
                let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
                // Lingering close: wait for the client to go, so the answer is not reset away.
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mirrors = "      - { version: green, percent: 100, max_in_flight: 1000 }";
    let proxy = start("shadow-closes", &config(blue.addr, &[("green", shadow)], mirrors, "")).await;
    let client = http1_client();
    let mut tasks = Vec::new();
    for task in 0..40 {
        let (client, url) = (client.clone(), proxy.url(&format!("/c/{task}")));
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let (status, _) = get(&client, &format!("{url}/{i}"), None).await;
                assert_eq!(status, StatusCode::OK);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 200, "{view}");
    let shadow_2xx = shadow_answers(&proxy, "2xx").await;
    assert_eq!(shadow_2xx, 200.0, "no copy failed");
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    let mut want: Vec<String> = (0..40)
        .flat_map(|task| (0..5).map(move |i| format!("GET /c/{task}/{i} HTTP/1.1")))
        .collect();
    want.sort();
    assert_eq!(seen, want, "each copy arrives exactly once");
    server.abort();
    proxy.shutdown().await;
}

/// A shadow that closes a connection without answering has not (as far as anyone can tell)
/// acted on the copies it held: each is sent again, once. One that never answers gets each
/// copy exactly twice, which then counts as a failure (502), never a third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_shadow_closed_on_unanswered_is_sent_again_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// A shadow that reads each request head, records its line, and closes without answering
    /// on the first `drops` connections; later ones answer 200 (and close).
    async fn shadow(
        drops: usize,
    ) -> (
        std::net::SocketAddr,
        Arc<Mutex<Vec<String>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let store = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            for accepted in 0.. {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_owned();
                store.lock().expect("lock").push(line);
                if accepted >= drops {
                    let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
                    let _ = stream.write_all(answer).await;
                }
                let _ = stream.shutdown().await;
            }
        });
        (addr, seen, server)
    }

    // The first connection is closed unanswered; the copy's second attempt is answered.
    let blue = Upstream::named("blue").await;
    let (addr, seen, server) = shadow(1).await;
    let mirrors = "      - { version: green, percent: 100 }";
    let proxy = start("shadow-resend", &config(blue.addr, &[("green", addr)], mirrors, "")).await;
    let (status, _) = get(&http1_client(), &proxy.url("/once"), None).await;
    assert_eq!(status, StatusCode::OK);
    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 1, "{view}");
    assert_eq!(
        shadow_answers(&proxy, "2xx").await,
        1.0,
        "the second attempt is answered"
    );
    assert_eq!(*seen.lock().expect("lock"), ["GET /once HTTP/1.1"; 2]);
    server.abort();
    proxy.shutdown().await;

    // A shadow that never answers gets the copy twice, and it counts as a 502.
    let (addr, seen, server) = shadow(usize::MAX).await;
    let proxy = start(
        "shadow-resend-never",
        &config(blue.addr, &[("green", addr)], mirrors, ""),
    )
    .await;
    let (status, _) = get(&http1_client(), &proxy.url("/never"), None).await;
    assert_eq!(status, StatusCode::OK, "the client never sees the shadow's failure");
    let view = settled(&proxy, "green").await;
    assert_eq!(view["sent"], 1, "{view}");
    assert_eq!(shadow_answers(&proxy, "5xx").await, 1.0);
    assert_eq!(
        *seen.lock().expect("lock"),
        ["GET /never HTTP/1.1"; 2],
        "twice, never a third time"
    );
    server.abort();
    proxy.shutdown().await;
}

/// A chunked upload that ends with a trailer section is copied to the shadow. (Found by review:
/// the tee finished its copy only at the body's end or its declared length, both upstream
/// clients stop polling at the trailers frame, and the mirror counted the copy `incomplete`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_with_trailers_is_mirrored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let blue = Upstream::named("blue").await;
    let (green, copies) = recording_upstream("green").await;
    let proxy = start(
        "review-shadow-trailers",
        &config(
            blue.addr,
            &[("green", green.addr)],
            "      - { version: green, percent: 100 }",
            "",
        ),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              2\r\nok\r\n0\r\nX-Checksum: 42\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    within("primary answer", stream.read_to_end(&mut answer))
        .await
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Wait for the mirror to decide: sent, or dropped for any reason.
    let view = mirror_until(&proxy, "green", "the mirror decides", |view| {
        let dropped: u64 = view["dropped"]
            .as_object()
            .map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        view["sent"].as_u64().unwrap_or(0) + dropped > 0 && view["in_flight"] == 0
    })
    .await;
    assert_eq!(view["sent"], 1, "the copy with trailers was not sent: {view}");
    wait_until("the shadow receives the copy", || {
        copies.lock().expect("lock").len() == 1
    })
    .await;
    assert_eq!(&copies.lock().expect("lock")[0].2[..], b"ok");
    proxy.shutdown().await;
}
