//! Modality-gap metrics on paired, L2-normalised embeddings `X, Y: [n, d]` (row i of X is
//! paired with row i of Y). Formulas: shared/spec/analysis-methods.md §B; computed in f64.
//! Everything but uniformity is O(n·d) (pairwise sums in closed form), so 100k pairs take
//! seconds; uniformity is estimated on the first `uniformity_max` items (recorded; default
//! [`DEFAULT_UNIFORMITY_MAX`]).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Default number of items for the O(n²·d) uniformity estimates (the first ones, fixed order).
pub const DEFAULT_UNIFORMITY_MAX: i64 = 2000;

/// All gap metrics of one embedding set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GapReport {
    pub n: i64,
    pub dim: i64,
    /// B1 / B4 L2M: ‖x̄ − ȳ‖₂ (Liang et al. 2022).
    pub centroid_gap: f64,
    /// cos(x̄, ȳ).
    pub centroid_cosine: f64,
    /// B4 L2I: (1/n) Σ ‖xᵢ − yᵢ‖₂ (Schrodi et al. 2025).
    pub paired_distance: f64,
    /// B5 relative modality gap M / (M + (D_X + D_Y)/2) (Schrodi et al. 2025).
    pub rmg: f64,
    /// B6 alignment E‖x − y‖² (α = 2; Wang & Isola 2020).
    pub alignment: f64,
    /// B6 uniformity log E exp(−2‖u − v‖²) over pairs i < j: images, texts, and their union.
    pub uniformity_image: f64,
    pub uniformity_text: f64,
    pub uniformity_union: f64,
    /// Items used for the uniformity estimates.
    pub uniformity_n: i64,
    /// B7: mean matched cosine A, mean unmatched cosine N, margin A − N.
    pub matched_cosine: f64,
    pub unmatched_cosine: f64,
    pub margin: f64,
    /// B3 cone effect: mean intra-modal cosine over i ≠ j.
    pub cone_image: f64,
    pub cone_text: f64,
    /// B11 linear CKA between X and Y (Kornblith et al. 2019).
    pub cka: f64,
    /// B9: A, N and margin after removing each modality's mean and renormalising.
    pub centred_matched_cosine: f64,
    pub centred_unmatched_cosine: f64,
    pub centred_margin: f64,
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true)
}

/// Mean cosine over i ≠ j of unit vectors: (‖Σx‖² − n) / (n(n−1)).
fn mean_offdiag_cos(x: &Tensor) -> f64 {
    let n = x.size()[0] as f64;
    let s = x.sum_dim_intlist(&[0i64][..], false, Kind::Double);
    (scalar(&s.dot(&s)) - scalar(&(x * x).sum(Kind::Double))) / (n * (n - 1.0))
}

/// Mean of xᵢ·yⱼ over i ≠ j: ((Σx)·(Σy) − Σ xᵢ·yᵢ) / (n(n−1)).
fn mean_cross_offdiag(x: &Tensor, y: &Tensor) -> f64 {
    let n = x.size()[0] as f64;
    let sx = x.sum_dim_intlist(&[0i64][..], false, Kind::Double);
    let sy = y.sum_dim_intlist(&[0i64][..], false, Kind::Double);
    (scalar(&sx.dot(&sy)) - scalar(&(x * y).sum(Kind::Double))) / (n * (n - 1.0))
}

/// log mean_{i<j} exp(−t‖uᵢ − uⱼ‖²), streamed over row blocks.
pub fn uniformity(u: &Tensor, t: f64) -> f64 {
    let n = u.size()[0];
    let mut total = 0.0;
    let block = 2048;
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let rows = u.narrow(0, start, len);
        let sq = (rows.matmul(&u.tr()) * -2.0 + 2.0).clamp_min(0.0); // ‖a−b‖² for unit vectors
        let e = (sq * -t).exp();
        // Keep j > i only.
        let i = Tensor::arange_start(start, start + len, (Kind::Int64, u.device())).unsqueeze(1);
        let j = Tensor::arange(n, (Kind::Int64, u.device())).unsqueeze(0);
        total += scalar(&(e * j.gt_tensor(&i).to_kind(Kind::Double)).sum(Kind::Double));
        start += len;
    }
    let pairs = (n * (n - 1) / 2) as f64;
    (total / pairs).ln()
}

/// Linear CKA ‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y.
pub fn linear_cka(x: &Tensor, y: &Tensor) -> f64 {
    let x = x.to_kind(Kind::Double);
    let y = y.to_kind(Kind::Double);
    let x = &x - x.mean_dim(0, true, Kind::Double);
    let y = &y - y.mean_dim(0, true, Kind::Double);
    let yx = y.tr().matmul(&x);
    let xx = x.tr().matmul(&x);
    let yy = y.tr().matmul(&y);
    let num = scalar(&(&yx * &yx).sum(Kind::Double));
    num / (scalar(&xx.norm()) * scalar(&yy.norm()))
}

/// Computes every metric of [`GapReport`]. `x`, `y` are renormalised defensively.
pub fn gap_report(x: &Tensor, y: &Tensor, uniformity_max: i64) -> Result<GapReport> {
    let (sx, sy) = (x.size(), y.size());
    if sx.len() != 2 || sx != sy {
        return Err(Error::Invalid(format!("paired embeddings must have equal [n, d] shapes; got {sx:?} and {sy:?}")));
    }
    if sx[0] < 3 {
        return Err(Error::Invalid(format!("need at least 3 pairs, got {}", sx[0])));
    }
    let x = normalize(&x.to_kind(Kind::Double));
    let y = normalize(&y.to_kind(Kind::Double));
    let n = sx[0] as f64;
    let mx = x.mean_dim(0, false, Kind::Double);
    let my = y.mean_dim(0, false, Kind::Double);
    let centroid_gap = scalar(&(&mx - &my).norm());
    let centroid_cosine = scalar(&mx.dot(&my)) / (scalar(&mx.norm()) * scalar(&my.norm()));
    let matched = (&x * &y).sum_dim_intlist(&[1i64][..], false, Kind::Double); // cos(xᵢ, yᵢ)
    let matched_cosine = scalar(&matched.mean(Kind::Double));
    let paired_distance = scalar(&((&x - &y).norm_scalaropt_dim(2.0, [1], false).mean(Kind::Double)));
    let alignment = scalar(&(((&x - &y) * (&x - &y)).sum_dim_intlist(&[1i64][..], false, Kind::Double).mean(Kind::Double)));
    let cone_image = mean_offdiag_cos(&x);
    let cone_text = mean_offdiag_cos(&y);
    let unmatched_cosine = mean_cross_offdiag(&x, &y);
    let m = ((1.0 - matched_cosine) / 2.0).max(1e-3);
    let dx = 1.0 - (cone_image + 1.0) / 2.0;
    let dy = 1.0 - (cone_text + 1.0) / 2.0;
    let rmg = m / (m + (dx + dy) / 2.0);
    let k = uniformity_max.min(sx[0]);
    let (ux, uy) = (x.narrow(0, 0, k), y.narrow(0, 0, k));
    let uniformity_image = uniformity(&ux, 2.0);
    let uniformity_text = uniformity(&uy, 2.0);
    let uniformity_union = uniformity(&Tensor::cat(&[&ux, &uy], 0), 2.0);
    let cka = linear_cka(&x, &y);
    let xc = normalize(&(&x - &mx));
    let yc = normalize(&(&y - &my));
    let centred_matched_cosine = scalar(&(&xc * &yc).sum(Kind::Double)) / n;
    let centred_unmatched_cosine = mean_cross_offdiag(&xc, &yc);
    Ok(GapReport {
        n: sx[0],
        dim: sx[1],
        centroid_gap,
        centroid_cosine,
        paired_distance,
        rmg,
        alignment,
        uniformity_image,
        uniformity_text,
        uniformity_union,
        uniformity_n: k,
        matched_cosine,
        unmatched_cosine,
        margin: matched_cosine - unmatched_cosine,
        cone_image,
        cone_text,
        cka,
        centred_matched_cosine,
        centred_unmatched_cosine,
        centred_margin: centred_matched_cosine - centred_unmatched_cosine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], n: i64) -> Tensor {
        Tensor::from_slice(v).view([n, -1])
    }

    #[test]
    fn hand_computed_values() {
        // X = e1, e2, e1 ; Y = e2, e2, e1 (in 2-D).
        let x = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 0.0], 3);
        let y = t(&[0.0, 1.0, 0.0, 1.0, 1.0, 0.0], 3);
        let r = gap_report(&x, &y, 1000).unwrap();
        // x̄ = (2/3, 1/3), ȳ = (1/3, 2/3): gap = √2/3.
        assert!((r.centroid_gap - 2f64.sqrt() / 3.0).abs() < 1e-12);
        // matched cosines 0, 1, 1 → A = 2/3; distances √2, 0, 0.
        assert!((r.matched_cosine - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.paired_distance - 2f64.sqrt() / 3.0).abs() < 1e-12);
        assert!((r.alignment - 2.0 / 3.0).abs() < 1e-12);
        // Unmatched pairs (i≠j) x·y: x0·y1=0, x0·y2=1, x1·y0=1, x1·y2=0, x2·y0=0, x2·y1=0 → 2/6.
        assert!((r.unmatched_cosine - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.margin - 1.0 / 3.0).abs() < 1e-12);
        // Cone X: pairs (0,1)=0, (0,2)=1, (1,2)=0 → 1/3; same for Y: (0,1)=1,(0,2)=0,(1,2)=0.
        assert!((r.cone_image - 1.0 / 3.0).abs() < 1e-12 && (r.cone_text - 1.0 / 3.0).abs() < 1e-12);
        // RMG: M = mean (1 − cos)/2 = 1/6; D = 1 − (1/3 + 1)/2 = 1/3 → (1/6)/(1/6 + 1/3) = 1/3.
        assert!((r.rmg - 1.0 / 3.0).abs() < 1e-12);
        // Uniformity of X: ‖·‖² over pairs = 2, 0, 2 → log((2e^-4 + 1)/3).
        assert!((r.uniformity_image - ((2.0 * (-4f64).exp() + 1.0) / 3.0).ln()).abs() < 1e-12);
        // CKA of identical sets is 1.
        assert!((linear_cka(&x, &x) - 1.0).abs() < 1e-12);
        assert!(gap_report(&x, &t(&[1.0, 0.0], 1), 10).is_err());
    }

    #[test]
    fn closed_forms_match_brute_force() {
        tch::manual_seed(1);
        let x = normalize(&Tensor::randn([50, 8], (Kind::Double, tch::Device::Cpu)));
        let y = normalize(&Tensor::randn([50, 8], (Kind::Double, tch::Device::Cpu)));
        let sim = x.matmul(&y.tr());
        let off = &sim - sim.diag(0).diag(0);
        let brute_n = scalar(&off.sum(Kind::Double)) / (50.0 * 49.0);
        let r = gap_report(&x, &y, 50).unwrap();
        assert!((r.unmatched_cosine - brute_n).abs() < 1e-12);
        let g = x.matmul(&x.tr());
        let brute_cone = (scalar(&g.sum(Kind::Double)) - 50.0) / (50.0 * 49.0);
        assert!((r.cone_image - brute_cone).abs() < 1e-12);
    }
}
