//! The routing table: the compiled, immutable snapshot the request path reads, and
//! [`Routing`], the `ArcSwap` that publishes a new one atomically.
//!
//! A table is never changed in place. Every routing change builds a whole new table with a
//! higher revision and a cause, and swaps it in; a request loads the table once and finishes
//! with what it loaded.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use http::HeaderValue;

use crate::config::{Config, HostPattern, Limits, Protocol, ServiceSpec};
use crate::flags::FlagOverrides;
use crate::metrics::{Metrics, Role, VersionMetrics};
use crate::split::Split;
use crate::upstream::{Endpoint, Upstreams};

/// Why a table was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Built from the configuration file, at start or on reload.
    Config,
    /// An operator changed weights through the admin API.
    Admin,
    /// An endpoint's health changed.
    Health,
    /// A rollout moved to its next step (or finished, or paused for lack of data).
    Rollout,
    /// A guardrail was breached: the rollout rolled back or paused.
    Guardrail,
}

impl Cause {
    /// The name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Config => "config",
            Cause::Admin => "admin",
            Cause::Health => "health",
            Cause::Rollout => "rollout",
            Cause::Guardrail => "guardrail",
        }
    }
}

/// Manual weight overrides: service → version → weight. A service listed here uses exactly
/// these weights (versions left out get 0) instead of the file's.
pub type Overrides = BTreeMap<String, BTreeMap<String, u32>>;

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
    /// Weighted choice over `versions`, by effective weight (0 for a version with no healthy
    /// endpoint).
    pub split: Split,
    /// Each version's configured weight (file or override), before health.
    pub configured: Vec<u64>,
    /// Header and cookie rules, first match wins.
    pub rules: Vec<crate::config::RuleSpec>,
    /// Sticky sessions, if configured.
    pub sticky: Option<crate::config::StickySpec>,
    /// Shadow versions that get copies of requests.
    pub mirrors: Vec<Arc<Mirror>>,
    /// Passive outlier detection, if configured.
    pub outlier_detection: Option<crate::config::OutlierSpec>,
    /// Whether the weights are an override (admin or rollout) rather than the file's.
    pub overridden: bool,
    /// The rollout plan, and the rollout's state when this table was published (so the admin
    /// API shows weights and rollout state of one revision together).
    pub rollout: Option<(crate::config::RolloutSpec, Option<crate::rollout::RolloutState>)>,
    /// Feature flags, decided before the version (file values with admin overrides applied).
    pub flags: crate::flags::Flags,
}

/// Each service's rollout state, active or finished.
pub type Rollouts = BTreeMap<String, crate::rollout::RolloutState>;

/// A compiled mirror: where copies go and how many may be in flight.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow version's name.
    pub version: Arc<str>,
    /// The shadow version's endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Share of requests copied, percent.
    pub percent: f64,
    /// Largest body copied, bytes.
    pub max_body: u64,
    /// Most copies in flight.
    pub max_in_flight: usize,
    /// What is compared with the primary's answer.
    pub compare: crate::config::Compare,
    /// Shadow-role metrics of the version: counts, latency, in-flight copies, drops, mismatches.
    pub metrics: Arc<VersionMetrics>,
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
    /// A sticky cookie naming this version keeps the client here: only while its weight is above
    /// 0, so a rollback to 0 moves pinned clients off at once (rules are checked before cookies).
    pub sticky_valid: bool,
    /// The `Set-Cookie` value pinning a client here, when the service is sticky.
    pub set_cookie: Option<HeaderValue>,
    /// Counters and latency of requests this version serves.
    pub metrics: Arc<VersionMetrics>,
}

impl RoutingTable {
    /// Builds a table from a validated configuration and the weight overrides in force,
    /// interning endpoints and metrics in `registries`.
    pub fn build(
        config: &Config,
        overrides: &Overrides,
        rollouts: &Rollouts,
        registries: &Registries,
        revision: u64,
        cause: Cause,
    ) -> Self {
        Self::build_with_flags(
            config,
            overrides,
            &FlagOverrides::new(),
            rollouts,
            registries,
            revision,
            cause,
        )
    }

    /// [`RoutingTable::build`] with the flag overrides in force too.
    pub fn build_with_flags(
        config: &Config,
        overrides: &Overrides,
        flag_overrides: &FlagOverrides,
        rollouts: &Rollouts,
        registries: &Registries,
        revision: u64,
        cause: Cause,
    ) -> Self {
        let services = config
            .services
            .iter()
            .map(|spec| {
                let mut service = Service::build(spec, overrides.get(&spec.name), registries);
                service.flags = crate::flags::Flags::build(
                    &service.name,
                    &spec.flags,
                    flag_overrides.get(&spec.name),
                    &registries.metrics,
                );
                service.rollout = spec
                    .rollout
                    .clone()
                    .map(|plan| (plan, rollouts.get(&spec.name).cloned()));
                service
            })
            .collect();
        Self {
            revision,
            cause,
            limits: config.limits,
            services,
        }
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| &*s.name == name)
    }
}

impl Service {
    fn build(spec: &ServiceSpec, weights: Option<&BTreeMap<String, u32>>, registries: &Registries) -> Self {
        let service_name: Arc<str> = Arc::from(spec.name.as_str());
        let weight_of = |v: &crate::config::VersionSpec| match weights {
            Some(weights) => weights.get(&v.name).copied().unwrap_or(0),
            None => v.weight,
        };
        let endpoints: Vec<Vec<Arc<Endpoint>>> = spec
            .versions
            .iter()
            .map(|v| {
                v.endpoints
                    .iter()
                    .map(|a| registries.upstreams.endpoint(a, v.protocol, &v.tls))
                    .collect()
            })
            .collect();
        let configured: Vec<u32> = spec.versions.iter().map(weight_of).collect();
        // A version with no healthy endpoint gets nothing; its share goes to the others.
        let effective = configured
            .iter()
            .zip(&endpoints)
            .map(|(&w, e)| if e.iter().any(|e| e.is_healthy()) { w } else { 0 });
        let split = Split::new(effective);
        let versions = spec
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let name: Arc<str> = Arc::from(v.name.as_str());
                Version {
                    metrics: registries.metrics.version(&service_name, &name, Role::Primary),
                    name,
                    // Validated names are header-safe; the fallback is never used.
                    header: HeaderValue::from_str(&v.name).unwrap_or(HeaderValue::from_static("invalid")),
                    protocol: v.protocol,
                    endpoints: endpoints[i].clone(),
                    sticky_valid: split.weight(i) > 0,
                    set_cookie: spec
                        .sticky
                        .as_ref()
                        .and_then(|s| crate::sticky::set_cookie(&s.cookie, &v.name, s.ttl)),
                }
            })
            .collect::<Vec<Version>>();
        let mirrors = spec
            .mirrors
            .iter()
            .map(|m| {
                let version: &Version = &versions[m.version];
                Arc::new(Mirror {
                    version: Arc::clone(&version.name),
                    endpoints: version.endpoints.clone(),
                    percent: m.percent,
                    max_body: m.max_body,
                    max_in_flight: m.max_in_flight,
                    compare: m.compare,
                    metrics: registries.metrics.version(&service_name, &version.name, Role::Shadow),
                })
            })
            .collect();
        Service {
            configured: configured.into_iter().map(u64::from).collect(),
            name: service_name,
            hosts: spec.hosts.clone(),
            path_prefix: spec.path_prefix.clone(),
            expose_version: spec.expose_version,
            versions,
            split,
            rules: spec.rules.clone(),
            sticky: spec.sticky.clone(),
            mirrors,
            outlier_detection: spec.outlier_detection.clone(),
            overridden: weights.is_some(),
            rollout: None,
            flags: crate::flags::Flags::default(),
        }
    }

    /// Each version's configured weight (file or override), in version order.
    pub fn weights(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.versions.iter().zip(&self.configured).map(|(v, &w)| (&*v.name, w))
    }

    /// Each version's effective share in percent, after health.
    pub fn shares(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        let total = self.split.total();
        self.versions.iter().enumerate().map(move |(i, v)| {
            let share = if total == 0 {
                0.0
            } else {
                self.split.weight(i) as f64 * 100.0 / total as f64
            };
            (&*v.name, share)
        })
    }
}

/// The live routing table and the endpoints it points to.
#[derive(Debug)]
pub struct Routing {
    current: ArcSwap<RoutingTable>,
    registries: Registries,
}

/// What outlives routing-table revisions: endpoints (and their connection pools) and metrics.
#[derive(Debug, Default)]
pub struct Registries {
    /// Endpoints by address and protocol.
    pub upstreams: Upstreams,
    /// Metrics by service, version and role.
    pub metrics: Arc<Metrics>,
    /// Health changes, from checkers and outlier detection to the control plane.
    pub health_events: crate::health::Events,
}

impl Routing {
    /// Builds revision 1 from `config`, without overrides.
    pub fn new(config: &Config) -> Self {
        let registries = Registries::default();
        let table = RoutingTable::build(
            config,
            &Overrides::new(),
            &Rollouts::new(),
            &registries,
            1,
            Cause::Config,
        );
        Self {
            current: ArcSwap::from_pointee(table),
            registries,
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

    /// Publishes `table`: requests that start from now on use it; requests in flight keep theirs.
    pub fn publish(&self, table: RoutingTable) {
        self.current.store(Arc::new(table));
    }

    /// The registries shared by every revision.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.registries.metrics
    }
}
