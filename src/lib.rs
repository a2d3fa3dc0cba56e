//! sluice: a layer-7 traffic-shifting reverse proxy for progressive delivery.
//!
//! # Layout
//! The request path, in the order a request meets it:
//! - [`listener`]: accepts connections; HTTP/1.1 and h2c on one port, or TLS with ALPN;
//!   graceful shutdown.
//! - [`admission`]: `max_connections` and `max_in_flight`; what is over them is shed.
//! - [`proxy`]: the handler, `route → split → pick endpoint → forward → respond`.
//! - [`router`]: which service, by host and path prefix.
//! - [`flags`]: which feature flags are on (decided before the version; `x-sluice-flags`).
//! - [`split`]: which version: [`rules`], then [`sticky`] cookie or key bucket, then weight.
//! - [`upstream`]: which endpoint (power of two choices), pooled connections, sending.
//! - [`forward`]: hop-by-hop removal and `X-Forwarded-*`.
//! - [`mirror`]: bounded copies of requests to shadow versions, compared and discarded.
//! - [`body`]: the streamed response body; records the request's metrics when it ends.
//! - [`metrics`]: per-version counters, lock-free latency histograms, windows, Prometheus.
//! - [`error`]: every failure, its source, and the status the client gets.
//!
//! Around it:
//! - [`config`]: the YAML file, its raw serde types and `compile`, which reports every error.
//! - [`table`]: the immutable routing table and the `ArcSwap` that publishes it.
//! - [`tls`]: rustls termination (SNI, ALPN, certificate reload) and upstream TLS.
//! - [`health`]: active health checks; a change of health publishes a new table.
//! - [`control`]: the only writer of the table: overrides, revisions, history, reload, and
//!   the rollouts' reconciliation loop.
//! - [`rollout`]: rollout states, guardrail verdicts and the step decision, as pure functions.
//! - [`state`]: what survives a restart, in `state_dir`.
//! - [`reload`]: the config file watcher and SIGHUP.
//! - [`admin`]: the admin listener and its JSON API.
//! - [`ctl`]: `sluice ctl`, the admin API's command-line client.
//! - [`demo`]: `sluice demo`, the whole product in one process.

// Data from the network or a config file must never panic the proxy: errors are handled, not
// unwrapped. Tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod admission;
pub mod body;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod error;
pub mod flags;
pub mod forward;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod router;
pub mod rules;
pub mod server;
pub mod split;
pub mod state;
pub mod sticky;
pub mod table;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use table::{Routing, RoutingTable};

/// Serves the data plane on `listeners` with the tables `routing` publishes, until `shutdown`
/// completes; then drains in-flight requests for at most the table's `drain` timeout.
pub async fn run<L: Into<listener::Listener>>(
    listeners: Vec<L>,
    routing: Arc<Routing>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = routing.load().limits;
    routing.metrics().spawn_ticker();
    upstream::Upstreams::spawn_sweeper(&routing);
    let proxy = Arc::new(proxy::Proxy::new(routing));
    let listeners = listeners.into_iter().map(Into::into).collect();
    listener::serve(listeners, proxy, &limits, shutdown).await;
}
