//! The admin listener: probes, the dashboard ([`dashboard`]) and the JSON API over the control
//! plane. Never served on a data-plane listener. With a token configured, every `/api` call
//! needs `Authorization: Bearer <token>`, compared in constant time.

pub mod dashboard;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::{HostPattern, Protocol};
use crate::control::{Control, ControlError, RolloutCommand};
use crate::table::Service;

/// The Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The windows the stats endpoint reports. `1s` is for the dashboard's live charts, which
/// sample it once a second.
const STATS_WINDOWS: [(&str, Duration); 3] = [
    ("1s", Duration::from_secs(1)),
    ("10s", Duration::from_secs(10)),
    ("60s", Duration::from_secs(60)),
];
/// Largest admin request body accepted.
const MAX_BODY: usize = 64 << 10;
/// Pause after a failed `accept` so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The admin API's state.
#[derive(Debug)]
pub struct Admin {
    control: Arc<Control>,
    token: Option<String>,
    /// The TLS listeners, for `GET /api/v1/tls`.
    tls: Vec<Arc<crate::tls::Terminator>>,
}

impl Admin {
    /// An admin API over `control`; with `token`, `/api` calls must present it.
    pub fn new(control: Arc<Control>, token: Option<String>) -> Self {
        Self {
            control,
            token,
            tls: Vec::new(),
        }
    }

    /// Also reports the certificates of these TLS listeners.
    pub fn with_tls(mut self, tls: Vec<Arc<crate::tls::Terminator>>) -> Self {
        self.tls = tls;
        self
    }

    /// Reads a token file: its content without surrounding whitespace, never empty.
    pub fn read_token(path: &std::path::Path) -> std::io::Result<String> {
        let token = std::fs::read_to_string(path)?.trim().to_owned();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(token)
    }
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    let accept = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let admin = Arc::clone(&admin);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(handle(&admin, request, peer).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
}

/// An admin error: a status and a message, sent as `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        match error {
            ControlError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            ControlError::Conflict(m) => ApiError(StatusCode::CONFLICT, m),
            ControlError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            e @ ControlError::Config(_) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            e @ ControlError::Persist(_) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

async fn handle(admin: &Admin, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    if request.method() == Method::GET && request.uri().path() == "/metrics" {
        let control = Arc::clone(&admin.control);
        let text = tokio::task::spawn_blocking(move || {
            let routing = control.routing();
            crate::metrics::prometheus::render(routing.metrics(), &routing.load(), &control.counters())
        })
        .await
        .unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE));
        return response;
    }
    // The page holds no data, so it needs no token; the API calls it makes do.
    if request.method() == Method::GET && request.uri().path() == "/" {
        return dashboard::response();
    }
    let result = route(admin, request, peer).await;
    let (status, body) = match result {
        Ok(body) => (StatusCode::OK, body),
        Err(ApiError(status, message)) => (status, json!({ "error": message })),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A browser on another site may send the API a form POST (no CORS preflight for those), which
/// without a token would change routing. Browsers mark such requests with `Origin` (and
/// `Sec-Fetch-Site`); a changing request from another origin than the admin listener's own is
/// refused. Without a token, the page's own origin must also name the listener by an IP
/// address or `localhost`: a page on another site can rebind its own DNS name to this address
/// and then be "same-origin". Clients that are not browsers (`ctl`, curl) send neither header.
fn refuse_cross_site(request: &Request<Incoming>, token: bool) -> Result<(), ApiError> {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let headers = request.headers();
    let refused = || {
        ApiError(
            StatusCode::FORBIDDEN,
            "cross-site requests may not change anything: send it from the dashboard or ctl".to_owned(),
        )
    };
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site" || site.as_bytes() == b"same-site")
    {
        return Err(refused());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    let origin_host = origin
        .as_bytes()
        .strip_prefix(b"http://")
        .or_else(|| origin.as_bytes().strip_prefix(b"https://"));
    match (origin_host, host) {
        (Some(origin_host), Some(host))
            if origin_host.eq_ignore_ascii_case(host) && (token || names_this_machine(host)) =>
        {
            Ok(())
        }
        _ => Err(refused()),
    }
}

/// Whether a `Host` value (`name[:port]`) is an IP address or `localhost`: names no other site
/// can point at this listener by DNS.
fn names_this_machine(host: &[u8]) -> bool {
    let Ok(authority) = http::uri::Authority::try_from(host) else {
        return false;
    };
    let name = authority.host().trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn route(admin: &Admin, request: Request<Incoming>, peer: SocketAddr) -> Result<Value, ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return Ok(json!({ "status": "ok" })),
        // The config is loaded and the listeners bound before the admin listener starts.
        (&Method::GET, "/readyz") => return Ok(json!({ "status": "ready" })),
        (_, "/" | "/healthz" | "/readyz" | "/metrics") => return Err(method_not_allowed("GET")),
        _ => {}
    }
    let Some(api) = path.strip_prefix("/api/v1/") else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no such path {path}")));
    };
    refuse_cross_site(&request, admin.token.is_some())?;
    authorize(admin, &request)?;
    if api.trim_end_matches('/') == "tls" {
        return match method {
            Method::GET => Ok(tls_view(&admin.tls)),
            _ => Err(method_not_allowed("GET")),
        };
    }
    let actor = format!("admin {}", peer.ip());
    let query = request.uri().query().map(str::to_owned);
    let body = match method {
        Method::PUT | Method::POST => read_body(request).await?,
        _ => Bytes::new(),
    };
    let (control, api) = (Arc::clone(&admin.control), api.to_owned());
    // Control calls take the control-plane lock, read files and fsync: keep them off the async
    // threads, which the data plane shares.
    tokio::task::spawn_blocking(move || api_call(&control, &method, &api, &body, query.as_deref(), actor))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("admin call failed: {e}")))?
}

/// `GET /api/v1/tls`: each TLS listener's certificate pairs, the names they serve, and why the
/// files on disk were not taken at the last reload, if they were not.
fn tls_view(tls: &[Arc<crate::tls::Terminator>]) -> Value {
    let listeners: Vec<Value> = tls
        .iter()
        .map(|terminator| {
            let certificates: Vec<Value> = terminator
                .status()
                .into_iter()
                .map(|pair| {
                    json!({
                        "cert": pair.cert.display().to_string(),
                        "key": pair.key.display().to_string(),
                        "names": pair.names,
                        "error": pair.error,
                    })
                })
                .collect();
            json!({ "listener": terminator.listener(), "certificates": certificates })
        })
        .collect();
    json!({ "listeners": listeners })
}

/// One `/api/v1/` call, synchronously.
fn api_call(
    control: &Control,
    method: &Method,
    api: &str,
    body: &Bytes,
    query: Option<&str>,
    actor: String,
) -> Result<Value, ApiError> {
    let path = format!("/api/v1/{api}");
    let segments: Vec<&str> = api.trim_end_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["services"]) => {
            let table = control.routing().load();
            let services: Vec<Value> = table.services.iter().map(|s| service_view(control, s)).collect();
            Ok(json!({ "revision": table.revision, "services": services }))
        }
        (&Method::GET, ["services", name, "stats"]) => {
            let table = control.routing().load();
            let service = table.service(name).ok_or_else(|| unknown_service(name))?;
            Ok(stats_view(service))
        }
        (&Method::GET, ["services", name]) => {
            let table = control.routing().load();
            let service = table.service(name).ok_or_else(|| unknown_service(name))?;
            Ok(json!({ "revision": table.revision, "service": service_view(control, service) }))
        }
        (&Method::PUT, ["services", name, "weights"]) => {
            let weights = weights_body(&parse_json(body)?)?;
            let revision = control.set_weights(name, &weights, actor)?;
            Ok(service_after(control, name, revision))
        }
        (&Method::PUT, ["services", name, "flags", flag]) => {
            let change = crate::flags::FlagOverride::from_json(&parse_json(body)?).map_err(bad_request)?;
            let revision = control.set_flag(name, flag, change, actor)?;
            Ok(service_after(control, name, revision))
        }
        (&Method::POST, ["services", name, "revert"]) => {
            let target = parse_json(body)?
                .get("revision")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad_request("body must be {\"revision\": N} with N a revision number"))?;
            let revision = control.revert(name, target, actor)?;
            Ok(service_after(control, name, revision))
        }
        (&Method::POST, ["services", name, "rollout", command]) => {
            let command = RolloutCommand::parse(command).ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no such rollout command \"{command}\" (commands: start, pause, resume, promote, abort)"),
                )
            })?;
            let revision = control.rollout_command(name, command, actor)?;
            Ok(service_after(control, name, revision))
        }
        (&Method::GET, ["history"]) => {
            let service = query_param(query, "service");
            if let Some(name) = &service {
                control
                    .routing()
                    .load()
                    .service(name)
                    .ok_or_else(|| unknown_service(name))?;
            }
            Ok(json!({ "entries": control.history(service.as_deref()) }))
        }
        (&Method::POST, ["reload"]) => {
            Ok(serde_json::to_value(control.reload(&format!("reload (api, {actor})"))?).unwrap_or(Value::Null))
        }
        (&Method::GET, ["config"]) => Ok(control.config_report()),
        (_, ["services"] | ["services", _] | ["services", _, "stats"] | ["history"] | ["config"]) => {
            Err(method_not_allowed("GET"))
        }
        (_, ["services", _, "weights"] | ["services", _, "flags", _]) => Err(method_not_allowed("PUT")),
        (_, ["services", _, "revert"] | ["services", _, "rollout", _] | ["reload"]) => Err(method_not_allowed("POST")),
        _ => Err(ApiError(StatusCode::NOT_FOUND, format!("no such path {path}"))),
    }
}

/// One `/api/v1/{api}` call as the admin listener makes it once the request is authorized and
/// its body read: the status and the JSON answer. Not part of the API: for the fuzz targets
/// (`fuzz/fuzz_targets/admin.rs`) and tests, which drive a `Control` without sockets.
#[doc(hidden)]
pub fn call_for_fuzzing(
    control: &Control,
    method: &Method,
    api: &str,
    body: &[u8],
    query: Option<&str>,
) -> (StatusCode, Value) {
    let body = Bytes::copy_from_slice(body);
    match api_call(control, method, api, &body, query, "admin fuzz".to_owned()) {
        Ok(value) => (StatusCode::OK, value),
        Err(ApiError(status, message)) => (status, json!({ "error": message })),
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allowed}"),
    )
}

fn unknown_service(name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("unknown service \"{name}\""))
}

fn authorize(admin: &Admin, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &admin.token else { return Ok(()) };
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..])
        .unwrap_or_default();
    if constant_time_eq(presented, token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Ok(Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| bad_request(format!("cannot read the body (at most {MAX_BODY} bytes): {e}")))?
        .to_bytes())
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("body is not valid JSON: {e}")))
}

fn weights_body(body: &Value) -> Result<BTreeMap<String, u64>, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| bad_request("body must be an object such as {\"blue\": 90, \"canary\": 10}"))?;
    object
        .iter()
        .map(|(version, weight)| {
            weight.as_u64().map(|w| (version.clone(), w)).ok_or_else(|| {
                bad_request(format!(
                    "weight of \"{version}\" must be a non-negative integer, got {weight}"
                ))
            })
        })
        .collect()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn service_after(control: &Control, name: &str, revision: u64) -> Value {
    let table = control.routing().load();
    let service = table.service(name).map(|s| service_view(control, s));
    json!({ "revision": revision, "service": service })
}

/// Per version: rps, error rate and latency percentiles over the stats windows.
fn stats_view(service: &Service) -> Value {
    let versions: Vec<Value> = service
        .versions
        .iter()
        .map(|version| {
            let windows: serde_json::Map<String, Value> = STATS_WINDOWS
                .iter()
                .map(|(name, span)| ((*name).to_owned(), json!(version.metrics.window(*span))))
                .collect();
            json!({ "version": &*version.name, "role": version.metrics.role.as_str(), "windows": windows })
        })
        .collect();
    json!({ "service": &*service.name, "versions": versions })
}

/// A service as the API shows it.
pub fn service_view(control: &Control, service: &Service) -> Value {
    let versions: Vec<Value> = service
        .versions
        .iter()
        .zip(service.weights().zip(service.shares()))
        .map(|(version, ((_, weight), (_, share)))| {
            let endpoints: Vec<Value> = version
                .endpoints
                .iter()
                .map(|e| json!({ "address": &*e.label, "healthy": e.is_healthy(), "ejected": e.is_ejected(), "ejections": e.ejections(), "inflight": e.inflight() }))
                .collect();
            let protocol = match version.protocol {
                Protocol::Http1 => "http1",
                Protocol::Http2 => "http2",
            };
            json!({ "name": &*version.name, "protocol": protocol, "weight": weight, "share": share, "endpoints": endpoints })
        })
        .collect();
    let hosts: Vec<String> = service
        .hosts
        .iter()
        .map(|h| match h {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Suffix(suffix) => format!("*{suffix}"),
        })
        .collect();
    let rules: Vec<Value> = service
        .rules
        .iter()
        .map(|rule| {
            let matcher = crate::flags::match_view(&rule.matcher, &service.flags);
            json!({ "match": matcher, "version": &*service.versions[rule.version].name })
        })
        .collect();
    let sticky = service.sticky.as_ref().map(|s| {
        let key = s.key.as_ref().map(crate::flags::key_text);
        json!({ "cookie": s.cookie, "hash_key": key, "ttl": humantime::format_duration(s.ttl).to_string() })
    });
    json!({
        "name": &*service.name,
        "hosts": hosts,
        "path_prefix": service.path_prefix,
        "expose_version": service.expose_version,
        "weights_from": if service.overridden { "admin override" } else { "config" },
        "versions": versions,
        "rules": rules,
        "sticky": sticky,
        "mirror": service.mirrors.iter().map(|m| mirror_view(m)).collect::<Vec<Value>>(),
        "rollout": control.rollout_view(service),
        "flags": service.flags.view(),
    })
}

/// A mirror as the API shows it: settings, copies in flight, drops, mismatches and samples.
fn mirror_view(mirror: &crate::table::Mirror) -> Value {
    use crate::metrics::DropReason;
    let compare = match mirror.compare {
        crate::config::Compare::None => "none",
        crate::config::Compare::Status => "status",
        crate::config::Compare::Body => "body",
    };
    let m = &mirror.metrics;
    json!({
        "version": &*mirror.version,
        "percent": mirror.percent,
        "max_body": mirror.max_body,
        "max_in_flight": mirror.max_in_flight,
        "compare": compare,
        "in_flight": m.inflight(),
        "sent": crate::metrics::CODES.iter().map(|c| m.requests(c)).sum::<u64>(),
        "dropped": {
            "max_body": m.dropped(DropReason::MaxBody),
            "max_in_flight": m.dropped(DropReason::MaxInFlight),
            "incomplete": m.dropped(DropReason::Incomplete),
        },
        "mismatches": m.mismatches(),
        "samples": m.mismatch_samples(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_name_this_machine() {
        for host in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST",
            "[::1]:9901",
            "10.0.0.7",
        ] {
            assert!(names_this_machine(host.as_bytes()), "{host}");
        }
        for host in ["evil.example:9901", "127.0.0.1.nip.io", "", "a b"] {
            assert!(!names_this_machine(host.as_bytes()), "{host}");
        }
    }

    #[test]
    fn constant_time_eq_compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("service=checkout&x=1"), "service").as_deref(),
            Some("checkout")
        );
        assert_eq!(query_param(Some("x=1"), "service"), None);
        assert_eq!(query_param(None, "service"), None);
    }
}
