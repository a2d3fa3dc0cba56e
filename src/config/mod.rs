//! Configuration: the YAML file is parsed into [`raw`] types, then [`compile`]d into a
//! validated [`Config`] that the rest of the proxy trusts without re-checking.
//!
//! `parse` → `compile` never panics: every problem becomes a [`ConfigError`] that names the
//! YAML path and the fix, and all of them are reported at once.

mod compile;
mod flags;
mod limits;
pub mod raw;
pub mod rollout;
mod routing;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use compile::compile;
pub use flags::{percent_to_ppm, ppm_to_percent};
pub use rollout::{Guardrails, OnBreach, RolloutSpec, Step};
pub use units::EndpointAddr;

/// Default connect timeout: long enough for a loaded host, short enough to retry elsewhere.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time a client has to send its request head (slow-loris bound).
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an upstream has to start answering.
pub const DEFAULT_RESPONSE_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lifetime of an idle pooled upstream connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on graceful shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default request body limit.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 << 20;
/// Default cap on open client connections. Measured (benches/load/connections.sh, release build):
/// an idle keep-alive connection costs about 25 KiB of RSS (hyper gives each an 8 KiB read and
/// an 8 KiB write buffer to start with), so 10 000 of them take about 250 MiB. Lower it for a sidecar; raise it
/// together with `ulimit -n`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default cap on requests in flight, as many as connections: an HTTP/1.1 client is then never
/// shed before it would be refused a connection, and the cap binds HTTP/2 multiplexing. Past it,
/// answering `503` at once is cheaper than queueing without bound.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Default largest request head, as Envoy's 60 KiB and NGINX's 4 × 8 KiB buffers, rounded up:
/// generous for cookies and tokens, and far below hyper's own ~400 KiB.
pub const DEFAULT_MAX_REQUEST_HEADERS: u64 = 64 << 10;
/// Smallest `max_request_headers`: hyper reads request heads in buffers of at least this.
pub const MIN_MAX_REQUEST_HEADERS: u64 = 8 << 10;
/// Largest `max_request_headers`; more is surely a mistake.
pub const MAX_MAX_REQUEST_HEADERS: u64 = 1 << 20;
/// Default largest body a mirror copies: enough for typical API requests, bounded per copy.
pub const DEFAULT_MIRROR_MAX_BODY: u64 = 64 << 10;
/// Default shadow requests in flight per mirror.
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: usize = 64;
/// Default health-check path.
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";
/// Default time between health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default time one health check may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default successes in a row to bring an endpoint back.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default failures in a row to take an endpoint out.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default failures in a row that eject an endpoint.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Default first ejection.
pub const DEFAULT_EJECTION: Duration = Duration::from_secs(30);
/// Default cap on a version's ejected endpoints: never lose more than half to ejection.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// Default sticky cookie lifetime: a working session.
pub const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(3600);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Request-path threads; `None`: one per core.
    pub workers: Option<usize>,
    /// Data-plane listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener.
    pub admin: Option<AdminConfig>,
    /// Where state survives restarts; `None`: in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Access log file (`-`: standard output); `None`: off.
    pub access_log: Option<std::path::PathBuf>,
    /// Timeouts and limits.
    pub limits: Limits,
    /// Services in file order.
    pub services: Vec<ServiceSpec>,
    /// Things that are allowed but probably not meant (printed by `validate`, logged by `run`).
    pub warnings: Vec<String>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to bind.
    pub address: SocketAddr,
    /// File holding the bearer token; `None`: no auth (loopback addresses only).
    pub token_file: Option<std::path::PathBuf>,
}

/// One data-plane listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name for logs.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS termination; `None`: plain HTTP/1.1 and h2c.
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS: certificate and key files, read by [`crate::tls`] at start and whenever
/// they change on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// At least one pair; the first serves clients without SNI or with an unknown name.
    pub certificates: Vec<CertificateSpec>,
}

/// One certificate and key pair of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// SNI names, lower-case (`*.example.com` allowed); empty: the certificate's DNS names.
    pub names: Vec<String>,
}

/// How a version's `https://` endpoints are verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The CA file, if one replaces the built-in (Mozilla) roots.
    pub ca: Option<std::path::PathBuf>,
    /// Its certificates (DER), read when the configuration is loaded.
    pub ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Name sent by SNI and verified; `None`: the endpoint's host.
    pub server_name: Option<String>,
}

/// Timeouts and limits, from `defaults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP connect to an endpoint.
    pub connect: Duration,
    /// Client request head.
    pub request_headers: Duration,
    /// Upstream response head.
    pub response_headers: Duration,
    /// Idle pooled upstream connection.
    pub idle: Duration,
    /// Graceful shutdown.
    pub drain: Duration,
    /// Largest request body, in bytes.
    pub max_request_body: u64,
    /// Open client connections, all data-plane listeners together.
    pub max_connections: usize,
    /// Requests in flight, all connections together.
    pub max_in_flight: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_request_headers: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request_headers: DEFAULT_REQUEST_HEADERS_TIMEOUT,
            response_headers: DEFAULT_RESPONSE_HEADERS_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            drain: DEFAULT_DRAIN_TIMEOUT,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
        }
    }
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Host patterns; empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Whether responses carry `x-sluice-version`.
    pub expose_version: bool,
    /// Versions in file order (the order bucket ranges follow).
    pub versions: Vec<VersionSpec>,
    /// Header and cookie rules, first match wins.
    pub rules: Vec<RuleSpec>,
    /// Sticky sessions.
    pub sticky: Option<StickySpec>,
    /// Shadow versions.
    pub mirrors: Vec<MirrorSpec>,
    /// Passive ejection of failing endpoints.
    pub outlier_detection: Option<OutlierSpec>,
    /// The rollout plan, if any.
    pub rollout: Option<RolloutSpec>,
    /// Feature flags in file order (at most [`MAX_FLAGS`]).
    pub flags: Vec<FlagSpec>,
}

/// Most flags a service may have: a request's flags are one 64-bit set.
pub const MAX_FLAGS: usize = 64;

/// A validated feature flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSpec {
    /// Name: a header token, metric label and URL path segment.
    pub name: String,
    /// Share of buckets for which the flag is on, in millionths (percent × 10 000, rounded).
    pub ppm: u32,
    /// Bucketing key, the sticky `hash_key` when not given; `None`: random per request.
    pub key: Option<KeySource>,
    /// Whether `key` was written on the flag (else it is the sticky `hash_key`, or none).
    pub key_configured: bool,
    /// Targeting rules, first match wins.
    pub rules: Vec<FlagRuleSpec>,
    /// `false`: off for everyone.
    pub enabled: bool,
}

/// A flag's targeting rule: requests matching `matcher` get the flag `on` (or off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRuleSpec {
    /// What the request must carry (header or cookie).
    pub matcher: RuleMatch,
    /// Forced value.
    pub on: bool,
}

/// Passive outlier detection: `consecutive_failures` in a row eject an endpoint for `ejection`,
/// doubling on each repeat, while at most `max_ejected_percent` of a version is ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub ejection: Duration,
    /// Cap on ejected endpoints per version, percent.
    pub max_ejected_percent: u32,
}

/// One `mirror` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSpec {
    /// Index into the service's versions.
    pub version: usize,
    /// Share of requests copied, in percent.
    pub percent: f64,
    /// Largest request body copied, bytes.
    pub max_body: u64,
    /// Most shadow requests in flight.
    pub max_in_flight: usize,
    /// What to compare between the primary's and the shadow's answers.
    pub compare: Compare,
}

impl Eq for MirrorSpec {}

/// What a mirror compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Nothing.
    None,
    /// Status codes.
    Status,
    /// Status codes and a hash of the bodies.
    Body,
}

/// A rule: requests matching `matcher` go to `versions[version]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// What the request must carry.
    pub matcher: RuleMatch,
    /// Index into the service's versions.
    pub version: usize,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMatch {
    /// A header with this exact value, or (`None`) present with any value.
    Header {
        /// Lower-case name.
        name: http::HeaderName,
        /// Exact value; `None`: presence.
        value: Option<http::HeaderValue>,
    },
    /// A cookie with this exact value.
    Cookie {
        /// Cookie name.
        name: String,
        /// Exact value.
        value: String,
    },
    /// The service's flag at this index is on for the request (version rules only).
    Flag(usize),
}

/// Sticky-session settings of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickySpec {
    /// Cookie naming the version a client was given.
    pub cookie: String,
    /// Key for deterministic bucketing; `None`: random by weight.
    pub key: Option<KeySource>,
    /// Cookie lifetime (`Max-Age`).
    pub ttl: Duration,
}

/// Where a bucketing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `header:NAME`.
    Header(http::HeaderName),
    /// `cookie:NAME`.
    Cookie(String),
}

/// A host pattern of `match.hosts`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `checkout.example.com`.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any deeper name.
    Suffix(String),
}

/// Upstream protocol of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    Http1,
    /// HTTP/2, one multiplexed connection per endpoint: h2c (prior knowledge), or h2 by ALPN
    /// over TLS.
    Http2,
}

/// A validated version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    /// Name, usable as a header value.
    pub name: String,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// At least one endpoint.
    pub endpoints: Vec<EndpointAddr>,
    /// Routing weight (0: no traffic).
    pub weight: u32,
    /// Active health checks of each endpoint.
    pub health_check: Option<HealthCheckSpec>,
    /// Verification of its `https://` endpoints.
    pub tls: UpstreamTls,
}

/// Active health checks: `GET path` every `interval`; `unhealthy` failures in a row take an
/// endpoint out, `healthy` successes in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    /// Path (and query) to GET.
    pub path: http::uri::PathAndQuery,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Successes in a row to come back.
    pub healthy: u32,
    /// Failures in a row to go out.
    pub unhealthy: u32,
}

/// One validation problem: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path, e.g. `services[0].routing.weights`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses and validates a configuration from YAML text.
pub fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    let raw: raw::RawConfig = match serde_path_to_error::deserialize(deserializer) {
        Ok(raw) => raw,
        Err(error) => {
            // serde_yaml prefixes its own path to some messages ("services[0]: unknown field");
            // use that one when present, serde_path_to_error's otherwise.
            let mut path = error.path().to_string();
            let mut message = error.into_inner().to_string();
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.contains(' ') {
                    path = prefix.to_owned();
                    message = rest.to_owned();
                }
            }
            return Err(ConfigErrors(vec![ConfigError { path, message }]));
        }
    };
    compile(raw)
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse(&text)
}

/// What the config modules' tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// Every error `parse` reports for `yaml`, as text; none if it parses.
    pub fn errors_of(yaml: &str) -> Vec<String> {
        match super::parse(yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// A listener, for configs that need one and care about something else.
    pub const BASE: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]\n";
}
