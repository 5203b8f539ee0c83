//! Head and site ablation. For every (slot, head) the head's output (`z`, before the
//! out-projection) is replaced — by its mean over a reference set (default), by zero, or by
//! another item's (resample) — in the vision tower, in the text tower, and in both at once
//! (in a shared slot: the same weights in both towers), and the change of every metric is
//! recorded. Whole sites too: a slot's attention output, its FFN output, and MS-CLIP-S's
//! parallel branch (its stage outputs). For shared slots, Spearman's ρ between the vision and
//! text importance of the heads (with a permutation p-value) asks whether a shared head
//! matters alike to both modalities; CLIP's head pairs (same index, separate weights) are the
//! null.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::sweep::Prefix;
use super::{EvalSet, Metrics};
use crate::analysis::heads::spearman_permutation_null;
use crate::error::{Error, Result};
use crate::model::config::SharedSite;
use crate::model::{ActivationCache, Capture, Edit, Hook, Modality, MsClip, Site};
use crate::rng::SplitMix64;

/// How an ablated activation is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AblationKind {
    /// Its mean over the reference set, per position (TransformerLens' mean ablation).
    Mean,
    /// Zero.
    Zero,
    /// Another item's (a fixed derangement of the evaluation items, from the seed).
    Resample,
}

impl AblationKind {
    /// `mean`, `zero` or `resample`.
    pub fn name(self) -> &'static str {
        match self {
            AblationKind::Mean => "mean",
            AblationKind::Zero => "zero",
            AblationKind::Resample => "resample",
        }
    }
}

/// Settings of an ablation sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct AblateOptions {
    /// How activations are replaced.
    pub kind: AblationKind,
    /// Held-out zero-shot images and captioned pairs.
    pub items: usize,
    /// Seed of the held-out evaluation world.
    pub seed: u64,
    /// Items of the reference set the means come from.
    pub reference_items: usize,
    /// Seed of the reference world (disjoint from the evaluation world).
    pub reference_seed: u64,
    /// Also ablate whole sites (attention, FFN, parallel branch).
    pub sites: bool,
    /// Permutations of the Spearman tests.
    pub permutations: usize,
    /// Forward chunk of the clean runs.
    pub batch: i64,
}

impl Default for AblateOptions {
    fn default() -> Self {
        AblateOptions {
            kind: AblationKind::Mean,
            items: 256,
            seed: 0,
            reference_items: 256,
            reference_seed: 1_000_003,
            sites: true,
            permutations: 2000,
            batch: 128,
        }
    }
}

/// The change of each metric when one head is ablated, per tower.
#[derive(Debug, Clone, Serialize)]
pub struct HeadAblation {
    /// The layer slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Whether the slot's attention weights are shared by the towers.
    pub shared: bool,
    /// Ablated in the vision tower (`None` where it has no attention at the slot).
    pub vision: Option<Metrics>,
    /// Ablated in the text tower.
    pub text: Option<Metrics>,
    /// Ablated in both towers at once.
    pub both: Option<Metrics>,
}

/// The change of each metric when a whole site is ablated.
#[derive(Debug, Clone, Serialize)]
pub struct SiteAblation {
    /// `attention`, `ffn` or `parallel_branch`.
    pub site: String,
    /// The slot (none for the parallel branch).
    pub slot: Option<usize>,
    /// `vision`, `text` or `both`.
    pub towers: String,
    /// Ablated − clean.
    pub delta: Metrics,
}

/// Spearman's ρ between the vision and the text importance (−Δ) of heads.
#[derive(Debug, Clone, Serialize)]
pub struct ImportanceAgreement {
    /// The metric whose drop is the importance.
    pub metric: String,
    /// `shared slots`, `unshared slots (null)`, or `slot S`.
    pub scope: String,
    /// Heads compared.
    pub heads: usize,
    /// Spearman's ρ.
    pub spearman: f64,
    /// Two-sided permutation p-value.
    pub p_value: f64,
    /// The permutation null's central 95 % range of ρ.
    pub null_95: [f64; 2],
}

/// The report of an ablation sweep.
#[derive(Debug, Clone, Serialize)]
pub struct AblateReport {
    /// How activations were replaced.
    pub kind: AblationKind,
    /// The unablated metrics.
    pub clean: Metrics,
    /// Per (slot, head).
    pub heads: Vec<HeadAblation>,
    /// Whole sites.
    pub sites: Vec<SiteAblation>,
    /// Vision vs text importance.
    pub agreement: Vec<ImportanceAgreement>,
    /// Evaluation items (zero-shot images = pairs).
    pub items: usize,
    /// Reference items of the means.
    pub reference_items: usize,
    /// Forward passes run (replica batches).
    pub edits: usize,
}

/// Mean activations over a reference set: `z` per (tower, slot) `[1, H, L, d]`, the attention
/// and FFN outputs `[1, L, D]`, and the branch's stage outputs `[1, …]`.
pub struct Means {
    z: std::collections::BTreeMap<(Modality, usize), Tensor>,
    attn: std::collections::BTreeMap<(Modality, usize), Tensor>,
    ffn: std::collections::BTreeMap<(Modality, usize), Tensor>,
    tops: Vec<Tensor>,
}

impl Means {
    /// The means over `set`'s inputs, in chunks of `chunk`.
    pub fn of(model: &MsClip, set: &EvalSet, chunk: i64) -> Result<Means> {
        let cap = Capture::sites(&[Site::Z, Site::AttnOut, Site::MlpOut]);
        let mut sums: std::collections::BTreeMap<(Modality, usize, Site), Tensor> = Default::default();
        let mut add = |cache: &ActivationCache| {
            for &(m, slot, site) in cache.keys() {
                let s = cache.get(m, slot, site).expect("listed").sum_dim_intlist(&[0i64][..], true, Kind::Double);
                sums.entry((m, slot, site)).and_modify(|a| *a += &s).or_insert(s);
            }
        };
        let mut tops: Vec<Tensor> = vec![];
        for part in set.images.split(chunk, 0) {
            let mut cache = ActivationCache::new();
            let _ = tch::no_grad(|| model.encode_image_with(&part, &cap, &mut cache, false))?;
            add(&cache);
            for (k, t) in tch::no_grad(|| model.vision.branch(&part, false)).into_iter().enumerate() {
                let s = t.sum_dim_intlist(&[0i64][..], true, Kind::Double);
                if k < tops.len() {
                    tops[k] += s;
                } else {
                    tops.push(s);
                }
            }
        }
        for part in set.tokens.split(chunk, 0) {
            let mut cache = ActivationCache::new();
            let _ = tch::no_grad(|| model.encode_text_with(&part, &cap, &mut cache))?;
            add(&cache);
        }
        let (nv, nt) = (set.images.size()[0] as f64, set.tokens.size()[0] as f64);
        let mut means = Means {
            z: Default::default(),
            attn: Default::default(),
            ffn: Default::default(),
            tops: tops.iter().map(|t| (t / nv).to_kind(Kind::Float)).collect(),
        };
        for ((m, slot, site), s) in sums {
            let mean = (s / if m == Modality::Vision { nv } else { nt }).to_kind(Kind::Float);
            match site {
                Site::Z => means.z.insert((m, slot), mean),
                Site::AttnOut => means.attn.insert((m, slot), mean),
                _ => means.ffn.insert((m, slot), mean),
            };
        }
        Ok(means)
    }
}

/// A derangement of `0..n` from `seed` (one n-cycle through a seeded shuffle): the resample
/// source of each item.
pub fn derangement(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed ^ 0xAB1A7E);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut src = vec![0i64; n];
    for k in 0..n {
        src[order[k]] = order[(k + 1) % n] as i64;
    }
    src
}

fn edit(kind: AblationKind, mean: Option<&Tensor>, n: usize, seed: u64) -> Result<Edit> {
    Ok(match kind {
        AblationKind::Zero => Edit::Zero,
        AblationKind::Resample => Edit::Resample(derangement(n, seed)),
        AblationKind::Mean => Edit::Mean(mean.ok_or_else(|| Error::Invalid("no mean activation for the site".into()))?.shallow_clone()),
    })
}

/// Runs the sweep: every head of every attention slot of both towers (and the whole sites
/// with `opts.sites`), each under the three tower choices.
pub fn run(model: &MsClip, opts: &AblateOptions, mut progress: impl FnMut(usize, usize)) -> Result<AblateReport> {
    let cfg = &model.config;
    let set = EvalSet::synthetic(model, opts.items, opts.seed)?;
    let means = if opts.kind == AblationKind::Mean {
        if opts.reference_items < 2 {
            return Err(Error::config("reference_items", opts.reference_items, "need at least 2"));
        }
        if opts.reference_seed == opts.seed {
            return Err(Error::config("reference_seed", opts.reference_seed, "must differ from the evaluation seed"));
        }
        Some(Means::of(model, &EvalSet::synthetic(model, opts.reference_items, opts.reference_seed)?, opts.batch)?)
    } else {
        None
    };
    let pv = Prefix::vision(model, &set.images, opts.batch)?;
    let pt = Prefix::text(model, &set.tokens, opts.batch)?;
    let clean = set.metrics(&pv.clean, &pt.clean);
    let (nv, nt) = (set.images.size()[0] as usize, set.tokens.size()[0] as usize);
    let vslots = cfg.vision_attention_slots();
    let tslots = cfg.text_attention_slots();
    let all_slots: Vec<usize> = (0..cfg.vision.layers.max(cfg.text.layers)).filter(|s| vslots.contains(s) || tslots.contains(s)).collect();
    let total = all_slots.len() + if opts.sites { all_slots.len() + 1 } else { 0 };
    let mut done = 0;
    let mut edits = 0;
    let mut heads = vec![];
    for &slot in &all_slots {
        let hv = if vslots.contains(&slot) { cfg.vision.heads as usize } else { 0 };
        let ht = if tslots.contains(&slot) { cfg.text.heads as usize } else { 0 };
        let z = |m: Modality, n: usize, h: usize| -> Result<Vec<Hook>> {
            Ok(vec![Hook::new(m, slot, Site::Z, edit(opts.kind, means.as_ref().and_then(|x| x.z.get(&(m, slot))), n, opts.seed)?).head(h)])
        };
        let img: Vec<Tensor> =
            if hv > 0 { pv.run(model, slot, &(0..hv).map(|h| z(Modality::Vision, nv, h)).collect::<Result<Vec<_>>>()?)? } else { vec![] };
        let txt: Vec<Tensor> =
            if ht > 0 { pt.run(model, slot, &(0..ht).map(|h| z(Modality::Text, nt, h)).collect::<Result<Vec<_>>>()?)? } else { vec![] };
        edits += 2;
        for h in 0..hv.max(ht) {
            let (iv, it) = (img.get(h), txt.get(h));
            heads.push(HeadAblation {
                slot,
                head: h,
                shared: cfg.is_shared(slot, SharedSite::AttnIn) && cfg.is_shared(slot, SharedSite::AttnOut),
                vision: iv.map(|i| set.metrics(i, &pt.clean).minus(&clean)),
                text: it.map(|t| set.metrics(&pv.clean, t).minus(&clean)),
                both: iv.zip(it).map(|(i, t)| set.metrics(i, t).minus(&clean)),
            });
        }
        done += 1;
        progress(done, total);
    }
    let mut sites = vec![];
    if opts.sites {
        for &slot in &all_slots {
            for (name, site, table) in
                [("attention", Site::AttnOut, means.as_ref().map(|m| &m.attn)), ("ffn", Site::MlpOut, means.as_ref().map(|m| &m.ffn))]
            {
                let one = |m: Modality, n: usize| -> Result<Vec<Hook>> {
                    Ok(vec![Hook::new(m, slot, site, edit(opts.kind, table.and_then(|t| t.get(&(m, slot))), n, opts.seed)?)])
                };
                let iv = if vslots.contains(&slot) { Some(pv.run(model, slot, &[one(Modality::Vision, nv)?])?.remove(0)) } else { None };
                let it = if tslots.contains(&slot) { Some(pt.run(model, slot, &[one(Modality::Text, nt)?])?.remove(0)) } else { None };
                edits += 2;
                if let Some(i) = &iv {
                    sites.push(SiteAblation {
                        site: name.into(),
                        slot: Some(slot),
                        towers: "vision".into(),
                        delta: set.metrics(i, &pt.clean).minus(&clean),
                    });
                }
                if let Some(t) = &it {
                    sites.push(SiteAblation {
                        site: name.into(),
                        slot: Some(slot),
                        towers: "text".into(),
                        delta: set.metrics(&pv.clean, t).minus(&clean),
                    });
                }
                if let (Some(i), Some(t)) = (&iv, &it) {
                    sites.push(SiteAblation {
                        site: name.into(),
                        slot: Some(slot),
                        towers: "both".into(),
                        delta: set.metrics(i, t).minus(&clean),
                    });
                }
            }
            done += 1;
            progress(done, total);
        }
        if !pv.tops.is_empty() {
            let tops: Vec<Tensor> = pv
                .tops
                .iter()
                .enumerate()
                .map(|(k, t)| match opts.kind {
                    AblationKind::Zero => t.zeros_like(),
                    AblationKind::Mean => means.as_ref().expect("means").tops[k].expand_as(t).contiguous(),
                    AblationKind::Resample => t.index_select(0, &Tensor::from_slice(&derangement(nv, opts.seed))),
                })
                .collect();
            let first = model.vision.first_slot();
            let alt = Prefix {
                modality: Modality::Vision,
                streams: pv.streams.iter().map(|(s, t)| (*s, t.shallow_clone())).collect(),
                tops,
                rows: None,
                clean: pv.clean.shallow_clone(),
                n: pv.n,
                keep: None,
            };
            let i = alt.run(model, first, &[vec![]])?.remove(0);
            edits += 1;
            sites.push(SiteAblation {
                site: "parallel_branch".into(),
                slot: None,
                towers: "vision".into(),
                delta: set.metrics(&i, &pt.clean).minus(&clean),
            });
        }
        done += 1;
        progress(done, total);
    }
    let agreement = agreement(&heads, opts.permutations, opts.seed);
    Ok(AblateReport {
        kind: opts.kind,
        clean,
        heads,
        sites,
        agreement,
        items: opts.items,
        reference_items: if opts.kind == AblationKind::Mean { opts.reference_items } else { 0 },
        edits,
    })
}

/// A metric of an ablation run.
type MetricFn = fn(&Metrics) -> f64;
/// The importance metrics compared between the towers.
const IMPORTANCE: [(&str, MetricFn); 2] = [("matched_cosine", |m| m.matched_cosine), ("zero_shot_top1", |m| m.zero_shot_top1)];

/// Spearman's ρ of vision vs text importance (−Δ) over heads: of shared slots, of unshared
/// slots (the null: head h of each tower, separate weights), and per slot.
pub fn agreement(heads: &[HeadAblation], permutations: usize, seed: u64) -> Vec<ImportanceAgreement> {
    let mut out = vec![];
    let slots: std::collections::BTreeSet<usize> = heads.iter().map(|h| h.slot).collect();
    for (metric, f) in IMPORTANCE {
        let pairs = |pred: &dyn Fn(&HeadAblation) -> bool| -> (Vec<f64>, Vec<f64>) {
            heads.iter().filter(|h| pred(h)).filter_map(|h| Some((-f(h.vision.as_ref()?), -f(h.text.as_ref()?)))).unzip()
        };
        type Scope = (String, (Vec<f64>, Vec<f64>));
        let mut scopes: Vec<Scope> =
            vec![("shared slots".into(), pairs(&|h| h.shared)), ("unshared slots (null)".into(), pairs(&|h| !h.shared))];
        for &s in &slots {
            scopes.push((format!("slot {s}"), pairs(&|h| h.slot == s)));
        }
        for (scope, (a, b)) in scopes {
            if a.len() < 3 {
                continue;
            }
            let (rho, p, null_95) = spearman_permutation_null(&a, &b, permutations, seed);
            out.push(ImportanceAgreement { metric: metric.into(), scope, heads: a.len(), spearman: rho, p_value: p, null_95 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derangements_move_every_item() {
        for n in [2, 3, 10, 257] {
            let d = derangement(n, 7);
            let mut seen = d.clone();
            seen.sort();
            assert_eq!(seen, (0..n as i64).collect::<Vec<_>>());
            assert!(d.iter().enumerate().all(|(i, &s)| s != i as i64));
        }
    }
}
