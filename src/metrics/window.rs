//! Sliding windows: a ring of per-tick [`Counts`], newest last, from which any span up to
//! [`MAX_WINDOW`] is merged on demand. This is the small API rollout guardrails read:
//! "this version's last N seconds: requests, errors, p50/p90/p99/p99.9".

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use super::histogram::{Counts, Merged};

/// Window granularity: how often the ticker drains the request path's histograms.
pub const TICK: Duration = Duration::from_millis(250);
/// The longest window kept.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
const SLOTS: usize = (MAX_WINDOW.as_millis() / TICK.as_millis()) as usize;

/// One window's summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowStats {
    /// Requests answered in the window.
    pub requests: u64,
    /// Of which guardrail errors (5xx, connect, timeout, reset).
    pub errors: u64,
    /// `errors / requests`, 0 without requests.
    pub error_rate: f64,
    /// Requests per second over the window.
    pub rps: f64,
    /// Latency percentiles in milliseconds (bucket midpoints, within 0.8%).
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
}

/// The ring of ticks for one version and role, plus the all-time totals for Prometheus.
#[derive(Debug, Default)]
pub struct Window {
    slots: VecDeque<Counts>,
    total: Merged,
}

impl Window {
    /// Appends one tick's counts, forgetting the oldest tick past [`MAX_WINDOW`].
    pub fn push(&mut self, counts: Counts) {
        self.total.add(&counts);
        if self.slots.len() == SLOTS {
            self.slots.pop_front();
        }
        self.slots.push_back(counts);
    }

    /// Merges the last `span` (rounded up to whole ticks, at most [`MAX_WINDOW`]) with
    /// `pending`, the counts of the tick in progress.
    pub fn merged(&self, span: Duration, pending: &Counts) -> Merged {
        let ticks = (span.as_millis().div_ceil(TICK.as_millis()) as usize).clamp(1, SLOTS);
        let mut merged = Merged::default();
        for counts in self.slots.iter().rev().take(ticks) {
            merged.add(counts);
        }
        merged.add(pending);
        merged
    }

    /// Summary of the last `span`, with `pending` counts of the tick in progress.
    pub fn stats(&self, span: Duration, pending: &Counts) -> WindowStats {
        let merged = self.merged(span, pending);
        let ms = |q| merged.quantile(q).as_secs_f64() * 1000.0;
        let requests = merged.requests;
        // The error count is read apart from the buckets: never let it exceed the requests.
        let errors = merged.errors.min(requests);
        WindowStats {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            rps: requests as f64 / span.min(MAX_WINDOW).as_secs_f64().max(TICK.as_secs_f64()),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
        }
    }

    /// Everything since start, plus `pending`.
    pub fn total(&self, pending: &Counts) -> Merged {
        let mut total = self.total.clone();
        total.add(pending);
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::AtomicHistogram;

    fn tick_with(histogram: &AtomicHistogram, window: &mut Window, samples: &[(u64, bool)]) {
        for &(ms, error) in samples {
            histogram.record(Duration::from_millis(ms), error);
        }
        window.push(histogram.drain());
    }

    #[test]
    fn the_window_forgets_old_traffic() {
        let (histogram, mut window) = (AtomicHistogram::default(), Window::default());
        let none = Counts::default();
        // One tick of slow, failing traffic, then quiet ticks.
        tick_with(&histogram, &mut window, &[(500, true), (500, true), (500, false)]);
        let ten = Duration::from_secs(10);
        let fresh = window.stats(ten, &none);
        assert_eq!((fresh.requests, fresh.errors), (3, 2));
        assert!((fresh.p99_ms - 500.0).abs() < 5.0, "{fresh:?}");

        for _ in 0..39 {
            tick_with(&histogram, &mut window, &[]);
        }
        assert_eq!(window.stats(ten, &none).requests, 3, "40 ticks = 10 s: still inside");
        tick_with(&histogram, &mut window, &[(20, false)]);
        let later = window.stats(ten, &none);
        assert_eq!(
            (later.requests, later.errors),
            (1, 0),
            "the 10 s window forgot the old tick"
        );
        assert!((later.p99_ms - 20.0).abs() < 0.5, "{later:?}");
        assert_eq!(
            window.stats(MAX_WINDOW, &none).requests,
            4,
            "the 60 s window still has it"
        );

        for _ in 0..SLOTS {
            tick_with(&histogram, &mut window, &[]);
        }
        assert_eq!(
            window.stats(MAX_WINDOW, &none).requests,
            0,
            "60 s later everything is forgotten"
        );
        assert_eq!(window.total(&none).requests, 4, "the all-time totals keep counting");
    }

    #[test]
    fn pending_counts_are_included() {
        let (histogram, window) = (AtomicHistogram::default(), Window::default());
        histogram.record(Duration::from_millis(7), false);
        let stats = window.stats(Duration::from_secs(10), &histogram.peek());
        assert_eq!(stats.requests, 1);
        assert!((stats.rps - 0.1).abs() < 1e-9);
    }
}
