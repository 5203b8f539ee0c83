//! `transfer`: does attention learned in a shared layer mean the same thing on a caption and
//! on an image? Asked with statistics comparable across towers ([`crate::analysis::transfer`]),
//! each against its null:
//!
//! 1. per-head statistics (normalised entropy, special-token lift, locality, the offset shape)
//!    correlated between the towers over the shared slots' heads, against a within-slot
//!    permutation null; the unshared slots of the same model, and a CLIP (recipe: a second
//!    run) as reference nulls;
//! 2. word-relation against region-relation attention: on two-object synthetic scenes, the
//!    lift of attention from the second object's caption tokens to the first's, and from the
//!    second object's patches to the first's;
//! 3. over training (`--run`): the statistics at every checkpoint, and per shared head the step
//!    at which each tower's value has covered 90 % of its change for good; whether text
//!    settles before vision is a two-sided sign test over heads.
//!
//! The causal transplant experiment trains models (`msclip-train --init`); see
//! `scripts/transfer.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::{provenance_with, to_json_pretty, DataOptions, SkippedItem};
use crate::analysis::stats::{format_p, p_stated};
pub use crate::analysis::transfer::ProfileOptions;
use crate::analysis::transfer::{agreement, scalar, HeadProfile, ProfileAccumulator, TransferAgreement, SCALARS};
use crate::checkpoint::{self, LoadedModel, ModelSource};
use crate::data::pairs::{for_each_batch, Prep};
use crate::error::{Error, Result};
use crate::io::{write_atomic, CsvOut, Provenance};
use crate::model::config::SharedSite;
use crate::model::towers::TextTower;
use crate::model::{ActivationCache, Capture, Modality, ModelConfig};
use crate::plot;
use crate::tokenizer::Tokenizer;

/// Settings of `transfer`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferOptions {
    /// Which text queries and offsets count.
    pub profile: ProfileOptions,
    /// Permutations of the within-slot null.
    pub permutations: usize,
    /// A run directory: compute the statistics at each of its checkpoints (over training).
    pub run: Option<PathBuf>,
    /// The share of its final change a statistic must have covered, for good, to count as
    /// settled (0.9).
    pub settle: f64,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions { profile: ProfileOptions::default(), permutations: 2000, run: None, settle: 0.9 }
    }
}

/// Word-relation (text) or region-relation (vision) attention of one head.
#[derive(Debug, Clone, Serialize)]
pub struct RelationStat {
    /// The tower.
    pub modality: Modality,
    /// The slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Mean over the second object's tokens / patches of the mass on the first object's,
    /// per key, relative to a uniform map (1 = uniform).
    pub lift: f64,
    /// Object pairs averaged.
    pub pairs: usize,
}

/// One checkpoint's statistics (over training).
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointProfiles {
    /// Its step (0 = the seed's initialisation).
    pub step: i64,
    /// The comparable statistics per head.
    pub profiles: Vec<HeadProfile>,
}

/// When one shared head's statistic settles in each tower.
#[derive(Debug, Clone, Serialize)]
pub struct Settle {
    /// The statistic.
    pub statistic: String,
    /// The slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// First step from which the text value stays within (1 − settle) of its total change of
    /// the final value.
    pub text_step: i64,
    /// The same for vision.
    pub vision_step: i64,
}

/// The sign test of "text settles first" for one statistic.
#[derive(Debug, Clone, Serialize)]
pub struct SettleTest {
    /// The statistic.
    pub statistic: String,
    /// Heads whose values changed in both towers.
    pub heads: usize,
    /// Heads whose text value settled at an earlier checkpoint than the vision value.
    pub text_first: usize,
    /// Heads whose vision value settled first.
    pub vision_first: usize,
    /// Heads that settled at the same checkpoint.
    pub ties: usize,
    /// Two-sided exact sign test over the untied heads.
    pub p_value: f64,
    /// Holm-adjusted over the statistics tested.
    pub p_holm: f64,
}

/// The report of `transfer`.
#[derive(Serialize)]
pub struct TransferOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// Slots whose attention is one tensor for both towers.
    pub shared_slots: Vec<usize>,
    /// Comparable statistics per (modality, slot, head).
    pub profiles: Vec<HeadProfile>,
    /// Text–vision agreement per statistic over shared and over unshared slots.
    pub agreement: Vec<TransferAgreement>,
    /// Word- and region-relation attention per head (synthetic scenes with two objects).
    pub relations: Vec<RelationStat>,
    /// Statistics per checkpoint (with `--run`).
    pub over_training: Vec<CheckpointProfiles>,
    /// Settling steps per shared head and statistic (with `--run`).
    pub settle: Vec<Settle>,
    /// "Text settles first" per statistic (with `--run`).
    pub settle_tests: Vec<SettleTest>,
    /// The model's config.
    #[serde(skip)]
    pub config: ModelConfig,
    /// Items that could not be read.
    #[serde(skip)]
    pub skipped: Vec<SkippedItem>,
}

/// What [`measure`] returns: profiles, relation statistics, unreadable items, data identity.
type Measured = (Vec<HeadProfile>, Vec<RelationStat>, Vec<SkippedItem>, String);

/// Statistics of one model on `data`: the profiles (with the relation lift filled in when the
/// data are synthetic scenes) and the relation statistics.
fn measure(model: &LoadedModel, data: &DataOptions, opts: &ProfileOptions) -> Result<Measured> {
    let m = &model.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let (src, data_id, n) = data.open(model)?;
    let tok: Tokenizer = data.tokenizer(model);
    let grid = cfg.grid();
    let cell = cfg.vision.image_size as f64 / grid as f64;
    let mut acc = ProfileAccumulator::new(*opts);
    // (modality, slot) → per-head Σ lift, and pairs.
    let mut rel: BTreeMap<(Modality, usize), (Vec<f64>, usize)> = BTreeMap::new();
    let prep = Prep { size, preprocess: &cfg.preprocess, tokenizer: &tok };
    let vslots = cfg.vision_attention_slots();
    let tslots = cfg.text_attention_slots();
    let skipped = for_each_batch(src.as_ref(), n, data.batch, &prep, |b| {
        let eot: Vec<i64> = Vec::<i64>::try_from(&TextTower::pooled_positions(&b.tokens)).map_err(Error::Torch)?;
        let mut cache = ActivationCache::new();
        tch::no_grad(|| -> Result<()> {
            let _ = m.encode_image_with(&b.images, &Capture::attention(), &mut cache, false)?;
            let _ = m.encode_text_with(&b.tokens, &Capture::attention(), &mut cache)?;
            Ok(())
        })?;
        for &slot in &vslots {
            acc.add_vision(slot, cache.require(Modality::Vision, slot, crate::model::Site::AttnProbs)?, grid);
        }
        for &slot in &tslots {
            acc.add_text(slot, cache.require(Modality::Text, slot, crate::model::Site::AttnProbs)?, &eot);
        }
        // Relations: the first two objects of each synthetic scene whose words are one token
        // each (token = word index + 1, after SOT).
        for (bi, &idx) in b.indices.iter().enumerate() {
            let Some(objects) = data.data.objects(idx, size) else { continue };
            if objects.len() < 2 {
                continue;
            }
            let words = b.captions[bi].split_whitespace().count() as i64;
            if eot[bi] != words + 1 {
                continue;
            }
            let (a, bo) = (&objects[0], &objects[1]);
            let tokens_of = |o: &crate::data::synth::Object| o.word_indices.iter().map(|w| *w as i64 + 1).collect::<Vec<i64>>();
            let patches_of = |o: &crate::data::synth::Object| -> Vec<i64> {
                (0..grid * grid)
                    .filter(|p| {
                        let (r, c) = ((p / grid) as f64, (p % grid) as f64);
                        let (x, y) = ((c + 0.5) * cell, (r + 0.5) * cell);
                        x >= o.bbox[0] as f64 && x < o.bbox[2] as f64 && y >= o.bbox[1] as f64 && y < o.bbox[3] as f64
                    })
                    .map(|p| p + 1)
                    .collect()
            };
            let (ta, tb, pa, pb) = (tokens_of(a), tokens_of(bo), patches_of(a), patches_of(bo));
            if pa.is_empty() || pb.is_empty() {
                continue;
            }
            for &slot in &vslots {
                let probs = cache.require(Modality::Vision, slot, crate::model::Site::AttnProbs)?.get(bi as i64);
                let l = probs.size()[1] as f64;
                let lift = relation_lift(&probs, &pb, &pa, |_| l);
                let e = rel.entry((Modality::Vision, slot)).or_insert_with(|| (vec![0.0; lift.len()], 0));
                e.0.iter_mut().zip(&lift).for_each(|(s, v)| *s += v);
                e.1 += 1;
            }
            // Text: the second object's tokens come after the first's (causal mask).
            for &slot in &tslots {
                let probs = cache.require(Modality::Text, slot, crate::model::Site::AttnProbs)?.get(bi as i64);
                let lift = relation_lift(&probs, &tb, &ta, |q| (q + 1) as f64);
                let e = rel.entry((Modality::Text, slot)).or_insert_with(|| (vec![0.0; lift.len()], 0));
                e.0.iter_mut().zip(&lift).for_each(|(s, v)| *s += v);
                e.1 += 1;
            }
        }
        Ok(())
    })?;
    let mut profiles = acc.finish();
    if profiles.is_empty() {
        return Err(Error::Invalid(format!("transfer: none of the {n} items could be used")));
    }
    let mut relations = Vec::new();
    for ((modality, slot), (sums, pairs)) in &rel {
        for (head, s) in sums.iter().enumerate() {
            relations.push(RelationStat { modality: *modality, slot: *slot, head, lift: s / *pairs as f64, pairs: *pairs });
        }
    }
    for p in &mut profiles {
        p.relation_lift = relations.iter().find(|r| r.modality == p.modality && r.slot == p.slot && r.head == p.head).map(|r| r.lift);
    }
    for p in &profiles {
        let values = [p.norm_entropy, p.special_lift].into_iter().chain(p.lift.iter().copied()).chain(p.shape.iter().copied());
        if values.into_iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "{} slot {} head {}: attention statistics are not finite (the model's outputs are not finite)",
                p.modality.name(),
                p.slot,
                p.head
            )));
        }
    }
    Ok((profiles, relations, SkippedItem::from_all(&skipped), data_id))
}

/// Per head, the mean over queries `qs` of the mass on keys `ks` per key, times the query's
/// key count (`n_keys(q)`): the relation lift (1 = uniform). `probs: [H, L, L]`.
fn relation_lift(probs: &Tensor, qs: &[i64], ks: &[i64], n_keys: impl Fn(i64) -> f64) -> Vec<f64> {
    let h = probs.size()[0];
    let keys = Tensor::from_slice(ks);
    let mut total = Tensor::zeros([h], (Kind::Double, probs.device()));
    for &q in qs {
        let mass = probs.select(1, q).index_select(1, &keys).sum_dim_intlist(&[-1i64][..], false, Kind::Double);
        total += mass / ks.len() as f64 * n_keys(q);
    }
    Vec::<f64>::try_from(total / qs.len() as f64).unwrap_or_default()
}

/// Slots whose attention (in-projection) is one tensor for both towers.
pub fn shared_attention_slots(cfg: &ModelConfig) -> Vec<usize> {
    let v = cfg.vision_attention_slots();
    cfg.text_attention_slots().into_iter().filter(|s| v.contains(s) && cfg.is_shared(*s, SharedSite::AttnIn)).collect()
}

/// Runs `transfer` (see the module docs).
pub fn run(model: &LoadedModel, data: &DataOptions, opts: &TransferOptions) -> Result<TransferOutput> {
    if opts.permutations == 0 {
        return Err(Error::config("permutations", 0, "must be at least 1"));
    }
    if !(opts.settle > 0.0 && opts.settle < 1.0) {
        return Err(Error::config("settle", opts.settle, "must be in (0, 1)"));
    }
    let p = &opts.profile;
    if p.max_distance < 2 || p.text_min_query <= p.max_distance || p.text_min_query > 70 {
        return Err(Error::config(
            "text_min_query / max_distance",
            format!("{} / {}", p.text_min_query, p.max_distance),
            "need 2 ≤ D < q_min ≤ 70, so that every offset up to D is open to every text query",
        ));
    }
    let cfg = model.model.config.clone();
    let (profiles, relations, skipped, data_id) = measure(model, data, p)?;
    let shared = shared_attention_slots(&cfg);
    let vslots = cfg.vision_attention_slots();
    let unshared: Vec<usize> = cfg.text_attention_slots().into_iter().filter(|s| vslots.contains(s) && !shared.contains(s)).collect();
    let mut agree = agreement(&profiles, &shared, "shared slots", opts.permutations, 0);
    agree.extend(agreement(&profiles, &unshared, "unshared slots", opts.permutations, 0));
    let mut over_training = Vec::new();
    if let Some(run_dir) = &opts.run {
        over_training = checkpoints_profiles(run_dir, &cfg, data, p)?;
    }
    let (settle, settle_tests) = settling(&over_training, &shared, opts.settle);
    let mut provenance = provenance_with(model, data_id, 0, data);
    provenance.notes.push(format!(
        "comparable statistics: text queries q ≥ {} up to EOT (every offset 0..{} open to each, so the causal mask does not decide the profile), vision queries = patches; offsets: text 1-D |q − k|, vision 2-D (Δrow, Δcol) reduced to the Chebyshev distance; CLS/SOT excluded from offset statistics",
        p.text_min_query, p.max_distance
    ));
    provenance.notes.push(format!(
        "agreement: Spearman ρ over the (slot, head) pairs both towers have (shape: minus the mean total variation distance of the offset shapes); null: vision values permuted among the heads of the same slot, {} permutations; one-sided p = (1 + #null ≥ observed)/(1 + permutations)",
        opts.permutations
    ));
    if opts.run.is_some() {
        provenance.notes.push(format!(
            "settling: the first checkpoint from which a value stays within {:.0} % of its total change of the final value; step 0 is the seed's initialisation (runs started with --init begin at their first checkpoint); two-sided exact sign test over heads, Holm-adjusted over the statistics",
            (1.0 - opts.settle) * 100.0
        ));
    }
    Ok(TransferOutput {
        provenance,
        shared_slots: shared,
        profiles,
        agreement: agree,
        relations,
        over_training,
        settle,
        settle_tests,
        config: cfg,
        skipped,
    })
}

/// The statistics at the seed's initialisation (step 0, unless the run began from `--init`)
/// and at every checkpoint of `run_dir`, oldest first.
fn checkpoints_profiles(run_dir: &Path, cfg: &ModelConfig, data: &DataOptions, p: &ProfileOptions) -> Result<Vec<CheckpointProfiles>> {
    let mut dirs = checkpoint::list(&run_dir.join("checkpoints"));
    dirs.reverse();
    if dirs.len() < 2 {
        return Err(Error::Invalid(format!(
            "{}: {} checkpoint(s); the over-training analysis needs several (train with save_every > 0 and keep large enough)",
            run_dir.display(),
            dirs.len()
        )));
    }
    let first = checkpoint::verify(&dirs[0])?;
    if first.model != *cfg {
        return Err(Error::Invalid(format!(
            "{}: trained model {:?}, the analysed model is {:?}",
            run_dir.display(),
            first.model.name,
            cfg.name
        )));
    }
    // (step, checkpoint); None = the seed's initialisation, which a run that began from
    // --init does not have.
    let mut sources: Vec<(i64, Option<PathBuf>)> = Vec::new();
    if first.init.is_none() {
        sources.push((0, None));
    }
    for d in &dirs {
        let step = checkpoint::parse_step_dir(&d.file_name().unwrap_or_default().to_string_lossy()).unwrap_or(-1);
        sources.push((step, Some(d.clone())));
    }
    let mut out = Vec::new();
    let n = sources.len();
    for (k, (step, src)) in sources.into_iter().enumerate() {
        let loaded = match src {
            None => {
                let (vs, model) = crate::model::MsClip::build(cfg, tch::Device::Cpu, first.seed as i64);
                LoadedModel { model, vs, weights_id: format!("init:seed={}", first.seed), meta: None }
            }
            Some(dir) => ModelSource::Checkpoint(dir).load(0)?,
        };
        eprintln!("transfer: checkpoint {}/{n} (step {step})", k + 1);
        let (profiles, _, _, _) = measure(&loaded, data, p)?;
        out.push(CheckpointProfiles { step, profiles });
    }
    Ok(out)
}

/// Settling steps of every shared head and statistic, and the sign tests.
fn settling(series: &[CheckpointProfiles], shared: &[usize], settle: f64) -> (Vec<Settle>, Vec<SettleTest>) {
    if series.len() < 2 {
        return (vec![], vec![]);
    }
    let steps: Vec<i64> = series.iter().map(|c| c.step).collect();
    let value = |c: &CheckpointProfiles, m: Modality, slot: usize, head: usize, stat: &str| {
        c.profiles.iter().find(|p| p.modality == m && p.slot == slot && p.head == head).map(|p| scalar(p, stat))
    };
    let settled_at = |xs: &[f64]| -> Option<i64> {
        let (x0, xt) = (xs[0], xs[xs.len() - 1]);
        let change = (xt - x0).abs();
        if change.is_nan() || change <= 1e-9 {
            return None;
        }
        let tol = (1.0 - settle) * change;
        let mut at = xs.len() - 1;
        for j in (0..xs.len()).rev() {
            if (xs[j] - xt).abs() <= tol {
                at = j;
            } else {
                break;
            }
        }
        Some(steps[at])
    };
    let heads: Vec<(usize, usize)> = series[series.len() - 1]
        .profiles
        .iter()
        .filter(|p| p.modality == Modality::Text && shared.contains(&p.slot))
        .map(|p| (p.slot, p.head))
        .collect();
    let mut rows = Vec::new();
    let mut tests = Vec::new();
    for stat in SCALARS.iter().copied().filter(|s| *s != "relation_lift").chain(["shape_0"]) {
        let (mut tf, mut vf, mut ties) = (0, 0, 0);
        for &(slot, head) in &heads {
            let get = |m: Modality| -> Option<Vec<f64>> {
                series
                    .iter()
                    .map(|c| {
                        if stat == "shape_0" {
                            c.profiles
                                .iter()
                                .find(|p| p.modality == m && p.slot == slot && p.head == head)
                                .and_then(|p| p.shape.first().copied())
                        } else {
                            value(c, m, slot, head, stat)
                        }
                    })
                    .collect()
            };
            let (Some(t), Some(v)) = (get(Modality::Text), get(Modality::Vision)) else { continue };
            if t.iter().chain(&v).any(|x| !x.is_finite()) {
                continue;
            }
            let (Some(ts), Some(vs)) = (settled_at(&t), settled_at(&v)) else { continue };
            match ts.cmp(&vs) {
                std::cmp::Ordering::Less => tf += 1,
                std::cmp::Ordering::Greater => vf += 1,
                std::cmp::Ordering::Equal => ties += 1,
            }
            rows.push(Settle { statistic: stat.into(), slot, head, text_step: ts, vision_step: vs });
        }
        let p = sign_test(tf, vf);
        tests.push(SettleTest {
            statistic: stat.into(),
            heads: tf + vf + ties,
            text_first: tf,
            vision_first: vf,
            ties,
            p_value: p,
            p_holm: f64::NAN,
        });
    }
    let adj = crate::analysis::stats::holm(&tests.iter().map(|t| t.p_value).collect::<Vec<_>>());
    for (t, a) in tests.iter_mut().zip(adj) {
        t.p_holm = a;
    }
    (rows, tests)
}

/// Two-sided exact sign test: `min(1, 2·P(X ≤ min(a, b)))`, X ~ Binomial(a + b, ½).
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    if n == 0 {
        return 1.0;
    }
    let k = a.min(b);
    // Σ_{i ≤ k} C(n, i) / 2ⁿ in logs.
    let ln_c = |i: usize| {
        crate::analysis::stats::ln_gamma(n as f64 + 1.0)
            - crate::analysis::stats::ln_gamma(i as f64 + 1.0)
            - crate::analysis::stats::ln_gamma((n - i) as f64 + 1.0)
    };
    let tail: f64 = (0..=k).map(|i| (ln_c(i) - n as f64 * 2f64.ln()).exp()).sum();
    (2.0 * tail).min(1.0)
}

impl TransferOutput {
    /// `profiles.csv`, `offsets_vision.csv`, `agreement.csv`, `relations.csv`,
    /// `over_training.csv` / `settle.csv` (with `--run`), `transfer.json`, and the figures.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let prov = self.provenance.csv_header();
        let d = self.profiles.first().map_or(0, |p| p.lift.len());
        let mut w = CsvOut::preamble_only(&prov);
        let mut header = vec![
            "modality".to_string(),
            "slot".into(),
            "head".into(),
            "shared".into(),
            "norm_entropy".into(),
            "special_lift".into(),
            "locality".into(),
            "relation_lift".into(),
        ];
        header.extend((0..d).map(|k| format!("lift_d{k}")));
        header.extend((0..d).map(|k| format!("shape_d{k}")));
        w.row(&header);
        for p in &self.profiles {
            let mut r = vec![
                p.modality.name().to_string(),
                p.slot.to_string(),
                p.head.to_string(),
                self.shared_slots.contains(&p.slot).to_string(),
                p.norm_entropy.to_string(),
                p.special_lift.to_string(),
                scalar(p, "locality").to_string(),
                p.relation_lift.map_or(String::new(), |v| v.to_string()),
            ];
            r.extend(p.lift.iter().map(|v| v.to_string()));
            r.extend(p.shape.iter().map(|v| v.to_string()));
            w.row(&r);
        }
        w.write(&dir.join("profiles.csv"))?;
        let mut w = CsvOut::preamble_only(&prov);
        w.row(&["slot", "head", "d_row", "d_col", "lift"].map(String::from));
        let side = (2 * d as i64 - 1).max(1);
        for p in self.profiles.iter().filter(|p| p.modality == Modality::Vision) {
            for (i, v) in p.offsets.iter().enumerate() {
                let (r, c) = (i as i64 / side - (d as i64 - 1), i as i64 % side - (d as i64 - 1));
                w.row(&[p.slot.to_string(), p.head.to_string(), r.to_string(), c.to_string(), v.to_string()]);
            }
        }
        w.write(&dir.join("offsets_vision.csv"))?;
        let mut w = CsvOut::preamble_only(&prov);
        w.row(&["statistic", "scope", "heads", "value", "null_mean", "null_lo", "null_hi", "p_value", "p_holm"].map(String::from));
        let holm = self.agreement_holm();
        for (a, h) in self.agreement.iter().zip(&holm) {
            w.row(&[
                a.statistic.clone(),
                a.scope.clone(),
                a.heads.to_string(),
                a.value.to_string(),
                a.null_mean.to_string(),
                a.null_lo.to_string(),
                a.null_hi.to_string(),
                a.p_value.to_string(),
                h.to_string(),
            ]);
        }
        w.write(&dir.join("agreement.csv"))?;
        if !self.relations.is_empty() {
            let mut w = CsvOut::preamble_only(&prov);
            w.row(&["modality", "slot", "head", "lift", "pairs"].map(String::from));
            for r in &self.relations {
                w.row(&[r.modality.name().to_string(), r.slot.to_string(), r.head.to_string(), r.lift.to_string(), r.pairs.to_string()]);
            }
            w.write(&dir.join("relations.csv"))?;
        }
        if !self.over_training.is_empty() {
            let mut w = CsvOut::preamble_only(&prov);
            w.row(&["step", "modality", "slot", "head", "norm_entropy", "special_lift", "locality", "shape_d0"].map(String::from));
            for c in &self.over_training {
                for p in &c.profiles {
                    w.row(&[
                        c.step.to_string(),
                        p.modality.name().to_string(),
                        p.slot.to_string(),
                        p.head.to_string(),
                        p.norm_entropy.to_string(),
                        p.special_lift.to_string(),
                        scalar(p, "locality").to_string(),
                        p.shape.first().map_or(String::new(), |v| v.to_string()),
                    ]);
                }
            }
            w.write(&dir.join("over_training.csv"))?;
            let mut w = CsvOut::preamble_only(&prov);
            w.row(&["statistic", "slot", "head", "text_step", "vision_step"].map(String::from));
            for s in &self.settle {
                w.row(&[s.statistic.clone(), s.slot.to_string(), s.head.to_string(), s.text_step.to_string(), s.vision_step.to_string()]);
            }
            w.write(&dir.join("settle.csv"))?;
        }
        write_atomic(&dir.join("transfer.json"), to_json_pretty(self).as_bytes())?;
        self.figures(dir)
    }

    /// The agreement table and the settling tests as text (what the command prints).
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<14} {:<15} {:>5} {:>9} {:>22} {:>8} {:>8}\n",
            "statistic", "scope", "heads", "observed", "null 95 %", "p", "p holm"
        );
        for (a, h) in self.agreement.iter().zip(self.agreement_holm()) {
            s.push_str(&format!(
                "{:<14} {:<15} {:>5} {:>9.3} {:>22} {:>8} {:>8}\n",
                a.statistic,
                a.scope,
                a.heads,
                a.value,
                format!("[{:.3}, {:.3}]", a.null_lo, a.null_hi),
                format_p(a.p_value),
                format_p(h)
            ));
        }
        for t in &self.settle_tests {
            s.push_str(&format!(
                "settling {:<14} heads {:>3}: text first {:>3}, vision first {:>3}, ties {:>3}, sign test {} (Holm {})\n",
                t.statistic,
                t.heads,
                t.text_first,
                t.vision_first,
                t.ties,
                p_stated(t.p_value),
                format_p(t.p_holm)
            ));
        }
        s
    }

    /// Holm-adjusted p-values over the whole agreement family (every statistic and scope).
    pub fn agreement_holm(&self) -> Vec<f64> {
        crate::analysis::stats::holm(&self.agreement.iter().map(|a| a.p_value).collect::<Vec<_>>())
    }

    fn figures(&self, dir: &Path) -> Result<()> {
        let name = &self.config.name;
        // Observed agreement against its within-slot null, per statistic and scope.
        let scopes: Vec<String> = ["shared slots", "unshared slots"]
            .iter()
            .filter(|s| self.agreement.iter().any(|a| a.scope == **s))
            .map(|s| s.to_string())
            .collect();
        if !scopes.is_empty() {
            let mut rows = Vec::new();
            for s in &scopes {
                rows.push(format!("{s}: observed"));
                rows.push(format!("{s}: within-slot null"));
            }
            let stats: Vec<String> = self.agreement.iter().map(|a| a.statistic.clone()).fold(Vec::new(), |mut v, s| {
                if !v.contains(&s) {
                    v.push(s)
                }
                v
            });
            let panels = stats
                .iter()
                .map(|st| {
                    let mut vals = Vec::new();
                    for s in &scopes {
                        match self.agreement.iter().find(|a| &a.statistic == st && &a.scope == s) {
                            Some(a) => {
                                // The observed value is a point (no interval): a filled dot.
                                vals.push((a.value, f64::NAN, f64::NAN));
                                vals.push((a.null_mean, a.null_lo, a.null_hi));
                            }
                            None => vals.extend([(f64::NAN, f64::NAN, f64::NAN); 2]),
                        }
                    }
                    (label(st), vals)
                })
                .collect();
            plot::render(
                &dir.join("agreement"),
                &plot::IntervalPanels {
                    title: format!("{name}: text–vision agreement of head statistics vs within-slot null"),
                    models: rows,
                    panels,
                    caption: Some("Spearman ρ over heads (shape: −mean total variation distance). Null: the central 95 % of the vision values permuted among heads of the same slot. Transfer predicts the observed value right of its null.".into()),
                    ..Default::default()
                },
            )?;
        }
        // Offset shape of every shared head: text | vision.
        let shared: Vec<&HeadProfile> = self.profiles.iter().filter(|p| self.shared_slots.contains(&p.slot)).collect();
        if !shared.is_empty() {
            let panel = |m: Modality| {
                let ps: Vec<&&HeadProfile> = shared.iter().filter(|p| p.modality == m).collect();
                plot::Heatmap {
                    title: format!("{} p(d)", m.name()),
                    values: ps.iter().map(|p| p.shape.clone()).collect(),
                    row_labels: ps.iter().map(|p| format!("slot {} head {}", p.slot, p.head)).collect(),
                    col_labels: (0..ps.first().map_or(0, |p| p.shape.len())).map(|d| format!("d={d}")).collect(),
                    scale: plot::ColorScale::DivergingAbout(1.0 / ps.first().map_or(1, |p| p.shape.len().max(1)) as f64),
                    unit: "p(d); white = uniform".into(),
                    caption: None,
                }
            };
            plot::render(
                &dir.join("offset_shape"),
                &plot::HeatmapPanels {
                    title: format!("{name}: per-key attention by offset, shared heads (text 1-D, vision 2-D Chebyshev)"),
                    panels: vec![vec![panel(Modality::Text), panel(Modality::Vision)]],
                    shared_scale: true,
                    missing: None,
                    caption: Some("Per shared head (rows; one set of weights for both towers): p(d), the mean attention per key at offset d from the query as a share of its sum over d ≤ D, so that a head attending uniformly is white in every column; red: more than uniform, blue: less. Text offsets are token positions (queries from position q_min on, so the causal mask does not decide the profile), vision offsets patch rings (Chebyshev distance). A head whose language pattern carries over to vision has the same red columns in both panels.".into()),
                },
            )?;
            for st in SCALARS {
                let (pts, groups): (Vec<(f64, f64)>, Vec<String>) = shared
                    .iter()
                    .filter(|p| p.modality == Modality::Text)
                    .filter_map(|t| {
                        let v = shared.iter().find(|v| v.modality == Modality::Vision && v.slot == t.slot && v.head == t.head)?;
                        let (a, b) = (scalar(t, st), scalar(v, st));
                        (a.is_finite() && b.is_finite()).then_some(((a, b), format!("slot {}", t.slot)))
                    })
                    .unzip();
                if pts.len() >= 3 {
                    let a = self.agreement.iter().find(|a| a.statistic == st && a.scope == "shared slots");
                    plot::scatter_png_svg(
                        &dir.join(format!("scatter_{st}")),
                        &plot::Scatter {
                            title: match a {
                                Some(a) => format!("{name}: {} (ρ = {:.2}, within-slot {})", label(st), a.value, p_stated(a.p_value)),
                                None => format!("{name}: {}", label(st)),
                            },
                            x_label: format!("text {}", label(st)),
                            y_label: format!("vision {}", label(st)),
                            points: pts,
                            groups,
                        },
                    )?;
                }
            }
        }
        // Over training: per statistic, the mean over shared heads of each tower's share of
        // its final change.
        if self.over_training.len() >= 2 {
            for st in SCALARS.iter().copied().filter(|s| *s != "relation_lift") {
                let series = [Modality::Text, Modality::Vision].map(|m| {
                    let per_head: Vec<Vec<f64>> = self
                        .shared_slots
                        .iter()
                        .flat_map(|&slot| {
                            let heads: Vec<usize> = self.over_training[0]
                                .profiles
                                .iter()
                                .filter(|p| p.modality == m && p.slot == slot)
                                .map(|p| p.head)
                                .collect();
                            heads.into_iter().map(move |h| (slot, h))
                        })
                        .map(|(slot, h)| {
                            self.over_training
                                .iter()
                                .map(|c| {
                                    c.profiles
                                        .iter()
                                        .find(|p| p.modality == m && p.slot == slot && p.head == h)
                                        .map_or(f64::NAN, |p| scalar(p, st))
                                })
                                .collect()
                        })
                        .collect();
                    let progress: Vec<(f64, f64)> = self
                        .over_training
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            let v: Vec<f64> = per_head
                                .iter()
                                .filter_map(|xs| {
                                    let (x0, xt) = (xs[0], xs[xs.len() - 1]);
                                    ((xt - x0).abs() > 1e-9).then(|| (xs[j] - x0) / (xt - x0))
                                })
                                .filter(|v| v.is_finite())
                                .collect();
                            (c.step as f64, v.iter().sum::<f64>() / v.len().max(1) as f64)
                        })
                        .collect();
                    (m.name().to_string(), progress)
                });
                let test = self.settle_tests.iter().find(|t| t.statistic == st);
                // The range holds every value (early checkpoints can overshoot either way).
                let (lo, hi) = series
                    .iter()
                    .flat_map(|(_, p)| p.iter().map(|q| q.1))
                    .filter(|v| v.is_finite())
                    .fold((-0.1f64, 1.1f64), |(a, b), v| (a.min(v), b.max(v)));
                let pad = 0.05 * (hi - lo);
                plot::line_chart_png_svg(
                    &dir.join(format!("over_training_{st}")),
                    &plot::LineChart {
                        title: format!("{name}: {} over training", label(st)),
                        x_label: "step".into(),
                        y_label: "share of the final change (mean over shared heads)".into(),
                        bands: vec![None, None],
                        series: series.into_iter().collect(),
                        y_range: (lo - pad, hi + pad),
                        x_integer: true,
                        hlines: vec![(0.0, "start".into()), (1.0, "final value".into())],
                        caption: test.map(|t| {
                            format!(
                                "Text settled first in {} heads, vision in {}, {} ties (sign test {}, Holm {}).",
                                t.text_first,
                                t.vision_first,
                                t.ties,
                                p_stated(t.p_value),
                                format_p(t.p_holm)
                            )
                        }),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// A reader's name for a statistic.
pub fn label(stat: &str) -> String {
    match stat {
        "norm_entropy" => "normalised entropy".into(),
        "special_lift" => "CLS/SOT lift".into(),
        "locality" => "locality ln p(1)/p(D)".into(),
        "relation_lift" => "object-relation lift".into(),
        "shape" => "offset shape (−TV distance)".into(),
        "shape_0" => "offset shape p(0), the query's own share".into(),
        other => other.into(),
    }
}
