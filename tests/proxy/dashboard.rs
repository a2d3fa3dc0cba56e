//! The dashboard (`GET /` on the admin listener), rendered by headless Chromium against a live
//! proxy: the page's script must fetch the API, keep samples and draw them.
//!
//! Chromium is required (see [`crate::browser`]). Its virtual time runs the page's 1 s polls
//! without the test waiting for them in real time; the token form and the rollout buttons are
//! driven in real time over the DevTools protocol ([`Browser`]).
//!
//! `docs/dashboard.png` is made by the ignored `docs_screenshot`:
//! `cargo test --test proxy docs_screenshot -- --ignored` (about a minute).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::browser::{dump_dom, screenshot, Browser};
use crate::support::*;

/// Pause between one load loop's requests.
const PACE: Duration = Duration::from_millis(2);

/// A config with `blue` and `canary` (blue 100%) and a two-step rollout that holds at step 1.
fn config(blue: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      canary: {{ endpoints: [{canary}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps:\n        - {{ weight: 30, hold: 10m }}\n        - {{ weight: 100 }}\n      guardrails: {{ min_requests: 20, max_error_rate: 0.5 }}\n"
    )
}

/// The `<figure data-chart="{kind}">` element of `dom`.
fn chart<'a>(dom: &'a str, kind: &str) -> &'a str {
    let start = dom
        .find(&format!("data-chart=\"{kind}\""))
        .unwrap_or_else(|| panic!("no {kind} chart in the page:\n{dom}"));
    let end = dom[start..].find("</figure>").expect("figure end");
    &dom[start..start + end]
}

/// The `data-points` count of the first line of `series` in `chart`.
fn points(chart: &str, series: &str) -> usize {
    let at = chart
        .find(&format!("data-series=\"{series}\" data-points=\""))
        .unwrap_or_else(|| panic!("no line for {series}:\n{chart}"));
    let rest = &chart[at..];
    let rest = &rest[rest.find("data-points=\"").expect("points") + "data-points=\"".len()..];
    rest[..rest.find('"').expect("quote")].parse().expect("a count")
}

async fn wait_for_traffic(p: &Controlled, version: &str) {
    let start = tokio::time::Instant::now();
    loop {
        let (_, stats) = p.api("GET", "/api/v1/services/app/stats", None).await;
        let served = stats["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["version"] == version)
            .map_or(0, |v| v["windows"]["1s"]["requests"].as_u64().unwrap_or(0));
        if served > 0 {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {version} traffic: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_versions_rollout_charts_and_history() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("dashboard");
    let path = dir.join("sluice.yaml");
    write_config(&path, &config(blue.addr, canary.addr));
    let p = controlled(&path, Options::default()).await;
    let (status, body) = p.api("POST", "/api/v1/services/app/rollout/start", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let load = Load::start(p.url("/"), 2, PACE);
    wait_for_traffic(&p, "blue").await;
    wait_for_traffic(&p, "canary").await;

    let url = format!("http://{}/", p.admin);
    let dom = dump_dom(dir.clone(), url.clone()).await;
    assert!(dom.contains("data-service=\"app\""), "the service's card:\n{dom}");
    for version in ["blue", "canary"] {
        assert!(
            dom.contains(&format!("<tr data-version=\"{version}\">")),
            "{version}'s row:\n{dom}"
        );
    }
    assert!(
        dom.contains("data-state=\"progressing\""),
        "the rollout's state:\n{dom}"
    );
    assert!(dom.contains("step 1 of 2: weight 30, hold 10m"), "the step:\n{dom}");
    assert!(dom.contains("blue → canary"), "baseline and canary:\n{dom}");
    assert!(dom.contains("30%"), "the canary's weight:\n{dom}");
    for command in ["start", "pause", "resume", "promote", "abort"] {
        assert!(
            dom.contains(&format!("data-command=\"{command}\"")),
            "the {command} button"
        );
    }
    // Each poll adds a sample: after a few seconds of virtual time every version has a line
    // of several points in each live chart.
    for kind in ["rps", "errors", "p99"] {
        let chart = chart(&dom, kind);
        for version in ["blue", "canary"] {
            let n = points(chart, version);
            assert!(n >= 3, "{kind} chart: {version} has {n} points:\n{chart}");
        }
    }
    let weights = chart(&dom, "weights");
    assert!(
        points(weights, "canary") >= 2,
        "weights over time from the history:\n{weights}"
    );
    assert!(
        dom.contains("rollout start") && dom.contains("step 1/2: weight 30, hold 10m"),
        "the history lists the start:\n{dom}"
    );
    assert!(
        dom.contains("id=\"status\">updated "),
        "the last poll succeeded:\n{dom}"
    );

    let png = screenshot(dir, url).await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page with content, not a blank one: {} bytes",
        png.len()
    );
    load.stop().await;
    p.shutdown().await;
}

/// Types the token into the page's form, then clicks `pause` (refused: idle), `start`,
/// `pause` and `abort` (confirmed), checking the message each leaves. Returns the messages.
fn drive_rollout_buttons(dir: &Path, url: &str) -> Vec<String> {
    let mut browser = Browser::open(dir, url);
    browser.wait_for(
        "the token form",
        "!document.getElementById('login').hidden && document.activeElement.id === 'token'",
    );
    browser.run(
        "document.getElementById('token').value = 's3cret'; \
         document.querySelector('#login button').click()",
    );
    browser.wait_for(
        "the service once the token is given",
        "document.querySelector('[data-service=\"app\"] [data-state=\"idle\"]') !== null",
    );
    assert_eq!(
        browser.wait_for("the form hidden again", "document.getElementById('login').hidden"),
        true
    );
    // `promote` and `abort` ask first; the test says yes.
    browser.run("window.confirm = () => true");
    let mut log = Vec::new();
    for (command, want) in [
        ("pause", "pause refused: 409 "),
        ("start", "start: done, revision 2, rollout progressing"),
        ("pause", "pause: done, revision 3, rollout paused"),
        ("abort", "abort: done, revision 4, rollout aborted"),
    ] {
        browser.run(&format!(
            "document.querySelector('[data-service=\"app\"] .message').textContent = ''; \
             document.querySelector('[data-service=\"app\"] [data-command=\"{command}\"]').click()"
        ));
        let shown = browser.wait_for(
            &format!("the answer to {command}"),
            "(() => { const m = document.querySelector('[data-service=\"app\"] .message').textContent; \
             return /done|refused/.test(m) ? m : null; })()",
        );
        let shown = shown.as_str().expect("text").to_owned();
        assert!(shown.starts_with(want), "after {command}: {shown:?}, want {want:?}");
        log.push(shown);
    }
    browser.wait_for(
        "the aborted state",
        "document.querySelector('[data-service=\"app\"] [data-state=\"aborted\"]') !== null",
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_needs_no_token_but_its_api_calls_do() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("dashboard-token");
    let path = dir.join("sluice.yaml");
    write_config(&path, &config(blue.addr, canary.addr));
    let p = controlled(
        &path,
        Options {
            token: Some("s3cret"),
            watch: false,
        },
    )
    .await;
    let client = http1_client();
    let page = http::Request::get(format!("http://{}/", p.admin))
        .body(empty())
        .expect("request");
    let (status, headers, body) = send(&client, page).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().expect("ascii");
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(String::from_utf8_lossy(&body).contains("<title>sluice</title>"));

    let api = http::Request::get(format!("http://{}/api/v1/services", p.admin))
        .body(empty())
        .expect("request");
    assert_eq!(send(&client, api).await.0, StatusCode::UNAUTHORIZED);
    let post = http::Request::post(format!("http://{}/", p.admin))
        .body(empty())
        .expect("request");
    assert_eq!(send(&client, post).await.0, StatusCode::METHOD_NOT_ALLOWED);

    // In the browser, the 401 brings up the token form and no data; with the token the page
    // shows the service, and its buttons drive the rollout and show the API's refusals.
    let dom = dump_dom(dir.clone(), format!("http://{}/", p.admin)).await;
    assert!(
        dom.contains("<form class=\"login\" id=\"login\">"),
        "the form shows:\n{dom}"
    );
    assert!(dom.contains("answered 401 (missing or wrong bearer token)"), "{dom}");
    assert!(!dom.contains("data-service="), "no data without the token:\n{dom}");
    let url = format!("http://{}/", p.admin);
    let log = tokio::task::spawn_blocking(move || drive_rollout_buttons(&dir, &url))
        .await
        .expect("browser");
    let (_, body) = p.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(body["service"]["rollout"]["state"], "aborted", "{log:#?}");
    p.shutdown().await;
}

/// An upstream answering after a few milliseconds, with 500s once `failing` is set.
async fn app(failing: Arc<AtomicBool>, base_ms: u64) -> Upstream {
    Upstream::start(move |_| {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(base_ms + fastrand::u64(0..base_ms))).await;
            let status = if failing { 500 } else { 200 };
            http::Response::builder()
                .status(status)
                .body(full("app"))
                .expect("response")
        }
    })
    .await
}

/// Makes `docs/dashboard.png`: the page open in real time while a canary goes through two
/// steps, starts failing in the third and is rolled back; captured once the charts hold most of
/// a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png in about a minute; run with --ignored"]
async fn docs_screenshot() {
    let failing = Arc::new(AtomicBool::new(false));
    let (blue, canary) = (
        app(Arc::new(AtomicBool::new(false)), 4).await,
        app(Arc::clone(&failing), 3).await,
    );
    let dir = temp_dir("dashboard-docs");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &format!(
            "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: checkout\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{}] }}\n      canary: {{ endpoints: [{}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps:\n        - {{ weight: 10, hold: 8s }}\n        - {{ weight: 25, hold: 8s }}\n        - {{ weight: 50, hold: 2m }}\n        - {{ weight: 100 }}\n      guardrails: {{ window: 10s, min_requests: 20, max_error_rate: 0.02, max_p99_ratio: 3 }}\n",
            blue.addr, canary.addr
        ),
    );
    let p = controlled(&path, Options::default()).await;
    let load = Load::start(p.url("/"), 2, Duration::from_millis(10));
    let url = format!("http://{}/", p.admin);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let browser = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::open(&dir, &url);
        browser.viewport(1280, 1000);
        browser.wait_for(
            "some samples before the rollout",
            "document.querySelector('[data-chart=\"rps\"] polyline[data-series=\"blue\"]')?.dataset.points >= 8",
        );
        let _ = tx.send(());
        browser.wait_for_up_to(
            "the rollback, and most of a minute of samples",
            "document.querySelector('[data-state=\"rolled_back\"]') && \
             document.querySelector('[data-chart=\"rps\"] polyline[data-series=\"blue\"]').dataset.points >= 50",
            Duration::from_secs(100),
        );
        browser.capture()
    });
    rx.await.expect("the browser started");
    let (status, body) = p.api("POST", "/api/v1/services/checkout/rollout/start", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start = tokio::time::Instant::now();
    loop {
        let (_, body) = p.api("GET", "/api/v1/services/checkout", None).await;
        if body["service"]["rollout"]["step"] == 3 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "step 3: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Some healthy traffic at 50%, then the canary breaks.
    let served = load.served_by("canary");
    wait_until("the canary served more at 50%", || {
        load.served_by("canary") > served + 300
    })
    .await;
    failing.store(true, Ordering::SeqCst);
    let png = tokio::time::timeout(Duration::from_secs(120), browser)
        .await
        .expect("the page in time")
        .expect("browser");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::write(&target, &png).expect("write docs/dashboard.png");
    load.stop().await;
    p.shutdown().await;
}
