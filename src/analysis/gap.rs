//! Modality-gap metrics on paired, L2-normalised embeddings `X, Y: [n, d]` (row i of X is
//! paired with row i of Y). Formulas: docs/analysis-methods.md §B; computed in f64.
//! Everything but uniformity is O(n·d) (pairwise sums in closed form), so 100k pairs take
//! seconds; uniformity is estimated on the first `uniformity_max` items (recorded; default
//! [`DEFAULT_UNIFORMITY_MAX`]). [`GapAccumulator`] streams: two passes over chunks, memory
//! independent of n (`msclip-analyze gap` reads `.npy` files chunk by chunk).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Default number of items for the O(n²·d) uniformity estimates (the first ones, fixed order).
pub const DEFAULT_UNIFORMITY_MAX: i64 = 2000;

/// All gap metrics of one embedding set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GapReport {
    /// Pairs.
    pub n: i64,
    /// Embedding width.
    pub dim: i64,
    /// B1 / B4 L2M: ‖x̄ − ȳ‖₂ (Liang et al. 2022).
    pub centroid_gap: f64,
    /// cos(x̄, ȳ).
    pub centroid_cosine: f64,
    /// B4 L2I: (1/n) Σ ‖xᵢ − yᵢ‖₂ (Schrodi et al. 2025).
    pub paired_distance: f64,
    /// B5 relative modality gap M / (M + (D_X + D_Y)/2) (Schrodi et al. 2025), with
    /// M = mean (1 − cos(xᵢ, yᵢ))/2 and D = 1 − (cone + 1)/2 per modality; not floored.
    pub rmg: f64,
    /// B6 alignment E‖x − y‖² (α = 2; Wang & Isola 2020).
    pub alignment: f64,
    /// B6 uniformity log E exp(−2‖u − v‖²) over pairs i < j: images, texts, and their union.
    pub uniformity_image: f64,
    /// Uniformity of the texts.
    pub uniformity_text: f64,
    /// Uniformity of images and texts together.
    pub uniformity_union: f64,
    /// Items used for the uniformity estimates.
    pub uniformity_n: i64,
    /// B7: mean matched cosine A, mean unmatched cosine N, margin A − N.
    pub matched_cosine: f64,
    /// Mean cosine of unmatched pairs (i ≠ j).
    pub unmatched_cosine: f64,
    /// matched − unmatched.
    pub margin: f64,
    /// B3 cone effect: mean intra-modal cosine over i ≠ j.
    pub cone_image: f64,
    /// Mean intra-modal cosine of the texts.
    pub cone_text: f64,
    /// B11 linear CKA between X and Y (Kornblith et al. 2019), of the L2-normalised
    /// embeddings (every metric here is of unit rows; see [`linear_cka`] for raw features).
    pub cka: f64,
    /// B9: A, N and margin after removing each modality's mean and renormalising.
    pub centred_matched_cosine: f64,
    /// Unmatched cosine after centring.
    pub centred_unmatched_cosine: f64,
    /// Margin after centring.
    pub centred_margin: f64,
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

use crate::tensor::l2_normalize as normalize;

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

/// Linear CKA (Kornblith et al. 2019) of any two feature matrices with the same rows,
/// `X: [n, p]`, `Y: [n, q]`: ‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y, in f64.
/// Rows are used as given (no normalisation).
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (sx, sy) = (x.size(), y.size());
    if sx.len() != 2 || sy.len() != 2 || sx[0] != sy[0] || sx[0] < 2 {
        return Err(Error::Invalid(format!("linear CKA needs [n, p] and [n, q] with the same n ≥ 2; got {sx:?} and {sy:?}")));
    }
    let centre = |t: &Tensor| {
        let t = t.to_kind(Kind::Double);
        &t - t.mean_dim(0, true, Kind::Double)
    };
    let (x, y) = (centre(x), centre(y));
    let yx = y.tr().matmul(&x);
    Ok(scalar(&(&yx * &yx).sum(Kind::Double)) / (scalar(&x.tr().matmul(&x).norm()) * scalar(&y.tr().matmul(&y).norm())))
}

/// The gap metrics computed from chunks of pairs, in memory bounded by the chunk and
/// `O(d² + uniformity_max·d)`: the first pass ([`GapAccumulator::add`]) keeps sums, the
/// `d × d` Gram matrices of CKA and the uniformity sample; the second
/// ([`GapAccumulator::add_centred`], the same chunks again) the mean-centred sums, which need
/// the means of the first. Pairwise means come from closed forms: for unit vectors
/// `mean_{i≠j} xᵢ·yⱼ = ((Σx)·(Σy) − Σ xᵢ·yᵢ) / (n(n−1))` and
/// `mean_{i≠j} xᵢ·xⱼ = (‖Σx‖² − n) / (n(n−1))`; centred Grams are `XᵀX − n·x̄x̄ᵀ`.
pub struct GapAccumulator {
    dim: i64,
    n: i64,
    sum_x: Tensor,
    sum_y: Tensor,
    matched: f64,
    distance: f64,
    alignment: f64,
    xx: Tensor,
    yy: Tensor,
    yx: Tensor,
    uniformity_max: i64,
    ux: Vec<Tensor>,
    uy: Vec<Tensor>,
    kept: i64,
    // Second pass.
    c_n: i64,
    c_sum_x: Tensor,
    c_sum_y: Tensor,
    c_matched: f64,
}

impl GapAccumulator {
    /// An empty accumulator for `dim`-wide rows, keeping `uniformity_max` rows for uniformity.
    pub fn new(dim: i64, uniformity_max: i64) -> GapAccumulator {
        let z = |shape: &[i64]| Tensor::zeros(shape, (Kind::Double, tch::Device::Cpu));
        GapAccumulator {
            dim,
            n: 0,
            sum_x: z(&[dim]),
            sum_y: z(&[dim]),
            matched: 0.0,
            distance: 0.0,
            alignment: 0.0,
            xx: z(&[dim, dim]),
            yy: z(&[dim, dim]),
            yx: z(&[dim, dim]),
            uniformity_max,
            ux: vec![],
            uy: vec![],
            kept: 0,
            c_n: 0,
            c_sum_x: z(&[dim]),
            c_sum_y: z(&[dim]),
            c_matched: 0.0,
        }
    }

    fn check(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let (sx, sy) = (x.size(), y.size());
        if sx.len() != 2 || sx != sy || sx[1] != self.dim {
            return Err(Error::Invalid(format!("paired embeddings must have equal [n, {}] shapes; got {sx:?} and {sy:?}", self.dim)));
        }
        let cpu = |t: &Tensor| normalize(&t.to_device(tch::Device::Cpu).to_kind(Kind::Double));
        Ok((cpu(x), cpu(y)))
    }

    /// First pass: a chunk of pairs (rows renormalised defensively).
    pub fn add(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let (x, y) = self.check(x, y)?;
        self.n += x.size()[0];
        self.sum_x += x.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        self.sum_y += y.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        self.matched += scalar(&(&x * &y).sum(Kind::Double));
        let diff = &x - &y;
        self.distance += scalar(&diff.norm_scalaropt_dim(2.0, [1], false).sum(Kind::Double));
        self.alignment += scalar(&(&diff * &diff).sum(Kind::Double));
        self.xx += x.tr().matmul(&x);
        self.yy += y.tr().matmul(&y);
        self.yx += y.tr().matmul(&x);
        let take = (self.uniformity_max - self.kept).min(x.size()[0]);
        if take > 0 {
            self.ux.push(x.narrow(0, 0, take));
            self.uy.push(y.narrow(0, 0, take));
            self.kept += take;
        }
        Ok(())
    }

    fn means(&self) -> (Tensor, Tensor) {
        (&self.sum_x / self.n as f64, &self.sum_y / self.n as f64)
    }

    /// Second pass: the same chunks again, in any order.
    pub fn add_centred(&mut self, x: &Tensor, y: &Tensor) -> Result<()> {
        let (x, y) = self.check(x, y)?;
        let (mx, my) = self.means();
        let xc = normalize(&(&x - mx));
        let yc = normalize(&(&y - my));
        self.c_n += x.size()[0];
        self.c_sum_x += xc.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        self.c_sum_y += yc.sum_dim_intlist(&[0i64][..], false, Kind::Double);
        self.c_matched += scalar(&(&xc * &yc).sum(Kind::Double));
        Ok(())
    }

    fn cka(&self) -> f64 {
        let n = self.n as f64;
        let (mx, my) = self.means();
        let outer = |a: &Tensor, b: &Tensor| a.unsqueeze(1).matmul(&b.unsqueeze(0)) * n;
        let yx = &self.yx - outer(&my, &mx);
        let xx = &self.xx - outer(&mx, &mx);
        let yy = &self.yy - outer(&my, &my);
        scalar(&(&yx * &yx).sum(Kind::Double)) / (scalar(&xx.norm()) * scalar(&yy.norm()))
    }

    /// All metrics; needs both passes over the same `n ≥ 3` pairs.
    pub fn finish(&self) -> Result<GapReport> {
        if self.n < 3 {
            return Err(Error::Invalid(format!("need at least 3 pairs, got {}", self.n)));
        }
        if self.c_n != self.n {
            return Err(Error::Invalid(format!("second pass saw {} pairs, the first {}", self.c_n, self.n)));
        }
        let n = self.n as f64;
        let (mx, my) = self.means();
        let centroid_gap = scalar(&(&mx - &my).norm());
        let centroid_cosine = scalar(&mx.dot(&my)) / (scalar(&mx.norm()) * scalar(&my.norm()));
        let pairs = n * (n - 1.0);
        let matched_cosine = self.matched / n;
        let unmatched_cosine = (scalar(&self.sum_x.dot(&self.sum_y)) - self.matched) / pairs;
        // Rows are unit vectors, so Σ‖xᵢ‖² = trace(XᵀX) (= n up to rounding).
        let cone_image = (scalar(&self.sum_x.dot(&self.sum_x)) - scalar(&self.xx.trace())) / pairs;
        let cone_text = (scalar(&self.sum_y.dot(&self.sum_y)) - scalar(&self.yy.trace())) / pairs;
        let m = (1.0 - matched_cosine) / 2.0;
        let dx = 1.0 - (cone_image + 1.0) / 2.0;
        let dy = 1.0 - (cone_text + 1.0) / 2.0;
        let (ux, uy) = (Tensor::cat(&self.ux, 0), Tensor::cat(&self.uy, 0));
        let (uniformity_image, uniformity_text, uniformity_union) = if self.kept >= 2 {
            (uniformity(&ux, 2.0), uniformity(&uy, 2.0), uniformity(&Tensor::cat(&[&ux, &uy], 0), 2.0))
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        let centred_matched_cosine = self.c_matched / n;
        let centred_unmatched_cosine = (scalar(&self.c_sum_x.dot(&self.c_sum_y)) - self.c_matched) / pairs;
        Ok(GapReport {
            n: self.n,
            dim: self.dim,
            centroid_gap,
            centroid_cosine,
            paired_distance: self.distance / n,
            rmg: m / (m + (dx + dy) / 2.0),
            alignment: self.alignment / n,
            uniformity_image,
            uniformity_text,
            uniformity_union,
            uniformity_n: self.kept,
            matched_cosine,
            unmatched_cosine,
            margin: matched_cosine - unmatched_cosine,
            cone_image,
            cone_text,
            cka: self.cka(),
            centred_matched_cosine,
            centred_unmatched_cosine,
            centred_margin: centred_matched_cosine - centred_unmatched_cosine,
        })
    }
}

/// Rows per chunk when [`gap_report`] walks in-memory embeddings.
const CHUNK: i64 = 8192;

/// Computes every metric of [`GapReport`] for in-memory `x`, `y` (rows renormalised
/// defensively), through [`GapAccumulator`] in chunks of 8,192 pairs.
pub fn gap_report(x: &Tensor, y: &Tensor, uniformity_max: i64) -> Result<GapReport> {
    let (sx, sy) = (x.size(), y.size());
    if sx.len() != 2 || sx != sy {
        return Err(Error::Invalid(format!("paired embeddings must have equal [n, d] shapes; got {sx:?} and {sy:?}")));
    }
    if sx[0] < 3 {
        return Err(Error::Invalid(format!("need at least 3 pairs, got {}", sx[0])));
    }
    let mut acc = GapAccumulator::new(sx[1], uniformity_max);
    let chunks = |f: &mut dyn FnMut(&Tensor, &Tensor) -> Result<()>| -> Result<()> {
        let mut start = 0;
        while start < sx[0] {
            let len = CHUNK.min(sx[0] - start);
            f(&x.narrow(0, start, len), &y.narrow(0, start, len))?;
            start += len;
        }
        Ok(())
    };
    chunks(&mut |a, b| acc.add(a, b))?;
    chunks(&mut |a, b| acc.add_centred(a, b))?;
    acc.finish()
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
        assert!(gap_report(&x, &t(&[1.0, 0.0], 1), 10).is_err());
    }

    /// Streaming over uneven chunks gives the in-memory report; a short second pass is refused.
    #[test]
    fn chunked_accumulation_equals_one_shot() {
        tch::manual_seed(2);
        let x = Tensor::randn([103, 6], (Kind::Float, tch::Device::Cpu)) + 0.5;
        let y = Tensor::randn([103, 6], (Kind::Float, tch::Device::Cpu)) - 0.3;
        let whole = gap_report(&x, &y, 40).unwrap();
        let mut acc = GapAccumulator::new(6, 40);
        let cuts = [(0, 17), (17, 1), (18, 60), (78, 25)];
        for &(s, l) in &cuts {
            acc.add(&x.narrow(0, s, l), &y.narrow(0, s, l)).unwrap();
        }
        for &(s, l) in cuts.iter().rev() {
            acc.add_centred(&x.narrow(0, s, l), &y.narrow(0, s, l)).unwrap();
        }
        let streamed = acc.finish().unwrap();
        assert_eq!(streamed.uniformity_n, 40);
        let (a, b) = (serde_json::to_value(&whole).unwrap(), serde_json::to_value(&streamed).unwrap());
        for (k, v) in a.as_object().unwrap() {
            let (p, q) = (v.as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((p - q).abs() < 1e-12, "{k}: {p} vs {q}");
        }
        let mut short = GapAccumulator::new(6, 10);
        short.add(&x, &y).unwrap();
        short.add_centred(&x.narrow(0, 0, 50), &y.narrow(0, 0, 50)).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("second pass saw 50"));
        assert!(short.add(&x.narrow(1, 0, 5), &y.narrow(1, 0, 5)).is_err());
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
