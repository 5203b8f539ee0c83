//! `SharedBlock`: the pre-LN residual attention block whose sites may be shared between towers.
//!
//! ```text
//! x = x + Attn(LN1_m(x), mask_m)
//! x = x + W2·act(W1·LN2_m(x) + b1) + b2
//! ```
//! Attention (official `Attention_CUST`, equal to `nn.MultiheadAttention`):
//! `q,k,v = split3(x·W_inᵀ + b_in)`, heads are contiguous `D/H` slices, `q ← q·(D/H)^-½`,
//! `A = softmax(q·kᵀ + mask)`, `out = (A·v)·W_outᵀ + b_out`. Text uses a causal additive mask
//! (−∞ above the diagonal); vision none.

use std::collections::HashMap;

use tch::{nn, Kind, Tensor};

use super::capture::{ActivationCache, Capture, Modality, Site};
use super::config::{Activation, ModelConfig, SharedSite};
use super::init::{Init, NORMAL_02};
use super::layers::{activate, LayerNorm, Linear};
use crate::error::Result;

/// Parameters of one site, owned by either a tower or the shared path.
enum SiteParams {
    Linear(Linear),
    Norm(LayerNorm),
}

impl SiteParams {
    fn shallow_clone(&self) -> SiteParams {
        match self {
            SiteParams::Linear(l) => SiteParams::Linear(l.shallow_clone()),
            SiteParams::Norm(n) => SiteParams::Norm(n.shallow_clone()),
        }
    }
}

/// Creates shared sites once (under `shared.blocks.{slot}`) and hands the same tensors to the
/// second tower that asks for them.
pub struct SiteRegistry<'a> {
    shared_root: nn::Path<'a>,
    created: HashMap<(usize, SharedSite), SiteParams>,
}

impl<'a> SiteRegistry<'a> {
    /// A registry that creates shared sites under `shared_root`.
    pub fn new(shared_root: nn::Path<'a>) -> SiteRegistry<'a> {
        SiteRegistry { shared_root, created: HashMap::new() }
    }

    fn site(&mut self, cfg: &ModelConfig, own: &nn::Path, slot: usize, site: SharedSite, width: i64) -> SiteParams {
        let make = |p: &nn::Path| -> SiteParams {
            let hidden = width * cfg.mlp_ratio;
            match site {
                SharedSite::AttnIn => {
                    // xavier_uniform on the fused in-projection (Attention_CUST._reset_parameters).
                    let bound = (6.0 / (4 * width) as f64).sqrt();
                    let init = Init::Uniform { lo: -bound, hi: bound };
                    SiteParams::Linear(Linear::new(&(p / "attn_in"), width, 3 * width, true, init))
                }
                SharedSite::AttnOut => SiteParams::Linear(Linear::new(&(p / "attn_out"), width, width, true, NORMAL_02)),
                SharedSite::Fc1 => SiteParams::Linear(Linear::new(&(p / "fc1"), width, hidden, true, NORMAL_02)),
                SharedSite::Fc2 => SiteParams::Linear(Linear::new(&(p / "fc2"), hidden, width, true, NORMAL_02)),
                SharedSite::Ln1 => SiteParams::Norm(LayerNorm::new(&(p / "ln1"), width, cfg.ln_eps)),
                SharedSite::Ln2 => SiteParams::Norm(LayerNorm::new(&(p / "ln2"), width, cfg.ln_eps)),
            }
        };
        if cfg.is_shared(slot, site) {
            if let Some(existing) = self.created.get(&(slot, site)) {
                return existing.shallow_clone();
            }
            let params = make(&(&self.shared_root / "blocks" / slot));
            let handle = params.shallow_clone();
            self.created.insert((slot, site), params);
            handle
        } else {
            make(&(own / "blocks" / slot))
        }
    }

    /// Builds the block of `modality` at `slot`; `own` is the tower's root path.
    pub fn block(&mut self, cfg: &ModelConfig, own: &nn::Path, modality: Modality, slot: usize) -> SharedBlock {
        let (width, heads) = match modality {
            Modality::Vision => (cfg.vision.width, cfg.vision.heads),
            Modality::Text => (cfg.text.width, cfg.text.heads),
        };
        let mut lin = |s| match self.site(cfg, own, slot, s, width) {
            SiteParams::Linear(l) => l,
            SiteParams::Norm(_) => unreachable!(),
        };
        let attn_in = lin(SharedSite::AttnIn);
        let attn_out = lin(SharedSite::AttnOut);
        let fc1 = lin(SharedSite::Fc1);
        let fc2 = lin(SharedSite::Fc2);
        let mut norm = |s| match self.site(cfg, own, slot, s, width) {
            SiteParams::Norm(n) => n,
            SiteParams::Linear(_) => unreachable!(),
        };
        let ln1 = norm(SharedSite::Ln1);
        let ln2 = norm(SharedSite::Ln2);
        SharedBlock {
            attn_in,
            attn_out,
            fc1,
            fc2,
            ln1,
            ln2,
            heads,
            causal: modality == Modality::Text,
            activation: cfg.activation,
            modality,
            slot,
        }
    }
}

/// A pre-LN transformer block (the official `ResidualAttentionBlock`).
#[derive(Debug)]
pub struct SharedBlock {
    /// q/k/v in-projection `[3D, D]` (heads are contiguous `D/H` slices).
    pub attn_in: Linear,
    /// Attention out-projection `[D, D]`.
    pub attn_out: Linear,
    /// FFN first linear `[4D, D]`.
    pub fc1: Linear,
    /// FFN second linear `[D, 4D]`.
    pub fc2: Linear,
    /// LayerNorm before attention.
    pub ln1: LayerNorm,
    /// LayerNorm before the FFN.
    pub ln2: LayerNorm,
    /// Attention heads.
    pub heads: i64,
    /// Causal attention mask (text).
    pub causal: bool,
    /// The FFN activation.
    pub activation: Activation,
    /// The tower this block belongs to.
    pub modality: Modality,
    /// Its layer slot.
    pub slot: usize,
}

/// The site's tensor after the hooks there (checked against its shape first), recorded if
/// asked: [`Capture::visit`] with the shape check that turns a bad hook into an error.
pub(crate) fn visit(capture: &Capture, cache: &mut ActivationCache, m: Modality, slot: usize, site: Site, x: Tensor) -> Result<Tensor> {
    if capture.edits(m, slot, site) {
        let size = x.size();
        for h in capture.hooks.iter().filter(|h| h.modality == m && h.slot == slot && h.site == site) {
            h.check(&size)?;
        }
    }
    Ok(capture.visit(cache, m, slot, site, x))
}

/// `softmax(q·kᵀ·scale + mask)·v` by libtorch's fused `scaled_dot_product_attention`. On CPU
/// in bf16/fp16 (CPU autocast) it runs in fp32 and the result is cast back: libtorch 2.11's
/// CPU flash kernel is 3–5× slower in bf16 than in fp32 forward + backward at CLIP's shapes
/// (`[8, 12, 50, 64]`: 21.0 vs 4.8 ms on a 2-core Xeon), and fp32 is also the more exact.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: f64) -> Tensor {
    let kind = q.kind();
    if q.device() == tch::Device::Cpu && matches!(kind, Kind::BFloat16 | Kind::Half) {
        return crate::autocast::without_cpu_autocast(|| {
            let [q, k, v] = [q, k, v].map(|t| t.to_kind(Kind::Float));
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, scale, false).to_kind(kind)
        });
    }
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, causal, scale, false)
}

/// Additive causal mask `[L, L]`: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(len: i64, device: tch::Device) -> Tensor {
    Tensor::full([len, len], f64::NEG_INFINITY, (Kind::Float, device)).triu(1)
}

impl SharedBlock {
    /// Multi-head attention on `x: [B, L, D]` (already layer-normed), with the per-head sites
    /// `q`, `k`, `v`, `z` and, on the explicit path, `attn_logits` and `attn_probs`.
    pub fn attention(&self, x: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        let (m, slot) = (self.modality, self.slot);
        let (b, l, d) = x.size3().map_err(crate::Error::Torch)?;
        let hd = d / self.heads;
        let qkv = self.attn_in.forward(x).view([b, l, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]);
        // unbind, not three selects: its backward stacks the three gradients instead of
        // zero-filling and summing three full-size copies.
        let [q, k, v]: [Tensor; 3] = qkv.unbind(0).try_into().expect("q, k, v");
        let q = visit(capture, cache, m, slot, Site::Q, q)?;
        let k = visit(capture, cache, m, slot, Site::K, k)?;
        let v = visit(capture, cache, m, slot, Site::V, v)?;
        let scale = (hd as f64).powf(-0.5);
        let z = if capture.needs_explicit_attention(m, slot) {
            let logits = visit(capture, cache, m, slot, Site::AttnLogits, (q * scale).matmul(&k.transpose(-2, -1)))?;
            let masked = if self.causal { &logits + causal_mask(l, x.device()).to_kind(logits.kind()) } else { logits };
            let probs = visit(capture, cache, m, slot, Site::AttnProbs, masked.softmax(-1, masked.kind()))?;
            probs.matmul(&v)
        } else {
            fused_attention(&q, &k, &v, self.causal, scale)
        };
        let z = visit(capture, cache, m, slot, Site::Z, z)?;
        Ok(self.attn_out.forward(&z.transpose(1, 2).reshape([b, l, d])))
    }

    /// Block forward on the residual stream `x: [B, L, D]`, visiting `resid_in`, `ln1`, the
    /// attention sites, `attn_out`, `ln2`, `mlp_hidden`, `mlp_out` and `resid`.
    pub fn forward(&self, x: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        let (m, s) = (self.modality, self.slot);
        let x = visit(capture, cache, m, s, Site::ResidIn, x.shallow_clone())?;
        let h = visit(capture, cache, m, s, Site::Ln1, self.ln1.forward(&x))?;
        let a = self.attention(&h, capture, cache)?;
        let a = visit(capture, cache, m, s, Site::AttnOut, a)?;
        let x = x + a;
        let h = visit(capture, cache, m, s, Site::Ln2, self.ln2.forward(&x))?;
        let mlp = if capture.touches(m, s, Site::MlpHidden) {
            // The textbook form, so the hidden site holds act(W1·h + b1).
            let hidden = visit(capture, cache, m, s, Site::MlpHidden, activate(&self.fc1.forward(&h), self.activation))?;
            self.fc2.forward(&hidden)
        } else {
            self.mlp(&h)
        };
        let mlp = visit(capture, cache, m, s, Site::MlpOut, mlp)?;
        let x = &x + mlp;
        visit(capture, cache, m, s, Site::Resid, x)
    }

    /// The FFN `W2·act(W1·h + b1) + b2`. QuickGELU is computed as
    /// `x·σ(1.702x) = silu(1.702x)/1.702`: one fused activation kernel over the `[N, 4D]`
    /// hidden tensor instead of three element-wise passes, with the two constants folded
    /// - on CUDA into the weights, `silu(h·(1.702·W1)ᵀ + 1.702·b1)·(W2/1.702)ᵀ + b2`: two
    ///   `[4D, D]` passes per call, small against training batches of hundreds;
    /// - on CPU onto the `D`-wide input and output,
    ///   `(silu((1.702·h)·W1ᵀ + 1.702·b1)·W2ᵀ + 1.702·b2) / 1.702`: two `[N, D]` passes, fewer
    ///   than the weights' at CPU batch sizes for ViT-B (N < 4D up to batch 61 at 50 tokens).
    ///
    /// The choice depends on the device only, never on the call's shape: with a shape rule the
    /// pooled last block (one row per item) and the full block would round differently, and
    /// activation patching's "identical positions recover exactly nothing" would no longer hold
    /// bit for bit. Equal to the unfused form up to float rounding (tested on CPU; the CUDA form
    /// by `scripts/gpu/check.sh` against CPU embeddings).
    pub fn mlp(&self, h: &Tensor) -> Tensor {
        match self.activation {
            Activation::QuickGelu => {
                const A: f64 = 1.702;
                let b1 = self.fc1.bias.as_ref().map(|b| b * A);
                if h.device().is_cuda() {
                    let z = h.linear(&(&self.fc1.weight * A), b1.as_ref()).silu();
                    z.linear(&(&self.fc2.weight * (1.0 / A)), self.fc2.bias.as_ref())
                } else {
                    let z = (h * A).linear(&self.fc1.weight, b1.as_ref()).silu();
                    let b2 = self.fc2.bias.as_ref().map(|b| b * A);
                    z.linear(&self.fc2.weight, b2.as_ref()) * (1.0 / A)
                }
            }
            Activation::Gelu => self.fc2.forward(&activate(&self.fc1.forward(h), self.activation)),
        }
    }

    /// Whether [`SharedBlock::forward_pooled`] may give this slot's output: it may unless
    /// attention probabilities or logits are recorded here (they need the explicit softmax
    /// over every query row) or a hook edits anything here.
    pub fn can_pool_early(&self, capture: &Capture) -> bool {
        !capture.needs_explicit_attention(self.modality, self.slot) && !capture.edits_slot(self.modality, self.slot)
    }

    /// Whether anything is recorded at this slot.
    pub fn records(&self, capture: &Capture) -> bool {
        capture.sites.iter().any(|&site| capture.wants(self.slot, site))
    }

    /// The last block of a tower: its output at the pooled rows `[B, D]`. With the pooled
    /// path allowed, the output is [`SharedBlock::forward_pooled`]'s, bit for bit what a run
    /// recording nothing computes; sites recorded here (LN outputs, attention output,
    /// residual) come from one extra full forward whose output is discarded. With attention
    /// recorded here, the full explicit forward gives both.
    pub fn forward_last(&self, x: &Tensor, rows: &Tensor, capture: &Capture, cache: &mut ActivationCache) -> Result<Tensor> {
        if self.can_pool_early(capture) {
            if self.records(capture) {
                let _ = self.forward(x, capture, cache)?;
            }
            return Ok(self.forward_pooled(x, rows));
        }
        let (b, _, d) = x.size3().map_err(crate::Error::Torch)?;
        let y = self.forward(x, capture, cache)?;
        Ok(y.gather(1, &rows.view([b, 1, 1]).expand([b, 1, d], true), false).squeeze_dim(1))
    }

    /// The block's output at one row per item, `[B, D]`, where `rows: [B]` (int64) names the
    /// row the tower pools (CLS for vision, first EOT for text). Keys and values use every
    /// row; the query, attention output and FFN only the pooled one. It is the same value as
    /// `forward(x)[b, rows[b]]` (row-wise ops; the causal mask becomes "keys ≤ `rows[b]`"), at
    /// about a quarter of the last block's cost. Used for the last block when nothing there is
    /// captured.
    pub fn forward_pooled(&self, x: &Tensor, rows: &Tensor) -> Tensor {
        let (b, l, d) = x.size3().expect("block input is [B, L, D]");
        let hd = d / self.heads;
        let h = self.ln1.forward(x);
        let pick = |t: &Tensor| t.gather(1, &rows.view([b, 1, 1]).expand([b, 1, d], true), false);
        let h_row = pick(&h); // [B, 1, D]
        let w = &self.attn_in.weight;
        let bias = self.attn_in.bias.as_ref();
        let q = h_row.linear(&w.narrow(0, 0, d), bias.map(|t| t.narrow(0, 0, d)));
        let kv = h.linear(&w.narrow(0, d, 2 * d), bias.map(|t| t.narrow(0, d, 2 * d)));
        let kv = kv.view([b, l, 2, self.heads, hd]).permute([2, 0, 3, 1, 4]);
        let [k, v]: [Tensor; 2] = kv.unbind(0).try_into().expect("k, v");
        let q = q.view([b, 1, self.heads, hd]).transpose(1, 2); // [B, H, 1, hd]
        let scale = (hd as f64).powf(-0.5);
        // One query row: explicit attention costs nothing here and keeps the softmax in fp32
        // under autocast (a fused kernel picked for a 1-row query with a mask is not needed).
        let logits = q.matmul(&k.transpose(-2, -1)).to_kind(Kind::Float) * scale; // [B, H, 1, L]
        let logits = if self.causal {
            // −∞ where the key lies after the query's row.
            let after = Tensor::arange(l, (Kind::Int64, x.device())).view([1, l]).gt_tensor(&rows.view([b, 1])).view([b, 1, 1, l]);
            logits.masked_fill(&after, f64::NEG_INFINITY)
        } else {
            logits
        };
        let o = logits.softmax(-1, Kind::Float).to_kind(v.kind()).matmul(&v);
        let a = self.attn_out.forward(&o.transpose(1, 2).reshape([b, 1, d]));
        let x_row = pick(x) + a;
        let x_row = &x_row + self.mlp(&self.ln2.forward(&x_row));
        x_row.squeeze_dim(1)
    }
}
