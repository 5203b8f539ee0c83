//! MS-CLIP-S's efficient `ParallelBranch` (EPB) and its `LateralAdapter`s (official
//! `parallel_branch_v`, `Resnet_Stage`/`ConvResBlock`, `Lateral_Adapter` with
//! `PRALLEL_T2B_USECLS`).
//!
//! Stage 0: `conv3×3(3→W/16, s, p1) → BN(eps 1e-5) → ReLU` on the *image*. Stage k ≥ 1, one
//! `ConvResBlock(C→2C, mid = C)` (BNs eps 1e-6):
//! ```text
//! y = ReLU( BN3(conv1×1(ReLU(BN2(conv3×3_s(ReLU(BN1(conv1×1(x)))))))) + BNr(conv1×1_s(x)) )
//! ```
//! Adapter k, before shared block `adapter_slots[k]` (replaces the patch tokens):
//! ```text
//! T  = PW(BN(DW_{kernel=stride=t2b_k}(P_k)))          → [B, grid², W]
//! G  = BN(DW3×3(grid(x_patches)))                     → [B, grid², W]
//! x' = LN_adapt( concat(2·cls, G + T) )
//! ```

use tch::{nn, Tensor};

use super::config::ModelConfig;
use super::layers::{BatchNorm, Conv, ConvBn, LayerNorm};

#[derive(Debug)]
struct ConvResBlock {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    conv3: Conv,
    bn3: BatchNorm,
    residual_conv: Conv,
    residual_bn: BatchNorm,
}

impl ConvResBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, eps: f64) -> ConvResBlock {
        let mid = c_out / 2;
        ConvResBlock {
            conv1: Conv::new(&(p / "conv1"), c_in, mid, 1, 1, 0, 1),
            bn1: BatchNorm::new(&(p / "bn1"), mid, eps),
            conv2: Conv::new(&(p / "conv2"), mid, mid, 3, stride, 1, 1),
            bn2: BatchNorm::new(&(p / "bn2"), mid, eps),
            conv3: Conv::new(&(p / "conv3"), mid, c_out, 1, 1, 0, 1),
            bn3: BatchNorm::new(&(p / "bn3"), c_out, eps),
            residual_conv: Conv::new(&(p / "residual_conv"), c_in, c_out, 1, stride, 0, 1),
            residual_bn: BatchNorm::new(&(p / "residual_bn"), c_out, eps),
        }
    }
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.bn1.forward(&self.conv1.forward(x), train).relu();
        let y = self.bn2.forward(&self.conv2.forward(&y), train).relu();
        let y = self.bn3.forward(&self.conv3.forward(&y), train);
        (y + self.residual_bn.forward(&self.residual_conv.forward(x), train)).relu()
    }
}

#[derive(Debug)]
enum Stage {
    First(ConvBn),
    Res(Box<ConvResBlock>),
}

/// One lateral adapter (`Lateral_Adapter`).
#[derive(Debug)]
pub struct LateralAdapter {
    t2b_dw: ConvBn,
    t2b_pw: Conv,
    bottom_dw: ConvBn,
    ln_adapt: LayerNorm,
}

impl LateralAdapter {
    fn new(p: &nn::Path, c_top: i64, width: i64, kernel: i64, ln_eps: f64) -> LateralAdapter {
        LateralAdapter {
            t2b_dw: ConvBn::new(&(p / "t2b_dw"), c_top, c_top, kernel, kernel, 0, c_top, 1e-5),
            t2b_pw: Conv::new(&(p / "t2b_pw"), c_top, width, 1, 1, 0, 1),
            bottom_dw: ConvBn::new(&(p / "bottom_dw"), width, width, 3, 1, 1, width, 1e-5),
            ln_adapt: LayerNorm::new(&(p / "ln_adapt"), width, ln_eps),
        }
    }

    /// The adapter's output LayerNorm (`ln_adapt`).
    pub fn ln(&self) -> &LayerNorm {
        &self.ln_adapt
    }

    /// `top: [B, C_k, h_k, w_k]`, `x: [B, 1+grid², W]` → new `x`.
    pub fn forward(&self, top: &Tensor, x: &Tensor, grid: i64, train: bool) -> Tensor {
        let (b, l, d) = x.size3().expect("adapter input is [B, L, D]");
        let t = self.t2b_pw.forward(&self.t2b_dw.forward(top, train)).flatten(2, 3).transpose(1, 2);
        let cls = x.narrow(1, 0, 1);
        let patches = x.narrow(1, 1, l - 1).transpose(1, 2).reshape([b, d, grid, grid]);
        let g = self.bottom_dw.forward(&patches, train).flatten(2, 3).transpose(1, 2);
        self.ln_adapt.forward(&Tensor::cat(&[&cls + &cls, g + t], 1))
    }
}

/// The parallel conv branch and its adapters.
#[derive(Debug)]
pub struct ParallelBranch {
    stages: Vec<Stage>,
    /// One lateral adapter per stage.
    pub adapters: Vec<LateralAdapter>,
    /// The slot whose block each adapter precedes.
    pub adapter_slots: Vec<usize>,
}

impl ParallelBranch {
    /// The branch of `cfg`, or `None` when it has none.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Option<ParallelBranch> {
        let pb = cfg.vision.parallel_branch.as_ref()?;
        let w = cfg.vision.width;
        let n = pb.stage_strides.len();
        // Output channels W/16, W/8, W/4, W/2, W (the first n of them).
        let dims: Vec<i64> = (0..n).map(|k| (w / 16) << k).collect();
        let mut stages = Vec::new();
        let mut adapters = Vec::new();
        for k in 0..n {
            let q = p / "stages" / k;
            let s = pb.stage_strides[k];
            stages.push(if k == 0 {
                Stage::First(ConvBn::new(&q, 3, dims[0], 3, s, 1, 1, 1e-5))
            } else {
                Stage::Res(Box::new(ConvResBlock::new(&q, dims[k - 1], dims[k], s, pb.bn_eps)))
            });
            adapters.push(LateralAdapter::new(&(p / "adapters" / k), dims[k], w, pb.t2b_kernels[k], cfg.ln_eps));
        }
        Some(ParallelBranch { stages, adapters, adapter_slots: pb.adapter_slots.clone() })
    }

    /// Runs stage `k` on the previous stage output (stage 0 on the image).
    pub fn stage(&self, k: usize, input: &Tensor, train: bool) -> Tensor {
        match &self.stages[k] {
            Stage::First(cb) => cb.forward(input, train).relu(),
            Stage::Res(rb) => rb.forward(input, train),
        }
    }
}
