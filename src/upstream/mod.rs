//! Request path, steps 5 and 6 (upstream side): endpoints, the least-loaded-of-two choice
//! between them, and sending a request over a pooled connection.
//!
//! An [`Endpoint`] outlives routing tables: [`Upstreams`] interns one per address and
//! protocol, so a table swap keeps every pooled connection warm.

pub(crate) mod framing;
mod h1;
mod io;
mod pipeline;
mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::config::{EndpointAddr, Protocol, UpstreamTls};

pub use h1::Upgraded;
pub use io::{connect, UpstreamIo};
pub use pipeline::{Answer, Job};
use pool::Pool;
pub use pool::{is_body_too_large, FailureKind, Lease, RequestBody, SendFailure, Tee, UpstreamBody};

/// One upstream address of a version.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it is.
    pub addr: EndpointAddr,
    /// `host:port`, for logs and errors.
    pub label: Arc<str>,
    /// `host:port` as a URI authority, for HTTP/2 requests that carry no `Host`.
    authority: http::uri::Authority,
    protocol: Protocol,
    /// For `https://` endpoints: the TLS client side, or why it could not be set up.
    tls: Option<Result<crate::tls::Origin, String>>,
    /// Requests sent here whose response has not finished: the load P2C compares.
    inflight: AtomicUsize,
    /// Whether active health checks let this endpoint take traffic (endpoints start healthy).
    healthy: std::sync::atomic::AtomicBool,
    /// Whether outlier detection holds this endpoint out.
    ejected: std::sync::atomic::AtomicBool,
    /// Failures in a row, for outlier detection.
    consecutive_failures: std::sync::atomic::AtomicU32,
    /// Ejections so far: each lasts twice as long as the one before.
    ejections: std::sync::atomic::AtomicU32,
    pool: Pool,
    /// Pipelined HTTP/1.1 for shadow copies, started on the first.
    pipeline: std::sync::OnceLock<pipeline::Pipeline>,
}

impl Endpoint {
    fn new(addr: EndpointAddr, protocol: Protocol, tls: &UpstreamTls) -> Self {
        let label: Arc<str> = Arc::from(addr.to_string());
        let authority = addr
            .authority()
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"));
        let tls = addr.tls.then(|| crate::tls::Origin::new(&addr, protocol, tls));
        Self {
            addr,
            label,
            authority,
            protocol,
            tls,
            inflight: AtomicUsize::new(0),
            healthy: std::sync::atomic::AtomicBool::new(true),
            ejected: std::sync::atomic::AtomicBool::new(false),
            consecutive_failures: std::sync::atomic::AtomicU32::new(0),
            ejections: std::sync::atomic::AtomicU32::new(0),
            pool: Pool::new(protocol),
            pipeline: std::sync::OnceLock::new(),
        }
    }

    /// Whether the endpoint may take traffic: its checks pass and it is not ejected.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    /// Whether the active health checks pass.
    pub fn check_passes(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the endpoint's active checks as passing or not; returns whether that changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Whether outlier detection holds the endpoint out.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts a failure; returns the failures in a row.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// A success ends a run of failures.
    pub fn reset_failures(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Ejects the endpoint unless it already is; returns how many ejections came before.
    pub fn eject(&self) -> Option<u32> {
        self.ejected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        Some(self.ejections.fetch_add(1, Ordering::Relaxed))
    }

    /// Ends an ejection.
    pub fn readmit(&self) {
        self.ejected.store(false, Ordering::Relaxed);
    }

    /// Requests in flight to this endpoint.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Sends a complete HTTP/1.1 request that nobody waits for (a shadow copy), pipelined with
    /// others. Must be called on the runtime.
    pub fn send_pipelined(self: &Arc<Self>, job: Job) {
        self.pipeline
            .get_or_init(|| pipeline::Pipeline::start(Arc::downgrade(self)))
            .send(job);
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// Decrements an endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    /// The endpoint this request goes to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registry of endpoints shared by all routing-table revisions.
#[derive(Debug, Default)]
pub struct Upstreams {
    // Locked only while a table is built, never on the request path.
    endpoints: Mutex<HashMap<EndpointKey, Weak<Endpoint>>>,
}

/// What makes two endpoints the same: address, protocol and, for `https://`, how it is verified.
type EndpointKey = (EndpointAddr, Protocol, Option<UpstreamTls>);

impl Upstreams {
    /// The endpoint for `addr` with `protocol` (and `tls`, if `addr` is `https://`): the live
    /// one if a table still holds it.
    pub fn endpoint(&self, addr: &EndpointAddr, protocol: Protocol, tls: &UpstreamTls) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        endpoints.retain(|_, weak| weak.strong_count() > 0);
        let key = (addr.clone(), protocol, addr.tls.then(|| tls.clone()));
        if let Some(live) = endpoints.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let endpoint = Arc::new(Endpoint::new(addr.clone(), protocol, tls));
        endpoints.insert(key, Arc::downgrade(&endpoint));
        endpoint
    }
}

impl Upstreams {
    /// Closes pooled connections idle for longer than `idle` on every live endpoint; returns
    /// how many were closed.
    pub fn sweep(&self, idle: std::time::Duration) -> usize {
        let endpoints: Vec<Arc<Endpoint>> = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            endpoints.values().filter_map(Weak::upgrade).collect()
        };
        endpoints.iter().map(|e| e.pool.sweep(idle)).sum()
    }

    /// Sweeps every `idle / 4` (between 50 ms and 5 s), reading `idle` from the table in force,
    /// until `routing` is dropped.
    pub fn spawn_sweeper(routing: &Arc<crate::table::Routing>) {
        let weak = Arc::downgrade(routing);
        tokio::spawn(async move {
            loop {
                let Some(idle) = weak.upgrade().map(|r| r.load().limits.idle) else {
                    return;
                };
                let every = (idle / 4).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_secs(5));
                tokio::time::sleep(every).await;
                let Some(routing) = weak.upgrade() else { return };
                let closed = routing.registries().upstreams.sweep(idle);
                if closed > 0 {
                    tracing::debug!(closed, "closed idle upstream connections");
                }
            }
        });
    }
}

/// Power of two choices: of two distinct random healthy endpoints, the one with fewer requests
/// in flight. `exclude` (an endpoint that just failed to connect) is never chosen.
pub fn pick<'a>(endpoints: &'a [Arc<Endpoint>], exclude: Option<&Arc<Endpoint>>) -> Option<&'a Arc<Endpoint>> {
    let less_loaded = |a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>| if b.inflight() < a.inflight() { b } else { a };
    // Fast path, the common case: two distinct draws over all endpoints that both turn out
    // healthy are a uniform pair of healthy endpoints, so no scan is needed.
    if exclude.is_none() && endpoints.len() >= 2 {
        let a = fastrand::usize(..endpoints.len());
        let b = (a + 1 + fastrand::usize(..endpoints.len() - 1)) % endpoints.len();
        let (ea, eb) = (&endpoints[a], &endpoints[b]);
        if ea.is_healthy() && eb.is_healthy() {
            return Some(less_loaded(ea, eb));
        }
    }
    let allowed = |e: &&Arc<Endpoint>| e.is_healthy() && exclude.is_none_or(|x| !Arc::ptr_eq(e, x));
    let count = endpoints.iter().filter(allowed).count();
    let nth = |n: usize| endpoints.iter().filter(allowed).nth(n);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = fastrand::usize(..count);
            let b = (a + 1 + fastrand::usize(..count - 1)) % count;
            Some(less_loaded(nth(a)?, nth(b)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        let upstreams = Upstreams::default();
        (0..n)
            .map(|i| {
                upstreams.endpoint(
                    &EndpointAddr {
                        host: "127.0.0.1".into(),
                        port: 9000 + i,
                        tls: false,
                    },
                    Protocol::Http1,
                    &UpstreamTls::default(),
                )
            })
            .collect()
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let eps = endpoints(2);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].begin()).collect();
        for _ in 0..100 {
            assert!(
                Arc::ptr_eq(pick(&eps, None).expect("some"), &eps[1]),
                "the idle endpoint must win"
            );
        }
    }

    #[test]
    fn p2c_spreads_and_respects_exclude() {
        let eps = endpoints(3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            let e = pick(&eps, Some(&eps[1])).expect("two remain");
            seen[eps.iter().position(|x| Arc::ptr_eq(x, e)).expect("from the list")] += 1;
        }
        assert_eq!(seen[1], 0, "excluded endpoint chosen");
        assert!(seen[0] > 50 && seen[2] > 50, "{seen:?}");
        assert!(pick(&eps[..1], Some(&eps[0])).is_none());
    }

    #[test]
    fn p2c_never_picks_a_down_endpoint() {
        let eps = endpoints(3);
        eps[1].set_healthy(false);
        let mut seen = [0; 3];
        for _ in 0..3000 {
            let e = pick(&eps, None).expect("two are healthy");
            seen[eps.iter().position(|x| Arc::ptr_eq(x, e)).expect("from the list")] += 1;
        }
        assert_eq!(seen[1], 0, "down endpoint chosen: {seen:?}");
        assert!(
            seen[0] > 1000 && seen[2] > 1000,
            "both healthy ones get their share: {seen:?}"
        );
        eps[0].set_healthy(false);
        eps[2].set_healthy(false);
        assert!(pick(&eps, None).is_none(), "nothing healthy, nothing picked");
    }

    #[test]
    fn upstreams_intern_endpoints() {
        let upstreams = Upstreams::default();
        let addr = EndpointAddr {
            host: "a".into(),
            port: 1,
            tls: false,
        };
        let none = UpstreamTls::default();
        let a = upstreams.endpoint(&addr, Protocol::Http1, &none);
        assert!(Arc::ptr_eq(&a, &upstreams.endpoint(&addr, Protocol::Http1, &none)));
        assert!(!Arc::ptr_eq(&a, &upstreams.endpoint(&addr, Protocol::Http2, &none)));
        // Verification settings make a different https endpoint, and do not matter for http.
        let named = UpstreamTls {
            server_name: Some("a.internal".into()),
            ..UpstreamTls::default()
        };
        assert!(Arc::ptr_eq(&a, &upstreams.endpoint(&addr, Protocol::Http1, &named)));
        let secure = EndpointAddr { tls: true, ..addr };
        let b = upstreams.endpoint(&secure, Protocol::Http1, &none);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&b, &upstreams.endpoint(&secure, Protocol::Http1, &none)));
        assert!(!Arc::ptr_eq(&b, &upstreams.endpoint(&secure, Protocol::Http1, &named)));
    }
}
