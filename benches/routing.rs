//! The routing decision (service by host and path, then rules + sticky + weights) and its
//! parts, on a table with three services, three rules, a sticky key and three versions; then the
//! same with five feature flags on the service (decided before the version, one of them
//! matched by a version rule) and the `x-sluice-flags` value.
//! Target: the whole decision under 200 ns.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use sluice::{router, split, Routing};
use std::hint::black_box;

const CONFIG: &str = r#"
listeners: [{ name: p, address: 127.0.0.1:0 }]
services:
  - name: other
    match: { hosts: [other.example.com] }
    versions: { v: { endpoints: [127.0.0.1:1] } }
    routing: { weights: { v: 1 } }
  - name: api
    match: { hosts: ["*.example.com"], path_prefix: /api }
    versions: { v: { endpoints: [127.0.0.1:2] } }
    routing: { weights: { v: 1 } }
  - name: checkout
    match: { hosts: [checkout.example.com], path_prefix: / }
    versions:
      blue: { endpoints: [127.0.0.1:9001, 127.0.0.1:9002] }
      canary: { endpoints: [127.0.0.1:9101] }
      green: { endpoints: [127.0.0.1:9201] }
    routing:
      weights: { blue: 90, canary: 10, green: 0 }
      rules:
        - { match: { header: { name: x-sluice-version, value: canary } }, version: canary }
        - { match: { header: { name: x-debug, present: true } }, version: green }
        - { match: { cookie: { name: beta, value: "1" } }, version: canary }
      sticky: { cookie: sluice-checkout, hash_key: "header:x-user-id", ttl: 1h }
"#;

/// The checkout service's five flags: keyed by the sticky hash_key, by a cookie, with a
/// targeting rule, at 100% and killed; a version rule matches `beta-search`.
const FLAGS: &str = r#"    flags:
      new-pricing: { percent: 10 }
      dark-mode: { percent: 50, key: "cookie:session" }
      beta-search: { percent: 5, rules: [{ match: { header: { name: x-internal, value: "1" } }, value: on }] }
      one-click: { percent: 100 }
      legacy-cart: { percent: 30, enabled: false }
"#;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(*k, HeaderValue::from_static(v));
    }
    map
}

fn bench(c: &mut Criterion) {
    let config = sluice::config::parse(CONFIG).expect("bench config");
    let routing = Routing::new(&config);
    let table = routing.load_full();
    let typical = headers(&[
        ("host", "checkout.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-user-id", "user-4711"),
    ]);
    let anonymous = headers(&[("host", "checkout.example.com"), ("accept", "*/*")]);
    let pinned = headers(&[
        ("host", "checkout.example.com"),
        ("cookie", "theme=dark; sluice-checkout=canary"),
    ]);

    c.bench_function("decision: route + rules + sticky key + weights", |b| {
        b.iter(|| decide(&table, "/cart/items", &typical))
    });
    c.bench_function("decision: route + rules + random weight (no key)", |b| {
        b.iter(|| decide(&table, "/", &anonymous))
    });
    c.bench_function("decision: route + rules + sticky cookie", |b| {
        b.iter(|| decide(&table, "/", &pinned))
    });
    c.bench_function("part: router::route", |b| {
        b.iter(|| {
            router::route(
                &table,
                Some(black_box("checkout.example.com")),
                black_box("/cart/items"),
            )
            .is_some()
        })
    });
    let checkout = table.service("checkout").expect("checkout");
    c.bench_function("part: rules::first_match (3 rules, no match)", |b| {
        b.iter(|| sluice::rules::first_match(&checkout.rules, black_box(&typical)))
    });
    c.bench_function("part: rules::cookie_value", |b| {
        b.iter(|| sluice::rules::cookie_value(black_box(&typical), black_box("sluice-checkout")))
    });
    c.bench_function("sticky::bucket (16-byte key)", |b| {
        b.iter(|| sluice::sticky::bucket(black_box(b"user-4711-abcdef")))
    });

    let flagged = CONFIG.replace(
        "        - { match: { cookie: { name: beta, value: \"1\" } }, version: canary }\n",
        "        - { match: { cookie: { name: beta, value: \"1\" } }, version: canary }\n        - { match: { flag: beta-search }, version: canary }\n",
    ) + FLAGS;
    let config = sluice::config::parse(&flagged).expect("bench config with flags");
    let routing = Routing::new(&config);
    let table = routing.load_full();
    assert_eq!(table.service("checkout").expect("checkout").flags.list.len(), 5);
    c.bench_function(
        "decision + 5 flags: route + flags + rules + sticky key + weights",
        |b| b.iter(|| decide(&table, "/cart/items", &typical)),
    );
    c.bench_function("decision + 5 flags + x-sluice-flags value", |b| {
        b.iter(|| {
            let service = router::route(
                &table,
                Some(black_box("checkout.example.com")),
                black_box("/cart/items"),
            )
            .expect("service");
            let choice = split::choose(service, black_box(&typical)).expect("choice");
            service.flags.header(choice.flags)
        })
    });
    let checkout = table.service("checkout").expect("checkout");
    c.bench_function("part: flags evaluate (5 flags)", |b| {
        b.iter(|| checkout.flags.evaluate(black_box(&typical)))
    });
}

/// One routing decision for checkout.example.com: the service by host and path, then the version.
fn decide(table: &sluice::RoutingTable, path: &str, headers: &HeaderMap) -> Option<split::Choice> {
    let service = router::route(table, Some(black_box("checkout.example.com")), black_box(path));
    split::choose(service.expect("service"), black_box(headers))
}

criterion_group!(benches, bench);
criterion_main!(benches);
