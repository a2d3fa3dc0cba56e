//! The dashboard (`GET /` on the admin listener), rendered by headless Chromium against a live
//! proxy: the page's script must fetch the API, keep samples and draw them.
//!
//! Chromium is required: `apt-get update && apt-get install -y chromium` (`.ci/run` does it).
//! Its virtual time runs the page's 1 s polls without the test waiting for them in real time;
//! the token form and the rollout buttons are driven over the DevTools protocol ([`Browser`]).
//! `SLUICE_DASHBOARD_PNG=PATH` keeps the screenshot (`docs/dashboard.png` is one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

/// Pause between one load loop's requests.
const PACE: Duration = Duration::from_millis(2);
/// Virtual time the page runs for before Chromium dumps or captures it: a few polls.
const VIRTUAL_TIME_MS: u32 = 5000;

/// A config with `blue` and `canary` (blue 100%) and a two-step rollout that holds at step 1.
fn config(blue: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      canary: {{ endpoints: [{canary}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps:\n        - {{ weight: 30, hold: 10m }}\n        - {{ weight: 100 }}\n      guardrails: {{ min_requests: 20, max_error_rate: 0.5 }}\n"
    )
}

/// Runs headless Chromium on `url` with `args`, in its own profile under `dir`, and returns its
/// output. Fails the test, saying how to install it, when Chromium is missing.
fn chromium(dir: &Path, url: &str, args: &[&str]) -> Output {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
        ])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `chromium` ({e}). The dashboard tests render the page in headless \
                 Chromium: install it with `apt-get update && apt-get install -y chromium`"
            )
        });
    let start = Instant::now();
    while child.try_wait().expect("wait for chromium").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let output = child.wait_with_output().expect("chromium output");
            panic!(
                "chromium did not finish within {DEADLINE:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("chromium output");
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The page's DOM after its script ran for [`VIRTUAL_TIME_MS`] of virtual time.
async fn dump_dom(dir: PathBuf, url: String) -> String {
    let output = tokio::task::spawn_blocking(move || chromium(&dir, &url, &["--dump-dom"]))
        .await
        .expect("chromium task");
    String::from_utf8(output.stdout).expect("DOM is UTF-8")
}

/// A PNG screenshot of the page at 1280×900 after [`VIRTUAL_TIME_MS`] of virtual time.
async fn screenshot(dir: PathBuf, url: String) -> Vec<u8> {
    let png = dir.join("dashboard.png");
    let arg = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || chromium(&dir, &url, &[&arg, "--window-size=1280,900"]))
        .await
        .expect("chromium task");
    std::fs::read(&png).expect("the screenshot file")
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// commands in on fd 3, answers and events out on fd 4, each a JSON text ended by a NUL byte;
/// `sh` maps them onto the child's stdin and stdout). Real time, unlike [`dump_dom`]: used to
/// type and click.
struct Browser {
    child: std::process::Child,
    commands: std::process::ChildStdin,
    messages: std::sync::mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    /// Opens `url` in a new headless Chromium with its profile under `dir`.
    fn open(dir: &Path, url: &str) -> Browser {
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
             --user-data-dir={} --remote-debugging-pipe 3<&0 4>&1 1>/dev/null 2>/dev/null",
            dir.join("profile").display()
        );
        assert!(
            Command::new("sh")
                .args(["-c", "command -v chromium"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "`chromium` is not installed. The dashboard tests render the page in headless \
             Chromium: install it with `apt-get update && apt-get install -y chromium`"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let commands = child.stdin.take().expect("stdin");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, messages) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut message = Vec::new();
            while std::io::BufRead::read_until(&mut out, 0, &mut message).is_ok_and(|n| n > 0) {
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            commands,
            messages,
            next_id: 0,
            session: None,
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().map(str::to_owned);
        browser
    }

    /// Sends one command and waits for its answer: `Ok(result)` or `Err(error message)`.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        use std::io::Write;
        self.next_id += 1;
        let mut command = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(session) = &self.session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&command).expect("json");
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if message["id"] == self.next_id {
                return match message.get("error") {
                    Some(error) => Err(error["message"].as_str().unwrap_or("?").to_owned()),
                    None => Ok(message["result"].clone()),
                };
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("chromium refused {method}: {e}"))
    }

    /// Evaluates `expression` in the page until it gives a truthy value, and returns that value.
    /// Retries while the page is still loading (its execution context can change under a call).
    fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            let answer = self.try_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            );
            if let Ok(result) = answer {
                if let Some(exception) = result.get("exceptionDetails") {
                    last = exception.clone();
                } else {
                    let value = result["result"]["value"].clone();
                    if !(value.is_null() || value == false || value == "") {
                        return value;
                    }
                    last = value;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting until the page shows {what}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `statement` in the page.
    fn run(&mut self, statement: &str) {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": statement, "returnByValue": true }),
        );
        assert!(result.get("exceptionDetails").is_none(), "{statement}: {result}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    let png = screenshot(dir.clone(), url).await;
    if let Some(keep) = std::env::var_os("SLUICE_DASHBOARD_PNG") {
        std::fs::write(keep, &png).expect("keep the screenshot");
    }
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
