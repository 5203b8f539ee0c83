//! Attention-head statistics per (slot, head) and modality (docs/analysis-methods.md C13), and
//! their cross-modal agreement — the "language-to-vision transfer" analysis. In MS-CLIP a
//! shared slot's head h runs the same W_Q, W_K, W_V on both modalities; in CLIP the pairing of
//! head h of the two towers is only a null baseline.
//!
//! Per head, averaged over items and over valid queries (text: positions 0..=EOT):
//! - entropy H = −Σ_k `A[q,k]` ln `A[q,k]`;
//! - mean attention distance: vision Σ_k `A[q,k]`·‖p_q − p_k‖ over patch queries and patch keys
//!   (grid units; the ViT paper's measure), text Σ_k `A[q,k]`·|q − k|;
//! - special-token mass `A[q, 0]` (CLS for vision, SOT for text);
//! - self mass A[q, q]; previous-token mass A[q, q−1] (text) / mean 4-neighbour mass (vision).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::model::Modality;
use crate::rng::SplitMix64 as Rng;

/// The statistics of one head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadStat {
    /// The tower.
    pub modality: Modality,
    /// The layer slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Mean attention entropy (nats).
    pub entropy: f64,
    /// Mean attention distance (grid units / token positions).
    pub distance: f64,
    /// Mass on the special token (CLS / SOT).
    pub special: f64,
    /// Mass on the query itself.
    pub self_mass: f64,
    /// Previous-token mass (text) / 4-neighbour mass (vision).
    pub neighbour: f64,
    /// Items averaged.
    pub n: i64,
}

/// One of the per-head statistics of [`HeadStat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// See [`HeadStat::entropy`].
    Entropy,
    /// See [`HeadStat::distance`].
    Distance,
    /// See [`HeadStat::special`].
    Special,
    /// See [`HeadStat::self_mass`].
    SelfMass,
    /// See [`HeadStat::neighbour`].
    Neighbour,
}

impl Statistic {
    /// Every statistic.
    pub const ALL: [Statistic; 5] =
        [Statistic::Entropy, Statistic::Distance, Statistic::Special, Statistic::SelfMass, Statistic::Neighbour];

    /// The name used in files and figures (`self_mass`, …).
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Entropy => "entropy",
            Statistic::Distance => "distance",
            Statistic::Special => "special",
            Statistic::SelfMass => "self_mass",
            Statistic::Neighbour => "neighbour",
        }
    }

    /// The statistic of a name; an unknown name is an error naming the known ones.
    pub fn parse(name: &str) -> crate::Result<Statistic> {
        Statistic::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| crate::Error::config("statistic", name, "expected entropy, distance, special, self_mass or neighbour"))
    }
}

impl HeadStat {
    /// The value of `stat`.
    pub fn get(&self, stat: Statistic) -> f64 {
        match stat {
            Statistic::Entropy => self.entropy,
            Statistic::Distance => self.distance,
            Statistic::Special => self.special,
            Statistic::SelfMass => self.self_mass,
            Statistic::Neighbour => self.neighbour,
        }
    }
}

/// Running sums of per-item statistics, keyed by (modality, slot).
#[derive(Default)]
pub struct HeadAccumulator {
    sums: BTreeMap<(Modality, usize), (Tensor, i64)>, // [H, 5] sums, item count
}

fn grid_distances(grid: i64, device: tch::Device) -> (Tensor, Tensor) {
    // Patch coordinates of tokens 1..g² (row-major); returns (distance [g², g²], 4-neighbour mask).
    let idx = Tensor::arange(grid * grid, (Kind::Int64, device));
    let r = idx.divide_scalar_mode(grid, "floor").to_kind(Kind::Double);
    let c = idx.remainder(grid).to_kind(Kind::Double);
    let dr = r.unsqueeze(1) - r.unsqueeze(0);
    let dc = c.unsqueeze(1) - c.unsqueeze(0);
    let d = (&dr * &dr + &dc * &dc).sqrt();
    let nb = d.eq(1.0).to_kind(Kind::Double);
    (d, nb)
}

impl HeadAccumulator {
    /// Adds vision attention `probs: [B, H, 1+g², 1+g²]`.
    pub fn add_vision(&mut self, slot: usize, probs: &Tensor, grid: i64) {
        let a = probs.to_kind(Kind::Double);
        let (b, _h, l, _) = a.size4().expect("attention probabilities are [B, H, L, L]");
        let ent = -(&a * a.clamp_min(1e-30).log()).sum_dim_intlist(&[-1i64][..], false, Kind::Double); // [B,H,L]
        let ent = ent.mean_dim(&[-1i64][..], false, Kind::Double);
        let (d, nb) = grid_distances(grid, a.device());
        let pp = a.narrow(2, 1, l - 1).narrow(3, 1, l - 1); // patch queries → patch keys
        let dist = (&pp * &d).sum_dim_intlist(&[-1i64][..], false, Kind::Double).mean_dim(&[-1i64][..], false, Kind::Double);
        let nbm = (&pp * &nb).sum_dim_intlist(&[-1i64][..], false, Kind::Double).mean_dim(&[-1i64][..], false, Kind::Double);
        let special = a.select(3, 0).mean_dim(&[-1i64][..], false, Kind::Double);
        let selfm = a.diagonal(0, 2, 3).mean_dim(&[-1i64][..], false, Kind::Double);
        let stats = Tensor::stack(&[ent, dist, special, selfm, nbm], 2).sum_dim_intlist(&[0i64][..], false, Kind::Double); // [H,5]
        self.push(Modality::Vision, slot, stats, b);
    }

    /// Adds text attention `probs: [B, H, L, L]` with the EOT position of each item.
    pub fn add_text(&mut self, slot: usize, probs: &Tensor, eot: &[i64]) {
        let a = probs.to_kind(Kind::Double);
        let (b, h, l, _) = a.size4().expect("attention probabilities are [B, H, L, L]");
        let mut total = Tensor::zeros([h, 5], (Kind::Double, a.device()));
        let pos = Tensor::arange(l, (Kind::Double, a.device()));
        let absd = (pos.unsqueeze(1) - pos.unsqueeze(0)).abs();
        for (i, &e) in eot.iter().enumerate() {
            let n = e + 1; // queries 0..=EOT
            let m = a.get(i as i64).narrow(1, 0, n).narrow(2, 0, n); // [H, n, n]
            let ent = -(&m * m.clamp_min(1e-30).log()).sum_dim_intlist(&[-1i64][..], false, Kind::Double).mean_dim(
                &[-1i64][..],
                false,
                Kind::Double,
            );
            let dist = (&m * absd.narrow(0, 0, n).narrow(1, 0, n)).sum_dim_intlist(&[-1i64][..], false, Kind::Double).mean_dim(
                &[-1i64][..],
                false,
                Kind::Double,
            );
            let special = m.select(2, 0).mean_dim(&[-1i64][..], false, Kind::Double);
            let selfm = m.diagonal(0, 1, 2).mean_dim(&[-1i64][..], false, Kind::Double);
            // A[q, q−1] for q ≥ 1.
            let prev = if n > 1 {
                m.diagonal(-1, 1, 2).mean_dim(&[-1i64][..], false, Kind::Double)
            } else {
                Tensor::zeros([h], (Kind::Double, a.device()))
            };
            total += Tensor::stack(&[ent, dist, special, selfm, prev], 1);
        }
        self.push(Modality::Text, slot, total, b);
    }

    fn push(&mut self, m: Modality, slot: usize, stats: Tensor, b: i64) {
        let e = self.sums.entry((m, slot)).or_insert_with(|| (Tensor::zeros_like(&stats), 0));
        e.0 += stats;
        e.1 += b;
    }

    /// Mean statistics per head.
    pub fn finish(&self) -> Vec<HeadStat> {
        let mut out = Vec::new();
        for ((m, slot), (sum, n)) in &self.sums {
            let mean = Vec::<f64>::try_from((sum / *n as f64).contiguous().view([-1])).expect("a double tensor converts to Vec<f64>");
            for (h, s) in mean.chunks(5).enumerate() {
                out.push(HeadStat {
                    modality: *m,
                    slot: *slot,
                    head: h,
                    entropy: s[0],
                    distance: s[1],
                    special: s[2],
                    self_mass: s[3],
                    neighbour: s[4],
                    n: *n,
                });
            }
        }
        out
    }
}

/// Ranks with ties averaged (1-based).
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].partial_cmp(&v[b]).unwrap_or(std::cmp::Ordering::Equal));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Spearman's ρ (Pearson correlation of tie-averaged ranks), as `scipy.stats.spearmanr`.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Two-sided permutation p-value of Spearman's ρ: (1 + #{|ρ_π| ≥ |ρ|}) / (1 + permutations).
pub fn spearman_permutation(a: &[f64], b: &[f64], permutations: usize, seed: u64) -> (f64, f64) {
    let (rho, p, _) = spearman_permutation_null(a, b, permutations, seed);
    (rho, p)
}

/// [`spearman_permutation`] with the permutation null's central 95 % range of ρ
/// (its 2.5 % and 97.5 % quantiles, `[NaN, NaN]` without permutations): what ρ looks like
/// when the pairing carries no information.
pub fn spearman_permutation_null(a: &[f64], b: &[f64], permutations: usize, seed: u64) -> (f64, f64, [f64; 2]) {
    let (ra, rb) = (ranks(a), ranks(b));
    let rho = pearson(&ra, &rb);
    let mut rng = Rng::new(seed);
    let mut perm = rb.clone();
    let mut hits = 0;
    let mut null = Vec::with_capacity(permutations);
    for _ in 0..permutations {
        for i in (1..perm.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        let r = pearson(&ra, &perm);
        if r.abs() >= rho.abs() - 1e-12 {
            hits += 1;
        }
        null.push(r);
    }
    let band = if null.is_empty() {
        [f64::NAN; 2]
    } else {
        null.sort_by(f64::total_cmp);
        let q = |f: f64| null[((f * (null.len() - 1) as f64).round() as usize).min(null.len() - 1)];
        [q(0.025), q(0.975)]
    };
    (rho, (1 + hits) as f64 / (1 + permutations) as f64, band)
}

/// Cross-modal agreement of one statistic over the heads both modalities have.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    /// The statistic's name.
    pub statistic: String,
    /// Heads compared.
    pub heads: usize,
    /// Spearman's ρ between the text and vision values.
    pub spearman: f64,
    /// Two-sided permutation p-value.
    pub p_value: f64,
    /// The permutation null's central 95 % range of ρ (pairing of heads shuffled).
    #[serde(default)]
    pub null_95: [f64; 2],
}

/// Spearman ρ (with a permutation p-value) of each statistic between the towers, over the (slot, head) pairs both have.
pub fn agreement(stats: &[HeadStat], permutations: usize, seed: u64) -> Vec<Agreement> {
    let key = |s: &HeadStat| (s.slot, s.head);
    let vis: BTreeMap<(usize, usize), &HeadStat> = stats.iter().filter(|s| s.modality == Modality::Vision).map(|s| (key(s), s)).collect();
    let txt: BTreeMap<(usize, usize), &HeadStat> = stats.iter().filter(|s| s.modality == Modality::Text).map(|s| (key(s), s)).collect();
    let common: Vec<(usize, usize)> = vis.keys().filter(|k| txt.contains_key(k)).copied().collect();
    Statistic::ALL
        .iter()
        .map(|&stat| {
            let a: Vec<f64> = common.iter().map(|k| vis[k].get(stat)).collect();
            let b: Vec<f64> = common.iter().map(|k| txt[k].get(stat)).collect();
            let (rho, p, null_95) =
                if common.len() >= 3 { spearman_permutation_null(&a, &b, permutations, seed) } else { (f64::NAN, f64::NAN, [f64::NAN; 2]) };
            Agreement { statistic: stat.name().to_string(), heads: common.len(), spearman: rho, p_value: p, null_95 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_scipy() {
        // scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]).statistic = 0.8207826816681233
        assert!((spearman(&[1., 2., 3., 4., 5.], &[5., 6., 7., 8., 7.]) - 0.8207826816681233).abs() < 1e-12);
        assert_eq!(ranks(&[10., 20., 10., 30.]), vec![1.5, 3.0, 1.5, 4.0]);
        let a: Vec<f64> = (0..30).map(|i| i as f64).collect();
        let (rho, p) = spearman_permutation(&a, &a, 999, 1);
        assert!((rho - 1.0).abs() < 1e-12 && p <= 0.002);
        let b: Vec<f64> = (0..30).map(|i| ((i * 17) % 30) as f64).collect();
        let (_, p) = spearman_permutation(&a, &b, 999, 1);
        assert!(p > 0.05, "unrelated orders are not significant: {p}");
        // The null of ρ over 30 exchangeable ranks is centred on 0 with sd 1/√29 ≈ 0.186: its
        // central 95 % is about ±1.96/√29 = ±0.364.
        let (_, _, band) = spearman_permutation_null(&a, &b, 20_000, 3);
        assert!((band[0] + 0.364).abs() < 0.03 && (band[1] - 0.364).abs() < 0.03, "{band:?}");
    }

    #[test]
    fn statistics_of_known_patterns() {
        // Vision, grid 2 (L = 5), one head that attends uniformly; one that attends to itself.
        let uni = Tensor::full([1, 1, 5, 5], 0.2, (Kind::Double, tch::Device::Cpu));
        let eye = Tensor::eye(5, (Kind::Double, tch::Device::Cpu)).view([1, 1, 5, 5]);
        let mut acc = HeadAccumulator::default();
        acc.add_vision(1, &Tensor::cat(&[&uni, &eye], 1), 2);
        let s = acc.finish();
        assert!((s[0].entropy - 5f64.ln()).abs() < 1e-12);
        assert!((s[0].special - 0.2).abs() < 1e-12 && (s[0].self_mass - 0.2).abs() < 1e-12);
        // Patch→patch distances from each corner of a 2×2 grid: 0, 1, 1, √2; ×0.2.
        assert!((s[0].distance - 0.2 * (2.0 + 2f64.sqrt())).abs() < 1e-12);
        assert!((s[0].neighbour - 0.4).abs() < 1e-12);
        assert!(s[1].entropy.abs() < 1e-12 && (s[1].self_mass - 1.0).abs() < 1e-12 && s[1].distance.abs() < 1e-12);
        // Text: previous-token head on 4 valid positions (SOT attends to itself).
        let mut p = vec![0f64; 16];
        p[0] = 1.0;
        for q in 1..4 {
            p[q * 4 + q - 1] = 1.0;
        }
        let t = Tensor::from_slice(&p).view([1, 1, 4, 4]);
        let mut acc = HeadAccumulator::default();
        acc.add_text(0, &t, &[3]);
        let s = acc.finish();
        assert!((s[0].neighbour - 1.0).abs() < 1e-12);
        assert!((s[0].distance - 0.75).abs() < 1e-12);
        assert!((s[0].special - 0.5).abs() < 1e-12); // queries 0 and 1 attend to SOT
    }
}

/// Grounding of one image map on one box: the share of the patch attention falling on
/// patches whose centres lie inside `bbox = [x0, y0, x1, y1)` (pixels), and whether the
/// map's maximum does (pointing game). `map` is row-major `grid × grid` over patches.
pub fn box_grounding(map: &[f32], grid: usize, patch: f64, bbox: [u32; 4]) -> (f64, bool) {
    let inside = |i: usize| {
        let (r, c) = (i / grid, i % grid);
        let (x, y) = ((c as f64 + 0.5) * patch, (r as f64 + 0.5) * patch);
        x >= bbox[0] as f64 && x < bbox[2] as f64 && y >= bbox[1] as f64 && y < bbox[3] as f64
    };
    let total: f64 = map.iter().map(|&v| v as f64).sum();
    let in_box: f64 = map.iter().enumerate().filter(|(i, _)| inside(*i)).map(|(_, &v)| v as f64).sum();
    let argmax = map.iter().enumerate().fold((0, f32::MIN), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0;
    (if total > 0.0 { in_box / total } else { 0.0 }, inside(argmax))
}

#[cfg(test)]
mod grounding_tests {
    use super::*;

    #[test]
    fn box_share_and_pointing() {
        // grid 2, patch 8: patch centres (4,4) (12,4) (4,12) (12,12); box covers the right column.
        let (share, hit) = box_grounding(&[0.1, 0.5, 0.1, 0.3], 2, 8.0, [8, 0, 16, 16]);
        assert!((share - 0.8).abs() < 1e-6 && hit);
        let (share, hit) = box_grounding(&[0.6, 0.1, 0.2, 0.1], 2, 8.0, [8, 0, 16, 16]);
        assert!((share - 0.2).abs() < 1e-6 && !hit);
    }
}
