//! The configuration file as written: serde types that mirror the YAML one to one.
//!
//! Nothing here is trusted by the request path. Values that need parsing (durations, sizes,
//! addresses) stay strings so that [`super::compile`] can check all of them and report every
//! error with its YAML path, instead of serde stopping at the first one. Every struct denies
//! unknown fields: a section of the SPEC that is not built yet is an error, never ignored.

use indexmap::IndexMap;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Request-path threads; default: one per core.
    pub workers: Option<usize>,
    /// Data-plane listeners (HTTP/1.1 and h2c on each).
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// The admin listener.
    pub admin: Option<RawAdmin>,
    /// Where rollout state, weight overrides and history survive restarts.
    pub state_dir: Option<String>,
    /// JSON-lines access log; omitted: off.
    pub access_log: Option<RawAccessLog>,
    /// Timeouts and limits shared by every service.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// The services, in file order (file order breaks routing ties).
    #[serde(default)]
    pub services: Vec<RawService>,
}

/// `access_log`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// File to append to, or `-` for standard output.
    pub path: String,
}

/// `listeners[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// A name for logs and metrics.
    pub name: String,
    /// `host:port` to bind.
    pub address: String,
    /// TLS termination; omitted: plain HTTP/1.1 and h2c.
    pub tls: Option<RawListenerTls>,
}

/// `listeners[i].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Certificate and key pairs; the first is the default.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
}

/// `listeners[i].tls.certificates[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file: the certificate, then its chain.
    pub cert: String,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this pair serves; omitted: the certificate's DNS subject alternative names.
    pub names: Option<Vec<String>>,
}

/// `admin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `host:port` of the admin API.
    pub address: String,
    /// A file holding the bearer token every `/api` call must present.
    pub token_file: Option<String>,
}

/// `defaults`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// `defaults.timeouts`.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// `defaults.limits`.
    #[serde(default)]
    pub limits: RawLimits,
    /// Largest request body accepted, e.g. `16MiB`.
    pub max_request_body: Option<String>,
}

/// `defaults.limits`: what one process takes on before it sheds load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Open client connections over all data-plane listeners; past it, new ones are closed.
    pub max_connections: Option<usize>,
    /// Requests in flight over all connections; past it, requests get `503` at once.
    pub max_in_flight: Option<usize>,
    /// Largest request head (request line and headers), e.g. `64KiB`; past it, `431`.
    pub max_request_headers: Option<String>,
}

/// `defaults.timeouts`: each a duration string such as `250ms` or `30s`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to an upstream endpoint.
    pub connect: Option<String>,
    /// How long a client may take to send a request head.
    pub request_headers: Option<String>,
    /// How long an upstream may take to answer with response headers.
    pub response_headers: Option<String>,
    /// How long an idle pooled upstream connection is kept.
    pub idle: Option<String>,
    /// How long graceful shutdown waits for in-flight requests.
    pub drain: Option<String>,
}

/// `services[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Unique name.
    pub name: String,
    /// Which requests belong to this service; omitted: all.
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    /// When true, responses carry `x-sluice-version`.
    #[serde(default)]
    pub expose_version: bool,
    /// Versions by name, in file order.
    #[serde(default)]
    pub versions: IndexMap<String, RawVersion>,
    /// How traffic is split between versions.
    #[serde(default)]
    pub routing: RawRouting,
    /// Shadow versions that get copies of requests.
    #[serde(default)]
    pub mirror: Vec<RawMirror>,
    /// Passive ejection of endpoints that keep failing.
    pub outlier_detection: Option<RawOutlierDetection>,
    /// A canary or blue/green rollout plan with its guardrails.
    pub rollout: Option<RawRollout>,
    /// Feature flags by name, in file order (the order of `x-sluice-flags`).
    #[serde(default)]
    pub flags: IndexMap<String, RawFlag>,
}

/// `services[i].flags.NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlag {
    /// Share of keys for which the flag is on, 0 to 100, decimals allowed; default 0.
    pub percent: Option<f64>,
    /// `header:NAME` or `cookie:NAME`; default: the sticky `hash_key`, else random per request.
    pub key: Option<String>,
    /// Targeting, first match wins, before `percent`: force the flag on or off.
    #[serde(default)]
    pub rules: Vec<RawFlagRule>,
    /// Kill switch: `false` turns the flag off for everyone, rules included; default true.
    pub enabled: Option<bool>,
}

/// `services[i].flags.NAME.rules[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlagRule {
    /// What the request must carry (`header` or `cookie`).
    #[serde(rename = "match")]
    pub matcher: RawRuleMatch,
    /// `on` or `off` (YAML booleans are accepted too).
    pub value: RawFlagValue,
}

/// A flag rule's `value`: `on`/`off` as written, or a YAML boolean.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawFlagValue {
    /// `true` / `false`.
    Bool(bool),
    /// `on` / `off`.
    Text(String),
}

/// `services[i].rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// The version that serves today.
    pub baseline: String,
    /// The version being rolled out.
    pub canary: String,
    /// Start when a reload changes the canary's endpoints.
    #[serde(default)]
    pub auto_start: bool,
    /// The plan, in order.
    #[serde(default)]
    pub steps: Vec<RawStep>,
    /// What a healthy canary looks like.
    #[serde(default)]
    pub guardrails: RawGuardrails,
    /// `rollback` (default) or `pause`.
    pub on_breach: Option<String>,
}

/// `rollout.steps[j]`: `weight` and/or `hold`, or `approval: true`, or `webhook`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// The canary's share in percent, 0 to 100.
    pub weight: Option<u64>,
    /// How long to watch the guardrails before the next step, e.g. `60s`.
    pub hold: Option<String>,
    /// `true`: wait for an operator.
    pub approval: Option<bool>,
    /// Ask an HTTP endpoint.
    pub webhook: Option<RawWebhook>,
}

/// `rollout.steps[j].webhook`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://` or `https://host:port/path` to POST to.
    pub url: String,
    /// How long it may take to answer; default 5s.
    pub timeout: Option<String>,
    /// For `https`: PEM file of the CA certificates to trust instead of the built-in roots.
    pub ca: Option<String>,
}

/// `rollout.guardrails`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    /// Sliding window the rules read, e.g. `30s`.
    pub window: Option<String>,
    /// Fewest canary requests in the window for a verdict.
    pub min_requests: Option<u64>,
    /// Highest canary error rate, 0 to 1.
    pub max_error_rate: Option<f64>,
    /// Highest canary error rate minus baseline error rate, 0 to 1.
    pub max_error_rate_increase: Option<f64>,
    /// Highest canary p99, e.g. `300ms`.
    pub max_p99: Option<String>,
    /// Highest canary p99 over baseline p99.
    pub max_p99_ratio: Option<f64>,
}

/// `services[i].outlier_detection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Failures in a row (connect, timeout, reset, 5xx) that eject an endpoint.
    pub consecutive_failures: Option<u32>,
    /// How long the first ejection lasts; it doubles on each repeat.
    pub ejection: Option<String>,
    /// Most of a version's endpoints that may be ejected at once, in percent.
    pub max_ejected_percent: Option<u32>,
}

/// `services[i].mirror[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The shadow version.
    pub version: String,
    /// Share of the service's requests copied, 0 to 100. Required.
    pub percent: f64,
    /// Largest request body copied, e.g. `64KiB`; larger ones are not mirrored.
    pub max_body: Option<String>,
    /// Most shadow requests in flight; past that, copies are dropped.
    pub max_in_flight: Option<usize>,
    /// `none`, `status` or `body`.
    pub compare: Option<String>,
}

/// `services[i].match`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host names or `*.suffix` wildcards; omitted: any host.
    pub hosts: Option<Vec<String>>,
    /// Path prefix on segment boundaries; omitted: `/`.
    pub path_prefix: Option<String>,
}

/// `services[i].versions.NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    /// `host:port`, `http://host:port` or `https://host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `http1` (default) or `http2` (h2c, prior knowledge).
    pub protocol: Option<String>,
    /// Active health checks of each endpoint.
    pub health_check: Option<RawHealthCheck>,
    /// How `https://` endpoints are verified.
    pub tls: Option<RawUpstreamTls>,
}

/// `services[i].versions.NAME.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of the CA certificates to trust instead of the built-in roots.
    pub ca: Option<String>,
    /// Name sent by SNI and verified in the certificate; default: the endpoint's host.
    pub server_name: Option<String>,
}

/// `services[i].versions.NAME.health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path to GET; a 2xx answer is a success.
    pub path: Option<String>,
    /// Time between checks, e.g. `2s`.
    pub interval: Option<String>,
    /// Time a check may take, e.g. `500ms`.
    pub timeout: Option<String>,
    /// Successes in a row that make a down endpoint healthy.
    pub healthy: Option<u32>,
    /// Failures in a row that take an endpoint out.
    pub unhealthy: Option<u32>,
}

/// `services[i].routing`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Version name to a non-negative integer weight; left out: 0.
    #[serde(default)]
    pub weights: IndexMap<String, u64>,
    /// Header and cookie rules, first match wins, before weights.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Sticky sessions.
    pub sticky: Option<RawSticky>,
}

/// `services[i].routing.rules[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// What the request must carry.
    #[serde(rename = "match")]
    pub matcher: RawRuleMatch,
    /// The version it goes to.
    pub version: String,
}

/// `services[i].routing.rules[j].match`: exactly one of `header`, `cookie` or (version rules
/// only) `flag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleMatch {
    /// A header with an exact value, or present at all.
    pub header: Option<RawHeaderMatch>,
    /// A cookie with an exact value.
    pub cookie: Option<RawCookieMatch>,
    /// A feature flag of the service that is on for this request.
    pub flag: Option<String>,
}

/// `match.header`: `name` with exactly one of `value` or `present: true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    /// Header name, any case.
    pub name: String,
    /// Exact value.
    pub value: Option<String>,
    /// `true`: any value.
    pub present: Option<bool>,
}

/// `match.cookie`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCookieMatch {
    /// Cookie name.
    pub name: String,
    /// Exact value.
    pub value: String,
}

/// `services[i].routing.sticky`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// Name of the cookie that pins a client to a version.
    pub cookie: String,
    /// `header:NAME` or `cookie:NAME`: deterministic bucketing by that key.
    pub hash_key: Option<String>,
    /// Cookie lifetime, e.g. `1h`; default 1h.
    pub ttl: Option<String>,
}
