//! What a forward pass records and edits, and where the records are kept.
//!
//! One forward path serves training, evaluation and analysis: a [`Capture`] says which sites
//! to record and which to edit ([`Hook`]s), and the recorded tensors come back in an
//! [`ActivationCache`] keyed by `(Modality, slot, Site)` — TransformerLens' `run_with_cache`
//! and `run_with_hooks`, with typed keys instead of string names. Slots are the aligned layer
//! indices of the two towers (MS-CLIP-S vision slot 0 is the conv stem).
//!
//! A site is edited first (every hook of the site, in order), then recorded: the cache holds
//! what the rest of the forward saw. Recording or editing a site changes nothing else: fused
//! attention stays unless attention probabilities or logits are recorded or edited, and the
//! pooled last block stays unless the last slot is edited (or its attention recorded).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The two towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// The image tower.
    Vision,
    /// The text tower.
    Text,
}

impl Modality {
    /// `vision` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Vision => "vision",
            Modality::Text => "text",
        }
    }
}

/// A recordable, editable site. Per-head sites are `[B, H, L, D/H]`; the others `[B, L, ·]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    /// Post-softmax attention per head `[B, H, L, L]` (rows = queries).
    AttnProbs,
    /// Pre-softmax, pre-mask scaled logits `q·kᵀ/√d` per head `[B, H, L, L]`
    /// (the official `OUTPUT_ATTN_RAW`).
    AttnLogits,
    /// Input to attention after LN1 `[B, L, D]` (official `OUTPUT_BEFORE_ATTN`).
    Ln1,
    /// Attention output before the residual add `[B, L, D]` (`OUTPUT_AFTER_ATTN`).
    AttnOut,
    /// Input to the FFN after LN2 `[B, L, D]` (`OUTPUT_AFTER_ATTN_LN`).
    Ln2,
    /// Residual stream leaving the slot `[B, L, D]`; for the conv stem: tokens after `ln_pre`.
    Resid,
    /// Residual stream entering the slot `[B, L, D]` (after the adapter of MS-CLIP-S's slots
    /// with one).
    ResidIn,
    /// Queries per head `[B, H, L, D/H]` (before the `1/√d` scale).
    Q,
    /// Keys per head `[B, H, L, D/H]`.
    K,
    /// Values per head `[B, H, L, D/H]`.
    V,
    /// Each head's attention output before the out-projection `[B, H, L, D/H]` (TransformerLens'
    /// `z`): `AttnOut = concat_h(z_h)·W_Oᵀ + b_O`.
    Z,
    /// FFN hidden activation after the nonlinearity `[B, L, 4D]`.
    MlpHidden,
    /// FFN output before the residual add `[B, L, D]`.
    MlpOut,
    /// A lateral adapter's output `[B, L, D]` (MS-CLIP-S; the stream that enters the slot's
    /// block, replacing the patch tokens).
    Adapter,
    /// The pooled token before the final LayerNorm (`ln_post` / `ln_final`) `[B, D]`; keyed by
    /// the last slot.
    Pooled,
}

impl Site {
    /// Every site.
    pub const ALL: [Site; 15] = [
        Site::AttnProbs,
        Site::AttnLogits,
        Site::Ln1,
        Site::AttnOut,
        Site::Ln2,
        Site::Resid,
        Site::ResidIn,
        Site::Q,
        Site::K,
        Site::V,
        Site::Z,
        Site::MlpHidden,
        Site::MlpOut,
        Site::Adapter,
        Site::Pooled,
    ];

    /// The site of a name (`ln1`, `resid`, `z`, …); an unknown name is an error listing the known.
    pub fn parse(name: &str) -> crate::Result<Site> {
        Site::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Site::ALL.iter().map(|s| s.name()).collect();
            crate::Error::config("site", name, format!("expected one of {}", names.join(", ")))
        })
    }

    /// The site's name in files and flags (`ln1`, `attn_probs`, `z`, …).
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnProbs => "attn_probs",
            Site::AttnLogits => "attn_logits",
            Site::Ln1 => "ln1",
            Site::AttnOut => "attn_out",
            Site::Ln2 => "ln2",
            Site::Resid => "resid",
            Site::ResidIn => "resid_in",
            Site::Q => "q",
            Site::K => "k",
            Site::V => "v",
            Site::Z => "z",
            Site::MlpHidden => "mlp_hidden",
            Site::MlpOut => "mlp_out",
            Site::Adapter => "adapter",
            Site::Pooled => "pooled",
        }
    }

    /// Whether the tensor has a head axis (`[B, H, L, ·]`).
    pub fn per_head(self) -> bool {
        matches!(self, Site::AttnProbs | Site::AttnLogits | Site::Q | Site::K | Site::V | Site::Z)
    }

    /// Whether the site lies on the explicit attention path (recording or editing it needs the
    /// explicit softmax instead of the fused kernel).
    pub fn needs_explicit_attention(self) -> bool {
        matches!(self, Site::AttnProbs | Site::AttnLogits)
    }
}

/// A user function editing a site's tensor (library API only).
pub type EditFn = Arc<dyn Fn(&Tensor) -> Tensor + Send + Sync>;

/// How a hook edits the selected part of a site's tensor.
pub enum Edit {
    /// Zero it.
    Zero,
    /// Replace it by a stored mean activation, broadcastable against the whole site tensor
    /// (e.g. `[L, D]` per position, `[1, H, L, d]` per head and position, or `[D]`).
    Mean(Tensor),
    /// Replace each item's part by item `source[i]`'s (another item of the same batch).
    Resample(Vec<i64>),
    /// Replace it by the same part of a tensor of the site's full shape, from another run's
    /// cache (activation patching).
    Patch(Tensor),
    /// Multiply it by a factor.
    Scale(f64),
    /// Any function of the selected part returning a tensor of its shape.
    Custom(EditFn),
}

impl Clone for Edit {
    fn clone(&self) -> Edit {
        match self {
            Edit::Zero => Edit::Zero,
            Edit::Mean(t) => Edit::Mean(t.shallow_clone()),
            Edit::Resample(s) => Edit::Resample(s.clone()),
            Edit::Patch(t) => Edit::Patch(t.shallow_clone()),
            Edit::Scale(s) => Edit::Scale(*s),
            Edit::Custom(f) => Edit::Custom(f.clone()),
        }
    }
}

impl std::fmt::Debug for Edit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Edit::Zero => write!(f, "Zero"),
            Edit::Mean(t) => write!(f, "Mean({:?})", t.size()),
            Edit::Resample(s) => write!(f, "Resample({} items)", s.len()),
            Edit::Patch(t) => write!(f, "Patch({:?})", t.size()),
            Edit::Scale(s) => write!(f, "Scale({s})"),
            Edit::Custom(_) => write!(f, "Custom"),
        }
    }
}

/// An edit of one site: `(modality, slot, site)`, optionally one head (per-head sites), some
/// token positions and some items of the batch.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The tower.
    pub modality: Modality,
    /// The layer slot (for [`Site::Pooled`], the tower's last slot).
    pub slot: usize,
    /// The site.
    pub site: Site,
    /// One head (only for per-head sites).
    pub head: Option<usize>,
    /// Token positions (the `L` axis); `None` = all.
    pub positions: Option<Vec<i64>>,
    /// Batch items; `None` = all.
    pub items: Option<Vec<i64>>,
    /// What to do there.
    pub edit: Edit,
}

impl Hook {
    /// A hook on the whole site.
    pub fn new(modality: Modality, slot: usize, site: Site, edit: Edit) -> Hook {
        Hook { modality, slot, site, head: None, positions: None, items: None, edit }
    }

    /// Restricted to one head.
    pub fn head(mut self, head: usize) -> Hook {
        self.head = Some(head);
        self
    }

    /// Restricted to some token positions.
    pub fn positions(mut self, positions: Vec<i64>) -> Hook {
        self.positions = Some(positions);
        self
    }

    /// Restricted to some batch items.
    pub fn items(mut self, items: Vec<i64>) -> Hook {
        self.items = Some(items);
        self
    }

    /// Checks the hook against a site tensor of shape `size`: the head, positions and items
    /// in range, a patch source of the same shape; the error names what is wrong.
    pub fn check(&self, size: &[i64]) -> Result<()> {
        let what = format!("hook on {}/{}/{}", self.modality.name(), self.slot, self.site.name());
        let (b, l_axis) = (size[0], if self.site.per_head() { 2 } else { 1 });
        if let Some(h) = self.head {
            if !self.site.per_head() {
                return Err(Error::Invalid(format!("{what}: a head was given but the site has no head axis")));
            }
            if h as i64 >= size[1] {
                return Err(Error::Invalid(format!("{what}: head {h} out of range 0..{}", size[1])));
            }
        }
        if let Some(p) = &self.positions {
            let l = *size.get(l_axis).unwrap_or(&0);
            if self.site == Site::Pooled || p.iter().any(|&x| x < 0 || x >= l) {
                return Err(Error::Invalid(format!("{what}: positions {p:?} out of range 0..{l}")));
            }
        }
        if let Some(items) = &self.items {
            if items.iter().any(|&x| x < 0 || x >= b) {
                return Err(Error::Invalid(format!("{what}: items {items:?} out of range 0..{b}")));
            }
        }
        match &self.edit {
            Edit::Mean(m) if !broadcasts(&m.size(), size) => {
                Err(Error::Invalid(format!("{what}: the mean has shape {:?}, which does not broadcast to the site {size:?}", m.size())))
            }
            Edit::Patch(src) if src.size() != size => {
                Err(Error::Invalid(format!("{what}: the patch source has shape {:?}, the site {size:?}", src.size())))
            }
            Edit::Resample(s) if s.len() as i64 != b || s.iter().any(|&x| x < 0 || x >= b) => {
                Err(Error::Invalid(format!("{what}: resample needs one source item in 0..{b} per item")))
            }
            _ => Ok(()),
        }
    }

    /// The edited tensor (a new tensor; `x` is untouched): the edit is computed over the
    /// whole site tensor and kept where the selection (items × head × positions) holds.
    /// `Edit::Mean` tensors broadcast against the whole site tensor (e.g. `[L, D]` per position,
    /// `[1, H, L, d]` per head and position); `Edit::Custom` receives the whole tensor.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let dev = x.device();
        let new = match &self.edit {
            Edit::Zero => x.zeros_like(),
            Edit::Mean(m) => m.to_device(dev).to_kind(x.kind()).expand_as(x),
            Edit::Scale(s) => x * *s,
            Edit::Patch(src) => src.to_device(dev).to_kind(x.kind()),
            Edit::Resample(src) => x.index_select(0, &Tensor::from_slice(src).to_device(dev)),
            Edit::Custom(f) => f(x),
        };
        if self.items.is_none() && self.head.is_none() && self.positions.is_none() {
            return new;
        }
        let size = x.size();
        let axis_mask = |axis: usize, chosen: &[i64]| {
            let mut shape = vec![1i64; size.len()];
            shape[axis] = size[axis];
            let mut m = vec![false; size[axis] as usize];
            for &c in chosen {
                m[c as usize] = true;
            }
            Tensor::from_slice(&m).view(shape.as_slice()).to_device(dev)
        };
        let mut mask = Tensor::ones([1], (Kind::Bool, dev));
        if let Some(i) = &self.items {
            mask = mask.logical_and(&axis_mask(0, i));
        }
        if let Some(h) = self.head {
            mask = mask.logical_and(&axis_mask(1, &[h as i64]));
        }
        if let Some(p) = &self.positions {
            mask = mask.logical_and(&axis_mask(if self.site.per_head() { 2 } else { 1 }, p));
        }
        new.where_self(&mask, x)
    }
}

/// Whether `from` broadcasts to `to` (NumPy rules).
fn broadcasts(from: &[i64], to: &[i64]) -> bool {
    from.len() <= to.len() && from.iter().rev().zip(to.iter().rev()).all(|(a, b)| *a == 1 || a == b)
}

/// What to record and edit during a forward pass. `Capture::none()` records and edits
/// nothing and lets attention use the fused `scaled_dot_product_attention` kernel.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Sites to record.
    pub sites: Vec<Site>,
    /// Restrict recording to these slots (None = all).
    pub slots: Option<Vec<usize>>,
    /// Detach recorded tensors from the graph (analysis without gradients).
    pub detach: bool,
    /// Edits, applied in order at their sites before recording.
    pub hooks: Vec<Hook>,
}

impl Capture {
    /// Records nothing (fused attention, pooled last block).
    pub fn none() -> Capture {
        Capture::default()
    }
    /// Per-head attention probabilities of every layer.
    pub fn attention() -> Capture {
        Capture { sites: vec![Site::AttnProbs], slots: None, detach: true, hooks: vec![] }
    }
    /// Records `sites` at every slot, detached.
    pub fn sites(sites: &[Site]) -> Capture {
        Capture { sites: sites.to_vec(), slots: None, detach: true, hooks: vec![] }
    }
    /// Edits only (nothing recorded).
    pub fn hooks(hooks: Vec<Hook>) -> Capture {
        Capture { sites: vec![], slots: None, detach: true, hooks }
    }
    /// Adds an edit.
    pub fn with_hook(mut self, hook: Hook) -> Capture {
        self.hooks.push(hook);
        self
    }
    /// Restricts recording to `slots`.
    pub fn with_slots(mut self, slots: Vec<usize>) -> Capture {
        self.slots = Some(slots);
        self
    }
    /// Keeps recorded tensors in the autograd graph (for gradients w.r.t. them).
    pub fn keep_graph(mut self) -> Capture {
        self.detach = false;
        self
    }
    /// Whether nothing is recorded or edited.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty() && self.hooks.is_empty()
    }
    /// Whether `site` at `slot` is recorded.
    pub fn wants(&self, slot: usize, site: Site) -> bool {
        self.sites.contains(&site) && self.slots.as_ref().is_none_or(|s| s.contains(&slot))
    }
    /// Whether a hook edits `site` of `modality` at `slot`.
    pub fn edits(&self, modality: Modality, slot: usize, site: Site) -> bool {
        self.hooks.iter().any(|h| h.modality == modality && h.slot == slot && h.site == site)
    }
    /// Whether any hook edits something of `modality` at `slot`.
    pub fn edits_slot(&self, modality: Modality, slot: usize) -> bool {
        self.hooks.iter().any(|h| h.modality == modality && h.slot == slot)
    }
    /// Whether attention of `modality` at `slot` must use the explicit softmax path.
    pub fn needs_explicit_attention(&self, modality: Modality, slot: usize) -> bool {
        [Site::AttnProbs, Site::AttnLogits].iter().any(|&s| self.wants(slot, s) || self.edits(modality, slot, s))
    }
    /// Whether `site` at `slot` is touched at all (recorded or edited).
    pub fn touches(&self, modality: Modality, slot: usize, site: Site) -> bool {
        self.wants(slot, site) || self.edits(modality, slot, site)
    }

    /// The site's tensor after every hook of `(modality, slot, site)`, recorded if asked.
    /// Without a hook or a record this returns `x` itself (no copy, no kernel).
    pub fn visit(&self, cache: &mut ActivationCache, modality: Modality, slot: usize, site: Site, x: Tensor) -> Tensor {
        let mut x = x;
        for h in self.hooks.iter().filter(|h| h.modality == modality && h.slot == slot && h.site == site) {
            x = h.apply(&x);
        }
        if self.wants(slot, site) {
            cache.insert(modality, slot, site, if self.detach { x.detach() } else { x.shallow_clone() });
        }
        x
    }

    /// Checks every hook against the model's towers: the slot exists and has the site (an
    /// adapter only where MS-CLIP-S has one, no block sites on the conv stem), the head is in
    /// range. Shapes are checked when the hook runs ([`Hook::check`] via [`Capture::visit`]'s
    /// callers).
    pub fn check_hooks(&self, cfg: &crate::model::ModelConfig) -> Result<()> {
        for h in &self.hooks {
            let what = format!("hook on {}/{}/{}", h.modality.name(), h.slot, h.site.name());
            let (has_block, heads, last) = match h.modality {
                Modality::Vision => (cfg.vision_has_block(h.slot), cfg.vision.heads, cfg.vision.layers - 1),
                Modality::Text => (cfg.text_has_block(h.slot), cfg.text.heads, cfg.text.layers - 1),
            };
            match h.site {
                Site::Pooled if h.slot != last => {
                    return Err(Error::Invalid(format!("{what}: the pooled token is keyed by the last slot {last}")))
                }
                Site::Pooled => {}
                Site::Adapter => {
                    let has = h.modality == Modality::Vision
                        && cfg.vision.parallel_branch.as_ref().is_some_and(|p| p.adapter_slots.contains(&h.slot));
                    if !has {
                        return Err(Error::Invalid(format!("{what}: the model has no lateral adapter there")));
                    }
                }
                Site::Resid
                    if h.slot == 0
                        && !has_block
                        && h.modality == Modality::Vision
                        && cfg.vision.stem == crate::model::StemKind::EarlyConv => {}
                _ if !has_block => {
                    return Err(Error::Invalid(format!("{what}: the {} tower has no block at slot {}", h.modality.name(), h.slot)))
                }
                _ => {}
            }
            if let Some(head) = h.head {
                if !h.site.per_head() || head as i64 >= heads {
                    return Err(Error::Invalid(format!("{what}: head {head} is not a head of the site (0..{heads})")));
                }
            }
        }
        Ok(())
    }
}

/// Recorded tensors keyed by `(modality, slot, site)`.
#[derive(Debug, Default)]
pub struct ActivationCache {
    entries: BTreeMap<(Modality, usize, Site), Tensor>,
}

impl ActivationCache {
    /// An empty cache.
    pub fn new() -> ActivationCache {
        ActivationCache::default()
    }
    /// Stores `t` under `(modality, slot, site)`.
    pub fn insert(&mut self, modality: Modality, slot: usize, site: Site, t: Tensor) {
        self.entries.insert((modality, slot, site), t);
    }
    /// The tensor at `(modality, slot, site)`, if recorded.
    pub fn get(&self, modality: Modality, slot: usize, site: Site) -> Option<&Tensor> {
        self.entries.get(&(modality, slot, site))
    }
    /// The tensor or an error naming the missing key.
    pub fn require(&self, modality: Modality, slot: usize, site: Site) -> crate::Result<&Tensor> {
        self.get(modality, slot, site)
            .ok_or_else(|| crate::Error::Invalid(format!("activation cache has no {}/{slot}/{}", modality.name(), site.name())))
    }
    /// Slots recorded for `(modality, site)`, ascending.
    pub fn slots(&self, modality: Modality, site: Site) -> Vec<usize> {
        self.entries.keys().filter(|(m, _, s)| *m == modality && *s == site).map(|(_, l, _)| *l).collect()
    }
    /// Every recorded key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &(Modality, usize, Site)> {
        self.entries.keys()
    }
    /// Number of recorded tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Removes and returns the tensor at a key.
    pub fn take(&mut self, modality: Modality, slot: usize, site: Site) -> Option<Tensor> {
        self.entries.remove(&(modality, slot, site))
    }
}

/// Per-head tensors `[B, H, L, d]` of a `[B, L, H·d]` tensor, and back.
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, l, d) = x.size3().expect("[B, L, D]");
    x.view([b, l, heads, d / heads]).transpose(1, 2)
}

/// `[B, H, L, d]` → `[B, L, H·d]`.
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, l, d) = x.size4().expect("[B, H, L, d]");
    x.transpose(1, 2).reshape([b, l, h * d])
}
