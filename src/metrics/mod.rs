//! Per-version metrics: what the request path records, and what Prometheus, the stats API and
//! (later) rollout guardrails read.
//!
//! A [`VersionMetrics`] handle per service × version × role is interned in [`Metrics`] when a
//! routing table is built, so recording resolves no labels and takes no lock: a few relaxed
//! atomic adds. A ticker drains the latency histograms every [`window::TICK`] into each
//! version's [`window::Window`], off the hot path.

pub mod access_log;
pub mod histogram;
pub mod prometheus;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use http::StatusCode;

use access_log::AccessLog;
use histogram::AtomicHistogram;
use window::{Window, WindowStats};

/// Whether a request was served by the version (primary) or mirrored to it (shadow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The answer went to the client.
    Primary,
    /// A mirrored copy whose answer was discarded.
    Shadow,
}

impl Role {
    /// The `role` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        }
    }
}

/// Kinds of upstream failure, the `kind` label of `sluice_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connect refused or timed out.
    Connect = 0,
    /// No response headers in time.
    Timeout = 1,
    /// Connection reset or closed mid-exchange.
    Reset = 2,
    /// The upstream answered 5xx.
    Status = 3,
}

/// Why a shadow copy was not sent: the `reason` label of `sluice_shadow_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The request body was larger than the mirror's `max_body`.
    MaxBody = 0,
    /// The mirror already had `max_in_flight` copies in flight.
    MaxInFlight = 1,
    /// The client's body never completed (the client left, or the primary stopped reading).
    Incomplete = 2,
}

/// Label values of [`DropReason`], by discriminant.
pub const DROP_REASONS: [&str; 3] = ["max_body", "max_in_flight", "incomplete"];
/// Mismatch samples kept per mirror.
pub const MISMATCH_SAMPLES: usize = 16;

/// One request whose shadow answered differently from the primary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MismatchSample {
    /// When the shadow answered.
    pub time: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Status the client got.
    pub primary_status: u16,
    /// Status the shadow answered (0: no answer).
    pub shadow_status: u16,
    /// Whether the bodies differed (`compare: body` only).
    pub body_differs: bool,
}

/// Label values of [`ErrorKind`], by discriminant.
pub const ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "status"];
/// Label values of the `code` label, by index (see [`code_index`]).
pub const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
const CODE_ERROR: usize = 5;

fn code_index(status: Option<StatusCode>) -> usize {
    match status {
        Some(status) => usize::from(status.as_u16() / 100).clamp(1, 5) - 1,
        None => CODE_ERROR,
    }
}

/// The counters and latency histogram of one service × version × role.
#[derive(Debug)]
pub struct VersionMetrics {
    /// `service` label.
    pub service: Arc<str>,
    /// `version` label.
    pub version: Arc<str>,
    /// `role` label.
    pub role: Role,
    codes: [AtomicU64; 6],
    upstream_errors: [AtomicU64; 4],
    inflight: AtomicI64,
    latency: AtomicHistogram,
    window: Mutex<Window>,
    access_log: Arc<OnceLock<AccessLog>>,
    // Shadow role only: copies not sent, and answers that differed from the primary's.
    shadow_dropped: [AtomicU64; 3],
    mismatches: AtomicU64,
    samples: Mutex<std::collections::VecDeque<MismatchSample>>,
}

impl VersionMetrics {
    fn new(service: Arc<str>, version: Arc<str>, role: Role, access_log: Arc<OnceLock<AccessLog>>) -> Self {
        Self {
            service,
            version,
            role,
            codes: Default::default(),
            upstream_errors: Default::default(),
            inflight: AtomicI64::new(0),
            latency: AtomicHistogram::default(),
            window: Mutex::default(),
            access_log,
            shadow_dropped: Default::default(),
            mismatches: AtomicU64::new(0),
            samples: Mutex::default(),
        }
    }

    /// Counts a shadow copy that was not sent.
    pub fn shadow_dropped(&self, reason: DropReason) {
        self.shadow_dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Copies not sent for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.shadow_dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts a shadow answer that differed from the primary's, keeping the newest samples.
    pub fn mismatch(&self, sample: MismatchSample) {
        self.mismatches.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == MISMATCH_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Mismatches so far.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// The newest mismatch samples, oldest first.
    pub fn mismatch_samples(&self) -> Vec<MismatchSample> {
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Requests in flight (for a shadow: copies in flight).
    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Records an answered request: `status` sent (`None`: the client got no response), its
    /// latency, whether guardrails count it as an error (5xx, connect, timeout, reset), and the
    /// response body bytes sent (for the access log).
    pub fn record(&self, status: Option<StatusCode>, latency: Duration, guardrail_error: bool, bytes: u64) {
        self.codes[code_index(status)].fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency, guardrail_error);
        if let Some(log) = self.access_log.get() {
            log.log(access_log::Entry {
                time: std::time::SystemTime::now(),
                service: Arc::clone(&self.service),
                version: Arc::clone(&self.version),
                role: self.role.as_str(),
                status: status.map(|s| s.as_u16()),
                latency,
                bytes,
            });
        }
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, kind: ErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one of `max` slots (the in-flight count is the slot count), or `None` if all are
    /// taken; one atomic add decides, so concurrent callers never overshoot or both fail.
    pub fn try_begin(self: &Arc<Self>, max: usize) -> Option<InflightGuard> {
        let before = self.inflight.fetch_add(1, Ordering::Relaxed);
        let guard = InflightGuard(Arc::clone(self));
        (before < max as i64).then_some(guard)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }

    /// Requests answered with status class `code` (an entry of [`CODES`]).
    pub fn requests(&self, code: &str) -> u64 {
        CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.codes[i].load(Ordering::Relaxed))
    }

    /// This version's window over the last `span` (up to 60 s), including the tick in progress.
    pub fn window(&self, span: Duration) -> WindowStats {
        // Peek under the window lock, which `tick` holds while it drains: a tick can then not
        // land between the two and count the same requests twice.
        let window = self.lock_window();
        let pending = self.latency.peek();
        window.stats(span, &pending)
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tick(&self) {
        let mut window = self.lock_window();
        let counts = self.latency.drain();
        window.push(counts);
    }
}

/// Decrements a version's in-flight gauge when dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<VersionMetrics>);

impl InflightGuard {
    /// The metrics this request counts in.
    pub fn metrics(&self) -> &VersionMetrics {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often one flag of one service was decided on and off: `sluice_flag_decisions_total`.
#[derive(Debug)]
pub struct FlagMetrics {
    /// `service` label.
    pub service: Arc<str>,
    /// `flag` label.
    pub flag: Arc<str>,
    /// Decisions, off (0) and on (1).
    decisions: [AtomicU64; 2],
}

impl FlagMetrics {
    /// Counts one decision: one relaxed atomic add.
    pub fn record(&self, on: bool) {
        self.decisions[usize::from(on)].fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions with this value so far.
    pub fn decisions(&self, on: bool) -> u64 {
        self.decisions[usize::from(on)].load(Ordering::Relaxed)
    }
}

type Key = (Arc<str>, Arc<str>, Role);
/// Service and flag.
type FlagKey = (Arc<str>, Arc<str>);

/// The registry of version metrics shared by every routing-table revision.
#[derive(Debug, Default)]
pub struct Metrics {
    // Locked when a table is built, by the ticker and by scrapes; never on the request path.
    versions: Mutex<HashMap<Key, Weak<VersionMetrics>>>,
    // Like `versions`: locked when a table is built, never on the request path.
    flags: Mutex<HashMap<FlagKey, Weak<FlagMetrics>>>,
    ticking: std::sync::atomic::AtomicBool,
    access_log: Arc<OnceLock<AccessLog>>,
    admission: Arc<crate::admission::Admission>,
}

impl Metrics {
    /// The live handle for `service`, `version`, `role`, or a new one.
    pub fn version(&self, service: &Arc<str>, version: &Arc<str>, role: Role) -> Arc<VersionMetrics> {
        let mut versions = self.versions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        versions.retain(|_, weak| weak.strong_count() > 0);
        let key = (Arc::clone(service), Arc::clone(version), role);
        if let Some(live) = versions.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let metrics = Arc::new(VersionMetrics::new(
            Arc::clone(service),
            Arc::clone(version),
            role,
            Arc::clone(&self.access_log),
        ));
        versions.insert(key, Arc::downgrade(&metrics));
        metrics
    }

    /// The live decision counters of `flag` in `service`, or new ones.
    pub fn flag(&self, service: &Arc<str>, flag: &Arc<str>) -> Arc<FlagMetrics> {
        let mut flags = self.flags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        flags.retain(|_, weak| weak.strong_count() > 0);
        let key = (Arc::clone(service), Arc::clone(flag));
        if let Some(live) = flags.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let metrics = Arc::new(FlagMetrics {
            service: Arc::clone(service),
            flag: Arc::clone(flag),
            decisions: Default::default(),
        });
        flags.insert(key, Arc::downgrade(&metrics));
        metrics
    }

    /// Turns the access log on (once; later calls are ignored).
    pub fn set_access_log(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The access log, if on.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.get()
    }

    /// Open connections and requests in flight, process-wide, and what was shed.
    pub fn admission(&self) -> &Arc<crate::admission::Admission> {
        &self.admission
    }

    /// Every live handle, sorted by labels.
    pub fn all(&self) -> Vec<Arc<VersionMetrics>> {
        let versions = self.versions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<_> = versions.values().filter_map(Weak::upgrade).collect();
        all.sort_by(|a, b| (&a.service, &a.version, a.role).cmp(&(&b.service, &b.version, b.role)));
        all
    }

    /// Drains every histogram into its window: one tick.
    pub fn tick(&self) {
        for version in self.all() {
            version.tick();
        }
    }

    /// Ticks every [`window::TICK`] until the registry is dropped.
    pub fn spawn_ticker(self: &Arc<Self>) {
        if self.ticking.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(window::TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(metrics) = weak.upgrade() else { return };
                metrics.tick();
            }
        });
    }
}
