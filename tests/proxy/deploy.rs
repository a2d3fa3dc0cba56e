//! The monitoring files under deploy/ (Grafana dashboard, Prometheus alerts) query only metrics
//! and labels that sluice exports: checked against a real `/metrics` scrape of a proxy with a
//! rollout (aborted once, so rollbacks have a series) and a mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use http::StatusCode;
use serde_json::Value;

use crate::support::*;

/// Metric name → the label names its samples carry, from an exposition text. Names declared by
/// `# TYPE` lines count too (a histogram's base name, counters without samples yet).
fn exported(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().expect("name");
            out.entry(name.to_owned()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).expect("a sample line");
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            labels.extend(matchers(&line[end + 1..]).into_iter().map(|(label, _)| label));
        }
    }
    out
}

/// The `label op "value"` pairs of a selector's or sample's braces, `text` starting after `{`.
fn matchers(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none_or(|c| *c == '}') {
            return out;
        }
        let label: String = std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric() || *c == '_')).collect();
        let op: String = std::iter::from_fn(|| chars.next_if(|c| "=!~".contains(*c))).collect();
        assert!(!label.is_empty() && !op.is_empty(), "cannot read the selector {{{text}");
        assert_eq!(chars.next(), Some('"'), "a quoted value in {{{text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((label, value));
    }
}

/// Checks one PromQL expression: every `sluice_*` metric is exported, every label it matches
/// on is one of that metric's, and every `by (...)` label is one of the expression's metrics'.
fn check(origin: &str, expr: &str, exported: &BTreeMap<String, BTreeSet<String>>, used: &mut BTreeSet<String>) {
    let mut labels_here = BTreeSet::from(["le".to_owned()]);
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let labels = exported
            .get(name)
            .unwrap_or_else(|| panic!("{origin}: {name} is not a metric sluice exports, in {expr}"));
        used.insert(name.to_owned());
        labels_here.extend(labels.iter().cloned());
        if tail[end..].starts_with('{') {
            for (label, _) in matchers(&tail[end + 1..]) {
                assert!(
                    labels.contains(&label),
                    "{origin}: {name} has no label {label} (it has {labels:?}), in {expr}"
                );
            }
        }
        rest = &tail[end..];
    }
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let list = &rest[at + 4..];
        let close = list.find(')').expect("by (...)");
        for label in list[..close].split(',').map(str::trim) {
            assert!(
                labels_here.contains(label),
                "{origin}: by ({label}) is not a label of the metrics in {expr}"
            );
        }
        rest = &list[close..];
    }
}

/// Every PromQL expression of the Grafana dashboard, with where it is.
fn grafana_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            out.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push((format!("annotation {:?}", annotation["name"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label) is a selector with a label to exist.
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'));
            let (metric, label) = inner.and_then(|i| i.split_once(", ")).expect("label_values(m, l)");
            out.push((
                format!("variable {:?}", variable["name"]),
                format!("sum by ({label}) ({metric})"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_and_alert_queries_use_only_exported_metrics_and_labels() {
    let (blue, canary, green) = (
        Upstream::named("blue").await,
        Upstream::named("canary").await,
        Upstream::named("green").await,
    );
    let dir = temp_dir("deploy-metrics");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &format!(
            "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    versions:\n      blue: {{ endpoints: [{}] }}\n      canary: {{ endpoints: [{}] }}\n      green: {{ endpoints: [{}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    mirror:\n      - {{ version: green, percent: 100, compare: status }}\n    rollout:\n      baseline: blue\n      canary: canary\n      steps: [{{ weight: 10, hold: 10m }}]\n",
            blue.addr, canary.addr, green.addr
        ),
    );
    let p = controlled(&path, Options::default()).await;
    let client = http1_client();
    for _ in 0..5 {
        assert_eq!(get(&client, &p.url("/"), None).await.0, StatusCode::OK);
    }
    wait_until("the shadow answered", || green.hits() >= 5).await;
    for command in ["start", "abort"] {
        let (status, body) = p
            .api("POST", &format!("/api/v1/services/app/rollout/{command}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, metrics) = p.api_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let exported = exported(&metrics);
    assert!(
        exported["sluice_rollbacks_total"].contains("reason"),
        "the abort has a series:\n{metrics}"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana/sluice-dashboard.json")).expect("dashboard"))
            .expect("the Grafana dashboard is JSON");
    let mut used = BTreeSet::new();
    for (origin, expr) in grafana_queries(&dashboard) {
        check(&format!("grafana {origin}"), &expr, &exported, &mut used);
    }
    for want in [
        "sluice_requests_total",
        "sluice_request_duration_seconds_bucket",
        "sluice_route_weight",
        "sluice_rollout_step",
        "sluice_rollbacks_total",
        "sluice_shadow_dropped_total",
        "sluice_shadow_mismatches_total",
        "sluice_config_reloads_total",
    ] {
        assert!(used.contains(want), "the dashboard has no panel on {want}");
    }

    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("prometheus/alerts.yaml")).expect("alerts"))
            .expect("the alert rules are YAML");
    let mut used = BTreeSet::new();
    let mut names = Vec::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(rule["annotations"]["summary"].is_string(), "alert {name} has a summary");
            check(&format!("alert {name}"), expr, &exported, &mut used);
            names.push(name.to_owned());
        }
    }
    for want in [
        "sluice_rollbacks_total",
        "sluice_requests_total",
        "sluice_endpoint_healthy",
        "sluice_config_reloads_total",
        "sluice_shadow_dropped_total",
    ] {
        assert!(used.contains(want), "no alert on {want}: {names:?}");
    }
    p.shutdown().await;
}

#[test]
fn the_checker_catches_unknown_metrics_and_labels() {
    let exported = exported(
        "# TYPE sluice_a_total counter\nsluice_a_total{service=\"x\",code=\"2xx\"} 1\n# TYPE sluice_h histogram\nsluice_h_bucket{service=\"x\",le=\"+Inf\"} 1\n",
    );
    let mut used = BTreeSet::new();
    check(
        "ok",
        "sum by (service, le) (rate(sluice_h_bucket{service=~\"a,b|c\"}[5m])) / sum by (service) (sluice_a_total{code!=\"5xx\"})",
        &exported,
        &mut used,
    );
    for bad in [
        "rate(sluice_b_total[5m])",
        "sluice_a_total{version=\"v\"}",
        "sum by (version) (sluice_a_total)",
    ] {
        let caught = std::panic::catch_unwind(|| check("bad", bad, &exported, &mut BTreeSet::new()));
        assert!(caught.is_err(), "{bad} must be refused");
    }
}
