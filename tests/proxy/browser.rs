//! Headless Chromium for the dashboard tests: one-shot runs under virtual time (`--dump-dom`,
//! `--screenshot`), and [`Browser`], a DevTools-protocol session in real time for typing,
//! clicking and capturing. Chromium is required: `apt-get update && apt-get install -y
//! chromium` (`.ci/run` does it); without it these fail, saying so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::DEADLINE;

/// Virtual time the page runs for before Chromium dumps or captures it: a few 1 s polls,
/// without the test waiting for them in real time.
pub const VIRTUAL_TIME_MS: u32 = 5000;

/// What to do without Chromium.
const INSTALL: &str = "The dashboard tests render the page in headless Chromium: install it with \
                       `apt-get update && apt-get install -y chromium`";

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
        .unwrap_or_else(|e| panic!("cannot run `chromium` ({e}). {INSTALL}"));
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
pub async fn dump_dom(dir: PathBuf, url: String) -> String {
    let output = tokio::task::spawn_blocking(move || chromium(&dir, &url, &["--dump-dom"]))
        .await
        .expect("chromium task");
    String::from_utf8(output.stdout).expect("DOM is UTF-8")
}

/// A PNG screenshot of the page at 1280×900 after [`VIRTUAL_TIME_MS`] of virtual time.
pub async fn screenshot(dir: PathBuf, url: String) -> Vec<u8> {
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
pub struct Browser {
    child: std::process::Child,
    commands: std::process::ChildStdin,
    messages: std::sync::mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    /// Opens `url` in a new headless Chromium with its profile under `dir`.
    pub fn open(dir: &Path, url: &str) -> Browser {
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run --hide-scrollbars \
             --user-data-dir={} --remote-debugging-pipe 3<&0 4>&1 1>/dev/null 2>/dev/null",
            dir.join("profile").display()
        );
        assert!(
            Command::new("sh")
                .args(["-c", "command -v chromium"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "`chromium` is not installed. {INSTALL}"
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
    pub fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
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

    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("chromium refused {method}: {e}"))
    }

    /// Evaluates `expression` in the page until it gives a truthy value, and returns that value.
    /// Retries while the page is still loading (its execution context can change under a call).
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        self.wait_for_up_to(what, expression, DEADLINE)
    }

    /// [`Browser::wait_for`], failing after `limit`.
    pub fn wait_for_up_to(&mut self, what: &str, expression: &str, limit: Duration) -> Value {
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
                start.elapsed() < limit,
                "timed out waiting until the page shows {what}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `statement` in the page.
    pub fn run(&mut self, statement: &str) {
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

impl Browser {
    /// Lays the page out in a `width`×`height` viewport.
    pub fn viewport(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// A PNG of the viewport as it is now.
    pub fn capture(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(shot["data"].as_str().expect("base64 data"))
    }
}

/// Decodes standard base64 (padding optional), as the DevTools protocol sends binary data.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend(n.to_be_bytes()[1..chunk.len()].iter());
    }
    out
}

#[test]
fn base64_decodes() {
    for (text, want) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(text), want.as_bytes(), "{text}");
    }
}
