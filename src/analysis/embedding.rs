//! Embedding-space metrics on L2-normalised paired embeddings `X, Y: [N, E]` (row i of X
//! pairs with row i of Y).

use tch::{Kind, Tensor};

/// Centroid modality gap (Liang et al. 2022, "Mind the Gap"): `‖mean(X) − mean(Y)‖₂`.
pub fn centroid_gap(x: &Tensor, y: &Tensor) -> f64 {
    (x.mean_dim(0, false, Kind::Double) - y.mean_dim(0, false, Kind::Double)).norm().double_value(&[])
}

/// Modality separation: the centroid gap in units of the within-modality spread,
/// `‖x̄ − ȳ‖ / √(½ (E‖x − x̄‖² + E‖y − ȳ‖²))` (a Fisher-style ratio; 0 = same centre, ≫ 1 =
/// two distinct clusters). Unlike NMI of a 2-means clustering, which is 1 as soon as the
/// clusters are linearly separable, it keeps growing with the distance between the modalities,
/// so it discriminates between layers and models where NMI has saturated. Works on raw (not
/// normalised) features of any scale: the ratio is scale-free.
pub fn separation(x: &Tensor, y: &Tensor) -> f64 {
    let spread = |t: &Tensor| {
        let t = t.to_kind(Kind::Double);
        (&t - t.mean_dim(0, true, Kind::Double))
            .square()
            .sum_dim_intlist(&[1i64][..], false, Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let within = (0.5 * (spread(x) + spread(y))).sqrt();
    let gap = centroid_gap(x, y);
    if within > 0.0 {
        gap / within
    } else if gap > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Per query row of `sim: [N, N]`, 1 when its paired column ranks in the top `k` (ties against
/// the model, as [`recall_at_k`]; the mean of this vector is `recall_at_k`).
pub fn rank_hits(sim: &Tensor, k: i64) -> Vec<f64> {
    let diag = sim.diag(0).unsqueeze(1);
    let rank = sim.ge_tensor(&diag).sum_dim_intlist(&[1i64][..], false, Kind::Int64) - 1;
    crate::tensor::to_vec_f64(&rank.lt(k))
}

/// Recall@k of retrieving the paired column for every row of `sim: [N, N]`. Ties count
/// against the model: the rank of the true pair is the number of *other* entries at least as
/// high (a row of equal scores ranks its pair last), so constant embeddings score chance or
/// below, never perfect.
pub fn recall_at_k(sim: &Tensor, k: i64) -> f64 {
    let n = sim.size()[0];
    let diag = sim.diag(0).unsqueeze(1);
    let rank = sim.ge_tensor(&diag).sum_dim_intlist(&[1i64][..], false, Kind::Int64) - 1;
    rank.lt(k).to_kind(Kind::Double).sum(Kind::Double).double_value(&[]) / n as f64
}

/// Zero-shot classifier from prompt embeddings `[C, T, E]`: per class the mean of the
/// normalised prompt embeddings, renormalised; returns `W: [E, C]`.
pub fn prompt_ensemble(prompt_emb: &Tensor) -> Tensor {
    crate::tensor::l2_normalize(&prompt_emb.mean_dim(1, false, Kind::Float)).tr()
}

/// Top-k accuracy of `logits: [N, C]` against `labels`.
pub fn topk_accuracy(logits: &Tensor, labels: &[i64], k: i64) -> f64 {
    let target = Tensor::from_slice(labels).view([-1, 1]);
    let (_, idx) = logits.topk(k, -1, true, true);
    idx.eq_tensor(&target).any_dim(1, false).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// Accuracy and mean-per-class accuracy (the mean over classes present in `y` of each class's
/// accuracy, as CLIP_benchmark's `mean_per_class_recall`) of predicted class indices.
pub fn accuracies(pred: &[i64], y: &[i64], classes: i64) -> (f64, f64) {
    let mut per = vec![(0.0, 0.0); classes.max(0) as usize];
    let mut hits = 0.0;
    for (p, t) in pred.iter().zip(y) {
        let Some(slot) = per.get_mut(*t as usize) else { continue };
        slot.1 += 1.0;
        if p == t {
            hits += 1.0;
            slot.0 += 1.0;
        }
    }
    let present: Vec<f64> = per.iter().filter(|(_, c)| *c > 0.0).map(|(h, c)| h / c).collect();
    (hits / y.len().max(1) as f64, present.iter().sum::<f64>() / present.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_hand_computed_inputs() {
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let y = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).view([2, 2]);
        assert!(centroid_gap(&x, &y).abs() < 1e-12);
        let y2 = Tensor::from_slice(&[0.6f32, 0.8, 0.6, 0.8]).view([2, 2]);
        // mean X = (0.5, 0.5), mean Y = (0.6, 0.8) → √(0.01 + 0.09).
        assert!((centroid_gap(&x, &y2) - 0.1f64.sqrt()).abs() < 1e-6);
        let sim = Tensor::from_slice(&[0.9f32, 0.1, 0.2, 0.8, 0.3, 0.7, 0.1, 0.4, 0.2]).view([3, 3]);
        // Row 0: pair best (rank 0); row 1: 0.3 below 0.8 and 0.7 (rank 2); row 2: 0.2 below 0.4 (rank 1).
        assert!((recall_at_k(&sim, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((recall_at_k(&sim, 2) - 2.0 / 3.0).abs() < 1e-12);
        assert!((recall_at_k(&sim, 3) - 1.0).abs() < 1e-12);
        // Ties are pessimistic: a constant similarity ranks every pair last.
        let flat = Tensor::full([4, 4], 0.5, (Kind::Float, tch::Device::Cpu));
        assert_eq!(recall_at_k(&flat, 1), 0.0);
        assert_eq!(recall_at_k(&flat, 3), 0.0);
        assert_eq!(recall_at_k(&flat, 4), 1.0);
        // One tie with the true pair in row 0: rank 1, not 0.
        let tie = Tensor::from_slice(&[0.9f32, 0.9, 0.1, 0.2, 0.8, 0.1, 0.0, 0.0, 0.5]).view([3, 3]);
        assert!((recall_at_k(&tie, 1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(rank_hits(&sim, 2), vec![1.0, 0.0, 1.0]);
        assert_eq!(rank_hits(&tie, 1), vec![0.0, 1.0, 1.0]);
        // Separation: X = {(0,0), (2,0)}, Y = {(0,4), (2,4)}: gap 4, spread E‖x − x̄‖² = 1 in
        // both → 4; scaling both sets leaves it unchanged; equal centres → 0.
        let sx = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 0.0]).view([2, 2]);
        let sy = Tensor::from_slice(&[0.0f32, 4.0, 2.0, 4.0]).view([2, 2]);
        assert!((separation(&sx, &sy) - 4.0).abs() < 1e-12);
        assert!((separation(&(&sx * 7.0), &(&sy * 7.0)) - 4.0).abs() < 1e-9);
        assert!(separation(&sx, &sx).abs() < 1e-12);
        let logits = Tensor::from_slice(&[0.1f32, 0.9, 0.8, 0.2]).view([2, 2]);
        assert_eq!(topk_accuracy(&logits, &[1, 1], 1), 0.5);
        // 3 of class 0 (2 right), 1 of class 1 (right): top-1 3/4, mean per class (2/3 + 1)/2.
        let (acc, mpc) = accuracies(&[0, 0, 1, 1], &[0, 0, 0, 1], 2);
        assert!((acc - 0.75).abs() < 1e-12 && (mpc - 5.0 / 6.0).abs() < 1e-12);
        let pe = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let w = prompt_ensemble(&pe);
        assert!((w.double_value(&[0, 0]) - 0.5f64.sqrt()).abs() < 1e-6);
    }
}
