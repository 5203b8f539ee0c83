//! Language-to-vision transfer of attention, measured with statistics that mean the same in
//! both towers (method: docs/transfer.md).
//!
//! The raw per-head statistics of [`super::heads`] are not comparable across towers: the
//! causal mask inflates text self and SOT mass, entropy grows with the number of keys (77
//! tokens against 50 patches), and "neighbour" means one thing in 1-D and another in 2-D.
//! Here, per head and tower, averaged over items and queries:
//!
//! - **normalised entropy** `H_q / ln n_q`, `n_q` the keys query q may attend (vision: all
//!   `1 + g²`; text: `q + 1` under the causal mask) — 1 for a uniform map, 0 for a one-hot one;
//! - **special lift** `A[q, 0] · n_q`: the mass on CLS / SOT relative to a uniform map (1);
//! - **offset lift profile** `ℓ(d) = n_q · (Σ_{k ∈ K_d(q)} A[q,k]) / |K_d(q)|`: the mass per
//!   key at distance d relative to uniform, over non-special keys. Text: `d = q − k` (1-D token
//!   offset); vision: the 2-D patch offset `(Δr, Δc)` (kept in [`HeadProfile::offsets`]) reduced
//!   to its Chebyshev distance `max(|Δr|, |Δc|)` (d = 1: the 8 surrounding patches, as d = 1
//!   is the adjacent token). Uniform attention gives `ℓ ≡ 1` in both towers;
//! - **offset shape** `p(d) = m_q(d) / Σ_{d' ≤ D} m_q(d')`, `m_q(d)` the mean mass per key at
//!   distance d, averaged over the queries that have keys at every `d ≤ D`: how the head's
//!   per-key attention falls off with distance, free of the number of keys (a head whose
//!   weights fall as `e^{−λd}` has the same `p` in 1-D and 2-D, while its `ℓ` and entropy grow
//!   with the key count). **Locality** `ln p(1) − ln p(D)`;
//! - **text queries** are restricted to positions `q ≥ q_min` (default 4) up to EOT, so that
//!   every offset `0..q_min−1` is open to each of them and the causal mask does not decide the
//!   profile; vision queries are the patches.
//!
//! Agreement between the towers over heads (one value per (slot, head) both towers have):
//! Spearman's ρ for each scalar, and for the shapes `−` the mean over heads of the total
//! variation distance `½ Σ_d |p_text(d) − p_vision(d)|` (0 = identical shapes; higher = more
//! alike). Each is tested against a
//! **within-slot permutation null** (vision values permuted among the heads of the same slot,
//! so layer depth, which both towers share, cannot create the agreement); a CLIP model, whose
//! head h of the two towers share nothing, is the reference null at the model level.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::heads::spearman;
use crate::model::Modality;
use crate::rng::SplitMix64 as Rng;

/// Settings of the comparable statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProfileOptions {
    /// First text query position counted (`q ≥ q_min`, SOT is position 0).
    pub text_min_query: i64,
    /// Largest offset of the profile, `D ≤ q_min − 1`.
    pub max_distance: i64,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions { text_min_query: 4, max_distance: 3 }
    }
}

/// The comparable statistics of one head in one tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadProfile {
    /// The tower.
    pub modality: Modality,
    /// The layer slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Mean `H_q / ln n_q`.
    pub norm_entropy: f64,
    /// Mean `A[q, 0] · n_q`.
    pub special_lift: f64,
    /// `ℓ(d)` for `d = 0..=D`.
    pub lift: Vec<f64>,
    /// `p(d)` for `d = 0..=D` (sums to 1).
    pub shape: Vec<f64>,
    /// Vision only: `ℓ(Δr, Δc)` for `Δr, Δc ∈ −D..=D`, row-major `(2D+1)²` (empty for text).
    pub offsets: Vec<f64>,
    /// Queries averaged (over all items).
    pub queries: i64,
    /// Object-relation lift (filled in by the `transfer` command on two-object scenes).
    #[serde(default)]
    pub relation_lift: Option<f64>,
}

/// Running sums per (modality, slot): per head `[norm_entropy, special_lift, ℓ(0..=D)…,
/// offsets…]` summed over queries, and the query count.
#[derive(Default)]
pub struct ProfileAccumulator {
    opts: ProfileOptions,
    sums: BTreeMap<(Modality, usize), (Tensor, i64)>,
}

impl ProfileAccumulator {
    /// An empty accumulator.
    pub fn new(opts: ProfileOptions) -> ProfileAccumulator {
        ProfileAccumulator { opts, sums: BTreeMap::new() }
    }

    fn push(&mut self, m: Modality, slot: usize, sums: Tensor, queries: i64) {
        let e = self.sums.entry((m, slot)).or_insert_with(|| (Tensor::zeros_like(&sums), 0));
        e.0 += sums;
        e.1 += queries;
    }

    /// Adds vision attention `probs: [B, H, 1+g², 1+g²]` (token 0 = CLS).
    pub fn add_vision(&mut self, slot: usize, probs: &Tensor, grid: i64) {
        let dmax = self.opts.max_distance;
        let a = probs.to_kind(Kind::Double);
        let (b, h, l, _) = a.size4().expect("[B, H, L, L]");
        let n_keys = l as f64;
        let pq = a.narrow(2, 1, l - 1); // patch queries [B, H, P, L]
        let ent = -(&pq * pq.clamp_min(1e-300).log()).sum_dim_intlist(&[-1i64][..], false, Kind::Double) / n_keys.ln();
        let special = pq.select(3, 0) * n_keys; // [B, H, P]
        let pp = pq.narrow(3, 1, l - 1); // patch → patch [B, H, P, P]
        let idx = Tensor::arange(grid * grid, (Kind::Int64, a.device()));
        let (r, c) = (idx.divide_scalar_mode(grid, "floor"), idx.remainder(grid));
        let dr = r.unsqueeze(0) - r.unsqueeze(1); // [q, k] = r_k − r_q
        let dc = c.unsqueeze(0) - c.unsqueeze(1);
        let cheb = dr.abs().maximum(&dc.abs());
        let p = (l - 1) as f64;
        let mut cols =
            vec![ent.sum_dim_intlist(&[0i64, 2][..], false, Kind::Double), special.sum_dim_intlist(&[0i64, 2][..], false, Kind::Double)];
        // Per query: the mean mass per key among the keys of a mask, and which queries have any.
        let per_key = |mask: &Tensor| {
            let m = mask.to_kind(Kind::Double); // [q, k]
            let count = m.sum_dim_intlist(&[-1i64][..], false, Kind::Double); // [q]
            let has = count.gt(0.0).to_kind(Kind::Double);
            let mass = (&pp * &m).sum_dim_intlist(&[-1i64][..], false, Kind::Double); // [B, H, q]
            (mass / count.clamp_min(1.0) * &has, has)
        };
        // Column sums over items and the queries that count, rescaled to "per query" so that
        // one divisor (items × patch queries) serves every column.
        let per_query = |x: Tensor, has: &Tensor| {
            let k = has.sum(Kind::Double).double_value(&[]);
            x.sum_dim_intlist(&[0i64, 2][..], false, Kind::Double) * if k > 0.0 { p / k } else { 0.0 }
        };
        let by_d: Vec<(Tensor, Tensor)> = (0..=dmax).map(|d| per_key(&cheb.eq(d))).collect();
        for (m, has) in &by_d {
            cols.push(per_query(m * n_keys, has));
        }
        let complete = by_d.iter().fold(Tensor::ones([l - 1], (Kind::Double, a.device())), |acc, (_, h)| acc * h);
        let total = by_d.iter().fold(Tensor::zeros_like(&by_d[0].0), |acc, (m, _)| acc + m).clamp_min(1e-300);
        for (m, _) in &by_d {
            cols.push(per_query(m / &total * &complete, &complete));
        }
        for odr in -dmax..=dmax {
            for odc in -dmax..=dmax {
                let (m, has) = per_key(&dr.eq(odr).logical_and(&dc.eq(odc)));
                cols.push(per_query(m * n_keys, &has));
            }
        }
        let sums = Tensor::stack(&cols, 1); // [H, C]
        debug_assert_eq!(sums.size()[0], h);
        self.push(Modality::Vision, slot, sums, b * (l - 1));
    }

    /// Adds text attention `probs: [B, H, L, L]` with each item's EOT position. Items whose
    /// EOT comes before `q_min` add nothing.
    pub fn add_text(&mut self, slot: usize, probs: &Tensor, eot: &[i64]) {
        let (qmin, dmax) = (self.opts.text_min_query, self.opts.max_distance);
        let a = probs.to_kind(Kind::Double);
        let (_, h, _, _) = a.size4().expect("[B, H, L, L]");
        let ncols = 2 + 2 * (dmax + 1) + (2 * dmax + 1) * (2 * dmax + 1);
        let mut total = Tensor::zeros([h, ncols], (Kind::Double, a.device()));
        let mut queries = 0;
        for (i, &e) in eot.iter().enumerate() {
            if e < qmin {
                continue;
            }
            let item = a.get(i as i64);
            for q in qmin..=e {
                let row = item.select(1, q).narrow(1, 0, q + 1); // [H, q+1]: keys 0..=q
                let n_keys = (q + 1) as f64;
                let ent = -(&row * row.clamp_min(1e-300).log()).sum_dim_intlist(&[-1i64][..], false, Kind::Double) / n_keys.ln();
                let special = row.select(1, 0) * n_keys;
                let mut cols = vec![ent, special];
                // One key at each offset d (k = q − d ≥ 1, since q ≥ q_min > D).
                let m: Vec<Tensor> = (0..=dmax).map(|d| row.select(1, q - d)).collect();
                let norm = m.iter().fold(Tensor::zeros([h], (Kind::Double, a.device())), |acc, x| acc + x).clamp_min(1e-300);
                cols.extend(m.iter().map(|x| x * n_keys));
                cols.extend(m.iter().map(|x| x / &norm));
                for _ in 0..(2 * dmax + 1) * (2 * dmax + 1) {
                    cols.push(Tensor::zeros([h], (Kind::Double, a.device())));
                }
                total += Tensor::stack(&cols, 1);
                queries += 1;
            }
        }
        if queries > 0 {
            self.push(Modality::Text, slot, total, queries);
        }
    }

    /// The mean statistics per head.
    pub fn finish(&self) -> Vec<HeadProfile> {
        let d = self.opts.max_distance as usize;
        let mut out = Vec::new();
        for ((m, slot), (sum, n)) in &self.sums {
            let mean = Vec::<f64>::try_from((sum / *n as f64).contiguous().view([-1])).expect("double values");
            let ncols = sum.size()[1] as usize;
            for (head, s) in mean.chunks(ncols).enumerate() {
                out.push(HeadProfile {
                    modality: *m,
                    slot: *slot,
                    head,
                    norm_entropy: s[0],
                    special_lift: s[1],
                    lift: s[2..3 + d].to_vec(),
                    shape: s[3 + d..4 + 2 * d].to_vec(),
                    offsets: if *m == Modality::Vision { s[4 + 2 * d..].to_vec() } else { vec![] },
                    queries: *n,
                    relation_lift: None,
                });
            }
        }
        out
    }
}

/// The scalar statistics compared between the towers.
pub const SCALARS: [&str; 4] = ["norm_entropy", "special_lift", "locality", "relation_lift"];

/// The value of one of [`SCALARS`].
pub fn scalar(p: &HeadProfile, name: &str) -> f64 {
    match name {
        "norm_entropy" => p.norm_entropy,
        "special_lift" => p.special_lift,
        // ln p(1) − ln p(D): how much more a key next door gets than one D away.
        "locality" => match (p.shape.get(1), p.shape.last()) {
            (Some(a), Some(b)) if p.shape.len() > 2 => a.max(1e-12).ln() - b.max(1e-12).ln(),
            _ => f64::NAN,
        },
        "relation_lift" => p.relation_lift.unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}

/// Text and vision agreement of one statistic over heads, with its within-slot null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferAgreement {
    /// `norm_entropy`, `special_lift`, `locality`, `relation_lift` (Spearman ρ) or `shape`
    /// (minus the mean total variation distance between the offset shapes of the same head).
    pub statistic: String,
    /// Which heads: `shared slots` or `unshared slots`.
    pub scope: String,
    /// Heads compared.
    pub heads: usize,
    /// The observed agreement.
    pub value: f64,
    /// Mean of the within-slot permutation null.
    pub null_mean: f64,
    /// 2.5th and 97.5th percentiles of the null.
    pub null_lo: f64,
    /// Upper end of the null's central 95 %.
    pub null_hi: f64,
    /// One-sided permutation p-value `(1 + #{null ≥ value}) / (1 + permutations)` (transfer
    /// predicts positive agreement).
    pub p_value: f64,
}

/// Minus the mean over heads of the total variation distance between the offset shapes.
fn shape_agreement(text: &[&HeadProfile], vision: &[&HeadProfile]) -> f64 {
    let tv = |a: &HeadProfile, b: &HeadProfile| 0.5 * a.shape.iter().zip(&b.shape).map(|(x, y)| (x - y).abs()).sum::<f64>();
    -text.iter().zip(vision).map(|(t, v)| tv(t, v)).sum::<f64>() / text.len().max(1) as f64
}

/// Agreement of every statistic between the towers, over the heads of `slots` both towers
/// have (`scope` names them in the output), against the within-slot permutation null.
pub fn agreement(profiles: &[HeadProfile], slots: &[usize], scope: &str, permutations: usize, seed: u64) -> Vec<TransferAgreement> {
    let key = |p: &HeadProfile| (p.slot, p.head);
    let pick = |m: Modality| -> BTreeMap<(usize, usize), &HeadProfile> {
        profiles.iter().filter(|p| p.modality == m && slots.contains(&p.slot)).map(|p| (key(p), p)).collect()
    };
    let (vis, txt) = (pick(Modality::Vision), pick(Modality::Text));
    let common: Vec<(usize, usize)> = vis.keys().filter(|k| txt.contains_key(k)).copied().collect();
    if common.len() < 3 {
        return vec![];
    }
    let t: Vec<&HeadProfile> = common.iter().map(|k| txt[k]).collect();
    let v: Vec<&HeadProfile> = common.iter().map(|k| vis[k]).collect();
    // Groups of indices sharing a slot: the permutation shuffles within them.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, k) in common.iter().enumerate() {
        groups.entry(k.0).or_default().push(i);
    }
    let mut rng = Rng::new(seed ^ 0x7A45_F3E5);
    let perms: Vec<Vec<usize>> = (0..permutations)
        .map(|_| {
            let mut p: Vec<usize> = (0..common.len()).collect();
            for g in groups.values() {
                let mut shuffled = g.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                for (a, b) in g.iter().zip(&shuffled) {
                    p[*a] = *b;
                }
            }
            p
        })
        .collect();
    let summarise = |name: &str, value: f64, null: Vec<f64>| {
        let mut sorted = null.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let q = |f: f64| sorted.get(((sorted.len() - 1) as f64 * f).round() as usize).copied().unwrap_or(f64::NAN);
        let ge = null.iter().filter(|x| **x >= value - 1e-12).count();
        TransferAgreement {
            statistic: name.into(),
            scope: scope.into(),
            heads: common.len(),
            value,
            null_mean: null.iter().sum::<f64>() / null.len().max(1) as f64,
            null_lo: q(0.025),
            null_hi: q(0.975),
            p_value: (1 + ge) as f64 / (1 + null.len()) as f64,
        }
    };
    let mut out = Vec::new();
    for name in SCALARS {
        let a: Vec<f64> = t.iter().map(|p| scalar(p, name)).collect();
        let b: Vec<f64> = v.iter().map(|p| scalar(p, name)).collect();
        if a.iter().chain(&b).any(|x| !x.is_finite()) {
            // Not measured on these data (relation lift needs two-object synthetic scenes).
            continue;
        }
        let value = spearman(&a, &b);
        let null = perms.iter().map(|p| spearman(&a, &p.iter().map(|&i| b[i]).collect::<Vec<_>>())).collect();
        out.push(summarise(name, value, null));
    }
    let value = shape_agreement(&t, &v);
    let null = perms.iter().map(|p| shape_agreement(&t, &p.iter().map(|&i| v[i]).collect::<Vec<_>>())).collect();
    out.push(summarise("shape", value, null));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention whose mass per key falls off as exp(−λ·d) with offset d, normalised per
    /// query: vision over the 2-D Chebyshev distance (plus CLS at d = 0 weight), text over the
    /// 1-D causal offset. One λ per head.
    fn planted(lambdas: &[f64], grid: i64, text_len: i64) -> (Tensor, Tensor) {
        let h = lambdas.len() as i64;
        let l = 1 + grid * grid;
        let mut v = vec![0f64; (h * l * l) as usize];
        for (hi, lam) in lambdas.iter().enumerate() {
            for q in 0..l {
                let mut row = vec![0f64; l as usize];
                for k in 0..l {
                    let w = if q == 0 || k == 0 {
                        1.0
                    } else {
                        let (qr, qc, kr, kc) = ((q - 1) / grid, (q - 1) % grid, (k - 1) / grid, (k - 1) % grid);
                        (-lam * ((qr - kr).abs().max((qc - kc).abs()) as f64)).exp()
                    };
                    row[k as usize] = w;
                }
                let s: f64 = row.iter().sum();
                for k in 0..l {
                    v[((hi as i64 * l + q) * l + k) as usize] = row[k as usize] / s;
                }
            }
        }
        let mut t = vec![0f64; (h * text_len * text_len) as usize];
        for (hi, lam) in lambdas.iter().enumerate() {
            for q in 0..text_len {
                let w: Vec<f64> = (0..=q).map(|k| if k == 0 { 1.0 } else { (-lam * (q - k) as f64).exp() }).collect();
                let s: f64 = w.iter().sum();
                for k in 0..=q {
                    t[((hi as i64 * text_len + q) * text_len + k) as usize] = w[k as usize] / s;
                }
            }
        }
        (Tensor::from_slice(&v).view([1, h, l, l]), Tensor::from_slice(&t).view([1, h, text_len, text_len]))
    }

    #[test]
    fn uniform_attention_has_unit_lift_and_entropy_in_both_towers() {
        let (v, t) = planted(&[0.0], 4, 10);
        let mut acc = ProfileAccumulator::new(ProfileOptions::default());
        acc.add_vision(1, &v, 4);
        acc.add_text(1, &t, &[9]);
        for p in acc.finish() {
            assert!((p.norm_entropy - 1.0).abs() < 1e-12, "{p:?}");
            assert!((p.special_lift - 1.0).abs() < 1e-12, "{p:?}");
            for x in p.lift.iter().chain(&p.offsets) {
                assert!((x - 1.0).abs() < 1e-12, "{p:?}");
            }
            for x in &p.shape {
                assert!((x - 0.25).abs() < 1e-12, "{p:?}");
            }
        }
    }

    /// A planted model whose heads have identical text and vision offset profiles scores
    /// high against its within-slot null; shuffling which vision head goes with which text
    /// head puts it at the null.
    #[test]
    fn planted_transfer_scores_high_and_a_shuffled_one_scores_at_its_null() {
        // Two slots of 6 heads; the heads' λ spread from diffuse to sharply local.
        let lams = [0.0, 0.3, 0.7, 1.2, 2.0, 3.5];
        let (v, t) = planted(&lams, 6, 12);
        let mut acc = ProfileAccumulator::new(ProfileOptions::default());
        for slot in [1, 2] {
            acc.add_vision(slot, &v, 6);
            acc.add_text(slot, &t, &[11]);
        }
        let profiles = acc.finish();
        let agree = agreement(&profiles, &[1, 2], "shared slots", 999, 3);
        let get = |n: &str| agree.iter().find(|a| a.statistic == n).unwrap().clone();
        // The same e^{−λd} fall-off gives the same shape in 1-D and 2-D.
        let (t1, v1) = (
            profiles.iter().find(|p| p.modality == Modality::Text && p.head == 4).unwrap(),
            profiles.iter().find(|p| p.modality == Modality::Vision && p.head == 4).unwrap(),
        );
        for (a, b) in t1.shape.iter().zip(&v1.shape) {
            assert!((a - b).abs() < 1e-9, "{:?} vs {:?}", t1.shape, v1.shape);
        }
        for name in ["locality", "norm_entropy", "special_lift"] {
            let a = get(name);
            assert!(a.value > 0.9 && a.p_value < 0.01 && a.value > a.null_hi, "{a:?}");
        }
        let shape = get("shape");
        assert!(shape.value.abs() < 1e-9 && shape.p_value < 0.01 && shape.null_hi < -0.01, "{shape:?}");
        // Shuffled: vision heads re-paired at random within each slot, many times: the
        // observed agreement is then one draw of its null (p roughly uniform, mean ≈ 0.5).
        let mut ps = Vec::new();
        for s in 0..40u64 {
            let mut rng = Rng::new(100 + s);
            let mut shuffled = profiles.clone();
            for slot in [1usize, 2] {
                let idx: Vec<usize> =
                    shuffled.iter().enumerate().filter(|(_, p)| p.modality == Modality::Vision && p.slot == slot).map(|(i, _)| i).collect();
                let mut heads: Vec<usize> = idx.iter().map(|&i| shuffled[i].head).collect();
                for i in (1..heads.len()).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    heads.swap(i, j);
                }
                for (&i, h) in idx.iter().zip(heads) {
                    shuffled[i].head = h;
                }
            }
            let a = agreement(&shuffled, &[1, 2], "shared slots", 199, s);
            ps.push(a.iter().find(|a| a.statistic == "shape").unwrap().p_value);
        }
        let mean_p = ps.iter().sum::<f64>() / ps.len() as f64;
        let small = ps.iter().filter(|p| **p < 0.05).count();
        assert!((0.35..=0.65).contains(&mean_p) && small <= 6, "mean p {mean_p}, {small} of 40 below 0.05");
    }
}
