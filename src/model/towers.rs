//! The vision and text towers. Each owns its modality-specific tensors and borrows shared
//! block sites from the [`SiteRegistry`].

use tch::{nn, Kind, Tensor};

use super::block::{visit, SharedBlock, SiteRegistry};
use super::capture::{ActivationCache, Capture, Modality, Site};
use super::config::{ModelConfig, StemKind};
use super::init::{self, Init, NORMAL_02};
use super::layers::LayerNorm;
use super::parallel::ParallelBranch;
use super::stem::Stem;
use crate::error::{Error, Result};
use crate::tokenizer::EOT;

/// Vision tower: stem → [CLS; tokens] + pos → `ln_pre` → blocks (with adapters) → CLS →
/// `ln_post` → `x·proj`.
#[derive(Debug)]
pub struct VisionTower {
    stem: Stem,
    /// The CLS token `[W]`.
    pub class_embedding: Tensor,
    /// Position embeddings `[1 + grid², W]`.
    pub positional_embedding: Tensor,
    ln_pre: LayerNorm,
    /// Indexed by slot; `None` where the conv stem occupies the slot.
    pub blocks: Vec<Option<SharedBlock>>,
    parallel: Option<ParallelBranch>,
    ln_post: LayerNorm,
    /// Projection to the joint space `[W, E]`.
    pub proj: Tensor,
    grid: i64,
    image_size: i64,
    early_conv: bool,
}

impl VisionTower {
    /// Builds the tower under `p`, taking shared sites from `reg`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, reg: &mut SiteRegistry) -> VisionTower {
        let v = &cfg.vision;
        let w = v.width;
        let scale = (w as f64).powf(-0.5);
        let grid = cfg.grid();
        let stem = Stem::new(p, cfg);
        let class_embedding = init::var(p, "class_embedding", &[w], Init::Normal { std: scale });
        let positional_embedding = init::var(p, "positional_embedding", &[grid * grid + 1, w], Init::Normal { std: scale });
        let ln_pre = LayerNorm::new(&(p / "ln_pre"), w, cfg.ln_eps);
        let blocks = (0..v.layers).map(|slot| cfg.vision_has_block(slot).then(|| reg.block(cfg, p, Modality::Vision, slot))).collect();
        let parallel = ParallelBranch::new(&(p / "parallel"), cfg);
        let ln_post = LayerNorm::new(&(p / "ln_post"), w, cfg.ln_eps);
        let proj = init::var(p, "proj", &[w, cfg.embed_dim], Init::Normal { std: scale });
        VisionTower {
            stem,
            class_embedding,
            positional_embedding,
            ln_pre,
            blocks,
            parallel,
            ln_post,
            proj,
            grid,
            image_size: v.image_size,
            early_conv: v.stem == StemKind::EarlyConv,
        }
    }

    /// Checks `images` is `[B, 3, S, S]` float with S the configured image size.
    pub fn check_input(&self, images: &Tensor) -> Result<()> {
        let size = images.size();
        if size.len() != 4 || size[1] != 3 || size[2] != self.image_size || size[3] != self.image_size {
            return Err(Error::Invalid(format!("image tensor has shape {size:?}; the model expects [B, 3, {0}, {0}]", self.image_size)));
        }
        if !matches!(images.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
            return Err(Error::Invalid(format!("image tensor has dtype {:?}; expected float", images.kind())));
        }
        Ok(())
    }

    /// The token stream entering the first block `[B, 1 + grid², W]`: stem → `[CLS; tokens]`
    /// + positions → `ln_pre` (for MS-CLIP-S this is conv-stem slot 0's `resid` site).
    pub fn embed(&self, images: &Tensor, capture: &Capture, cache: &mut ActivationCache, train: bool) -> Result<Tensor> {
        let feat = self.stem.forward(images, train); // [B, W, g, g]
        let (b, w) = (feat.size()[0], feat.size()[1]);
        let tokens = feat.flatten(2, 3).transpose(1, 2); // row-major: t = r·g + c
        let cls = self.class_embedding.to_kind(tokens.kind()).view([1, 1, w]).expand([b, 1, w], true);
        let x = self.ln_pre.forward(&(Tensor::cat(&[cls, tokens], 1) + &self.positional_embedding));
        if self.early_conv {
            return visit(capture, cache, Modality::Vision, 0, Site::Resid, x);
        }
        Ok(x)
    }

    /// The parallel branch's stage outputs for `images` (one per adapter; empty without a
    /// branch). They depend on the image alone.
    pub fn branch(&self, images: &Tensor, train: bool) -> Vec<Tensor> {
        let Some(pb) = &self.parallel else { return vec![] };
        let mut tops: Vec<Tensor> = Vec::with_capacity(pb.adapters.len());
        for k in 0..pb.adapters.len() {
            let top = pb.stage(k, tops.last().unwrap_or(images), train);
            tops.push(top);
        }
        tops
    }

    /// The first slot with a block.
    pub fn first_slot(&self) -> usize {
        self.blocks.iter().position(|b| b.is_some()).expect("a vision tower has a block")
    }

    /// Runs the slots from `first` on `x`, the stream entering slot `first` (before its
    /// adapter, if any), with the branch outputs `tops` ([`VisionTower::branch`]); returns the
    /// pooled CLS before `ln_post` `[B, W]` (the `pooled` site, keyed by the last slot).
    pub fn run_from(
        &self,
        first: usize,
        x: &Tensor,
        tops: &[Tensor],
        capture: &Capture,
        cache: &mut ActivationCache,
        train: bool,
    ) -> Result<Tensor> {
        let b = x.size()[0];
        let mut x = x.shallow_clone();
        let last = self.blocks.iter().rposition(|b| b.is_some()).expect("a vision tower has a block");
        for (slot, block) in self.blocks.iter().enumerate().skip(first) {
            let Some(block) = block else { continue };
            if let Some(pb) = &self.parallel {
                if let Some(k) = pb.adapter_slots.iter().position(|&s| s == slot) {
                    x = pb.adapters[k].forward(&tops[k], &x, self.grid, train);
                    x = visit(capture, cache, Modality::Vision, slot, Site::Adapter, x)?;
                }
            }
            if slot == last {
                // Only CLS leaves the tower: the last block computes that row alone.
                let cls = Tensor::zeros([b], (Kind::Int64, x.device()));
                let pooled = block.forward_last(&x, &cls, capture, cache)?;
                return visit(capture, cache, Modality::Vision, last, Site::Pooled, pooled);
            }
            x = block.forward(&x, capture, cache)?;
        }
        Err(Error::Invalid(format!("vision tower: no block at or after slot {first}")))
    }

    /// Pre-projection pooled feature (`ln_post` of CLS) `[B, W]`; fills `cache`.
    pub fn forward_features(&self, images: &Tensor, capture: &Capture, cache: &mut ActivationCache, train: bool) -> Result<Tensor> {
        let x = self.embed(images, capture, cache, train)?;
        let tops = self.branch(images, train);
        let pooled = self.run_from(self.first_slot(), &x, &tops, capture, cache, train)?;
        Ok(self.ln_post.forward(&pooled))
    }

    /// The final LayerNorm (`ln_post`).
    pub fn ln_post(&self) -> &LayerNorm {
        &self.ln_post
    }

    /// The LayerNorm of lateral adapter `k` (MS-CLIP-S), if there is one.
    pub fn adapter_ln(&self, k: usize) -> Option<&LayerNorm> {
        self.parallel.as_ref().and_then(|p| p.adapters.get(k)).map(|a| a.ln())
    }

    /// `pooled · proj`.
    pub fn project(&self, pooled: &Tensor) -> Tensor {
        pooled.matmul(&self.proj.to_kind(pooled.kind()))
    }

    /// The frozen output head on any residual-stream token `[B, W]`: `ln_post(t)·proj`
    /// (the "logit lens" for intermediate layers).
    pub fn head(&self, token: &Tensor) -> Tensor {
        self.project(&self.ln_post.forward(token))
    }
}

/// Text tower: token + positional embedding → causal blocks → first EOT → `ln_final` →
/// `x·text_projection`.
#[derive(Debug)]
pub struct TextTower {
    /// Token embeddings `[vocab, W]`.
    pub token_embedding: Tensor,
    /// Position embeddings `[context, W]`.
    pub positional_embedding: Tensor,
    /// One block per slot.
    pub blocks: Vec<SharedBlock>,
    ln_final: LayerNorm,
    /// Projection to the joint space `[W, E]`.
    pub projection: Tensor,
    vocab_size: i64,
    context_length: i64,
}

impl TextTower {
    /// Builds the tower under `p`, taking shared sites from `reg`.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, reg: &mut SiteRegistry) -> TextTower {
        let t = &cfg.text;
        TextTower {
            // nn.Embedding's default N(0, 1); the official code does not re-initialise it.
            token_embedding: init::var(p, "token_embedding", &[t.vocab_size, t.width], Init::Normal { std: 1.0 }),
            positional_embedding: init::var(p, "positional_embedding", &[t.context_length, t.width], NORMAL_02),
            blocks: (0..t.layers).map(|slot| reg.block(cfg, p, Modality::Text, slot)).collect(),
            ln_final: LayerNorm::new(&(p / "ln_final"), t.width, cfg.ln_eps),
            projection: init::var(p, "projection", &[t.width, cfg.embed_dim], NORMAL_02),
            vocab_size: t.vocab_size,
            context_length: t.context_length,
        }
    }

    /// Checks `tokens` is int64 `[B, L]` with `L ≤ context` and ids in the vocabulary.
    pub fn check_input(&self, tokens: &Tensor) -> Result<()> {
        let size = tokens.size();
        if size.len() != 2 || size[1] > self.context_length || size[1] == 0 {
            return Err(Error::Invalid(format!(
                "token tensor has shape {size:?}; the model expects [B, L] with 1 ≤ L ≤ {}",
                self.context_length
            )));
        }
        if tokens.kind() != Kind::Int64 {
            return Err(Error::Invalid(format!("token tensor has dtype {:?}; expected int64", tokens.kind())));
        }
        if tokens.numel() > 0 {
            let (lo, hi) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
            if lo < 0 || hi >= self.vocab_size {
                return Err(Error::Invalid(format!("token ids span [{lo}, {hi}] but the vocabulary has {} entries", self.vocab_size)));
            }
        }
        Ok(())
    }

    /// Position pooled per row: the first EOT (id 49407), else the largest id (official argmax).
    pub fn pooled_positions(tokens: &Tensor) -> Tensor {
        let is_eot = tokens.eq(EOT);
        let first_eot = is_eot.to_kind(Kind::Int).argmax(-1, false);
        first_eot.where_self(&is_eot.any_dim(-1, false), &tokens.argmax(-1, false))
    }

    /// Token + positional embeddings `[B, L, W]` (the stream entering slot 0).
    pub fn embed(&self, tokens: &Tensor) -> Tensor {
        let len = tokens.size()[1];
        Tensor::embedding(&self.token_embedding, tokens, -1, false, false) + self.positional_embedding.narrow(0, 0, len)
    }

    /// Runs the slots from `first` on `x`, the stream entering slot `first`; `rows` are the
    /// pooled positions ([`TextTower::pooled_positions`]). Returns the pooled token before
    /// `ln_final` `[B, W]` (the `pooled` site, keyed by the last slot).
    pub fn run_from(&self, first: usize, x: &Tensor, rows: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        let last = self.blocks.len() - 1;
        for (i, block) in self.blocks.iter().enumerate().skip(first) {
            if i == last {
                // Only the EOT row leaves the tower: the last block computes that row alone.
                let pooled = block.forward_last(&x, rows, capture, cache)?;
                return visit(capture, cache, Modality::Text, last, Site::Pooled, pooled);
            }
            x = block.forward(&x, capture, cache)?;
        }
        Err(Error::Invalid(format!("text tower: no block at or after slot {first}")))
    }

    /// Pre-projection pooled feature `[B, W]`; fills `cache`.
    pub fn forward_features(&self, tokens: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        let rows = Self::pooled_positions(tokens);
        let pooled = self.run_from(0, &self.embed(tokens), &rows, capture, cache)?;
        Ok(self.ln_final.forward(&pooled))
    }

    /// The final LayerNorm (`ln_final`).
    pub fn ln_final(&self) -> &LayerNorm {
        &self.ln_final
    }

    /// `pooled · projection`.
    pub fn project(&self, pooled: &Tensor) -> Tensor {
        pooled.matmul(&self.projection.to_kind(pooled.kind()))
    }

    /// The frozen output head on any residual-stream token `[B, W]`: `ln_final(t)·projection`.
    pub fn head(&self, token: &Tensor) -> Tensor {
        self.project(&self.ln_final.forward(token))
    }
}
