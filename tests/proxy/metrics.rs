//! Metrics on real traffic: exact counts per version, error kinds, a real Prometheus parser,
//! latency percentiles against a known injected delay, and `error` for clients that leave.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::support::*;

/// Scrapes `/metrics`; returns the text and its samples as `name{labels} -> value`.
async fn scrape(proxy: &Controlled) -> (String, HashMap<String, f64>) {
    let client = http1_client();
    let request = http::Request::get(format!("http://{}/metrics", proxy.admin))
        .body(empty())
        .expect("request");
    let (status, headers, body) = send(&client, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("numeric sample")))
        .collect();
    (text, samples)
}

/// Polls `/metrics` until `sample` has exactly `value`.
async fn wait_for_sample(proxy: &Controlled, sample: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (text, samples) = scrape(proxy).await;
        if samples.get(sample) == Some(&value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config_with_versions(versions: &[(&str, std::net::SocketAddr)], routing: &str, extra: &str) -> String {
    let list: String = versions
        .iter()
        .map(|(name, addr)| format!("      {name}: {{ endpoints: [{addr}] }}\n"))
        .collect();
    format!("listeners: [{{ name: t, address: 127.0.0.1:0 }}]\n{extra}\nservices:\n  - name: app\n    versions:\n{list}    routing:\n{routing}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_exactly_per_version() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("metrics-counts");
    let path = dir.join("sluice.yaml");
    let routing = "      weights: { blue: 1 }\n      rules: [{ match: { header: { name: x-v, value: canary } }, version: canary }]";
    write_config(
        &path,
        &config_with_versions(&[("blue", blue.addr), ("canary", canary.addr)], routing, ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    for i in 0..100 {
        let mut request = http::Request::get(proxy.url("/"));
        if i % 4 == 0 {
            request = request.header("x-v", "canary");
        }
        let (status, _, _) = send(&client, request.body(empty()).expect("request")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let labels = |v: &str, code: &str| {
        format!("sluice_requests_total{{service=\"app\",version=\"{v}\",role=\"primary\",code=\"{code}\"}}")
    };
    wait_for_sample(&proxy, &labels("blue", "2xx"), 75.0).await;
    wait_for_sample(&proxy, &labels("canary", "2xx"), 25.0).await;
    let (_, samples) = scrape(&proxy).await;
    for code in ["1xx", "3xx", "4xx", "5xx", "error"] {
        assert_eq!(samples[&labels("blue", code)], 0.0, "{code}");
    }
    assert_eq!(
        samples["sluice_inflight_requests{service=\"app\",version=\"blue\"}"],
        0.0
    );
    assert_eq!(samples["sluice_route_weight{service=\"app\",version=\"blue\"}"], 100.0);
    assert_eq!(samples["sluice_route_weight{service=\"app\",version=\"canary\"}"], 0.0);
    let count = "sluice_request_duration_seconds_count{service=\"app\",version=\"blue\",role=\"primary\"}";
    assert_eq!(samples[count], 75.0, "the histogram counts every request too");
    assert!(samples["sluice_routing_table_revision"] >= 1.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_kind() {
    let failing =
        Upstream::start(|_| async { Response::builder().status(500).body(full("boom")).expect("response") }).await;
    let missing =
        Upstream::start(|_| async { Response::builder().status(404).body(full("no")).expect("response") }).await;
    let release = Arc::new(Notify::new());
    let slow = Upstream::held(Arc::clone(&release)).await;
    let dead = dead_addr().await;
    let dir = temp_dir("metrics-errors");
    let path = dir.join("sluice.yaml");
    let rule = |v: &str| format!("{{ match: {{ header: {{ name: x-v, value: {v} }} }}, version: {v} }}");
    let routing = format!(
        "      weights: {{ missing: 1 }}\n      rules: [{}, {}, {}]",
        rule("failing"),
        rule("refused"),
        rule("slow")
    );
    let versions = [
        ("failing", failing.addr),
        ("missing", missing.addr),
        ("refused", dead),
        ("slow", slow.addr),
    ];
    write_config(
        &path,
        &config_with_versions(
            &versions,
            &routing,
            "defaults: { timeouts: { response_headers: 300ms } }",
        ),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    for (version, times, want) in [
        ("failing", 3, 500),
        ("refused", 2, 502),
        ("slow", 1, 504),
        ("missing", 4, 404),
    ] {
        for _ in 0..times {
            let request = http::Request::get(proxy.url("/"))
                .header("x-v", version)
                .body(empty())
                .expect("request");
            let (status, _, _) = send(&client, request).await;
            assert_eq!(status.as_u16(), want, "{version}");
        }
    }
    release.notify_waiters();
    let requests = |v: &str, code: &str| {
        format!("sluice_requests_total{{service=\"app\",version=\"{v}\",role=\"primary\",code=\"{code}\"}}")
    };
    let upstream = |v: &str, kind: &str| {
        format!("sluice_upstream_errors_total{{service=\"app\",version=\"{v}\",kind=\"{kind}\"}}")
    };
    wait_for_sample(&proxy, &requests("failing", "5xx"), 3.0).await;
    wait_for_sample(&proxy, &requests("missing", "4xx"), 4.0).await;
    let (_, samples) = scrape(&proxy).await;
    let expected = [
        (requests("refused", "5xx"), 2.0),
        (requests("slow", "5xx"), 1.0),
        (upstream("failing", "status"), 3.0),
        (upstream("refused", "connect"), 2.0),
        (upstream("slow", "timeout"), 1.0),
        (upstream("missing", "status"), 0.0),
        (upstream("failing", "connect"), 0.0),
    ];
    for (sample, value) in expected {
        assert_eq!(samples.get(&sample), Some(&value), "{sample}");
    }
    // Guardrail errors: 5xx, connect and timeout count; 4xx do not.
    let (_, stats) = proxy.api("GET", "/api/v1/services/app/stats", None).await;
    let window = |v: &str| {
        stats["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|x| x["version"] == v)
            .expect("version")["windows"]["10s"]
            .clone()
    };
    assert_eq!(
        (
            window("failing")["requests"].as_u64(),
            window("failing")["errors"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(
        (window("refused")["errors"].as_u64(), window("slow")["errors"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (
            window("missing")["requests"].as_u64(),
            window("missing")["errors"].as_u64()
        ),
        (Some(4), Some(0))
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_parses_with_the_official_prometheus_parser() {
    let blue = Upstream::named("blue").await;
    let dir = temp_dir("metrics-parse");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &config_with_versions(&[("blue", blue.addr)], "      weights: { blue: 1 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    for _ in 0..5 {
        get(&http1_client(), &proxy.url("/"), None).await;
    }
    let (text, _) = scrape(&proxy).await;
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it with prometheus_client)");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("parser");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    for family in [
        "sluice_requests counter 6",
        "sluice_request_duration_seconds histogram 17",
        "sluice_upstream_errors counter 4",
        "sluice_inflight_requests gauge 1",
        "sluice_route_weight gauge 1",
        "sluice_endpoint_healthy gauge 1",
        "sluice_config_reloads counter 2",
        "sluice_routing_table_revision gauge 1",
    ] {
        assert!(stdout.lines().any(|l| l == family), "missing {family:?} in:\n{stdout}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_percentiles_match_an_injected_latency() {
    const DELAY: Duration = Duration::from_millis(100);
    let slow = Upstream::start(|_| async {
        tokio::time::sleep(DELAY).await;
        Response::new(full("slow"))
    })
    .await;
    let dir = temp_dir("metrics-latency");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &config_with_versions(&[("slow", slow.addr)], "      weights: { slow: 1 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    // Every latency the proxy records lies inside [began, all recorded]: that span bounds the
    // percentiles from above however loaded the machine is, the injected delay from below.
    let began = std::time::Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move { get(&http1_client(), &url, None).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    wait_for_sample(
        &proxy,
        "sluice_requests_total{service=\"app\",version=\"slow\",role=\"primary\",code=\"2xx\"}",
        20.0,
    )
    .await;
    let span_ms = began.elapsed().as_secs_f64() * 1000.0;
    let (_, stats) = proxy.api("GET", "/api/v1/services/app/stats", None).await;
    let window = &stats["versions"][0]["windows"]["10s"];
    assert_eq!(window["requests"].as_u64(), Some(20), "{stats}");
    assert_eq!(window["error_rate"].as_f64(), Some(0.0));
    for p in ["p50_ms", "p90_ms", "p99_ms", "p999_ms"] {
        let ms = window[p].as_f64().expect("percentile");
        // Bucket midpoints are within 0.8% of the true value.
        let (low, high) = (100.0 * 0.992, span_ms * 1.008);
        assert!(
            (low..=high).contains(&ms),
            "{p} = {ms} ms, outside [{low}, {high}] for a 100 ms upstream: {stats}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_counts_as_error() {
    let release = Arc::new(Notify::new());
    let slow = Upstream::held(Arc::clone(&release)).await;
    let dir = temp_dir("metrics-gone");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &config_with_versions(&[("slow", slow.addr)], "      weights: { slow: 1 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    wait_until("the upstream holds the request", || slow.hits() == 1).await;
    drop(stream);
    let sample = "sluice_requests_total{service=\"app\",version=\"slow\",role=\"primary\",code=\"error\"}";
    wait_for_sample(&proxy, sample, 1.0).await;
    release.notify_waiters();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary-body").await);
    let dir = temp_dir("metrics-access-log");
    let (path, log) = (dir.join("sluice.yaml"), dir.join("access.log"));
    let routing = "      weights: { blue: 1 }\n      rules: [{ match: { header: { name: x-v, value: canary } }, version: canary }]";
    let extra = format!("access_log: {{ path: {} }}", log.display());
    write_config(
        &path,
        &config_with_versions(&[("blue", blue.addr), ("canary", canary.addr)], routing, &extra),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    get(&client, &proxy.url("/"), None).await;
    let request = http::Request::get(proxy.url("/"))
        .header("x-v", "canary")
        .body(empty())
        .expect("request");
    send(&client, request).await;
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("two access log lines are written", || read().lines().count() == 2).await;
    let lines: Vec<serde_json::Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let canary_line = lines.iter().find(|l| l["version"] == "canary").expect("a canary line");
    assert_eq!(canary_line["service"], "app");
    assert_eq!(canary_line["role"], "primary");
    assert_eq!(canary_line["status"], 200);
    assert_eq!(canary_line["bytes"], 11, "the body was \"canary-body\"");
    assert!(canary_line["latency_ms"].as_f64().expect("latency") > 0.0);
    assert!(canary_line["time"].as_str().expect("time").ends_with('Z'));
    assert!(lines.iter().any(|l| l["version"] == "blue" && l["bytes"] == 4));
    proxy.shutdown().await;
}
