//! `sluice ctl`: the admin API's command-line client. It sends one request, prints the answer
//! as aligned tables for people (or the server's JSON with `--json`, for scripts), and exits
//! non-zero with `error: <reason>` on stderr when the request cannot be made or is refused.
//!
//! Exit codes: 0 success, 1 the admin API is unreachable or refused the request, 2 bad usage
//! (unreadable token file, malformed admin URL, ...).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

/// The admin API used when neither `--admin` nor `SLUICE_ADMIN` is given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";
/// How long one request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `sluice ctl`: options (accepted before or after the subcommand) and the subcommand.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API base URL [default: $SLUICE_ADMIN, else http://127.0.0.1:9901].
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the admin bearer token (surrounding whitespace is ignored).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the server's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `ctl` subcommands, one admin API call each.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show every service (or one): versions, weights, shares and endpoints.
    Status {
        /// Only this service.
        service: Option<String>,
    },
    /// Set a service's weights, e.g. `weights app blue=90 canary=10`; versions left out get 0.
    Weights {
        /// The service.
        service: String,
        /// VERSION=WEIGHT pairs, WEIGHT a non-negative integer.
        #[arg(required = true, value_name = "VERSION=WEIGHT", value_parser = parse_weight)]
        weights: Vec<(String, u64)>,
    },
    /// Show routing-table revisions, newest first (with SERVICE, only those that changed it).
    History {
        /// Only revisions that changed this service.
        service: Option<String>,
    },
    /// Restore the weights SERVICE had at REVISION.
    Revert {
        /// The service.
        service: String,
        /// A revision from `history`.
        revision: u64,
    },
    /// Re-read the config file now.
    Reload,
    /// Check that the admin listener is alive (`GET /healthz`, no token needed): exit 0 when it
    /// answers, 1 when not. For container health checks, where no HTTP client is installed.
    Health,
    /// Change SERVICE's feature flag FLAG: `on` or `off` (the kill switch), or the PERCENT of
    /// keys that get it (0 to 100, decimals allowed; the kill switch is left as it is).
    Flag {
        /// The service.
        service: String,
        /// The flag.
        flag: String,
        /// `on`, `off` or a percent such as `25` or `2.5%`.
        #[arg(value_name = "on|off|PERCENT", value_parser = parse_flag_value)]
        value: Value,
    },
    /// Drive SERVICE's rollout: start, pause, resume (also passes an approval step), promote, abort.
    Rollout {
        /// What to do.
        action: crate::control::RolloutCommand,
        /// The service.
        service: String,
    },
    /// Live view of SERVICE's rollout: step, weights, per-version rps, error rate and latency.
    Watch {
        /// The service.
        service: String,
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many refreshes (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

/// Parses a refresh interval such as `500ms` or `2s`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::config::units::duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err("use an interval of at least 100ms".into());
    }
    Ok(interval)
}

/// Why a `ctl` command failed; each kind has its exit code.
#[derive(Debug)]
enum Failure {
    /// The command line or local files are wrong (exit 2).
    Usage(String),
    /// The request failed or the server refused it (exit 1).
    Request(String),
}

/// Runs one `ctl` command; prints its result or `error: ...` on stderr.
pub fn run(args: CtlArgs) -> ExitCode {
    let (message, code) = match execute(&args) {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => (message, 2),
        Err(Failure::Request(message)) => (message, 1),
    };
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn execute(args: &CtlArgs) -> Result<(), Failure> {
    let base = admin_url(args.admin.clone().or_else(|| std::env::var("SLUICE_ADMIN").ok()))?;
    let token = match &args.token_file {
        Some(path) => Some(
            crate::admin::Admin::read_token(path)
                .map_err(|e| Failure::Usage(format!("cannot read token file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Request(format!("cannot start the runtime: {e}")))?;
    if let CtlCommand::Watch {
        service,
        interval,
        count,
    } = &args.command
    {
        return runtime.block_on(watch(&base, token.as_deref(), service, *interval, *count, args.json));
    }
    let (method, path, body) = plan(&args.command)?;
    let (raw, answer) = runtime.block_on(call(&base, method, &path, token.as_deref(), body))?;
    let output = if args.json {
        pretty(&raw)
    } else {
        render(&args.command, &answer)
    };
    print(&output)
}

fn print(output: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Request(format!("cannot write the output: {e}")))
}

/// One admin API call: the raw answer and its JSON.
async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(Bytes, Value), Failure> {
    let uri: Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| Failure::Usage(format!("invalid admin URL {base}{path}: {e}")))?;
    let request = build_request(method, uri, token, body)?;
    let (status, raw) = send(request, base).await?;
    let answer = answer(status, &raw, base)?;
    Ok((raw, answer))
}

/// `ctl watch`: the service and its stats, redrawn every `interval` (on a terminal the screen
/// is cleared first; otherwise frames follow each other), `count` times or until Ctrl-C.
async fn watch(
    base: &str,
    token: Option<&str>,
    service: &str,
    interval: Duration,
    count: u64,
    json: bool,
) -> Result<(), Failure> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let service_path = format!("/api/v1/services/{}", encode(service));
    let stats_path = format!("{service_path}/stats");
    let mut ticker = tokio::time::interval(interval);
    let mut shown = 0;
    loop {
        ticker.tick().await;
        let (_, answer) = call(base, Method::GET, &service_path, token, None).await?;
        let (_, stats) = call(base, Method::GET, &stats_path, token, None).await?;
        let frame = if json {
            json!({ "revision": answer["revision"], "service": answer["service"], "stats": stats }).to_string() + "\n"
        } else {
            let screen = watch_screen(&answer, &stats);
            match terminal {
                true => format!("\x1b[H\x1b[2J{screen}"),
                false => format!("{screen}\n"),
            }
        };
        print(&frame)?;
        shown += 1;
        if count != 0 && shown >= count {
            return Ok(());
        }
    }
}

/// One frame of `ctl watch`.
fn watch_screen(answer: &Value, stats: &Value) -> String {
    let service = &answer["service"];
    let rollout = &service["rollout"];
    let mut out = format!(
        "{}  revision {}  {}\n",
        text(&service["name"]),
        text(&answer["revision"]),
        now_utc()
    );
    if rollout.is_null() {
        out += "rollout: no plan configured\n";
    } else {
        let state = text(&rollout["state"]);
        out += &format!(
            "rollout: {state}  {} → {}",
            text(&rollout["baseline"]),
            text(&rollout["canary"])
        );
        if !rollout["step"].is_null() {
            out += &format!("  step {}/{}", text(&rollout["step"]), text(&rollout["steps"]));
            if let Some(kind) = rollout["step_kind"].as_str() {
                out += &format!(" ({kind})");
            }
            out += &format!("  canary weight {}", text(&rollout["canary_weight"]));
        }
        if let Some(ms) = rollout["hold_remaining_ms"].as_u64() {
            out += &format!("  hold left {:.1}s", ms as f64 / 1000.0);
        }
        out.push('\n');
        if let Some(reason) = rollout["reason"].as_str() {
            out += &format!("reason: {reason}\n");
        }
        if let Some(verdict) = rollout["judgement"]["verdict"].as_str() {
            let extended = if rollout["judgement"]["extended"] == true {
                " (hold extended)"
            } else {
                ""
            };
            out += &format!("guardrails: {verdict}{extended}\n");
        }
    }
    out.push('\n');
    let mut rows = Vec::new();
    let versions = service["versions"].as_array().cloned().unwrap_or_default();
    for row in stats["versions"].as_array().into_iter().flatten() {
        let name = text(&row["version"]);
        let version = versions.iter().find(|v| v["name"] == row["version"]);
        let w = &row["windows"]["10s"];
        let number = |key: &str| w[key].as_f64().unwrap_or(0.0);
        rows.push(vec![
            name,
            version.map_or_else(|| "-".into(), |v| text(&v["weight"])),
            version.map_or_else(|| "-".into(), |v| format!("{:.1}%", v["share"].as_f64().unwrap_or(0.0))),
            format!("{:.1}", number("rps")),
            format!("{:.2}%", number("error_rate") * 100.0),
            format!("{:.1} ms", number("p50_ms")),
            format!("{:.1} ms", number("p99_ms")),
        ]);
    }
    let header = ["VERSION", "WEIGHT", "SHARE", "RPS (10s)", "ERRORS", "P50", "P99"];
    out + &table(&header, &rows)
}

fn now_utc() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The base URL without a trailing slash; a bare `host:port` means `http://host:port`.
fn admin_url(given: Option<String>) -> Result<String, Failure> {
    let url = given.unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
    let url = url.trim().trim_end_matches('/');
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    if !url.starts_with("http://") {
        return Err(Failure::Usage(format!("admin URL {url} must start with http://")));
    }
    Ok(url)
}

/// Parses `VERSION=WEIGHT`.
fn parse_weight(arg: &str) -> Result<(String, u64), String> {
    let (version, weight) = arg
        .rsplit_once('=')
        .ok_or_else(|| format!("expected VERSION=WEIGHT such as blue=90, got \"{arg}\""))?;
    if version.is_empty() {
        return Err(format!("\"{arg}\" names no version: write e.g. blue=90"));
    }
    let weight = weight
        .parse()
        .map_err(|_| format!("the weight of \"{version}\" must be a non-negative integer, got \"{weight}\""))?;
    Ok((version.to_owned(), weight))
}

/// Parses `on`, `off` or a percent into the body of `PUT .../flags/{flag}`.
fn parse_flag_value(arg: &str) -> Result<Value, String> {
    match arg {
        "on" => return Ok(json!({ "enabled": true })),
        "off" => return Ok(json!({ "enabled": false })),
        _ => {}
    }
    let number = arg.strip_suffix('%').unwrap_or(arg);
    match number.parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(json!({ "percent": percent })),
        _ => Err(format!("expected on, off or a percent from 0 to 100, got \"{arg}\"")),
    }
}

/// The method, path and body of the admin API call behind `command`.
fn plan(command: &CtlCommand) -> Result<(Method, String, Option<Value>), Failure> {
    Ok(match command {
        CtlCommand::Status { service: None } => (Method::GET, "/api/v1/services".into(), None),
        CtlCommand::Status { service: Some(s) } => (Method::GET, format!("/api/v1/services/{}", encode(s)), None),
        CtlCommand::Weights { service, weights } => {
            let mut body = Map::new();
            for (version, weight) in weights {
                if body.insert(version.clone(), json!(weight)).is_some() {
                    return Err(Failure::Usage(format!("version \"{version}\" is given twice")));
                }
            }
            let path = format!("/api/v1/services/{}/weights", encode(service));
            (Method::PUT, path, Some(Value::Object(body)))
        }
        CtlCommand::History { service: None } => (Method::GET, "/api/v1/history".into(), None),
        CtlCommand::History { service: Some(s) } => {
            (Method::GET, format!("/api/v1/history?service={}", encode(s)), None)
        }
        CtlCommand::Revert { service, revision } => {
            let path = format!("/api/v1/services/{}/revert", encode(service));
            (Method::POST, path, Some(json!({ "revision": revision })))
        }
        CtlCommand::Reload => (Method::POST, "/api/v1/reload".into(), None),
        CtlCommand::Health => (Method::GET, "/healthz".into(), None),
        CtlCommand::Flag { service, flag, value } => {
            let path = format!("/api/v1/services/{}/flags/{}", encode(service), encode(flag));
            (Method::PUT, path, Some(value.clone()))
        }
        CtlCommand::Rollout { action, service } => {
            let path = format!("/api/v1/services/{}/rollout/{}", encode(service), action.as_str());
            (Method::POST, path, None)
        }
        CtlCommand::Watch { service, .. } => (Method::GET, format!("/api/v1/services/{}", encode(service)), None),
    })
}

/// A JSON value whose objects keep the server's key order when printed again.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum Ordered {
    Object(indexmap::IndexMap<String, Ordered>),
    Array(Vec<Ordered>),
    Other(Value),
}

/// The server's JSON body, pretty-printed, keys in the server's order.
fn pretty(raw: &[u8]) -> String {
    let ordered: Result<Ordered, _> = serde_json::from_slice(raw);
    match ordered.and_then(|o| serde_json::to_string_pretty(&o)) {
        Ok(text) => text + "\n",
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request: `method` to `uri`, with the bearer `token` and the JSON `body` when given.
fn build_request(
    method: Method,
    uri: Uri,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Request<Full<Bytes>>, Failure> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::USER_AGENT, concat!("sluice-ctl/", env!("CARGO_PKG_VERSION")));
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Failure::Usage("the token contains characters a header cannot carry".into()))?;
        request = request.header(header::AUTHORIZATION, value);
    }
    let bytes = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    request
        .body(Full::new(bytes))
        .map_err(|e| Failure::Usage(format!("cannot build the request: {e}")))
}

/// Sends `request` and reads the whole answer, within [`REQUEST_TIMEOUT`].
async fn send(request: Request<Full<Bytes>>, base: &str) -> Result<(StatusCode, Bytes), Failure> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| unreachable_error(base, &e))?;
        let status = response.status();
        let body = response.into_body().collect().await;
        let body =
            body.map_err(|e| Failure::Request(format!("cannot read the answer of the admin API at {base}: {e}")))?;
        Ok((status, body.to_bytes()))
    };
    let late = |_| {
        Failure::Request(format!(
            "the admin API at {base} did not answer within {REQUEST_TIMEOUT:?}"
        ))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(late)?
}

/// The JSON answer of a 2xx, or the server's error message.
fn answer(status: StatusCode, bytes: &[u8], base: &str) -> Result<Value, Failure> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(answer) if status.is_success() => Ok(answer),
        Ok(answer) if answer["error"].is_string() => Err(Failure::Request(text(&answer["error"]))),
        _ => Err(Failure::Request(format!(
            "the admin API at {base} answered {status}: {}",
            String::from_utf8_lossy(bytes).trim()
        ))),
    }
}

/// A transport failure, with its causes, in one line.
fn unreachable_error(base: &str, error: &hyper_util::client::legacy::Error) -> Failure {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        causes.push(error.to_string());
    }
    let what = if error.is_connect() {
        "cannot connect to"
    } else {
        "request failed to"
    };
    Failure::Request(format!("{what} the admin API at {base}: {}", causes.join(": ")))
}

/// The human-readable form of `answer` to `command`.
fn render(command: &CtlCommand, answer: &Value) -> String {
    match command {
        CtlCommand::Status { .. } | CtlCommand::Weights { .. } | CtlCommand::Revert { .. } => status_table(answer),
        CtlCommand::History { service } => history_table(answer, service.as_deref()),
        CtlCommand::Reload => reload_report(answer),
        CtlCommand::Health => format!("{}\n", text(&answer["status"])),
        CtlCommand::Flag { flag, .. } => flag_report(answer, flag),
        CtlCommand::Rollout { .. } | CtlCommand::Watch { .. } => rollout_report(answer),
    }
}

/// A flag change's outcome: the flag's state now.
fn flag_report(answer: &Value, flag: &str) -> String {
    let service = &answer["service"];
    let state = service["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == flag);
    let Some(state) = state else {
        return format!(
            "{}: flag {flag} not shown (revision {})\n",
            text(&service["name"]),
            text(&answer["revision"])
        );
    };
    let on = if state["enabled"] == true {
        "enabled"
    } else {
        "off for everyone (enabled: false)"
    };
    format!(
        "{}: flag {flag} {on}, {}% of keys (revision {})\n",
        text(&service["name"]),
        text(&state["percent"]),
        text(&answer["revision"])
    )
}

/// A rollout command's outcome: state, step, reason and the weights now.
fn rollout_report(answer: &Value) -> String {
    let service = &answer["service"];
    let rollout = &service["rollout"];
    let mut out = format!(
        "{}: rollout {} at step {}/{} (revision {})\n",
        text(&service["name"]),
        text(&rollout["state"]),
        text(&rollout["step"]),
        text(&rollout["steps"]),
        text(&answer["revision"])
    );
    if let Some(reason) = rollout["reason"].as_str() {
        out += &format!("reason: {reason}\n");
    }
    out + &status_table(answer)
}

/// `revision N` and one row per version of each service in `answer`.
fn status_table(answer: &Value) -> String {
    let services = match &answer["services"] {
        Value::Array(services) => services.iter().collect(),
        _ => vec![&answer["service"]],
    };
    let mut rows = Vec::new();
    for service in services {
        for version in service["versions"].as_array().into_iter().flatten() {
            let share = version["share"].as_f64().unwrap_or(0.0);
            rows.push(vec![
                text(&service["name"]),
                text(&version["name"]),
                text(&version["weight"]),
                format!("{share:.1}%"),
                endpoints(&version["endpoints"]),
            ]);
        }
    }
    let header = ["SERVICE", "VERSION", "WEIGHT", "SHARE", "ENDPOINTS"];
    format!("revision {}\n{}", text(&answer["revision"]), table(&header, &rows))
}

/// `addr, addr (down)`: each endpoint, marked when unhealthy.
fn endpoints(list: &Value) -> String {
    let shown: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| match e["healthy"].as_bool() {
            Some(false) => format!("{} (down)", text(&e["address"])),
            _ => text(&e["address"]),
        })
        .collect();
    shown.join(", ")
}

/// One row per history entry; WEIGHTS shows `service`'s weights, or every service's.
fn history_table(answer: &Value, service: Option<&str>) -> String {
    let rows: Vec<Vec<String>> = answer["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            let weights = match service {
                Some(name) => weights(&entry["weights"][name]),
                None => entry["weights"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, w)| format!("{name}: {}", weights(w)))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            let fields = ["revision", "time", "cause", "actor"];
            fields.iter().map(|f| text(&entry[*f])).chain([weights]).collect()
        })
        .collect();
    table(&["REVISION", "TIME", "CAUSE", "ACTOR", "WEIGHTS"], &rows)
}

/// `blue=90 canary=10`.
fn weights(map: &Value) -> String {
    let pairs: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(version, weight)| format!("{version}={}", text(weight)))
        .collect();
    pairs.join(" ")
}

/// The outcome of a reload, its revision, warnings and errors.
fn reload_report(answer: &Value) -> String {
    let mut out = format!(
        "reload: {} (revision {})\n",
        text(&answer["result"]),
        text(&answer["revision"])
    );
    let notes = [("warning", &answer["warnings"]), ("error", &answer["errors"])];
    for (kind, list) in notes {
        for note in list.as_array().into_iter().flatten() {
            out += &format!("{kind}: {}\n", text(note));
        }
    }
    out
}

/// A JSON value as plain text: strings without quotes, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Left-aligned columns two spaces apart; no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_urls_tables() {
        assert_eq!(parse_weight("blue=90"), Ok(("blue".to_owned(), 90)));
        assert_eq!(parse_weight("a=b=0"), Ok(("a=b".to_owned(), 0)));
        for bad in ["blue=x", "blue=-1", "blue", "=5"] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
        assert_eq!(admin_url(None).ok().as_deref(), Some(DEFAULT_ADMIN));
        assert_eq!(
            admin_url(Some("10.0.0.1:1/".into())).ok().as_deref(),
            Some("http://10.0.0.1:1")
        );
        assert!(admin_url(Some("https://x:1".into())).is_err());
        assert_eq!(parse_flag_value("off"), Ok(json!({ "enabled": false })));
        assert_eq!(parse_flag_value("2.5%"), Ok(json!({ "percent": 2.5 })));
        for bad in ["101", "-1", "half", "ON"] {
            assert!(parse_flag_value(bad).is_err(), "{bad}");
        }
        let rows = [vec!["a".into(), "long cell".into()], vec!["bbb".into(), "c".into()]];
        assert_eq!(table(&["X", "Y"], &rows), "X    Y\na    long cell\nbbb  c\n");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
