//! Uncertainty of comparisons: percentile bootstrap intervals over held-out items, a
//! two-level (seeds × items) bootstrap for several training runs, and paired tests between
//! models on the same items.
//!
//! A statistic is any function of a run (seed index) and a multiset of item indices
//! (`stat(seed, items) -> f64`), so non-additive metrics (the centroid gap, NMI) are
//! recomputed on every resample rather than averaged.
//!
//! - One run: resample items with replacement B times; the interval is the 2.5th–97.5th
//!   percentile of the statistic (Efron's percentile interval).
//! - Several runs (seeds): each replicate draws seeds with replacement, then items with
//!   replacement for each drawn seed, and averages the statistic over the drawn seeds
//!   (the hierarchical bootstrap of Davison & Hinkley 1997, §3.8): the interval covers both
//!   seed-to-seed and item-to-item variation.
//! - Paired test of A − B: the same drawn seeds (matched by index) and items for both models;
//!   the interval of the difference and a two-sided p-value
//!   `min(1, 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`, with the `(1 + count)/(1 + B)` correction so it is
//!   never 0.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// A point estimate with a 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The statistic on all items (averaged over seeds).
    pub mean: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub lo: f64,
    /// 97.5th percentile.
    pub hi: f64,
}

/// A paired comparison A − B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// The difference with its interval.
    pub delta: Interval,
    /// Two-sided bootstrap p-value of "no difference".
    pub p_value: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Linear interpolation between closest ranks (NumPy's default).
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(point: f64, mut reps: Vec<f64>) -> Interval {
    reps.retain(|v| v.is_finite());
    reps.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Interval { mean: point, lo: percentile(&reps, 0.025), hi: percentile(&reps, 0.975) }
}

/// The resampling plan shared by the statistics of one comparison: for each replicate, the
/// drawn seeds and, per drawn seed, the drawn items. Built once and reused for every model, so
/// paired differences use the same draws.
pub struct Resamples {
    /// `[replicate][k] = (seed index, item indices)`.
    pub draws: Vec<Vec<(usize, Vec<usize>)>>,
    /// Seeds (runs per model).
    pub seeds: usize,
    /// Items per run.
    pub items: usize,
}

impl Resamples {
    /// `b` replicates for `seeds` runs of `items` items each, from `rng_seed`.
    pub fn new(seeds: usize, items: usize, b: usize, rng_seed: u64) -> Resamples {
        let mut rng = SplitMix64::new(rng_seed ^ 0xB007_57AB);
        let draws = (0..b)
            .map(|_| {
                (0..seeds)
                    .map(|_| {
                        let s = if seeds == 1 { 0 } else { rng.below(seeds as u64) as usize };
                        let it = (0..items).map(|_| rng.below(items as u64) as usize).collect();
                        (s, it)
                    })
                    .collect()
            })
            .collect();
        Resamples { draws, seeds, items }
    }

    /// The statistic on all items (averaged over seeds) and on every replicate.
    fn replicate(&self, stat: &dyn Fn(usize, &[usize]) -> f64) -> (f64, Vec<f64>) {
        let all: Vec<usize> = (0..self.items).collect();
        let point = (0..self.seeds).map(|s| stat(s, &all)).sum::<f64>() / self.seeds as f64;
        let reps = self.draws.iter().map(|d| d.iter().map(|(s, it)| stat(*s, it)).sum::<f64>() / d.len() as f64).collect();
        (point, reps)
    }

    /// The interval of `stat` (averaged over seeds).
    pub fn interval(&self, stat: &dyn Fn(usize, &[usize]) -> f64) -> Interval {
        let (point, reps) = self.replicate(stat);
        interval(point, reps)
    }

    /// The paired comparison `a − b` on the same draws.
    pub fn paired(&self, a: &dyn Fn(usize, &[usize]) -> f64, b: &dyn Fn(usize, &[usize]) -> f64) -> Paired {
        let (point, reps) = self.replicate(&|s: usize, it: &[usize]| a(s, it) - b(s, it));
        let n = reps.len() as f64;
        let le = reps.iter().filter(|&&v| v <= 0.0).count() as f64;
        let ge = reps.iter().filter(|&&v| v >= 0.0).count() as f64;
        let p = (2.0 * ((1.0 + le) / (1.0 + n)).min((1.0 + ge) / (1.0 + n))).min(1.0);
        Paired { delta: interval(point, reps), p_value: p }
    }
}

/// The mean of a per-item 0/1 or real vector over `items`.
pub fn mean_over(values: &[f64], items: &[usize]) -> f64 {
    items.iter().map(|&i| values[i]).sum::<f64>() / items.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_cover_the_mean_and_shrink_with_items() {
        // A 0/1 vector with mean 0.3: the interval brackets 0.3, and its width is close to
        // the normal approximation 2·1.96·√(0.3·0.7/n).
        for n in [100usize, 1000] {
            let v: Vec<f64> = (0..n).map(|i| if i % 10 < 3 { 1.0 } else { 0.0 }).collect();
            let r = Resamples::new(1, n, 2000, 1);
            let iv = r.interval(&|_, it| mean_over(&v, it));
            assert!((iv.mean - 0.3).abs() < 1e-12);
            assert!(iv.lo < 0.3 && iv.hi > 0.3);
            let normal = 2.0 * 1.96 * (0.3f64 * 0.7 / n as f64).sqrt();
            assert!(((iv.hi - iv.lo) / normal - 1.0).abs() < 0.12, "n {n}: {} vs {normal}", iv.hi - iv.lo);
        }
    }

    #[test]
    fn paired_tests_detect_a_shift_and_not_noise() {
        let n = 500;
        let a: Vec<f64> = (0..n).map(|i| ((i * 7919) % 100) as f64 / 100.0).collect();
        let shifted: Vec<f64> = a.iter().map(|x| x + 0.05).collect();
        let r = Resamples::new(1, n, 1000, 3);
        let p = r.paired(&|_, it| mean_over(&shifted, it), &|_, it| mean_over(&a, it));
        assert!((p.delta.mean - 0.05).abs() < 1e-12 && p.p_value < 0.01, "{p:?}");
        // The same values: the difference is 0 on every draw; p = 1.
        let same = r.paired(&|_, it| mean_over(&a, it), &|_, it| mean_over(&a, it));
        assert_eq!(same.p_value, 1.0);
        // Two noise vectors with the same mean (a permutation of each other): no evidence.
        let perm: Vec<f64> = (0..n).map(|i| a[(i * 37 + 11) % n]).collect();
        let noise = r.paired(&|_, it| mean_over(&perm, it), &|_, it| mean_over(&a, it));
        assert!(noise.delta.mean.abs() < 1e-12 && noise.p_value > 0.2 && noise.delta.lo < 0.0 && noise.delta.hi > 0.0, "{noise:?}");
        // Seeds: two runs whose means differ widen the interval beyond the item-only one.
        let runs = [vec![0.2; 100], vec![0.6; 100]];
        let r2 = Resamples::new(2, 100, 1000, 5);
        let iv = r2.interval(&|s, it| mean_over(&runs[s], it));
        assert!((iv.mean - 0.4).abs() < 1e-12);
        assert!(iv.lo <= 0.2 + 1e-12 && iv.hi >= 0.6 - 1e-12, "{iv:?}");
    }
}
