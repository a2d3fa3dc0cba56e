//! The Prometheus text exposition (format 0.0.4), written by hand from the registry and the
//! routing table: `metrics-exporter-prometheus` would record every latency a second time into its
//! own histograms (see docs/BENCHMARKS.md), while the windows guardrails need are already here.

use std::fmt::Write;

use super::{Metrics, CODES, ERROR_KINDS};
use crate::table::RoutingTable;

/// Upper bounds (seconds) of the `sluice_request_duration_seconds` buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What the control plane counts: reloads, rollout steps and rollbacks.
#[derive(Debug, Clone, Default)]
pub struct ControlCounters {
    /// Successful reloads.
    pub reloads_ok: u64,
    /// Rejected (invalid) reloads.
    pub reloads_failed: u64,
    /// Each service with a rollout plan: the active step, 1-based, or 0 when none is active.
    pub rollout_steps: Vec<(String, u64)>,
    /// Rollbacks by service and reason (the breached rule, or `abort`).
    pub rollbacks: Vec<(String, String, u64)>,
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `service` and `version` labels of a handle.
fn service_version(v: &super::VersionMetrics) -> String {
    format!("service=\"{}\",version=\"{}\"", escape(&v.service), escape(&v.version))
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders every metric.
pub fn render(metrics: &Metrics, table: &RoutingTable, control: &ControlCounters) -> String {
    let mut out = String::with_capacity(4096);
    let versions = metrics.all();
    let labels = |v: &super::VersionMetrics| format!("{},role=\"{}\"", service_version(v), v.role.as_str());

    header(
        &mut out,
        "sluice_requests_total",
        "counter",
        "Requests answered, by status class sent to the client (error: no response could be sent).",
    );
    for v in &versions {
        for (i, code) in CODES.iter().enumerate() {
            let n = v.codes[i].load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(out, "sluice_requests_total{{{},code=\"{code}\"}} {n}", labels(v));
        }
    }

    header(
        &mut out,
        "sluice_request_duration_seconds",
        "histogram",
        "Time from receiving a request to the end of its response.",
    );
    for v in &versions {
        let total = v.lock_window().total(&v.latency.peek());
        let l = labels(v);
        for le in LATENCY_BUCKETS {
            let n = total.count_at_or_below((le * 1e6) as u64);
            let _ = writeln!(out, "sluice_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "sluice_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            total.requests
        );
        let _ = writeln!(
            out,
            "sluice_request_duration_seconds_sum{{{l}}} {}",
            total.sum_micros as f64 / 1e6
        );
        let _ = writeln!(out, "sluice_request_duration_seconds_count{{{l}}} {}", total.requests);
    }

    header(
        &mut out,
        "sluice_upstream_errors_total",
        "counter",
        "Upstream failures of primary requests by kind (connect, timeout, reset, status: a 5xx answer).",
    );
    // Shadow failures show in sluice_requests_total{role="shadow"}; these two series have no
    // role label, so they count primary traffic only.
    let primaries: Vec<_> = versions.iter().filter(|v| v.role == super::Role::Primary).collect();
    for v in &primaries {
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            let n = v.upstream_errors[i].load(std::sync::atomic::Ordering::Relaxed);
            let _ = writeln!(
                out,
                "sluice_upstream_errors_total{{{},kind=\"{kind}\"}} {n}",
                service_version(v)
            );
        }
    }

    header(
        &mut out,
        "sluice_inflight_requests",
        "gauge",
        "Requests in flight to a version.",
    );
    for v in &primaries {
        let n = v.inflight.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "sluice_inflight_requests{{{}}} {n}", service_version(v));
    }

    let shadows: Vec<_> = versions.iter().filter(|v| v.role == super::Role::Shadow).collect();
    if !shadows.is_empty() {
        header(
            &mut out,
            "sluice_shadow_dropped_total",
            "counter",
            "Shadow copies not sent, by reason.",
        );
        for v in &shadows {
            for (i, reason) in super::DROP_REASONS.iter().enumerate() {
                let n = v.shadow_dropped[i].load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "sluice_shadow_dropped_total{{{},reason=\"{reason}\"}} {n}",
                    service_version(v)
                );
            }
        }
        header(
            &mut out,
            "sluice_shadow_mismatches_total",
            "counter",
            "Shadow answers that differed from the primary's.",
        );
        for v in &shadows {
            let _ = writeln!(
                out,
                "sluice_shadow_mismatches_total{{{}}} {}",
                service_version(v),
                v.mismatches()
            );
        }
    }

    header(
        &mut out,
        "sluice_route_weight",
        "gauge",
        "Effective share of new requests, in percent (0-100).",
    );
    header_less_table(&mut out, table);

    header(
        &mut out,
        "sluice_config_reloads_total",
        "counter",
        "Configuration reloads by result.",
    );
    let _ = writeln!(
        out,
        "sluice_config_reloads_total{{result=\"ok\"}} {}",
        control.reloads_ok
    );
    let _ = writeln!(
        out,
        "sluice_config_reloads_total{{result=\"error\"}} {}",
        control.reloads_failed
    );

    header(
        &mut out,
        "sluice_rollout_step",
        "gauge",
        "Step of the active rollout, 1-based; 0 when no rollout is active.",
    );
    for (service, step) in &control.rollout_steps {
        let _ = writeln!(out, "sluice_rollout_step{{service=\"{}\"}} {step}", escape(service));
    }
    header(
        &mut out,
        "sluice_rollbacks_total",
        "counter",
        "Rollouts rolled back, by the breached rule (or abort).",
    );
    for (service, reason, count) in &control.rollbacks {
        let _ = writeln!(
            out,
            "sluice_rollbacks_total{{service=\"{}\",reason=\"{}\"}} {count}",
            escape(service),
            escape(reason)
        );
    }

    render_flags(&mut out, table);

    render_admission(&mut out, metrics.admission());

    if let Some(log) = metrics.access_log() {
        header(
            &mut out,
            "sluice_access_log_dropped_total",
            "counter",
            "Access log entries dropped because the writer was behind.",
        );
        let _ = writeln!(out, "sluice_access_log_dropped_total {}", log.dropped());
    }

    header(
        &mut out,
        "sluice_routing_table_revision",
        "gauge",
        "Revision of the routing table in force.",
    );
    let _ = writeln!(out, "sluice_routing_table_revision {}", table.revision);
    out
}

/// `sluice_flag_decisions_total` of the flags in the table in force (counters outlive revisions).
fn render_flags(out: &mut String, table: &RoutingTable) {
    header(
        out,
        "sluice_flag_decisions_total",
        "counter",
        "Feature flag decisions, by the value the request got (on or off).",
    );
    for service in &table.services {
        for flag in &service.flags.list {
            for (value, on) in [("on", true), ("off", false)] {
                let _ = writeln!(
                    out,
                    "sluice_flag_decisions_total{{service=\"{}\",flag=\"{}\",value=\"{value}\"}} {}",
                    escape(&service.name),
                    escape(&flag.name),
                    flag.metrics.decisions(on)
                );
            }
        }
    }
}

/// Open connections and requests in flight against `defaults.limits`, and what was shed.
fn render_admission(out: &mut String, admission: &crate::admission::Admission) {
    let series: [(&str, &str, &str, u64); 4] = [
        (
            "sluice_connections_open",
            "gauge",
            "Open client connections, every data-plane listener together.",
            admission.connections() as u64,
        ),
        (
            "sluice_connections_refused_total",
            "counter",
            "Client connections closed at accept because defaults.limits.max_connections were open.",
            admission.refused(),
        ),
        (
            "sluice_requests_in_flight",
            "gauge",
            "Requests in flight, every connection together, until their response body is sent.",
            admission.in_flight() as u64,
        ),
        (
            "sluice_requests_shed_total",
            "counter",
            "Requests answered 503 at once because defaults.limits.max_in_flight were in flight.",
            admission.shed(),
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Route weights and endpoint health, read from the table in force.
fn header_less_table(out: &mut String, table: &RoutingTable) {
    for service in &table.services {
        for (version, share) in service.shares() {
            let _ = writeln!(
                out,
                "sluice_route_weight{{service=\"{}\",version=\"{}\"}} {share}",
                escape(&service.name),
                escape(version)
            );
        }
    }
    header(
        out,
        "sluice_endpoint_healthy",
        "gauge",
        "1 if the endpoint may receive traffic, 0 while health checks hold it out.",
    );
    for service in &table.services {
        for version in &service.versions {
            for endpoint in &version.endpoints {
                let _ = writeln!(
                    out,
                    "sluice_endpoint_healthy{{service=\"{}\",version=\"{}\",endpoint=\"{}\"}} {}",
                    escape(&service.name),
                    escape(&version.name),
                    escape(&endpoint.label),
                    u8::from(endpoint.is_healthy())
                );
            }
        }
    }
}
