//! What a forward pass records, and where it is kept.
//!
//! One forward path serves training, evaluation and analysis: a [`Capture`] says which sites
//! to record and the recorded tensors come back in an [`ActivationCache`] keyed by
//! `(Modality, slot, Site)` — TransformerLens' `run_with_cache`, sized down. Slots are the
//! aligned layer indices of the two towers (MS-CLIP-S vision slot 0 is the conv stem).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

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

/// A recordable site of a block.
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
}

impl Site {
    /// Every site.
    pub const ALL: [Site; 6] = [Site::AttnProbs, Site::AttnLogits, Site::Ln1, Site::AttnOut, Site::Ln2, Site::Resid];

    /// The site of a name (`ln1`, `resid`, …); an unknown name is an error listing the known.
    pub fn parse(name: &str) -> crate::Result<Site> {
        Site::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            crate::Error::config("site", name, "expected attn_probs, attn_logits, ln1, attn_out, ln2 or resid")
        })
    }

    /// The site's name in files and flags (`ln1`, `attn_probs`, …).
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnProbs => "attn_probs",
            Site::AttnLogits => "attn_logits",
            Site::Ln1 => "ln1",
            Site::AttnOut => "attn_out",
            Site::Ln2 => "ln2",
            Site::Resid => "resid",
        }
    }
}

/// What to record during a forward pass. `Capture::none()` records nothing and lets attention
/// use the fused `scaled_dot_product_attention` kernel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capture {
    /// Sites to record.
    pub sites: Vec<Site>,
    /// Restrict recording to these slots (None = all).
    pub slots: Option<Vec<usize>>,
    /// Detach recorded tensors from the graph (analysis without gradients).
    pub detach: bool,
}

impl Capture {
    /// Records nothing (fused attention, pooled last block).
    pub fn none() -> Capture {
        Capture::default()
    }
    /// Per-head attention probabilities of every layer.
    pub fn attention() -> Capture {
        Capture { sites: vec![Site::AttnProbs], slots: None, detach: true }
    }
    /// Records `sites` at every slot, detached.
    pub fn sites(sites: &[Site]) -> Capture {
        Capture { sites: sites.to_vec(), slots: None, detach: true }
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
    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
    /// Whether `site` at `slot` is recorded.
    pub fn wants(&self, slot: usize, site: Site) -> bool {
        self.sites.contains(&site) && self.slots.as_ref().is_none_or(|s| s.contains(&slot))
    }
    /// Whether attention at `slot` must use the explicit softmax path.
    pub fn needs_explicit_attention(&self, slot: usize) -> bool {
        self.wants(slot, Site::AttnProbs) || self.wants(slot, Site::AttnLogits)
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
        self.get(modality, slot, site).ok_or_else(|| {
            crate::Error::Invalid(format!("activation cache has no {}/{slot}/{}", modality.name(), site.name()))
        })
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
}
