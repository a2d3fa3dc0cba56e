//! Latency histograms. The request path records into an [`AtomicHistogram`] (one relaxed atomic
//! add per sample, no lock); a ticker drains it into [`Counts`] off the hot path, where windows
//! and percentiles are computed.
//!
//! Buckets are log-linear over microseconds: exact below 128 µs, then 64 sub-buckets per power
//! of two, so any bucket is at most 1/64 (1.6%) wide relative to its values; a percentile is
//! reported as its bucket's midpoint (error under 0.8%). Values are clamped at 2^32 µs (71 min).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Largest recordable value, in microseconds.
const MAX_MICROS: u64 = (1 << 32) - 1;
/// Number of buckets: `index(MAX_MICROS) + 1`.
pub const BUCKETS: usize = (2 * SUB + (32 - SUB_BITS as u64 - 1) * SUB) as usize;

/// The bucket of a value in microseconds.
pub fn index(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    (2 * SUB + u64::from(shift - 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// The smallest value (µs) of bucket `i`, and the bucket's width.
pub fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, 1);
    }
    let shift = (i - 2 * SUB) / SUB + 1;
    let sub = (i - 2 * SUB) % SUB + SUB;
    (sub << shift, 1 << shift)
}

/// A histogram the request path records into without locking.
#[derive(Debug)]
pub struct AtomicHistogram {
    buckets: Box<[AtomicU32]>,
    sum_micros: AtomicU64,
    errors: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    /// Records one request's latency, and whether it counts as an error for guardrails.
    pub fn record(&self, latency: Duration, error: bool) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros.min(MAX_MICROS), Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads what was recorded since the last drain, without taking it.
    pub fn peek(&self) -> Counts {
        let mut counts = Counts::default();
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n != 0 {
                counts.buckets.push((i as u16, u64::from(n)));
                counts.requests += u64::from(n);
            }
        }
        counts.sum_micros = self.sum_micros.load(Ordering::Relaxed);
        counts.errors = self.errors.load(Ordering::Relaxed);
        counts
    }

    /// Takes everything recorded since the last drain. A sample recorded concurrently lands in
    /// this drain or the next one, never in neither.
    pub fn drain(&self) -> Counts {
        let mut counts = Counts::default();
        for (i, bucket) in self.buckets.iter().enumerate() {
            if bucket.load(Ordering::Relaxed) != 0 {
                let n = bucket.swap(0, Ordering::Relaxed);
                if n != 0 {
                    counts.buckets.push((i as u16, u64::from(n)));
                    counts.requests += u64::from(n);
                }
            }
        }
        counts.sum_micros = self.sum_micros.swap(0, Ordering::Relaxed);
        counts.errors = self.errors.swap(0, Ordering::Relaxed);
        counts
    }
}

/// Drained samples: sparse bucket counts, totals and errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `(bucket, count)` for non-empty buckets, in bucket order.
    pub buckets: Vec<(u16, u64)>,
    /// Samples.
    pub requests: u64,
    /// Samples that were guardrail errors.
    pub errors: u64,
    /// Sum of all samples, µs.
    pub sum_micros: u64,
}

/// Dense counts for merging many [`Counts`] and reading percentiles.
#[derive(Debug, Clone)]
pub struct Merged {
    buckets: Vec<u64>,
    /// Samples.
    pub requests: u64,
    /// Guardrail errors.
    pub errors: u64,
    /// Sum of all samples, µs.
    pub sum_micros: u64,
}

impl Default for Merged {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            requests: 0,
            errors: 0,
            sum_micros: 0,
        }
    }
}

impl Merged {
    /// Adds drained counts.
    pub fn add(&mut self, counts: &Counts) {
        for &(i, n) in &counts.buckets {
            self.buckets[usize::from(i)] += n;
        }
        self.requests += counts.requests;
        self.errors += counts.errors;
        self.sum_micros += counts.sum_micros;
    }

    /// The `q` quantile (0..=1) as its bucket's midpoint; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.requests == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.requests as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Duration::from_nanos((low * 1000) + width * 500);
            }
        }
        Duration::from_micros(MAX_MICROS)
    }

    /// Samples at or below `micros`, for cumulative (Prometheus `le`) buckets.
    pub fn count_at_or_below(&self, micros: u64) -> u64 {
        let mut total = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            let (low, width) = bounds(i);
            if low + width - 1 > micros {
                break;
            }
            total += n;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, width) = bounds(i);
            assert_eq!(
                low,
                expected_low,
                "bucket {i} starts where {} ended",
                i.saturating_sub(1)
            );
            assert_eq!(index(low), i);
            assert_eq!(index(low + width - 1), i);
            assert!(
                width == 1 || (width as f64) / (low as f64) <= 1.0 / 64.0,
                "bucket {i} too wide"
            );
            expected_low = low + width;
        }
        assert_eq!(expected_low, MAX_MICROS + 1);
        assert_eq!(index(u64::MAX), BUCKETS - 1, "clamped");
    }

    #[test]
    fn quantiles_within_precision() {
        let histogram = AtomicHistogram::default();
        for ms in 1..=100u64 {
            histogram.record(Duration::from_millis(ms), ms > 95);
        }
        let mut merged = Merged::default();
        merged.add(&histogram.drain());
        assert_eq!((merged.requests, merged.errors), (100, 5));
        for (q, want_ms) in [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = merged.quantile(q).as_secs_f64() * 1000.0;
            assert!((got - want_ms).abs() / want_ms < 0.01, "p{q}: {got} ms, want {want_ms}");
        }
        assert_eq!(merged.sum_micros, 5050 * 1000);
        assert_eq!(histogram.drain(), Counts::default(), "a drain empties the histogram");
    }

    #[test]
    fn cumulative_counts() {
        let histogram = AtomicHistogram::default();
        for micros in [100, 4_000, 6_000, 2_000_000] {
            histogram.record(Duration::from_micros(micros), false);
        }
        let mut merged = Merged::default();
        merged.add(&histogram.drain());
        assert_eq!(merged.count_at_or_below(5_000), 2);
        assert_eq!(merged.count_at_or_below(10_000_000), 4);
        assert_eq!(merged.count_at_or_below(50), 0);
    }
}
