//! Active health checks. One task per checked endpoint sends `GET path` every `interval`
//! (with ±10% jitter, so a fleet of proxies does not probe in step); `unhealthy` failures in a
//! row take the endpoint out, `healthy` successes in a row bring it back. Each change is
//! reported to the control plane, which publishes a new table (cause `health`): a version whose
//! every endpoint is down loses its share to the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::config::{Config, EndpointAddr, HealthCheckSpec, Protocol};
use crate::table::Registries;
use crate::upstream::Endpoint;

/// An endpoint whose health changed.
#[derive(Debug, Clone)]
pub struct Change {
    /// The endpoint, `host:port`.
    pub endpoint: Arc<str>,
    /// What happened, for the history: `down`, `up`, `ejected for 30s`, `back from ejection`.
    pub what: String,
}

/// Serialises ejection decisions (see [`observe`]).
static EJECTION_DECISION: Mutex<()> = Mutex::new(());

/// Longest ejection, as a multiple of the first: doubling stops there.
const MAX_EJECTION_FACTOR: u32 = 64;

/// The channel health changes travel on, from checkers and the request path to the control
/// plane. Unbounded, but a sender only sends on a change of state, which is rare.
#[derive(Debug)]
pub struct Events {
    sender: mpsc::UnboundedSender<Change>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
}

impl Default for Events {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Events {
    /// The receiving end, once.
    pub fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        self.receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// A sender.
    pub fn sender(&self) -> mpsc::UnboundedSender<Change> {
        self.sender.clone()
    }
}

/// Passive outlier detection, on the request path: records whether a request to `endpoint`
/// failed (connect, timeout, reset, 5xx). `consecutive_failures` in a row eject it, unless that
/// would put more than `max_ejected_percent` of `version` out; the ejection lasts
/// `ejection × 2^(ejections so far)` (capped), then the endpoint comes back by itself.
pub fn observe(
    endpoint: &Arc<Endpoint>,
    version: &[Arc<Endpoint>],
    spec: &crate::config::OutlierSpec,
    failed: bool,
    events: &Events,
) {
    if !failed {
        endpoint.reset_failures();
        return;
    }
    if endpoint.record_failure() < spec.consecutive_failures || endpoint.is_ejected() {
        return;
    }
    // Counting and ejecting must be one step, or two endpoints of a version reaching their
    // threshold at once on two threads could both pass the cap. Only runs at the threshold.
    let repeat = {
        let _decide = EJECTION_DECISION
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ejected = version.iter().filter(|e| e.is_ejected()).count();
        let allowed = version.len() * spec.max_ejected_percent as usize / 100;
        if ejected >= allowed {
            return;
        }
        let Some(repeat) = endpoint.eject() else { return };
        repeat
    };
    let duration = spec
        .ejection
        .saturating_mul(1u32 << repeat.min(MAX_EJECTION_FACTOR.trailing_zeros()));
    let label = Arc::clone(&endpoint.label);
    let what = format!("ejected for {}", humantime::format_duration(duration));
    let _ = events.sender.send(Change {
        endpoint: Arc::clone(&label),
        what,
    });
    let (endpoint, sender) = (Arc::clone(endpoint), events.sender());
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        endpoint.readmit();
        let _ = sender.send(Change {
            endpoint: label,
            what: "back from ejection".to_owned(),
        });
    });
}

type Key = (EndpointAddr, Protocol, HealthCheckSpec);

/// The running checkers.
#[derive(Debug)]
pub struct HealthChecks {
    runtime: tokio::runtime::Handle,
    changes: mpsc::UnboundedSender<Change>,
    running: Mutex<HashMap<Key, (Arc<Endpoint>, tokio::task::AbortHandle)>>,
}

impl HealthChecks {
    /// Checkers that run on `runtime` and report changes to `changes`.
    pub fn new(runtime: tokio::runtime::Handle, changes: mpsc::UnboundedSender<Change>) -> Self {
        Self {
            runtime,
            changes,
            running: Mutex::default(),
        }
    }

    /// Starts checkers for every checked endpoint of `config` and stops the others. An endpoint
    /// that is no longer checked is healthy again; returns whether any endpoint changed so.
    pub fn sync(&self, config: &Config, registries: &Registries) -> bool {
        let mut wanted: HashMap<Key, Arc<Endpoint>> = HashMap::new();
        // One checker per endpoint: if two versions check the same address differently, the
        // first in file order wins (two would flip the shared endpoint's state back and forth).
        let mut seen = std::collections::HashSet::new();
        for version in config.services.iter().flat_map(|s| &s.versions) {
            let Some(spec) = &version.health_check else { continue };
            for addr in &version.endpoints {
                if !seen.insert((addr.clone(), version.protocol)) {
                    continue;
                }
                let endpoint = registries.upstreams.endpoint(addr, version.protocol, &version.tls);
                wanted.insert((addr.clone(), version.protocol, spec.clone()), endpoint);
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut revived = false;
        running.retain(|key, (endpoint, task)| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
                let still_checked = wanted.keys().any(|k| k.0 == key.0 && k.1 == key.1);
                revived |= !still_checked && endpoint.set_healthy(true);
            }
            keep
        });
        for (key, endpoint) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let task = self
                .runtime
                .spawn(check_loop(Arc::clone(&endpoint), key.2.clone(), self.changes.clone()));
            running.insert(key, (endpoint, task.abort_handle()));
        }
        revived
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, task) in running.values() {
            task.abort();
        }
    }
}

/// Probes one endpoint forever, reporting each change of its health.
async fn check_loop(endpoint: Arc<Endpoint>, spec: HealthCheckSpec, changes: mpsc::UnboundedSender<Change>) {
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let jitter = 0.9 + fastrand::f64() * 0.2;
        tokio::time::sleep(spec.interval.mul_f64(jitter)).await;
        let ok = tokio::time::timeout(spec.timeout, probe(&endpoint, &spec))
            .await
            .unwrap_or(false);
        if ok {
            (successes, failures) = (successes.saturating_add(1), 0);
        } else {
            (successes, failures) = (0, failures.saturating_add(1));
        }
        let verdict = match (endpoint.check_passes(), ok) {
            (true, false) if failures >= spec.unhealthy => Some(false),
            (false, true) if successes >= spec.healthy => Some(true),
            _ => None,
        };
        if let Some(healthy) = verdict {
            if endpoint.set_healthy(healthy) {
                tracing::warn!(endpoint = %endpoint.label, healthy, "endpoint health changed");
                if changes
                    .send(Change {
                        endpoint: Arc::clone(&endpoint.label),
                        what: if healthy { "up" } else { "down" }.to_owned(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// One check: a fresh connection, `GET path`, and a 2xx answer.
async fn probe(endpoint: &Endpoint, spec: &HealthCheckSpec) -> bool {
    let Ok(stream) = endpoint.open(spec.timeout).await else {
        return false;
    };
    let mut request = Request::new(Empty::<bytes::Bytes>::new());
    *request.uri_mut() = spec.path.clone().into();
    let host = HeaderValue::from_str(endpoint.authority().as_str()).unwrap_or(HeaderValue::from_static("localhost"));
    request.headers_mut().insert(header::HOST, host);
    request
        .headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static("sluice-health-check"));
    let io = TokioIo::new(stream);
    let response = match endpoint.protocol() {
        Protocol::Http1 => {
            let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(io).await else {
                return false;
            };
            tokio::spawn(connection);
            sender.send_request(request).await
        }
        Protocol::Http2 => {
            let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await;
            let Ok((mut sender, connection)) = handshake else {
                return false;
            };
            tokio::spawn(connection);
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if endpoint.addr.tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            });
            parts.authority = Some(endpoint.authority().clone());
            parts.path_and_query = Some(spec.path.clone());
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
            request.headers_mut().remove(header::HOST);
            sender.send_request(request).await
        }
    };
    response.is_ok_and(|r| r.status().is_success())
}

/// The changes reported by checkers, as a stream of batches: waits for one change, then takes
/// every change already queued, so a burst publishes one table.
pub async fn next_batch(changes: &mut mpsc::UnboundedReceiver<Change>) -> Option<Vec<Change>> {
    let first = changes.recv().await?;
    let mut batch = vec![first];
    while let Ok(change) = changes.try_recv() {
        batch.push(change);
    }
    Some(batch)
}
