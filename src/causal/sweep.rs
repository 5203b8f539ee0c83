//! Sweeps that reuse the clean run. The residual stream entering every slot is kept from one
//! clean forward ([`Prefix`]); an edit at slot s reruns slots ≥ s only, and several edits of
//! one slot run together as replicas of the inputs ([`Prefix::run`]): replica r carries the
//! hooks of edit r, restricted to its rows.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::towers::TextTower;
use crate::model::{ActivationCache, Capture, Edit, Hook, Modality, MsClip, Site};
use crate::tensor::l2_normalize;

/// Rows per forward when replicas run together (bounds memory).
pub const MAX_ROWS: i64 = 512;

/// The clean run of one tower on a fixed set of inputs.
pub struct Prefix {
    /// The tower.
    pub modality: Modality,
    /// slot → the stream entering it (before its adapter, if any), `[N, L, D]`.
    pub streams: BTreeMap<usize, Tensor>,
    /// The parallel branch's stage outputs (vision, MS-CLIP-S), `[N, …]` each.
    pub tops: Vec<Tensor>,
    /// The pooled positions (text), `[N]`.
    pub rows: Option<Tensor>,
    /// The clean embeddings `[N, E]`, L2-normalised.
    pub clean: Tensor,
    /// Inputs.
    pub n: i64,
    /// Token positions kept (text: up to the last pooled row), if trimmed.
    pub keep: Option<i64>,
}

impl Prefix {
    /// The clean vision run on `images`, in chunks of `chunk` images.
    pub fn vision(model: &MsClip, images: &Tensor, chunk: i64) -> Result<Prefix> {
        let v = &model.vision;
        let slots = model.config.vision_attention_slots();
        let mut streams: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
        let mut tops: Vec<Vec<Tensor>> = vec![];
        let mut clean: Vec<Tensor> = vec![];
        for part in images.split(chunk.max(1), 0) {
            tch::no_grad(|| -> Result<()> {
                let mut cache = ActivationCache::new();
                let cap = Capture::sites(&[Site::Resid]).with_slots(slots.clone());
                let x0 = v.embed(&part, &Capture::none(), &mut cache, false)?;
                let t = v.branch(&part, false);
                let pooled = v.run_from(v.first_slot(), &x0, &t, &cap, &mut cache, false)?;
                let e = v.head(&pooled);
                crate::model::msclip::check_outputs("vision", &e)?;
                clean.push(l2_normalize(&e));
                for (i, &slot) in slots.iter().enumerate() {
                    let x = if i == 0 {
                        x0.shallow_clone()
                    } else {
                        cache.require(Modality::Vision, slots[i - 1], Site::Resid)?.shallow_clone()
                    };
                    streams.entry(slot).or_default().push(x);
                }
                if tops.is_empty() {
                    tops = t.iter().map(|x| vec![x.shallow_clone()]).collect();
                } else {
                    for (k, x) in t.into_iter().enumerate() {
                        tops[k].push(x);
                    }
                }
                Ok(())
            })?;
        }
        Ok(Prefix {
            modality: Modality::Vision,
            streams: streams.into_iter().map(|(s, v)| (s, Tensor::cat(&v, 0))).collect(),
            tops: tops.iter().map(|v| Tensor::cat(v, 0)).collect(),
            rows: None,
            clean: Tensor::cat(&clean, 0),
            n: images.size()[0],
            keep: None,
        })
    }

    /// The clean text run on `tokens`, in chunks of `chunk` captions. Positions after the
    /// last pooled row of the batch are dropped first: under the causal mask they cannot
    /// reach any pooled (EOT) row, so the outputs are the same (up to float rounding in the
    /// attention kernel) at a fraction of the cost for short captions.
    pub fn text(model: &MsClip, tokens: &Tensor, chunk: i64) -> Result<Prefix> {
        let t = &model.text;
        let keep = TextTower::pooled_positions(tokens).max().int64_value(&[]) + 1;
        let tokens = &tokens.narrow(1, 0, keep.min(tokens.size()[1]));
        let slots = model.config.text_attention_slots();
        let (mut streams, mut clean): (BTreeMap<usize, Vec<Tensor>>, Vec<Tensor>) = (BTreeMap::new(), vec![]);
        for part in tokens.split(chunk.max(1), 0) {
            tch::no_grad(|| -> Result<()> {
                let mut cache = ActivationCache::new();
                let cap = Capture::sites(&[Site::Resid]).with_slots(slots.clone());
                let x0 = t.embed(&part);
                let rows = TextTower::pooled_positions(&part);
                let pooled = t.run_from(0, &x0, &rows, &cap, &mut cache)?;
                let e = t.head(&pooled);
                crate::model::msclip::check_outputs("text", &e)?;
                clean.push(l2_normalize(&e));
                for (i, &slot) in slots.iter().enumerate() {
                    let x =
                        if i == 0 { x0.shallow_clone() } else { cache.require(Modality::Text, slots[i - 1], Site::Resid)?.shallow_clone() };
                    streams.entry(slot).or_default().push(x);
                }
                Ok(())
            })?;
        }
        Ok(Prefix {
            modality: Modality::Text,
            streams: streams.into_iter().map(|(s, v)| (s, Tensor::cat(&v, 0))).collect(),
            tops: vec![],
            rows: Some(TextTower::pooled_positions(tokens)),
            clean: Tensor::cat(&clean, 0),
            n: tokens.size()[0],
            keep: Some(keep),
        })
    }

    /// The L2-normalised embeddings `[N, E]` of each edit: edit r is a list of hooks on this
    /// tower at slots ≥ `slot` (their `items`, if given, index the N inputs), run on the
    /// clean stream entering `slot`. Edits run together as replicas, at most [`MAX_ROWS`]
    /// rows per forward.
    pub fn run(&self, model: &MsClip, slot: usize, edits: &[Vec<Hook>]) -> Result<Vec<Tensor>> {
        let x = self
            .streams
            .get(&slot)
            .ok_or_else(|| Error::Invalid(format!("{} tower: no attention block at slot {slot}", self.modality.name())))?;
        for e in edits.iter().flatten() {
            if e.modality != self.modality || (e.slot < slot && e.site != Site::Pooled) {
                return Err(Error::Invalid(format!(
                    "a sweep from slot {slot} of the {} tower cannot run a hook on {}/{}",
                    self.modality.name(),
                    e.modality.name(),
                    e.slot
                )));
            }
        }
        let n = self.n;
        let per = (MAX_ROWS / n.max(1)).max(1) as usize;
        let mut out = Vec::with_capacity(edits.len());
        for group in edits.chunks(per) {
            let r = group.len() as i64;
            let rep = |t: &Tensor| Tensor::cat(&(0..r).map(|_| t.shallow_clone()).collect::<Vec<_>>(), 0);
            let hooks: Vec<Hook> =
                group.iter().enumerate().flat_map(|(i, hs)| hs.iter().map(move |h| shift(&trim(h, self.keep), i as i64, n, r))).collect();
            let cap = Capture::hooks(hooks);
            let emb = tch::no_grad(|| -> Result<Tensor> {
                let mut cache = ActivationCache::new();
                let pooled = match self.modality {
                    Modality::Vision => {
                        let tops: Vec<Tensor> = self.tops.iter().map(rep).collect();
                        model.vision.head(&model.vision.run_from(slot, &rep(x), &tops, &cap, &mut cache, false)?)
                    }
                    Modality::Text => {
                        let rows = rep(self.rows.as_ref().expect("text prefix has rows"));
                        model.text.head(&model.text.run_from(slot, &rep(x), &rows, &cap, &mut cache)?)
                    }
                };
                Ok(l2_normalize(&pooled))
            })?;
            out.extend(emb.split(n, 0));
        }
        Ok(out)
    }
}

/// Hook `h` with its mean or patch tensor cut to the first `keep` token positions (a text
/// prefix drops the positions after the last pooled row).
fn trim(h: &Hook, keep: Option<i64>) -> Hook {
    let mut h = h.clone();
    let Some(keep) = keep else { return h };
    let axis = if h.site.per_head() { 2 } else { 1 };
    let cut = |t: Tensor| if t.dim() > axis && t.size()[axis] > keep { t.narrow(axis as i64, 0, keep) } else { t };
    h.edit = match h.edit {
        Edit::Mean(t) if h.site != Site::Pooled => Edit::Mean(cut(t)),
        Edit::Patch(t) if h.site != Site::Pooled => Edit::Patch(cut(t)),
        e => e,
    };
    h
}

/// Hook `h` of replica `i` (of `r`, `n` rows each): its items moved into the replica's rows,
/// a resample permutation and a patch source extended to every replica.
fn shift(h: &Hook, i: i64, n: i64, r: i64) -> Hook {
    let mut h = h.clone();
    let items: Vec<i64> = match &h.items {
        Some(v) => v.iter().map(|x| i * n + x).collect(),
        None => (i * n..(i + 1) * n).collect(),
    };
    h.items = Some(items);
    h.edit = match h.edit {
        Edit::Resample(p) => Edit::Resample((0..r).flat_map(|j| p.iter().map(move |x| j * n + x)).collect()),
        Edit::Patch(src) => Edit::Patch(Tensor::cat(&(0..r).map(|_| src.shallow_clone()).collect::<Vec<_>>(), 0)),
        e => e,
    };
    h
}
