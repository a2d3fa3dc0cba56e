//! Table compile: what a reload or an admin change costs before the swap. A config of 50
//! services with three versions each (weights, two rules, a sticky key, a health check, a
//! mirror and a rollout plan on every service) is parsed and validated (`config::parse`), and
//! the routing table is built from it (`RoutingTable::build`, endpoints and metrics interned in
//! registries that already hold them, as on every revision after the first).

use criterion::{criterion_group, criterion_main, Criterion};
use sluice::table::{Cause, Overrides, Registries, Rollouts};
use sluice::RoutingTable;
use std::hint::black_box;

const SERVICES: usize = 50;

fn config() -> String {
    let mut yaml = String::from("listeners: [{ name: p, address: 127.0.0.1:0 }]\nservices:\n");
    for i in 0..SERVICES {
        let port = 10_000 + i * 10;
        yaml += &format!(
            r#"  - name: svc-{i}
    match: {{ hosts: [svc-{i}.example.com, "*.svc-{i}.internal"], path_prefix: /api/{i} }}
    versions:
      blue: {{ endpoints: [127.0.0.1:{a}, 127.0.0.1:{b}], health_check: {{ path: /healthz, interval: 2s }} }}
      canary: {{ endpoints: [127.0.0.1:{c}] }}
      green: {{ endpoints: [127.0.0.1:{d}] }}
    routing:
      weights: {{ blue: 90, canary: 10 }}
      rules:
        - {{ match: {{ header: {{ name: x-sluice-version, value: canary }} }}, version: canary }}
        - {{ match: {{ cookie: {{ name: beta, value: "1" }} }}, version: canary }}
      sticky: {{ cookie: sluice-{i}, hash_key: "header:x-user-id", ttl: 1h }}
    mirror:
      - {{ version: green, percent: 10 }}
    rollout:
      baseline: blue
      canary: canary
      steps: [{{ weight: 5, hold: 1m }}, {{ weight: 50, hold: 1m }}, {{ weight: 100 }}]
      guardrails: {{ min_requests: 50, max_error_rate: 0.01, max_p99: 300ms }}
"#,
            a = port,
            b = port + 1,
            c = port + 2,
            d = port + 3
        );
    }
    yaml
}

fn bench(c: &mut Criterion) {
    let yaml = config();
    c.bench_function("table compile: parse + validate (50 services)", |b| {
        b.iter(|| sluice::config::parse(black_box(&yaml)).expect("valid"))
    });
    let config = sluice::config::parse(&yaml).expect("valid");
    let registries = Registries::default();
    let (overrides, rollouts) = (Overrides::new(), Rollouts::new());
    // The first build creates the endpoints and metrics; later ones find them interned.
    let _first = RoutingTable::build(&config, &overrides, &rollouts, &registries, 1, Cause::Config);
    c.bench_function("table compile: RoutingTable::build (50 services)", |b| {
        b.iter(|| RoutingTable::build(black_box(&config), &overrides, &rollouts, &registries, 2, Cause::Config))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
