//! Request path, steps 2–4: which version serves a request. The service's feature flags are
//! decided first ([`crate::flags`]), then rules (which may match a flag), then a sticky
//! cookie, then the bucket of a sticky key, then a random pick by weight.
//!
//! Built once per table (cumulative weights and bucket bounds), so a decision is a few
//! comparisons and at most one random draw. Versions with weight 0 are never picked by weight;
//! their share goes to the others in proportion.
//!
//! Bucket ranges: version `i` owns buckets `[B(i-1), B(i))` with
//! `B(i) = floor(W(i) * 10000 / W)`, where `W(i)` is the sum of the weights of versions `0..=i`
//! in file order and `W` the total. Moving weight from the first version (the baseline) to a
//! later one (the canary) grows the canary's range downwards and keeps every bucket it had.

use http::HeaderMap;

use crate::flags::FlagSet;
use crate::sticky::{self, BUCKETS};
use crate::table::Service;

/// Cumulative weights over a service's versions, in version order.
#[derive(Debug, Clone)]
pub struct Split {
    cumulative: Vec<u64>,
    /// Upper bucket bound of each version (exclusive).
    bucket_bounds: Vec<u32>,
}

/// The outcome of a routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into the service's versions.
    pub version: usize,
    /// A new sticky assignment: the response sets the sticky cookie.
    pub set_cookie: bool,
    /// The service's flags that are on for this request.
    pub flags: FlagSet,
}

impl Split {
    /// Builds a split from the versions' weights, in version order.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut sum = 0u64;
        let cumulative: Vec<u64> = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        let bucket_bounds = cumulative
            .iter()
            .map(|&c| {
                if sum == 0 {
                    0
                } else {
                    (u128::from(c) * u128::from(BUCKETS) / u128::from(sum)) as u32
                }
            })
            .collect();
        Self {
            cumulative,
            bucket_bounds,
        }
    }

    /// The weight of version `index`.
    pub fn weight(&self, index: usize) -> u64 {
        let below = if index == 0 {
            0
        } else {
            self.cumulative.get(index - 1).copied().unwrap_or(0)
        };
        self.cumulative.get(index).map_or(0, |&c| c - below)
    }

    /// The version owning `bucket` (in `[0, 10000)`); `None` when every weight is 0.
    pub fn owner(&self, bucket: u32) -> Option<usize> {
        let index = self.bucket_bounds.partition_point(|&b| b <= bucket);
        (index < self.bucket_bounds.len()).then_some(index)
    }

    /// Sum of all weights; 0 when no version can be picked.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The version owning `draw`, a number in `[0, total)`; `None` when the total is 0.
    pub fn pick_with(&self, draw: u64) -> Option<usize> {
        // First index whose cumulative weight exceeds the draw: zero weights own no numbers.
        let index = self.cumulative.partition_point(|&c| c <= draw);
        (index < self.cumulative.len()).then_some(index)
    }

    /// A random version by weight.
    pub fn pick(&self) -> Option<usize> {
        match self.total() {
            0 => None,
            total => self.pick_with(fastrand::u64(..total)),
        }
    }
}

/// Decides the flags, then the version for a request to `service`: rules, then sticky cookie,
/// then sticky key bucket, then weights. `None` when no version can serve.
pub fn choose(service: &Service, headers: &HeaderMap) -> Option<Choice> {
    let flags = service.flags.evaluate(headers);
    let chosen = |version, set_cookie| Choice {
        version,
        set_cookie,
        flags,
    };
    if let Some(version) = crate::rules::first_match_with_flags(&service.rules, headers, flags) {
        return Some(chosen(version, false));
    }
    let Some(sticky_spec) = &service.sticky else {
        return service.split.pick().map(|version| chosen(version, false));
    };
    if let Some(pinned) = crate::rules::cookie_value(headers, &sticky_spec.cookie) {
        if let Some(version) = service
            .versions
            .iter()
            .position(|v| v.sticky_valid && &*v.name == pinned)
        {
            return Some(chosen(version, false));
        }
    }
    let version = match sticky_spec.key.as_ref().and_then(|source| sticky::key(source, headers)) {
        Some(key) => service.split.owner(sticky::bucket(key)),
        None => service.split.pick(),
    }?;
    Some(chosen(version, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ranges_follow_weights_and_grow_monotonically() {
        let five = Split::new([95, 5]);
        assert_eq!(
            (five.owner(0), five.owner(9499), five.owner(9500), five.owner(9999)),
            (Some(0), Some(0), Some(1), Some(1))
        );
        let twenty = Split::new([80, 20]);
        for bucket in 0..BUCKETS {
            if five.owner(bucket) == Some(1) {
                assert_eq!(
                    twenty.owner(bucket),
                    Some(1),
                    "bucket {bucket} left the canary when it grew"
                );
            }
        }
        assert_eq!((0..BUCKETS).filter(|&b| twenty.owner(b) == Some(1)).count(), 2000);
        assert_eq!(Split::new([0, 0]).owner(5), None);
        assert_eq!(
            Split::new([0, 3, 0]).owner(9999),
            Some(1),
            "zero weights own no buckets"
        );
        assert_eq!((five.weight(0), five.weight(1), five.weight(2)), (95, 5, 0));
    }

    #[test]
    fn draws_map_to_owners() {
        let split = Split::new([3, 0, 1]);
        let picks: Vec<_> = (0..4).map(|d| split.pick_with(d)).collect();
        assert_eq!(picks, vec![Some(0), Some(0), Some(0), Some(2)], "weight 0 owns nothing");
        assert_eq!(split.pick_with(4), None);
    }

    #[test]
    fn all_zero_picks_nothing() {
        assert_eq!(Split::new([0, 0]).pick(), None);
        assert_eq!(Split::new([]).pick(), None);
    }

    #[test]
    fn seeded_distribution_within_tolerance() {
        let split = Split::new([90, 10, 0]);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[split.pick_with(rng.u64(..split.total())).expect("non-zero total")] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 must get nothing");
        let share = f64::from(counts[1]) / 100_000.0;
        assert!((share - 0.10).abs() < 0.005, "canary share {share}");
    }
}
