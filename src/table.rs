//! The routing table: the compiled, immutable snapshot the request path reads, and
//! [`Routing`], the `ArcSwap` that publishes a new one atomically.
//!
//! A table is never changed in place. Every routing change builds a whole new table with a
//! higher revision and a cause, and swaps it in; a request loads the table once and finishes
//! with what it loaded.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::HeaderValue;

use crate::config::{Config, HostPattern, Limits, Protocol};
use crate::split::Split;
use crate::upstream::{Endpoint, Upstreams};

/// Why a table was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Built from the configuration file.
    Config,
}

impl Cause {
    /// The name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Config => "config",
        }
    }
}

/// One immutable snapshot of all services, versions and weights.
#[derive(Debug)]
pub struct RoutingTable {
    /// Only grows; one sequence for the whole table.
    pub revision: u64,
    /// What published this revision.
    pub cause: Cause,
    /// Timeouts and limits in force for requests that load this table.
    pub limits: Limits,
    /// Services in file order.
    pub services: Vec<Service>,
}

/// A compiled service.
#[derive(Debug)]
pub struct Service {
    /// Unique name.
    pub name: Arc<str>,
    /// Host patterns; empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// Whether responses carry `x-sluice-version`.
    pub expose_version: bool,
    /// Versions in file order.
    pub versions: Vec<Version>,
    /// Weighted choice over `versions`.
    pub split: Split,
}

/// A compiled version: a pool of endpoints.
#[derive(Debug)]
pub struct Version {
    /// Name.
    pub name: Arc<str>,
    /// The name as a ready-made header value for `x-sluice-version`.
    pub header: HeaderValue,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Endpoints, shared with other revisions so their pooled connections survive a swap.
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl RoutingTable {
    /// Builds a table from a validated configuration, interning endpoints in `upstreams`.
    pub fn build(config: &Config, upstreams: &Upstreams, revision: u64, cause: Cause) -> Self {
        let services = config
            .services
            .iter()
            .map(|spec| {
                let versions = spec
                    .versions
                    .iter()
                    .map(|v| Version {
                        name: Arc::from(v.name.as_str()),
                        // Validated names are header-safe; the fallback is never used.
                        header: HeaderValue::from_str(&v.name).unwrap_or(HeaderValue::from_static("invalid")),
                        protocol: v.protocol,
                        endpoints: v.endpoints.iter().map(|a| upstreams.endpoint(a, v.protocol)).collect(),
                    })
                    .collect();
                Service {
                    name: Arc::from(spec.name.as_str()),
                    hosts: spec.hosts.clone(),
                    path_prefix: spec.path_prefix.clone(),
                    expose_version: spec.expose_version,
                    versions,
                    split: Split::new(spec.versions.iter().map(|v| v.weight)),
                }
            })
            .collect();
        Self {
            revision,
            cause,
            limits: config.limits,
            services,
        }
    }
}

/// The live routing table and the endpoints it points to.
#[derive(Debug)]
pub struct Routing {
    current: ArcSwap<RoutingTable>,
    upstreams: Upstreams,
}

impl Routing {
    /// Builds revision 1 from `config`.
    pub fn new(config: &Config) -> Self {
        let upstreams = Upstreams::default();
        let table = RoutingTable::build(config, &upstreams, 1, Cause::Config);
        Self {
            current: ArcSwap::from_pointee(table),
            upstreams,
        }
    }

    /// The table in force now. Cheap; hold it only for a routing decision, not across awaits.
    pub fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.current.load()
    }

    /// The table in force now, to keep for the whole of a request.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.current.load_full()
    }

    /// The endpoint registry shared by every revision.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }
}
