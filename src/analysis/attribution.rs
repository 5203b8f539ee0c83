//! Attention-based attribution (docs/analysis-methods.md C2, C4, C14), as pure functions of
//! captured attention `A^l: [H, L, L]` (one item) and, for relevancy, the gradients
//! `G^l = ∂s/∂A^l` of the target score s.

use tch::{Kind, Tensor};

/// Attention rollout (Abnar & Zuidema 2020): Â = mean_h A, Ã = ½Â + ½I with rows renormalised,
/// R = Ã^L ⋯ Ã^1. Returns R `[L, L]`.
pub fn rollout(layers: &[Tensor]) -> Tensor {
    let l = layers[0].size()[1];
    let eye = Tensor::eye(l, (Kind::Double, layers[0].device()));
    let mut r = eye.copy();
    for a in layers {
        let m = a.to_kind(Kind::Double).mean_dim(0, false, Kind::Double) * 0.5 + &eye * 0.5;
        let m = &m / m.sum_dim_intlist(&[-1i64][..], true, Kind::Double);
        r = m.matmul(&r);
    }
    r
}

/// Gradient-weighted relevancy (Chefer et al., ICCV 2021): R = I; for each layer from the
/// first given, Ā = mean_h[(G ⊙ A)⁺], R ← R + Ā·R. Returns R `[L, L]`.
pub fn relevancy(layers: &[Tensor], grads: &[Tensor]) -> Tensor {
    let l = layers[0].size()[1];
    let mut r = Tensor::eye(l, (Kind::Double, layers[0].device()));
    for (a, g) in layers.iter().zip(grads) {
        let cam = (g.to_kind(Kind::Double) * a.to_kind(Kind::Double)).clamp_min(0.0).mean_dim(0, false, Kind::Double);
        r = &r + cam.matmul(&r);
    }
    r
}

/// Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule).
pub fn auc(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let h = 1.0 / (values.len() - 1) as f64;
    values.windows(2).map(|w| (w[0] + w[1]) * h / 2.0).sum()
}

/// The order in which patches are removed/added: most relevant first.
pub fn order_by_relevance(map: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..map.len()).collect();
    idx.sort_by(|&a, &b| map[b].partial_cmp(&map[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx
}

/// Patch keep-masks `[steps+1, grid²]` for deletion (1 = kept) or insertion (1 = shown) at
/// fractions k/steps of the patches taken in `order`.
pub fn perturbation_masks(order: &[usize], steps: usize, insertion: bool) -> Vec<Vec<f32>> {
    let n = order.len();
    (0..=steps)
        .map(|k| {
            let count = (k * n + steps / 2) / steps;
            let mut m = vec![if insertion { 0.0 } else { 1.0 }; n];
            for &p in &order[..count] {
                m[p] = if insertion { 1.0 } else { 0.0 };
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_of_identity_attention_is_identity_and_rows_sum_to_one() {
        let eye = Tensor::eye(3, (Kind::Double, tch::Device::Cpu)).unsqueeze(0);
        let r = rollout(&[eye.shallow_clone(), eye]);
        assert!(r.allclose(&Tensor::eye(3, (Kind::Double, tch::Device::Cpu)), 1e-12, 1e-12, false));
        // Uniform attention over 2 tokens, one layer: Ã = ½·(½·1) + ½I = [[.75,.25],[.25,.75]].
        let u = Tensor::full([1, 2, 2], 0.5, (Kind::Double, tch::Device::Cpu));
        let r = rollout(&[u.shallow_clone(), u]);
        // Two layers: Ã² = [[.625,.375],[.375,.625]].
        assert!((r.double_value(&[0, 0]) - 0.625).abs() < 1e-12);
        let rows = r.sum_dim_intlist(&[-1i64][..], false, Kind::Double);
        assert!(rows.allclose(&Tensor::ones([2], (Kind::Double, tch::Device::Cpu)), 1e-12, 1e-12, false));
    }

    #[test]
    fn relevancy_keeps_positive_gradient_attention() {
        let a = Tensor::from_slice(&[0.5f64, 0.5, 0.2, 0.8]).view([1, 2, 2]);
        let g = Tensor::from_slice(&[1.0f64, -1.0, 2.0, 0.0]).view([1, 2, 2]);
        // cam = [[0.5, 0], [0.4, 0]]; R = I + cam.
        let r = relevancy(&[a], &[g]);
        let want = Tensor::from_slice(&[1.5f64, 0.0, 0.4, 1.0]).view([2, 2]);
        assert!(r.allclose(&want, 1e-12, 1e-12, false));
    }

    /// Chefer et al. clamp each head's gradient-weighted attention before the head mean
    /// (`(grad * cam).clamp(min=0).mean(dim=0)`): with two heads of opposite sign the two
    /// orders differ, and only clamp-then-mean passes.
    #[test]
    fn relevancy_clamps_each_head_before_the_mean() {
        // Heads 0 and 1 over 2 tokens; at (0, 0): 0.8·0.5 = 0.4 and −1.2·0.5 = −0.6.
        let a = Tensor::from_slice(&[0.5f64, 0.5, 0.3, 0.7, 0.5, 0.5, 0.9, 0.1]).view([2, 2, 2]);
        let g = Tensor::from_slice(&[0.8f64, 0.0, 1.0, -1.0, -1.2, 0.4, 0.0, 2.0]).view([2, 2, 2]);
        // clamp-then-mean: [[0.2, 0.1], [0.15, 0.1]]; mean-then-clamp would give
        // [[0, 0.1], [0.15, 0]].
        let r = relevancy(&[a], &[g]);
        let want = Tensor::from_slice(&[1.2f64, 0.1, 0.15, 1.1]).view([2, 2]);
        assert!(r.allclose(&want, 1e-12, 1e-12, false), "{r}");
    }

    #[test]
    fn auc_and_masks() {
        assert!((auc(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((auc(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        let order = order_by_relevance(&[0.1, 0.9, 0.5, 0.2]);
        assert_eq!(order, vec![1, 2, 3, 0]);
        let del = perturbation_masks(&order, 2, false);
        assert_eq!(del, vec![vec![1.0, 1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0, 1.0], vec![0.0; 4]]);
        let ins = perturbation_masks(&order, 4, true);
        assert_eq!(ins[1], vec![0.0, 1.0, 0.0, 0.0]);
    }
}
