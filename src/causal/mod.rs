//! Causal interpretability: analyses that *edit* a model through hooks on the one forward
//! path ([`crate::model::Hook`]) and measure what changes.
//!
//! - [`ablate`]: head importance per (slot, head) when the head is knocked out in the vision
//!   tower, the text tower, or both; whole-site ablations; the agreement of vision and text
//!   importance over a shared slot's heads (the causal counterpart of `heads`).
//! - [`patch`]: activation patching on minimal pairs of the synthetic world.
//! - [`decompose`]: the direct-effect decomposition of both embeddings into per-(layer, head)
//!   terms (Gandelsman, Efros & Steinhardt 2024), the mean-ablation curve, TextSpan, and the
//!   comparison of a shared head's contributions from both sides.
//!
//! Sweeps reuse the clean run ([`sweep`]): the residual stream entering each slot is computed
//! once, an edit at slot s reruns slots ≥ s only, and the edits of one slot run batched.

pub mod ablate;
pub mod decompose;
pub mod patch;
pub mod sweep;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::analysis::embedding::{prompt_ensemble, recall_at_k};
use crate::data::synthetic_set::{self, EVAL_SEED_OFFSET, TEMPLATES};
use crate::error::{Error, Result};
use crate::model::MsClip;
use crate::tokenizer::Tokenizer;

/// The held-out evaluation inputs of the causal analyses: single-object images for zero-shot
/// over the 48 colour × shape classes (prompt ensemble of the synthetic templates) and
/// captioned scenes for retrieval and matched cosine.
pub struct EvalSet {
    /// Zero-shot images `[Nz, 3, S, S]` then pair images `[Np, 3, S, S]`, concatenated.
    pub images: Tensor,
    /// Prompts `[C·T, ctx]` (class-major) then pair captions `[Np, ctx]`, concatenated.
    pub tokens: Tensor,
    /// Class of each zero-shot image.
    pub labels: Vec<i64>,
    /// Zero-shot images.
    pub n_zero_shot: usize,
    /// Captioned pairs.
    pub n_pairs: usize,
    /// Classes.
    pub classes: usize,
    /// Templates per class.
    pub templates: usize,
    /// Identity of the data for provenance.
    pub data_id: String,
}

impl EvalSet {
    /// `n` zero-shot images and `n` captioned pairs of the held-out world with `seed`.
    pub fn synthetic(model: &MsClip, n: usize, seed: u64) -> Result<EvalSet> {
        if n < 2 {
            return Err(Error::config("synthetic", n, "need at least 2 items"));
        }
        let cfg = &model.config;
        let size = cfg.vision.image_size as u32;
        let tok = Tokenizer::new(cfg.text.context_length as usize);
        let (zs, labels) = synthetic_set::zero_shot_set(seed, n, size, cfg.preprocess.mean, cfg.preprocess.std);
        let indices: Vec<usize> = (0..n).collect();
        let (pi, pt, _) = synthetic_set::batch(seed ^ EVAL_SEED_OFFSET, &indices, size, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let classes = synthetic_set::zero_shot_classes();
        let prompts: Vec<String> = classes.iter().flat_map(|c| TEMPLATES.iter().map(move |t| t.replace("{}", c))).collect();
        Ok(EvalSet {
            images: Tensor::cat(&[zs, pi], 0),
            tokens: Tensor::cat(&[tok.tokenize_batch(&prompts), pt], 0),
            labels,
            n_zero_shot: n,
            n_pairs: n,
            classes: classes.len(),
            templates: TEMPLATES.len(),
            data_id: format!("synthetic-heldout:seed={seed}:zero_shot={n}:pairs={n}"),
        })
    }

    /// The metrics of image embeddings `[Nz + Np, E]` and text embeddings `[C·T + Np, E]`
    /// (both L2-normalised, in this set's order).
    pub fn metrics(&self, image: &Tensor, text: &Tensor) -> Metrics {
        let (nz, np) = (self.n_zero_shot as i64, self.n_pairs as i64);
        let ct = (self.classes * self.templates) as i64;
        let w = prompt_ensemble(&text.narrow(0, 0, ct).view([self.classes as i64, self.templates as i64, -1]));
        let logits = MsClip::zero_shot_logits(&image.narrow(0, 0, nz), &w);
        let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).expect("int64 predictions");
        let hits = pred.iter().zip(&self.labels).filter(|(p, l)| p == l).count();
        let (ip, tp) = (image.narrow(0, nz, np), text.narrow(0, ct, np));
        let sim = ip.matmul(&tp.tr());
        Metrics {
            zero_shot_top1: hits as f64 / nz as f64,
            image_to_text_r1: recall_at_k(&sim, 1),
            text_to_image_r1: recall_at_k(&sim.tr(), 1),
            matched_cosine: (&ip * &tp).sum(Kind::Double).double_value(&[]) / np as f64,
        }
    }
}

/// What the ablation and patching analyses measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    /// Zero-shot top-1 over the 48 synthetic classes.
    pub zero_shot_top1: f64,
    /// Image → text recall@1.
    pub image_to_text_r1: f64,
    /// Text → image recall@1.
    pub text_to_image_r1: f64,
    /// Mean cosine of the matched pairs.
    pub matched_cosine: f64,
}

impl Metrics {
    /// `self − clean`, field by field.
    pub fn minus(&self, clean: &Metrics) -> Metrics {
        Metrics {
            zero_shot_top1: self.zero_shot_top1 - clean.zero_shot_top1,
            image_to_text_r1: self.image_to_text_r1 - clean.image_to_text_r1,
            text_to_image_r1: self.text_to_image_r1 - clean.text_to_image_r1,
            matched_cosine: self.matched_cosine - clean.matched_cosine,
        }
    }
}
