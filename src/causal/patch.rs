//! Activation patching on minimal pairs of the synthetic world.
//!
//! - Text: the same image with a clean caption and a corrupted one that differs in one
//!   attribute word (colour, shape or size of a single object; or the horizontal relation of
//!   two), so the two tokenize to the same length and the changed position is known.
//! - Vision: two renderings of the same scene that differ in one object's colour, with the
//!   clean scene's caption.
//!
//! The logit is `L = exp(t)·cos(image, text)`. The clean activation at one (slot, token
//! position) of the residual stream entering the slot — or one head's output `z` — is patched
//! into the corrupted run, and the fraction of the clean − corrupted logit difference it
//! recovers is `Σ_pairs (L_patched − L_corrupt) / Σ_pairs (L_clean − L_corrupt)` (1 = fully
//! recovered, 0 = nothing).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::sweep::Prefix;
use crate::data::image::to_tensor;
use crate::data::synth::{self, COLORS, SHAPES, SIZES};
use crate::data::synthetic_set::EVAL_SEED_OFFSET;
use crate::error::{Error, Result};
use crate::model::{ActivationCache, Capture, Edit, Hook, Modality, MsClip, Site};
use crate::tokenizer::Tokenizer;

/// The attribute a text minimal pair changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    /// The object's colour.
    Colour,
    /// The object's shape.
    Shape,
    /// The object's size.
    Size,
    /// `left of` ↔ `right of` between two objects.
    Relation,
}

impl Attribute {
    /// The role of each token of the pairs' caption template, SOT..=EOT (heatmap labels).
    pub fn template(self) -> Vec<&'static str> {
        match self {
            Attribute::Relation => vec!["<sot>", "a", "size", "colour", "shape", "relation", "of", "a", "size", "colour", "shape", "<eot>"],
            _ => vec!["<sot>", "a", "size", "colour", "shape", "<eot>"],
        }
    }
    /// The word index (in the caption) that changes.
    fn word(self) -> usize {
        match self {
            Attribute::Size => 1,
            Attribute::Colour => 2,
            Attribute::Shape => 3,
            Attribute::Relation => 4,
        }
    }
}

/// A clean and a corrupted input of the same scene.
#[derive(Debug, Clone, Serialize)]
pub struct MinimalPair {
    /// Scene index in the held-out world.
    pub index: usize,
    /// The clean caption.
    pub clean: String,
    /// The corrupted caption (the clean one for vision pairs).
    pub corrupt: String,
    /// For vision pairs, the colour the object is redrawn in.
    pub recolor: Option<String>,
}

/// `n` text minimal pairs of the held-out world `seed` changing `attr`; scenes whose caption
/// does not follow the attribute's template are skipped. Every pair is checked to tokenize to
/// the same length as its partner and the template, differing only at the changed word.
pub fn text_pairs(seed: u64, n: usize, size: u32, attr: Attribute, tok: &Tokenizer) -> Result<Vec<MinimalPair>> {
    let world = seed ^ EVAL_SEED_OFFSET;
    let mut pairs = vec![];
    let want_objects = if attr == Attribute::Relation { 2 } else { 1 };
    for index in 0..n * 60 {
        if pairs.len() == n {
            break;
        }
        let sc = synth::scene(world, index as u64, size);
        let words: Vec<&str> = sc.caption.split(' ').collect();
        if sc.objects.len() != want_objects || (attr == Attribute::Relation && !matches!(words.get(4), Some(&"left") | Some(&"right"))) {
            continue;
        }
        let w = attr.word();
        let options: Vec<&str> = match attr {
            Attribute::Colour => COLORS.iter().map(|c| c.0).collect(),
            Attribute::Shape => SHAPES.to_vec(),
            Attribute::Size => SIZES.to_vec(),
            Attribute::Relation => vec!["left", "right"],
        };
        let at = options
            .iter()
            .position(|o| *o == words[w])
            .ok_or_else(|| Error::Invalid(format!("scene {index}: caption {:?} has no {attr:?} word at {w}", sc.caption)))?;
        // A deterministic other value (the next one, cycling).
        let other = options[(at + 1 + index % (options.len() - 1)) % options.len()];
        let mut cw = words.clone();
        cw[w] = other;
        pairs.push(MinimalPair { index, clean: sc.caption.clone(), corrupt: cw.join(" "), recolor: None });
    }
    if pairs.len() < n {
        return Err(Error::Invalid(format!("only {} of {n} scenes of the world follow the {attr:?} template", pairs.len())));
    }
    let len = attr.template().len();
    for p in &pairs {
        let (a, b) = (tok.tokenize(&p.clean), tok.tokenize(&p.corrupt));
        let differ: Vec<usize> = a.ids.iter().zip(&b.ids).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect();
        if a.eot_position + 1 != len || b.eot_position + 1 != len || differ != [attr.word() + 1] {
            return Err(Error::Invalid(format!(
                "minimal pair {:?} / {:?} tokenizes to {} and {} tokens differing at {differ:?}; positions must align ({len} tokens, one changed)",
                p.clean,
                p.corrupt,
                a.eot_position + 1,
                b.eot_position + 1
            )));
        }
    }
    Ok(pairs)
}

/// `n` vision minimal pairs: single-object scenes of the held-out world, the object redrawn
/// in another colour; the caption is the clean scene's.
pub fn vision_pairs(seed: u64, n: usize, size: u32) -> Vec<(MinimalPair, usize)> {
    let world = seed ^ EVAL_SEED_OFFSET;
    let mut out = vec![];
    let mut index = 0;
    while out.len() < n && index < n * 60 {
        let sc = synth::scene(world, index as u64, size);
        if sc.objects.len() == 1 {
            let at = COLORS.iter().position(|c| c.0 == sc.objects[0].color).expect("a known colour");
            let other = (at + 1 + index % (COLORS.len() - 1)) % COLORS.len();
            out.push((
                MinimalPair { index, clean: sc.caption.clone(), corrupt: sc.caption.clone(), recolor: Some(COLORS[other].0.into()) },
                other,
            ));
        }
        index += 1;
    }
    out
}

/// Recovered fractions of one patching run.
#[derive(Debug, Clone, Serialize)]
pub struct PatchResult {
    /// `text` or `vision`.
    pub tower: String,
    /// The attribute changed (text) or `colour` (vision).
    pub attribute: String,
    /// The slots, rows of the tables.
    pub slots: Vec<usize>,
    /// Token labels of the positions (text: template roles; vision: `cls`, `r{r}c{c}`).
    pub positions: Vec<String>,
    /// `[slot][position]`: recovered fraction when the residual stream entering the slot is
    /// patched at that position.
    pub resid: Vec<Vec<f64>>,
    /// `[slot][head]`: recovered fraction when the head's output is patched.
    pub heads: Vec<Vec<f64>>,
    /// Vision only (empty for text): `[slot][(dr + R)·(2R + 1) + (dc + R)]`, R =
    /// [`aligned_radius`](Self::aligned_radius): the recovered share when the patch at
    /// offset (dr, dc) patches from each pair's recoloured object (the patch holding its box
    /// centre) is patched, pooled over the kept pairs whose grid holds that patch,
    /// Σ(L_patched − L_corrupt) / Σ(L_clean − L_corrupt); NaN where fewer than half the kept
    /// pairs hold it. Object-aligned, so objects in different places add up at one place.
    pub aligned: Vec<Vec<f64>>,
    /// Half-width in patches of [`aligned`](Self::aligned): (grid − 1) / 2.
    pub aligned_radius: usize,
    /// Mean clean logit.
    pub clean_logit: f64,
    /// Mean corrupted logit.
    pub corrupt_logit: f64,
    /// Pairs left out of the recovered fractions because their clean and corrupted logits
    /// differ by less than [`MIN_LOGIT_GAP`] (the ratio would be noise).
    pub excluded_pairs: usize,
    /// The pairs.
    pub pairs: Vec<MinimalPair>,
}

/// The smallest |clean − corrupted| logit difference of a pair that enters the recovered
/// fractions (logit units, `exp(t)·cos`): below it the ratio (patched − corrupted) /
/// (clean − corrupted) divides noise by almost nothing (relation pairs often do).
pub const MIN_LOGIT_GAP: f64 = 0.05;

/// Which pairs are well-conditioned (1) or left out (0), and how many are left out; an error
/// when none is left (clean and corrupted runs agree: the model cannot tell the pairs apart).
fn conditioned(lc: &Tensor, lx: &Tensor, what: &str) -> Result<(Tensor, usize)> {
    let keep = (lc - lx).abs().ge(MIN_LOGIT_GAP).to_kind(Kind::Double);
    let kept = keep.sum(Kind::Double).double_value(&[]) as usize;
    let n = keep.size()[0] as usize;
    if kept == 0 {
        return Err(Error::Numeric(format!(
            "{what}: degenerate: no pair's clean and corrupted logits differ by {MIN_LOGIT_GAP} or more; the model does not tell the pairs apart, so nothing can be recovered"
        )));
    }
    if kept < n {
        eprintln!(
            "warning: {what}: {} of {n} pairs have |clean − corrupted| < {MIN_LOGIT_GAP} logit and are left out of the recovered fractions",
            n - kept
        );
    }
    Ok((keep, n - kept))
}

/// The logit of matching rows: `exp(t)·⟨a_i, b_i⟩`.
fn logits(model: &MsClip, a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum_dim_intlist(&[-1i64][..], false, Kind::Double) * model.logit_scale.exp().double_value(&[])
}

/// The share of the clean − corrupted logit difference that the patched run recovers, over
/// the well-conditioned pairs (`keep`).
fn recovered(model: &MsClip, patched: &Tensor, other: &Tensor, lc: &Tensor, lx: &Tensor, keep: &Tensor) -> f64 {
    let lp = logits(model, patched, other);
    ((lp - lx) * keep).sum(Kind::Double).double_value(&[]) / ((lc - lx) * keep).sum(Kind::Double).double_value(&[])
}

/// [`PatchResult::aligned`] of one slot: `patched[p]` is the run with grid patch `p` patched
/// (row-major); `centres[i]` pair i's object patch (row, column).
#[allow(clippy::too_many_arguments)]
fn object_aligned(
    model: &MsClip,
    patched: &[Tensor],
    other: &Tensor,
    lc: &Tensor,
    lx: &Tensor,
    keep: &Tensor,
    centres: &[(i64, i64)],
    g: usize,
    radius: usize,
) -> Vec<f64> {
    let to_vec = |t: &Tensor| crate::tensor::to_vec_f64(&t.to_kind(Kind::Double));
    let (lx_v, keep_v) = (to_vec(lx), to_vec(keep));
    let den_v: Vec<f64> = to_vec(lc).iter().zip(&lx_v).zip(&keep_v).map(|((c, x), k)| (c - x) * k).collect();
    let side = 2 * radius + 1;
    let (mut num, mut den, mut count) = (vec![0.0; side * side], vec![0.0; side * side], vec![0usize; side * side]);
    for (p, e) in patched.iter().enumerate().take(g * g) {
        let lp = to_vec(&logits(model, e, other));
        let (r, c) = ((p / g) as i64, (p % g) as i64);
        for (i, &(cr, cc)) in centres.iter().enumerate() {
            let (dr, dc) = (r - cr, c - cc);
            if keep_v[i] == 0.0 || dr.unsigned_abs() as usize > radius || dc.unsigned_abs() as usize > radius {
                continue;
            }
            let cell = (dr + radius as i64) as usize * side + (dc + radius as i64) as usize;
            num[cell] += (lp[i] - lx_v[i]) * keep_v[i];
            den[cell] += den_v[i];
            count[cell] += 1;
        }
    }
    let kept = keep_v.iter().filter(|&&k| k != 0.0).count();
    (0..side * side).map(|k| if 2 * count[k] >= kept && count[k] > 0 && den[k] != 0.0 { num[k] / den[k] } else { f64::NAN }).collect()
}

/// Patches the clean caption's activations into the corrupted caption's run, per (slot,
/// position) of the residual stream entering the slot and per (slot, head) output.
pub fn patch_text(model: &MsClip, seed: u64, n: usize, attr: Attribute) -> Result<PatchResult> {
    let cfg = &model.config;
    let size = cfg.vision.image_size as u32;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let pairs = text_pairs(seed, n, size, attr, &tok)?;
    let images: Vec<Tensor> = pairs
        .iter()
        .map(|p| {
            let sc = synth::scene(seed ^ EVAL_SEED_OFFSET, p.index as u64, size);
            to_tensor(&sc.pixels, size, size, cfg.preprocess.mean, cfg.preprocess.std)
        })
        .collect();
    let img = tch::no_grad(|| model.encode_image(&Tensor::stack(&images, 0)))?;
    let clean_tokens = tok.tokenize_batch(&pairs.iter().map(|p| p.clean.as_str()).collect::<Vec<_>>());
    let corrupt_tokens = tok.tokenize_batch(&pairs.iter().map(|p| p.corrupt.as_str()).collect::<Vec<_>>());
    let slots = cfg.text_attention_slots();
    let mut cache = ActivationCache::new();
    let clean = tch::no_grad(|| model.encode_text_with(&clean_tokens, &Capture::sites(&[Site::ResidIn, Site::Z]), &mut cache))?;
    let corrupt = Prefix::text(model, &corrupt_tokens, 256)?;
    let (lc, lx) = (logits(model, &clean, &img), logits(model, &corrupt.clean, &img));
    let (keep, excluded_pairs) = conditioned(&lc, &lx, &format!("text patching ({attr:?})"))?;
    let len = attr.template().len();
    let (mut resid, mut heads) = (vec![], vec![]);
    for &slot in &slots {
        let src = cache.require(Modality::Text, slot, Site::ResidIn)?;
        let edits: Vec<Vec<Hook>> = (0..len as i64)
            .map(|t| vec![Hook::new(Modality::Text, slot, Site::ResidIn, Edit::Patch(src.shallow_clone())).positions(vec![t])])
            .collect();
        resid.push(corrupt.run(model, slot, &edits)?.iter().map(|e| recovered(model, e, &img, &lc, &lx, &keep)).collect());
        let z = cache.require(Modality::Text, slot, Site::Z)?;
        let edits: Vec<Vec<Hook>> = (0..cfg.text.heads as usize)
            .map(|h| vec![Hook::new(Modality::Text, slot, Site::Z, Edit::Patch(z.shallow_clone())).head(h)])
            .collect();
        heads.push(corrupt.run(model, slot, &edits)?.iter().map(|e| recovered(model, e, &img, &lc, &lx, &keep)).collect());
    }
    Ok(PatchResult {
        tower: "text".into(),
        attribute: format!("{attr:?}").to_lowercase(),
        slots,
        positions: attr.template().iter().map(|s| s.to_string()).collect(),
        resid,
        heads,
        aligned: vec![],
        aligned_radius: 0,
        clean_logit: lc.mean(Kind::Double).double_value(&[]),
        corrupt_logit: lx.mean(Kind::Double).double_value(&[]),
        excluded_pairs,
        pairs,
    })
}

/// Patches the clean image's activations into the recoloured image's run, per (slot, token)
/// of the residual stream entering the slot (CLS and every patch) and per (slot, head).
pub fn patch_vision(model: &MsClip, seed: u64, n: usize) -> Result<PatchResult> {
    let cfg = &model.config;
    let size = cfg.vision.image_size as u32;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let pairs = vision_pairs(seed, n, size);
    if pairs.len() < n {
        return Err(Error::Invalid(format!("only {} single-object scenes found for {n} vision pairs", pairs.len())));
    }
    let scene =
        |p: &MinimalPair, recolor: Option<(usize, usize)>| synth::scene_with(seed ^ EVAL_SEED_OFFSET, p.index as u64, size, recolor);
    let image = |sc: &synth::Scene| to_tensor(&sc.pixels, size, size, cfg.preprocess.mean, cfg.preprocess.std);
    let clean_scenes: Vec<synth::Scene> = pairs.iter().map(|(p, _)| scene(p, None)).collect();
    let clean_images = Tensor::stack(&clean_scenes.iter().map(image).collect::<Vec<_>>(), 0);
    let corrupt_images = Tensor::stack(&pairs.iter().map(|(p, c)| image(&scene(p, Some((0, *c))))).collect::<Vec<_>>(), 0);
    let txt = tch::no_grad(|| model.encode_text(&tok.tokenize_batch(&pairs.iter().map(|(p, _)| p.clean.as_str()).collect::<Vec<_>>())))?;
    let mut cache = ActivationCache::new();
    let clean = tch::no_grad(|| model.encode_image_with(&clean_images, &Capture::sites(&[Site::ResidIn, Site::Z]), &mut cache, false))?;
    let corrupt = Prefix::vision(model, &corrupt_images, 256)?;
    let (lc, lx) = (logits(model, &clean, &txt), logits(model, &corrupt.clean, &txt));
    let (keep, excluded_pairs) = conditioned(&lc, &lx, "vision patching (colour)")?;
    let slots = cfg.vision_attention_slots();
    let g = cfg.grid();
    // Each pair's object: the patch holding its box centre.
    let patch_px = (size as usize / g as usize).max(1);
    let centres: Vec<(i64, i64)> = clean_scenes
        .iter()
        .map(|sc| {
            let b = sc.objects[0].bbox;
            ((((b[1] + b[3]) / 2) as usize / patch_px) as i64, (((b[0] + b[2]) / 2) as usize / patch_px) as i64)
        })
        .collect();
    let radius = (g as usize).saturating_sub(1) / 2;
    let (mut resid, mut heads, mut aligned) = (vec![], vec![], vec![]);
    for &slot in &slots {
        // The stream entering the slot before its adapter is what the sweep starts from; the
        // patch goes on `resid_in`, after the adapter, where the clean run recorded it.
        let src = cache.require(Modality::Vision, slot, Site::ResidIn)?;
        let edits: Vec<Vec<Hook>> = (0..1 + g * g)
            .map(|t| vec![Hook::new(Modality::Vision, slot, Site::ResidIn, Edit::Patch(src.shallow_clone())).positions(vec![t])])
            .collect();
        let patched = corrupt.run(model, slot, &edits)?;
        aligned.push(object_aligned(model, &patched[1..], &txt, &lc, &lx, &keep, &centres, g as usize, radius));
        resid.push(patched.iter().map(|e| recovered(model, e, &txt, &lc, &lx, &keep)).collect());
        let z = cache.require(Modality::Vision, slot, Site::Z)?;
        let edits: Vec<Vec<Hook>> = (0..cfg.vision.heads as usize)
            .map(|h| vec![Hook::new(Modality::Vision, slot, Site::Z, Edit::Patch(z.shallow_clone())).head(h)])
            .collect();
        heads.push(corrupt.run(model, slot, &edits)?.iter().map(|e| recovered(model, e, &txt, &lc, &lx, &keep)).collect());
    }
    let positions = std::iter::once("cls".to_string()).chain((0..g * g).map(|p| format!("r{}c{}", p / g, p % g))).collect();
    Ok(PatchResult {
        tower: "vision".into(),
        attribute: "colour".into(),
        slots,
        positions,
        resid,
        heads,
        aligned,
        aligned_radius: radius,
        clean_logit: lc.mean(Kind::Double).double_value(&[]),
        corrupt_logit: lx.mean(Kind::Double).double_value(&[]),
        excluded_pairs,
        pairs: pairs.into_iter().map(|(p, _)| p).collect(),
    })
}
