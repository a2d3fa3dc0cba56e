//! The `sluice` binary: `validate` and `run`, as an operator uses them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize as _;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn validate(path: &Path) -> (bool, String) {
    let output = Command::new(BIN)
        .args(["validate", "-c"])
        .arg(path)
        .output()
        .expect("run sluice validate");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn every_shipped_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (ok, stdout) = validate(&path);
        assert!(ok, "{} does not validate:\n{stdout}", path.display());
        assert!(stdout.contains(": ok ("), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 3, "expected the shipped examples, found {checked}");
}

/// The sluice configs shipped under deploy/: the Docker image's default, and each
/// `sluice.yaml` key of a Kubernetes ConfigMap, extracted with serde_yaml. Returns (origin, text).
fn deploy_configs() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let docker = root.join("docker/sluice.yaml");
    let mut configs = vec![(
        docker.display().to_string(),
        std::fs::read_to_string(&docker).expect("deploy/docker/sluice.yaml"),
    )];
    let dir = root.join("kubernetes");
    for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("manifest");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let manifest = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            if manifest["kind"].as_str() != Some("ConfigMap") {
                continue;
            }
            let name = manifest["metadata"]["name"].as_str().unwrap_or("?");
            let config = manifest["data"]["sluice.yaml"]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {name} has no sluice.yaml"));
            configs.push((format!("{} ConfigMap {name}", path.display()), config.to_owned()));
        }
    }
    configs
}

#[test]
fn every_deploy_config_validates() {
    let configs = deploy_configs();
    assert!(
        configs.iter().any(|(origin, _)| origin.contains("ConfigMap")),
        "no ConfigMap found in deploy/kubernetes"
    );
    let dir = temp_dir("deploy");
    for (i, (origin, text)) in configs.iter().enumerate() {
        let path = dir.join(format!("{i}.yaml"));
        std::fs::write(&path, text).expect("write config");
        let (ok, stdout) = validate(&path);
        assert!(ok, "{origin} does not validate:\n{stdout}");
        assert!(stdout.contains(": ok ("), "{origin}: {stdout}");
    }
}

#[test]
fn the_dockerfile_runs_the_config_it_ships() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    for want in [
        "cargo build --release --locked",
        "COPY deploy/docker/sluice.yaml /etc/sluice/sluice.yaml",
        "ENTRYPOINT [\"sluice\"]",
        "CMD [\"run\", \"-c\", \"/etc/sluice/sluice.yaml\"]",
        "CMD [\"sluice\", \"ctl\", \"health\"]",
        "USER 10001",
    ] {
        assert!(dockerfile.contains(want), "the Dockerfile lacks {want:?}");
    }
    // The health check's admin address is the one the shipped config binds.
    let config = std::fs::read_to_string(root.join("deploy/docker/sluice.yaml")).expect("config");
    assert!(dockerfile.contains("ENV SLUICE_ADMIN=http://127.0.0.1:9901"));
    assert!(config.contains("address: 127.0.0.1:9901"), "{config}");
    // What the build needs is in the context.
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    for needed in ["src", "benches", "Cargo.toml", "Cargo.lock", "deploy/docker"] {
        assert!(
            !ignored.lines().any(|l| l.trim_end_matches('/') == needed),
            ".dockerignore leaves out {needed}"
        );
    }
}

#[test]
fn validate_prints_every_error_with_its_yaml_path() {
    let dir = temp_dir("invalid");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: p, address: 'localhost' }]
defaults: { timeouts: { drain: 30 } }
services:
  - name: checkout
    versions:
      blue: { endpoints: [127.0.0.1:9001] }
      canary: { endpoints: [127.0.0.1:9101] }
    routing: { weights: { blue: 95, canry: 5 } }
",
    )
    .expect("write config");
    let (ok, stdout) = validate(&path);
    assert!(!ok, "an invalid file must exit non-zero:\n{stdout}");
    for want in [
        "error: listeners[0].address: \"localhost\" is not an IP address with a port",
        "error: defaults.timeouts.drain: \"30\" has no unit: write e.g. \"30s\"",
        "error: services[0].routing.weights: unknown version \"canry\" (versions: blue, canary)",
        "3 error(s)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn validate_reports_unknown_sections_and_unreadable_files() {
    let dir = temp_dir("unknown");
    let path = dir.join("tls.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - { name: p, address: 127.0.0.1:8443, proxy_protocol: true }\n",
    )
    .expect("write");
    let (ok, stdout) = validate(&path);
    assert!(!ok);
    assert!(
        stdout.contains("error: listeners[0]: unknown field `proxy_protocol`"),
        "{stdout}"
    );

    let (ok, stdout) = validate(&dir.join("missing.yaml"));
    assert!(!ok);
    assert!(stdout.contains("cannot read"), "{stdout}");
}

#[test]
fn validate_reads_certificate_files_and_says_what_is_wrong() {
    let dir = temp_dir("certs");
    let key_a = rcgen::KeyPair::generate().expect("key");
    let cert_a = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
        .expect("params")
        .self_signed(&key_a)
        .expect("cert");
    let key_b = rcgen::KeyPair::generate().expect("key");
    let no_names = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .self_signed(&key_b)
        .expect("cert");
    for (name, text) in [
        ("a.pem", cert_a.pem()),
        ("a.key", key_a.serialize_pem()),
        ("b.key", key_b.serialize_pem()),
        ("nameless.pem", no_names.pem()),
        ("empty.pem", String::new()),
    ] {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let pair = |cert: &str, key: &str| {
        format!(
            "{{ cert: {}, key: {} }}",
            dir.join(cert).display(),
            dir.join(key).display()
        )
    };
    let path = dir.join("tls.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - {{ name: p, address: 127.0.0.1:0, tls: {{ certificates: [{}, {}, {}, {}, {}] }} }}\n",
            pair("a.pem", "a.key"),
            pair("a.pem", "b.key"),
            pair("missing.pem", "a.key"),
            pair("empty.pem", "a.key"),
            pair("nameless.pem", "b.key"),
        ),
    )
    .expect("write");
    let (ok, stdout) = validate(&path);
    assert!(!ok, "{stdout}");
    for want in [
        format!(
            "error: listeners[0].tls.certificates[1]: the key in {} does not match the certificate in {}",
            dir.join("b.key").display(),
            dir.join("a.pem").display()
        ),
        format!(
            "error: listeners[0].tls.certificates[2]: cannot read {}: No such file",
            dir.join("missing.pem").display()
        ),
        format!(
            "error: listeners[0].tls.certificates[3]: {} holds no certificate",
            dir.join("empty.pem").display()
        ),
        format!(
            "error: listeners[0].tls.certificates[4]: {} has no DNS names in its subject alternative names",
            dir.join("nameless.pem").display()
        ),
        "4 error(s)".to_owned(),
    ] {
        assert!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    }
    // The good pair alone validates.
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - {{ name: p, address: 127.0.0.1:0, tls: {{ certificates: [{}] }} }}\n",
            pair("a.pem", "a.key")
        ),
    )
    .expect("write");
    let (ok, stdout) = validate(&path);
    assert!(ok, "{stdout}");
}

/// Starts `sluice run -c config`; returns the child, the address it bound (port 0 is asked
/// for, and the log says which port it got), and a thread collecting the rest of its log.
fn spawn_sluice(config: &Path) -> (std::process::Child, String, std::thread::JoinHandle<String>) {
    let (child, addr, _, log) = spawn_sluice_with_admin(config, false);
    (child, addr, log)
}

/// Like [`spawn_sluice`]; with `admin`, also waits for and returns the admin address.
fn spawn_sluice_with_admin(
    config: &Path,
    admin: bool,
) -> (
    std::process::Child,
    String,
    Option<String>,
    std::thread::JoinHandle<String>,
) {
    use std::io::Read;
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sluice");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let (mut addr, mut admin_addr) = (None, None);
    while addr.is_none() || (admin && admin_addr.is_none()) {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read log") > 0,
            "sluice exited before listening"
        );
        if let Some(rest) = line.split("listening name=p addr=").nth(1) {
            addr = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.split("admin listening addr=").nth(1) {
            admin_addr = Some(rest.trim().to_owned());
        }
    }
    let log_tail = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    (child, addr.expect("listener address"), admin_addr, log_tail)
}

/// A minimal HTTP/1.1 upstream on a std thread: it answers each request only once `release`
/// is set, counting requests received in `received`.
fn held_upstream(received: Arc<AtomicUsize>, release: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (received, release) = (Arc::clone(&received), Arc::clone(&release));
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                received.fetch_add(1, Ordering::SeqCst);
                let start = Instant::now();
                while release.load(Ordering::SeqCst) == 0 && start.elapsed() < DEADLINE {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nfinished");
            });
        }
    });
    addr
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    use std::io::{Read, Write};
    let (received, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let upstream = held_upstream(Arc::clone(&received), Arc::clone(&release));
    let dir = temp_dir("sigterm");
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1\nlisteners: [{{ name: p, address: 127.0.0.1:0 }}]\ndefaults: {{ timeouts: {{ drain: 15s }} }}\n\
             services:\n  - name: s\n    versions: {{ v: {{ endpoints: [{upstream}] }} }}\n    routing: {{ weights: {{ v: 1 }} }}\n"
        ),
    )
    .expect("write config");
    let (mut child, addr, log_tail) = spawn_sluice(&config);

    let client = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: s\r\n\r\n")
                .expect("write");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        })
    };
    wait_until("the upstream holds the request", || {
        received.load(Ordering::SeqCst) == 1
    });

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // Shutdown has begun once new connections are refused.
    wait_until("the listener closes", || std::net::TcpStream::connect(&addr).is_err());
    assert_eq!(
        child.try_wait().expect("try_wait"),
        None,
        "sluice must wait for the in-flight request"
    );

    release.store(1, Ordering::SeqCst);
    let answer = client.join().expect("client thread");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "in-flight request must complete: {answer:?}"
    );
    assert!(answer.ends_with("finished"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "the last answer before shutdown says so: {answer:?}"
    );

    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(start.elapsed() < DEADLINE, "sluice did not exit after draining");
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = log_tail.join().expect("log thread");
    assert!(exit.success(), "exit status {exit:?}; log:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
}

/// Sends a GET with `x-user-id: key` over a fresh connection; returns the `x-sluice-version`.
fn version_for_key(addr: &str, key: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!("GET / HTTP/1.1\r\nHost: app\r\nx-user-id: {key}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .lines()
        .find_map(|l| l.strip_prefix("x-sluice-version: "))
        .unwrap_or_else(|| panic!("no version header in {answer:?}"))
        .trim()
        .to_owned()
}

#[test]
fn two_processes_bucket_every_key_identically() {
    let (received, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(1)));
    let blue = held_upstream(Arc::clone(&received), Arc::clone(&release));
    let canary = held_upstream(Arc::clone(&received), Arc::clone(&release));
    let dir = temp_dir("two-processes");
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "workers: 1
listeners: [{{ name: p, address: 127.0.0.1:0 }}]
services:
  - name: app
    expose_version: true
    versions: {{ blue: {{ endpoints: [{blue}] }}, canary: {{ endpoints: [{canary}] }} }}
    routing:
      weights: {{ blue: 70, canary: 30 }}
      sticky: {{ cookie: s, hash_key: \"header:x-user-id\" }}
"
        ),
    )
    .expect("write config");
    let (mut first, first_addr, _) = spawn_sluice(&config);
    let (mut second, second_addr, _) = spawn_sluice(&config);
    let mut canaries = 0;
    for i in 0..200 {
        let key = format!("customer-{i}");
        let (a, b) = (version_for_key(&first_addr, &key), version_for_key(&second_addr, &key));
        assert_eq!(a, b, "{key} bucketed differently by two processes");
        canaries += usize::from(a == "canary");
    }
    assert!((30..=90).contains(&canaries), "{canaries} of 200 keys in a 30% canary");
    for child in [&mut first, &mut second] {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

/// Sends `method path` to `addr` over a fresh connection; returns the body.
fn http_call(addr: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// GET `path` from `addr` over a fresh connection; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    http_call(addr, "GET", path)
}

#[test]
fn sighup_reloads_the_config() {
    let dir = temp_dir("sighup");
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        "listeners: [{ name: p, address: 127.0.0.1:0 }]\nadmin: { address: 127.0.0.1:0 }\n\
         services:\n  - { name: s, versions: { v: { endpoints: [127.0.0.1:1] } }, routing: { weights: { v: 1 } } }\n",
    )
    .expect("write config");
    // Regression: SIGHUP used to be handled only from after the admin address was logged, and a
    // SIGHUP in between ended the process (its default action); under load this test caught it.
    let (mut child, _, admin, _) = spawn_sluice_with_admin(&config, true);
    let admin = admin.expect("admin address");
    assert!(!http_get(&admin, "/api/v1/config").contains("SIGHUP"), "no reload yet");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The file did not change: the reload reads it, finds it unchanged, and says who asked.
    wait_until("the SIGHUP reload is reported", || {
        http_get(&admin, "/api/v1/config").contains("\"actor\":\"reload (SIGHUP)\"")
    });
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "SIGHUP must not stop sluice"
    );
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
}

/// A minimal HTTP/1.1 upstream on std threads answering every request with `body`.
fn answering_upstream(body: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    addr
}

fn rollout_of(admin: &str) -> serde_json::Value {
    let body = http_get(admin, "/api/v1/services/app");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    answer["service"].clone()
}

#[test]
fn a_rollout_survives_kill_9_and_resumes_where_it_was() {
    let dir = temp_dir("kill9");
    let config = dir.join("sluice.yaml");
    let (blue, canary) = (answering_upstream("blue"), answering_upstream("canary"));
    std::fs::write(
        &config,
        format!(
            "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nadmin: {{ address: 127.0.0.1:0 }}\nstate_dir: {}\n\
             services:\n  - name: app\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      canary: {{ endpoints: [{canary}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps:\n        - {{ weight: 50, hold: 1s }}\n        - {{ weight: 60, hold: 1h }}\n      guardrails: {{ min_requests: 5 }}\n",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    let (mut child, addr, admin, _) = spawn_sluice_with_admin(&config, true);
    let admin = admin.expect("admin address");
    assert!(http_call(&admin, "POST", "/api/v1/services/app/rollout/start").contains("\"progressing\""));
    // Traffic, so the first hold gets its verdict and passes.
    let stop = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, addr) = (Arc::clone(&stop), addr.clone());
        std::thread::spawn(move || {
            while stop.load(Ordering::SeqCst) == 0 {
                http_get(&addr, "/");
            }
        })
    };
    wait_until("the rollout reaches step 2", || {
        rollout_of(&admin)["rollout"]["step"] == 2
    });
    stop.store(1, Ordering::SeqCst);
    traffic.join().expect("traffic");
    let before = rollout_of(&admin);
    child.kill().expect("kill -9");
    let _ = child.wait();

    let (mut child, addr, admin, _) = spawn_sluice_with_admin(&config, true);
    let after = rollout_of(&admin.expect("admin address"));
    assert_eq!(after["rollout"]["state"], "progressing");
    assert_eq!(after["rollout"]["step"], 2);
    assert_eq!(
        after["rollout"]["step_started"], before["rollout"]["step_started"],
        "the hold counts from its recorded start"
    );
    let weights: Vec<u64> = after["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["weight"].as_u64().expect("weight"))
        .collect();
    assert_eq!(weights, vec![40, 60], "the rollout's weights, not the file's 100/0");
    let canary_answers = (0..50).filter(|_| http_get(&addr, "/") == "canary").count();
    assert!(canary_answers > 0, "the canary serves again after the restart");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().expect("wait").success());
}

/// `sluice demo` tells its whole story: the rollout's steps, the canary turning faulty, the
/// breach and the automatic rollback; afterwards the proxy serves blue only, and Ctrl-C ends it
/// with status 0.
#[test]
fn the_demo_rolls_back_its_faulty_canary() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--json"])
        .args(["--duration", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice demo");
    let stdout = child.stdout.take().expect("stdout");
    let (lines, events) = std::sync::mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read the demo's output");
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if lines.send(event).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let started = Instant::now();
    while !seen.iter().any(|e: &serde_json::Value| e["event"] == "rolled_back") {
        let left = DEADLINE.checked_sub(started.elapsed()).unwrap_or_default();
        match events.recv_timeout(left) {
            Ok(event) => seen.push(event),
            Err(_) => panic!("no rollback within {DEADLINE:?}; the demo said: {seen:#?}"),
        }
    }
    let names: Vec<&str> = seen
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| *e != "traffic")
        .collect();
    assert_eq!(
        names,
        [
            "started",
            "step",
            "step",
            "step",
            "canary_faulty",
            "breach",
            "rolled_back"
        ],
        "{seen:#?}"
    );
    let steps: Vec<(u64, u64)> = seen
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            (
                e["step"].as_u64().unwrap_or(0),
                e["canary_weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(steps, [(1, 10), (2, 25), (3, 50)]);
    let breach = seen.iter().find(|e| e["event"] == "breach").expect("breach");
    assert!(breach["breach"]["rule"].is_string(), "{breach}");
    // The load reached both versions before the fault (canary traffic was measured).
    assert!(
        seen.iter().filter(|e| e["event"] == "traffic").any(|e| {
            e["versions"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|v| v["version"] == "canary" && v["rps"].as_f64().unwrap_or(0.0) > 0.0)
            })
        }),
        "{seen:#?}"
    );

    // After the rollback the proxy and admin API keep serving, blue only.
    let start = &seen[0];
    let proxy = start["proxy"]
        .as_str()
        .expect("proxy")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let admin = start["admin"]
        .as_str()
        .expect("admin")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let service: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/api/v1/services/shop")).expect("service JSON");
    assert_eq!(service["service"]["rollout"]["state"], "rolled_back", "{service}");
    for _ in 0..20 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(proxy).expect("connect to the demo's proxy");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("x-sluice-version: blue"), "{answer}");
        assert!(answer.ends_with("hello from blue\n"), "{answer}");
    }

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "the demo exits 0 after a rollback: {status}");
    reader.join().expect("reader");
    let last: Vec<serde_json::Value> = events.try_iter().collect();
    let stopped = last
        .iter()
        .find(|e| e["event"] == "stopped")
        .expect("a final stopped event");
    assert_eq!(stopped["rolled_back"], true);
}

/// `run` warns when `ulimit -n` cannot hold twice `max_connections` (each client connection
/// can hold an upstream one too), and not when it can.
#[test]
fn run_warns_when_open_files_cannot_hold_the_connection_limit() {
    let dir = temp_dir("ulimit");
    let start_log = |max_connections: u32| {
        let path = dir.join(format!("limit-{max_connections}.yaml"));
        std::fs::write(
            &path,
            format!(
                "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\ndefaults: {{ limits: {{ max_connections: {max_connections} }} }}\n"
            ),
        )
        .expect("write");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n 1024 && exec {BIN} run -c {}", path.display()))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sluice");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut log = String::new();
        while !log.contains("sluice started") {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).expect("read log") > 0, "exited: {log}");
            log += &line;
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(child.wait().expect("wait").success());
        log
    };
    // 1024 (a soft limit any machine allows) < 2 × 10000 + 256: sockets would run out before
    // the limit refuses anything.
    let log = start_log(10_000);
    assert!(
        log.contains("ulimit -n is below twice defaults.limits.max_connections"),
        "{log}"
    );
    assert!(log.contains("needed=20256"), "{log}");
    // 1024 ≥ 2 × 300 + 256.
    let log = start_log(300);
    assert!(!log.contains("ulimit -n"), "{log}");
}

/// A demo stopped before its canary was rolled back says so and exits 1: the exit status is
/// what a script checks.
#[test]
fn a_demo_stopped_before_the_rollback_exits_1() {
    let output = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--json"])
        .args(["--duration", "300ms"])
        .stderr(Stdio::null())
        .output()
        .expect("run sluice demo");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stopped: serde_json::Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|e| e["event"] == "stopped")
        .unwrap_or_else(|| panic!("no stopped event: {stdout}"));
    assert_eq!(stopped["rolled_back"], false, "{stopped}");
    let rolled_back = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .any(|e| e["event"] == "rolled_back");
    assert!(!rolled_back, "{stdout}");
}
