//! Layer-wise NMI between k-means clusters and modality (the analysis the official MS-CLIP
//! code's `OUTPUT_*` feature hooks were built for; spec/msclip.md §7.1, analysis-methods B10).
//!
//! k-means: k-means++ seeding from a SplitMix64 stream of the seed, Lloyd iterations until
//! the assignment stops changing (≤ `max_iter`), `restarts` runs, lowest inertia wins. It runs
//! on tch tensors (one matmul per iteration), so 200k × 512 points take seconds.
//! NMI(U, V) = I(U; V) / ((H(U) + H(V)) / 2) — scikit-learn's `normalized_mutual_info_score`
//! (arithmetic mean), natural logarithms; 1.0 when both labelings are constant.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::data::synth::Rng;
use crate::error::{Error, Result};

/// Result of [`kmeans`].
#[derive(Debug, Clone)]
pub struct KMeans {
    pub labels: Vec<i64>,
    pub inertia: f64,
    pub iterations: usize,
}

fn sq_dists(x: &Tensor, c: &Tensor) -> Tensor {
    // ‖x‖² − 2x·c + ‖c‖², clamped at 0.
    let xx = (x * x).sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let cc = (c * c).sum_dim_intlist(&[1i64][..], false, Kind::Double).unsqueeze(0);
    (xx - x.matmul(&c.tr()) * 2.0 + cc).clamp_min(0.0)
}

/// k-means on the rows of `x: [n, d]` (computed in f64).
pub fn kmeans(x: &Tensor, k: i64, restarts: usize, max_iter: usize, seed: u64) -> Result<KMeans> {
    let n = x.size()[0];
    if k < 1 || k > n {
        return Err(Error::Invalid(format!("k-means: k = {k} with {n} points")));
    }
    let x = x.to_kind(Kind::Double);
    let mut best: Option<KMeans> = None;
    for r in 0..restarts.max(1) {
        let mut rng = Rng::new(seed.wrapping_add(r as u64 * 0x9E37_79B9));
        // k-means++ seeding.
        let mut idx = vec![rng.below(n as u64) as i64];
        while (idx.len() as i64) < k {
            let c = x.index_select(0, &Tensor::from_slice(&idx));
            let d = sq_dists(&x, &c).min_dim(1, false).0;
            let total = d.sum(Kind::Double).double_value(&[]);
            let pick = if total <= 0.0 {
                rng.below(n as u64) as i64
            } else {
                let cum = Vec::<f64>::try_from(d.cumsum(0, Kind::Double)).unwrap();
                let target = rng.unit() * total;
                cum.iter().position(|&v| v >= target).unwrap_or(n as usize - 1) as i64
            };
            idx.push(pick);
        }
        let mut centers = x.index_select(0, &Tensor::from_slice(&idx));
        let mut labels = Tensor::zeros([n], (Kind::Int64, x.device()));
        let mut iterations = 0;
        for it in 0..max_iter.max(1) {
            iterations = it + 1;
            let new = sq_dists(&x, &centers).argmin(1, false);
            let changed = it == 0 || !new.equal(&labels);
            labels = new;
            // Recompute centres; an empty cluster keeps its centre.
            let onehot = labels.one_hot(k).to_kind(Kind::Double); // [n, k]
            let counts = onehot.sum_dim_intlist(&[0i64][..], false, Kind::Double);
            let sums = onehot.tr().matmul(&x);
            let nonempty = counts.gt(0.0).unsqueeze(1);
            centers = (sums / counts.clamp_min(1.0).unsqueeze(1)).where_self(&nonempty, &centers);
            if !changed {
                break;
            }
        }
        let d = sq_dists(&x, &centers);
        let inertia = d.gather(1, &labels.unsqueeze(1), false).sum(Kind::Double).double_value(&[]);
        let res = KMeans { labels: Vec::<i64>::try_from(&labels).unwrap(), inertia, iterations };
        if best.as_ref().is_none_or(|b| res.inertia < b.inertia - 1e-12) {
            best = Some(res);
        }
    }
    Ok(best.expect("at least one restart"))
}

/// scikit-learn's `normalized_mutual_info_score(a, b)` (arithmetic normalisation).
pub fn nmi(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len(), "label vectors differ in length");
    let n = a.len() as f64;
    let mut ua: Vec<i64> = a.to_vec();
    ua.sort();
    ua.dedup();
    let mut ub: Vec<i64> = b.to_vec();
    ub.sort();
    ub.dedup();
    if (ua.len() == 1 && ub.len() == 1) || a.is_empty() {
        return 1.0;
    }
    let mut joint = vec![vec![0f64; ub.len()]; ua.len()];
    for (x, y) in a.iter().zip(b) {
        let i = ua.binary_search(x).unwrap();
        let j = ub.binary_search(y).unwrap();
        joint[i][j] += 1.0;
    }
    let pa: Vec<f64> = joint.iter().map(|r| r.iter().sum::<f64>() / n).collect();
    let pb: Vec<f64> = (0..ub.len()).map(|j| joint.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let h = |p: &[f64]| -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>();
    let mut mi = 0.0;
    for (i, row) in joint.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0.0 {
                let p = c / n;
                mi += p * (p / (pa[i] * pb[j])).ln();
            }
        }
    }
    let (ha, hb) = (h(&pa), h(&pb));
    if ha == 0.0 || hb == 0.0 {
        return 0.0;
    }
    (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0)
}

/// NMI at one layer: features of both modalities stacked, k-means (k = 2 by default),
/// NMI against the modality label (0 = image, 1 = text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerNmi {
    pub slot: usize,
    pub nmi: f64,
    pub inertia: f64,
}

pub fn modality_nmi(image: &Tensor, text: &Tensor, k: i64, restarts: usize, seed: u64) -> Result<(f64, f64)> {
    let (ni, nt) = (image.size()[0], text.size()[0]);
    let feats = Tensor::cat(&[image.to_kind(Kind::Double), text.to_kind(Kind::Double)], 0);
    let km = kmeans(&feats, k, restarts, 100, seed)?;
    let truth: Vec<i64> = std::iter::repeat_n(0, ni as usize).chain(std::iter::repeat_n(1, nt as usize)).collect();
    Ok((nmi(&km.labels, &truth), km.inertia))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmi_matches_scikit_learn_values() {
        // sklearn: normalized_mutual_info_score([0,0,1,1],[1,1,0,0]) = 1.0
        assert!((nmi(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        // normalized_mutual_info_score([0,0,1,1],[0,1,0,1]) = 0.0
        assert!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).abs() < 1e-12);
        // normalized_mutual_info_score([0,0,0,1,1,1],[0,0,1,1,2,2]) = 0.5158037429793888
        assert!((nmi(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]) - 0.5158037429793888).abs() < 1e-12);
        assert_eq!(nmi(&[3, 3], &[1, 1]), 1.0);
    }

    #[test]
    fn kmeans_separates_two_blobs() {
        let a = Tensor::from_slice(&[0.0f64, 0.0, 0.1, 0.0, 0.0, 0.1, 5.0, 5.0, 5.1, 5.0, 5.0, 5.1]).view([6, 2]);
        let km = kmeans(&a, 2, 3, 50, 7).unwrap();
        assert_eq!(km.labels[0], km.labels[1]);
        assert_eq!(km.labels[0], km.labels[2]);
        assert_ne!(km.labels[0], km.labels[3]);
        assert!((km.inertia - 4.0 * 0.01 * 2.0 / 3.0).abs() < 1e-9, "{}", km.inertia);
        let (v, _) = modality_nmi(&a.narrow(0, 0, 3), &a.narrow(0, 3, 3), 2, 3, 1).unwrap();
        assert!((v - 1.0).abs() < 1e-12);
    }
}
