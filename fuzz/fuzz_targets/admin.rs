//! A sequence of admin API calls against a fresh control plane (no sockets, no state
//! directory): `admin::call_for_fuzzing(control, method, "/api/v1/" path, body, query)` is what
//! the admin listener runs once a request is authorized and its body read (JSON bodies of
//! `PUT .../weights` and `POST .../revert`, rollout commands, history queries, views), with
//! the rollout reconciliation pass (`Control::rollout_tick`) between calls when the input asks,
//! and reloads (`POST /api/v1/reload`) of the config file rewritten to one of three variants
//! (the same; the canary's endpoints changed, which `auto_start`s the rollout; the plan and a
//! version gone, which ends rollouts and drops overrides).
//! Must never panic; every answer is a JSON object with a status the API documents.
#![no_main]

use arbitrary::Arbitrary;
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sluice::control::Control;

/// The fixed config, also a seed of the `config` target.
const CONFIG: &str = include_str!("../seeds/config/fuzz-admin.yaml");

/// `CONFIG` with the canary moved: a reload starts the rollout (`auto_start`).
fn config_moved() -> String {
    CONFIG.replace("127.0.0.1:9101", "127.0.0.1:9102")
}

/// `CONFIG` without the rollout plan and without version `b` of `web`.
fn config_cut() -> String {
    let without_plan = match (CONFIG.find("    rollout:"), CONFIG.find("  - name: web")) {
        (Some(start), Some(end)) => format!("{}{}", &CONFIG[..start], &CONFIG[end..]),
        _ => unreachable!("CONFIG has a rollout plan and a web service"),
    };
    without_plan
        .replace("      b: { endpoints: [127.0.0.1:9302] }\n", "")
        .replace("{ a: 1, b: 1 }", "{ a: 1 }")
        .replace("version: b }", "version: a }")
}

const SERVICES: [&str; 3] = ["app", "web", "nope"];
const VERSIONS: [&str; 5] = ["blue", "canary", "extra", "a", "b"];
const COMMANDS: [&str; 6] = ["start", "pause", "resume", "promote", "abort", "bogus"];

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

impl Name {
    fn text(&self, known: &[&str]) -> String {
        match self {
            Name::Known(i) => known[usize::from(*i) % known.len()].to_owned(),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Path {
    Services,
    Service(Name),
    Stats(Name),
    Weights(Name),
    Revert(Name),
    Rollout(Name, Name),
    History,
    Reload,
    Config,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum JsonNumber {
    U(u64),
    I(i64),
    F(f64),
    Text(String),
    Null,
    Bool(bool),
}

impl JsonNumber {
    fn value(&self) -> Value {
        match self {
            JsonNumber::U(n) => json!(n),
            JsonNumber::I(n) => json!(n),
            JsonNumber::F(f) => json!(f),
            JsonNumber::Text(s) => json!(s),
            JsonNumber::Null => Value::Null,
            JsonNumber::Bool(b) => json!(b),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Empty,
    /// Any bytes: the JSON parser's side.
    Raw(Vec<u8>),
    /// `{"version": weight, ...}`: the weights' side.
    Weights(Vec<(Name, JsonNumber)>),
    /// `{"revision": N}`, N small enough to be in the history.
    Revision(u8),
    RevisionValue(JsonNumber),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Empty => Vec::new(),
            Body::Raw(bytes) => bytes.clone(),
            Body::Weights(pairs) => {
                let object: serde_json::Map<String, Value> = pairs
                    .iter()
                    .map(|(name, weight)| (name.text(&VERSIONS), weight.value()))
                    .collect();
                Value::Object(object).to_string().into_bytes()
            }
            Body::Revision(n) => json!({ "revision": n }).to_string().into_bytes(),
            Body::RevisionValue(v) => json!({ "revision": v.value() }).to_string().into_bytes(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Call {
    Api {
        method: u8,
        path: Path,
        trailing_slash: bool,
        body: Body,
        query: Option<String>,
    },
    /// One pass of the rollout reconciliation loop.
    Tick,
    /// Rewrites the config file (0: as started, 1: canary moved, 2: plan and a version cut),
    /// then `POST /api/v1/reload`.
    Reload(u8),
}

fn method(selector: u8) -> Method {
    match selector % 6 {
        0 | 1 => Method::GET,
        2 => Method::PUT,
        3 | 4 => Method::POST,
        _ => Method::DELETE,
    }
}

fn api_path(path: &Path) -> String {
    match path {
        Path::Services => "services".into(),
        Path::Service(s) => format!("services/{}", s.text(&SERVICES)),
        Path::Stats(s) => format!("services/{}/stats", s.text(&SERVICES)),
        Path::Weights(s) => format!("services/{}/weights", s.text(&SERVICES)),
        Path::Revert(s) => format!("services/{}/revert", s.text(&SERVICES)),
        Path::Rollout(s, c) => format!("services/{}/rollout/{}", s.text(&SERVICES), c.text(&COMMANDS)),
        Path::History => "history".into(),
        Path::Reload => "reload".into(),
        Path::Config => "config".into(),
        Path::Raw(raw) => raw.clone(),
    }
}

fn config_file() -> &'static std::path::Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| std::env::temp_dir().join(format!("sluice-fuzz-admin-{}.yaml", std::process::id())))
}

fuzz_target!(|calls: Vec<Call>| {
    if calls.len() > 32 {
        return;
    }
    let file = config_file();
    static PARSED: std::sync::OnceLock<sluice::Config> = std::sync::OnceLock::new();
    let config = PARSED
        .get_or_init(|| {
            for variant in [config_moved(), config_cut()] {
                sluice::config::parse(&variant).expect("the fuzz config's variants are valid");
            }
            sluice::config::parse(CONFIG).expect("the fuzz config is valid")
        })
        .clone();
    // Each input starts from the same file: reloads must not see the last input's variant.
    std::fs::write(file, CONFIG).expect("write the fuzz config file");
    let control =
        Control::start(config, Some(CONFIG.to_owned()), Some(file.to_owned())).expect("in-memory control starts");
    for call in &calls {
        let (status, answer) = match call {
            Call::Tick => {
                control.rollout_tick();
                continue;
            }
            Call::Reload(variant) => {
                let text = match variant % 3 {
                    0 => CONFIG.to_owned(),
                    1 => config_moved(),
                    _ => config_cut(),
                };
                std::fs::write(file, text).expect("write the fuzz config file");
                sluice::admin::call_for_fuzzing(&control, &Method::POST, "reload", b"", None)
            }
            Call::Api {
                method: m,
                path,
                trailing_slash,
                body,
                query,
            } => {
                let mut api = api_path(path);
                if *trailing_slash {
                    api.push('/');
                }
                sluice::admin::call_for_fuzzing(&control, &method(*m), &api, &body.bytes(), query.as_deref())
            }
        };
        assert!(answer.is_object(), "{status}: {answer}");
        assert!(
            matches!(
                status,
                StatusCode::OK
                    | StatusCode::BAD_REQUEST
                    | StatusCode::NOT_FOUND
                    | StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::CONFLICT
                    | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "unexpected status {status}: {answer}"
        );
        if status != StatusCode::OK {
            assert!(answer.get("error").is_some_and(Value::is_string), "{status}: {answer}");
        }
    }
    // The table the data plane reads is still consistent with what the API shows.
    let table = control.routing().load_full();
    for service in &table.services {
        let _ = service.weights().count();
        std::hint::black_box(sluice::admin::service_view(&control, service));
    }
});
