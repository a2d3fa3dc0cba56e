//! Request path, step 4: a weighted choice between a service's versions.
//!
//! Built once per table (cumulative weights), so a pick is one random draw and a short scan.
//! Versions with weight 0 are never picked; their share goes to the others in proportion.

/// Cumulative weights over a service's versions, in version order.
#[derive(Debug, Clone)]
pub struct Split {
    cumulative: Vec<u64>,
}

impl Split {
    /// Builds a split from the versions' weights, in version order.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let mut sum = 0u64;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Self { cumulative }
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

#[cfg(test)]
mod tests {
    use super::*;

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
