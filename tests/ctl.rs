//! `sluice ctl` against the real control plane and admin API on a real socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use sluice::admin::Admin;
use sluice::control::Control;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const CONFIG: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]
services:
  - name: app
    versions:
      blue: { endpoints: [127.0.0.1:9001, 127.0.0.1:9002] }
      canary: { endpoints: [127.0.0.1:9101] }
    routing: { weights: { blue: 90, canary: 10 } }
  - name: api
    versions:
      v1: { endpoints: [127.0.0.1:9201] }
    routing: { weights: { v1: 100 } }
";

/// The control plane and admin API, served by a runtime of their own.
struct Server {
    control: Arc<Control>,
    admin: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _runtime: tokio::runtime::Runtime,
}

/// A fresh, empty directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Serves `yaml` (read from `path`, for reloads, when given) with an optional admin token.
fn start(yaml: &str, path: Option<PathBuf>, token: Option<&str>) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let config = sluice::config::parse(yaml).expect("test config is valid");
    let control = Arc::new(Control::start(config, Some(yaml.to_owned()), path).expect("control"));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    let api = Arc::new(Admin::new(Arc::clone(&control), token.map(str::to_owned)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(sluice::admin::serve(listener, api, async move {
        let _ = stopped.await;
    }));
    drop(_guard);
    Server {
        control,
        admin,
        _stop: stop,
        _runtime: runtime,
    }
}

impl Server {
    /// Runs `sluice ctl --admin <this server> ARGS...`.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&format!("http://{}", self.admin), args)
    }

    /// The service's live weights, in version order.
    fn weights(&self, service: &str) -> Vec<(String, u64)> {
        let table = self.control.routing().load();
        let service = table.service(service).expect("service");
        service.weights().map(|(v, w)| (v.to_owned(), w)).collect()
    }
}

fn ctl_at(admin: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--admin", admin])
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluice ctl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "ctl failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

/// The table row whose cells start with `first` (split on runs of spaces).
fn row<'a>(table: &'a str, first: &[&str]) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.starts_with(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect()
}

#[test]
fn status_prints_one_row_per_version() {
    let server = start(CONFIG, None, None);
    let all = ok(&server.ctl(&["status"]));
    let header = all.lines().nth(1).expect("header line");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["SERVICE", "VERSION", "WEIGHT", "SHARE", "ENDPOINTS"]
    );
    assert!(all.starts_with("revision 1\n"), "{all}");
    assert_eq!(
        row(&all, &["app", "blue"]),
        ["app", "blue", "90", "90.0%", "127.0.0.1:9001,", "127.0.0.1:9002"]
    );
    assert_eq!(
        row(&all, &["app", "canary"]),
        ["app", "canary", "10", "10.0%", "127.0.0.1:9101"]
    );
    assert_eq!(
        row(&all, &["api", "v1"]),
        ["api", "v1", "100", "100.0%", "127.0.0.1:9201"]
    );
    let one = ok(&server.ctl(&["status", "api"]));
    assert!(!one.contains("app"), "{one}");
    let line = all.lines().find(|l| l.starts_with("app ")).expect("app row");
    for (heading, cell) in [("VERSION", "blue"), ("WEIGHT", "90"), ("ENDPOINTS", "127.0.0.1")] {
        assert_eq!(header.find(heading), line.find(cell), "{heading} is aligned:\n{all}");
    }
}

#[test]
fn weights_change_the_live_table_and_json_reports_the_revision() {
    let server = start(CONFIG, None, None);
    let table = ok(&server.ctl(&["weights", "app", "blue=50", "canary=50"]));
    assert_eq!(server.weights("app"), pairs(&[("blue", 50), ("canary", 50)]));
    assert_eq!(row(&table, &["app", "canary"])[..4], ["app", "canary", "50", "50.0%"]);
    assert!(!table.contains("api"), "only the changed service is shown:\n{table}");

    let out = ok(&server.ctl(&["--json", "weights", "app", "canary=100"]));
    let json: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(json["revision"], 3);
    assert_eq!(json["revision"], server.control.routing().load().revision);
    assert_eq!(json["service"]["weights_from"], "admin override");
    assert_eq!(server.weights("app"), pairs(&[("blue", 0), ("canary", 100)]));
}

#[test]
fn options_are_accepted_after_the_subcommand() {
    let server = start(CONFIG, None, None);
    let admin = format!("http://{}", server.admin);
    let output = Command::new(BIN)
        .args(["ctl", "status", "app", "--json", "--admin", &admin])
        .env("SLUICE_ADMIN", "http://127.0.0.1:1")
        .output()
        .expect("run sluice ctl");
    let json: serde_json::Value = serde_json::from_str(&ok(&output)).expect("JSON");
    assert_eq!(json["service"]["name"], "app");

    let output = Command::new(BIN)
        .args(["ctl", "history", "--json"])
        .env("SLUICE_ADMIN", &admin)
        .output()
        .expect("run sluice ctl");
    let json: serde_json::Value = serde_json::from_str(&ok(&output)).expect("JSON");
    assert_eq!(json["entries"][0]["revision"], 1);
}

#[test]
fn history_lists_revisions_newest_first() {
    let server = start(CONFIG, None, None);
    ok(&server.ctl(&["weights", "app", "blue=70", "canary=30"]));
    ok(&server.ctl(&["weights", "api", "v1=5"]));
    let app = ok(&server.ctl(&["history", "app"]));
    let lines: Vec<&str> = app.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["REVISION", "TIME", "CAUSE", "ACTOR", "WEIGHTS"]
    );
    assert_eq!(lines.len(), 3, "revision 3 did not change app:\n{app}");
    assert_eq!(
        row(&app, &["2"])[2..],
        ["admin", "admin", "127.0.0.1", "blue=70", "canary=30"]
    );
    assert_eq!(row(&app, &["1"])[2..], ["config", "startup", "blue=90", "canary=10"]);
    assert!(lines[1].starts_with("2 "), "newest first:\n{app}");

    let all = ok(&server.ctl(&["history"]));
    assert_eq!(all.lines().count(), 4, "{all}");
    assert!(
        all.lines()
            .nth(1)
            .expect("newest")
            .ends_with("api: v1=5; app: blue=70 canary=30"),
        "{all}"
    );
}

#[test]
fn revert_restores_an_earlier_revision() {
    let server = start(CONFIG, None, None);
    ok(&server.ctl(&["weights", "app", "blue=0", "canary=100"]));
    assert_eq!(server.weights("app"), pairs(&[("blue", 0), ("canary", 100)]));
    let out = ok(&server.ctl(&["revert", "app", "1"]));
    assert!(out.starts_with("revision 3\n"), "{out}");
    assert_eq!(server.weights("app"), pairs(&[("blue", 90), ("canary", 10)]));
    let newest = &server.control.history(None)[0];
    assert_eq!(
        (newest.revision, newest.actor.as_str()),
        (3, "admin 127.0.0.1 (revert to 1)")
    );

    let missing = server.ctl(&["revert", "app", "99"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing), "error: revision 99 is not in the history\n");
}

#[test]
fn refusals_exit_non_zero_with_the_servers_message() {
    let server = start(CONFIG, None, None);
    let unknown = server.ctl(&["weights", "app", "blue=50", "canry=50"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        stderr(&unknown),
        "error: unknown version \"canry\" (versions: blue, canary)\n"
    );
    assert!(stdout(&unknown).is_empty());
    assert_eq!(server.weights("app"), pairs(&[("blue", 90), ("canary", 10)]));

    let no_service = server.ctl(&["--json", "status", "nope"]);
    assert_eq!(no_service.status.code(), Some(1));
    assert_eq!(stderr(&no_service), "error: unknown service \"nope\"\n");

    let bad = server.ctl(&["weights", "app", "blue=x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("the weight of \"blue\" must be a non-negative integer"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(server.control.routing().load().revision, 1, "nothing was sent");
}

#[test]
fn token_file_authorizes() {
    let server = start(CONFIG, None, Some("s3cret"));
    let dir = temp_dir("token");
    let right = dir.join("right");
    std::fs::write(&right, "  s3cret\n").expect("write token");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "guess\n").expect("write token");
    let right = right.to_str().expect("utf-8 path");

    let out = ok(&server.ctl(&["weights", "app", "blue=1", "--token-file", right]));
    assert!(out.contains("revision 2"), "{out}");
    assert_eq!(server.weights("app"), pairs(&[("blue", 1), ("canary", 0)]));

    for args in [
        &["status"][..],
        &["status", "--token-file", wrong.to_str().expect("utf-8")],
    ] {
        let refused = server.ctl(args);
        assert_eq!(refused.status.code(), Some(1));
        assert_eq!(stderr(&refused), "error: missing or wrong bearer token\n");
    }
    let unreadable = server.ctl(&["status", "--token-file", "/nonexistent/token"]);
    assert_eq!(unreadable.status.code(), Some(2));
    assert!(stderr(&unreadable).starts_with("error: cannot read token file /nonexistent/token"));
}

#[test]
fn health_needs_no_token_and_fails_when_the_admin_is_down() {
    let server = start(CONFIG, None, Some("s3cret"));
    assert_eq!(ok(&server.ctl(&["health"])), "ok\n");
    assert_eq!(
        ok(&server.ctl(&["health", "--json"])).trim(),
        r#"{
  "status": "ok"
}"#
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let down = ctl_at(&format!("http://{addr}"), &["health"]);
    assert_eq!(down.status.code(), Some(1), "{}", stderr(&down));
    assert!(stderr(&down).starts_with("error: cannot connect"), "{}", stderr(&down));
}

#[test]
fn unreachable_admin_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let output = ctl_at(&format!("http://{addr}"), &["status"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("error: cannot connect to the admin API at http://{addr}: ")),
        "{message}"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn reload_applies_the_file_or_reports_its_errors() {
    let dir = temp_dir("reload");
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, CONFIG).expect("write config");
    let server = start(CONFIG, Some(path.clone()), None);

    let unchanged = ok(&server.ctl(&["reload"]));
    assert_eq!(unchanged, "reload: unchanged (revision 1)\n");

    std::fs::write(&path, CONFIG.replace("blue: 90, canary: 10", "blue: 60, canary: 40")).expect("rewrite");
    let applied = ok(&server.ctl(&["reload"]));
    assert_eq!(applied, "reload: ok (revision 2)\n");
    assert_eq!(server.weights("app"), pairs(&[("blue", 60), ("canary", 40)]));

    std::fs::write(&path, CONFIG.replace("blue: 90", "bleu: 90")).expect("rewrite");
    let refused = server.ctl(&["reload"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.starts_with("error: invalid configuration, running table kept:"),
        "{message}"
    );
    assert!(message.contains("unknown version \"bleu\""), "{message}");
    assert_eq!(server.weights("app"), pairs(&[("blue", 60), ("canary", 40)]));
}

const ROLLOUT: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]
services:
  - name: app
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9101] }
    routing: { weights: { blue: 100 } }
    rollout:
      baseline: blue
      canary: canary
      steps:
        - { weight: 20, hold: 1h }
        - { approval: true }
";

#[test]
fn rollout_commands_and_watch() {
    let server = start(ROLLOUT, None, None);
    let started = ok(&server.ctl(&["rollout", "start", "app"]));
    assert!(started.starts_with("app: rollout progressing at step 1/2"), "{started}");
    assert!(
        started.contains("reason: started by admin 127.0.0.1; step 1/2: weight 20, hold 1h"),
        "{started}"
    );
    assert_eq!(server.weights("app"), [("blue".into(), 80), ("canary".into(), 20)]);
    assert!(ok(&server.ctl(&["rollout", "pause", "app"])).starts_with("app: rollout paused at step 1/2"));

    let refused = server.ctl(&["rollout", "pause", "app"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("error: the rollout of \"app\" is already paused"),
        "{}",
        stderr(&refused)
    );
    let usage = server.ctl(&["rollout", "jump", "app"]);
    assert_eq!(usage.status.code(), Some(2), "clap refuses an unknown action");

    // Two frames, each with the rollout line and the version table.
    let frames = ok(&server.ctl(&["watch", "app", "--count", "2", "--interval", "100ms"]));
    assert_eq!(
        frames
            .matches("rollout: paused  blue → canary  step 1/2 (weight 20, hold 1h)  canary weight 20")
            .count(),
        2,
        "{frames}"
    );
    assert_eq!(frames.matches("VERSION").count(), 2, "{frames}");
    let canary = row(&frames, &["canary"]);
    assert_eq!(&canary[..3], ["canary", "20", "20.0%"], "{frames}");

    let json = ok(&server.ctl(&["watch", "app", "--count", "1", "--json"]));
    let frame: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(frame["service"]["rollout"]["state"], "paused");
    assert_eq!(frame["stats"]["service"], "app");
    let bad = server.ctl(&["watch", "app", "--interval", "1ms"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn flag_turns_a_flag_off_and_on_and_sets_its_percent() {
    let yaml = format!("{CONFIG}    flags: {{ f: {{ percent: 10 }} }}\n");
    let server = start(&yaml, None, None);
    let flag = |server: &Server| {
        let table = server.control.routing().load();
        let f = &table.service("api").expect("api").flags.list[0];
        (f.enabled, f.ppm)
    };
    let out = ok(&server.ctl(&["flag", "api", "f", "off"]));
    assert_eq!(
        out,
        "api: flag f off for everyone (enabled: false), 10.0% of keys (revision 2)\n"
    );
    assert_eq!(flag(&server), (false, 100_000));
    let out = ok(&server.ctl(&["flag", "api", "f", "2.5%"]));
    assert_eq!(
        out,
        "api: flag f off for everyone (enabled: false), 2.5% of keys (revision 3)\n"
    );
    let out = ok(&server.ctl(&["flag", "api", "f", "on"]));
    assert_eq!(out, "api: flag f enabled, 2.5% of keys (revision 4)\n");
    assert_eq!(flag(&server), (true, 25_000));

    let json: serde_json::Value =
        serde_json::from_str(&ok(&server.ctl(&["--json", "flag", "api", "f", "100"]))).expect("--json prints JSON");
    assert_eq!(json["service"]["flags"][0]["percent"], 100.0);
    let history = server.control.history(Some("api"));
    assert_eq!(history[0].actor.rsplit_once("(flag ").map(|(_, a)| a), Some("f: 100%)"));

    let unknown = server.ctl(&["flag", "api", "nope", "on"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown flag \"nope\" of \"api\" (flags: f)"),
        "{}",
        stderr(&unknown)
    );
    let bad = server.ctl(&["flag", "api", "f", "150"]);
    assert_eq!(bad.status.code(), Some(2), "bad usage: {}", stderr(&bad));
    assert_eq!(flag(&server), (true, 1_000_000), "refusals change nothing");
}
