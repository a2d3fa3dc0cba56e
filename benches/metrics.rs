//! One metrics record on the request path (target under 100 ns), against what the same record
//! costs through `metrics-exporter-prometheus` (a counter increment plus a histogram record,
//! label sets resolved up front in both cases).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::StatusCode;
use metrics::{Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusBuilder;
use sluice::metrics::{Metrics, Role};

fn bench(c: &mut Criterion) {
    let registry = Metrics::default();
    let version = registry.version(&Arc::from("checkout"), &Arc::from("canary"), Role::Primary);
    let latency = Duration::from_micros(1234);
    c.bench_function("sluice: record (status counter + latency histogram + sum)", |b| {
        b.iter(|| {
            version.record(
                black_box(Some(StatusCode::OK)),
                black_box(latency),
                black_box(false),
                black_box(512),
            )
        })
    });
    c.bench_function("sluice: record + in-flight guard", |b| {
        b.iter(|| {
            let guard = version.begin();
            version.record(
                black_box(Some(StatusCode::OK)),
                black_box(latency),
                black_box(false),
                black_box(512),
            );
            drop(guard);
        })
    });

    // The `hdrhistogram` crate records through `&mut self`: shared by request threads it needs a
    // lock, or a per-thread `sync::Recorder` whose samples a `refresh` collects.
    let locked =
        std::sync::Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).expect("bounds"));
    c.bench_function("hdrhistogram: Mutex<Histogram>::record (uncontended)", |b| {
        b.iter(|| locked.lock().map(|mut h| h.saturating_record(black_box(1234))))
    });
    let mut synced: hdrhistogram::sync::SyncHistogram<u64> =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2)
            .expect("bounds")
            .into_sync();
    let mut recorder = synced.recorder();
    c.bench_function("hdrhistogram: sync::Recorder::record (per thread)", |b| {
        b.iter(|| recorder.saturating_record(black_box(1234)))
    });
    drop(recorder);
    synced.refresh();

    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    let metadata = Metadata::new("bench", Level::INFO, Some("bench"));
    let labels = || {
        vec![
            Label::new("service", "checkout"),
            Label::new("version", "canary"),
            Label::new("role", "primary"),
        ]
    };
    let mut counter_labels = labels();
    counter_labels.push(Label::new("code", "2xx"));
    let counter = recorder.register_counter(&Key::from_parts("sluice_requests_total", counter_labels), &metadata);
    let histogram =
        recorder.register_histogram(&Key::from_parts("sluice_request_duration_seconds", labels()), &metadata);
    let mut n = 0u64;
    c.bench_function("metrics-exporter-prometheus: counter + histogram record", |b| {
        b.iter(|| {
            counter.increment(1);
            histogram.record(black_box(latency.as_secs_f64()));
            // Its histogram samples pile up until upkeep drains them (every 5 s by default):
            // drain now and then so the bench's memory stays bounded, as a running exporter would.
            n += 1;
            if n % 1_000_000 == 0 {
                handle.run_upkeep();
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
