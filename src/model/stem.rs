//! Vision stems: the ViT patch projection and MS-CLIP-S's `EarlySpecialization` conv stem.

use tch::{nn, Tensor};

use super::config::{ModelConfig, StemKind};
use super::layers::{BatchNorm, Conv};

/// `EarlyconvRes` (official code, `basic_v0` blocks), which replaces the patch projection and
/// the first transformer layer of the vision tower:
/// ```text
/// conv3×3(3→W/16, s2, p1) → BN → ReLU
/// n× ResBasicBlock_v0(C→2C, s_i): ReLU( BN(conv3×3_s(x)) + BN(conv1×1_s(x)) )   (C = W/2^n …)
/// conv1×1(W→W)                                              → [B, W, grid, grid]
/// ```
/// All BNs use eps 1e-5; no conv has a bias.
#[derive(Debug)]
pub struct EarlySpecialization {
    conv1: Conv,
    bn1: BatchNorm,
    blocks: Vec<(Conv, BatchNorm, Conv, BatchNorm)>,
    last_conv: Conv,
}

impl EarlySpecialization {
    /// The stem for `width` channels with these block strides.
    pub fn new(p: &nn::Path, width: i64, strides: &[i64]) -> EarlySpecialization {
        let n = strides.len() as u32;
        let first = width >> n;
        let conv1 = Conv::new(&(p / "conv1"), 3, first, 3, 2, 1, 1);
        let bn1 = BatchNorm::new(&(p / "bn1"), first, 1e-5);
        let mut blocks = Vec::new();
        let mut c = first;
        for (i, &s) in strides.iter().enumerate() {
            let q = p / "blocks" / i;
            blocks.push((
                Conv::new(&(&q / "conv"), c, 2 * c, 3, s, 1, 1),
                BatchNorm::new(&(&q / "bn"), 2 * c, 1e-5),
                Conv::new(&(&q / "down_conv"), c, 2 * c, 1, s, 0, 1),
                BatchNorm::new(&(&q / "down_bn"), 2 * c, 1e-5),
            ));
            c *= 2;
        }
        let last_conv = Conv::new(&(p / "last_conv"), width, width, 1, 1, 0, 1);
        EarlySpecialization { conv1, bn1, blocks, last_conv }
    }

    /// `[B, 3, H, W]` → `[B, W, grid, grid]`.
    pub fn forward(&self, img: &Tensor, train: bool) -> Tensor {
        let mut x = self.bn1.forward(&self.conv1.forward(img), train).relu();
        for (conv, bn, down, down_bn) in &self.blocks {
            x = (bn.forward(&conv.forward(&x), train) + down_bn.forward(&down.forward(&x), train)).relu();
        }
        self.last_conv.forward(&x)
    }
}

/// The vision stem: maps `[B,3,H,W]` to a feature map `[B, W, grid, grid]`.
#[derive(Debug)]
pub enum Stem {
    /// `conv(3→W, kernel = stride = patch, no bias)` (`visual.conv1`).
    Patch(Conv),
    /// MS-CLIP-S's residual conv stem (slot 0).
    EarlyConv(EarlySpecialization),
}

impl Stem {
    /// The stem `cfg` asks for.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Stem {
        let v = &cfg.vision;
        match v.stem {
            StemKind::Patch => Stem::Patch(Conv::new(&(p / "patch_embed"), 3, v.width, v.patch_size, v.patch_size, 0, 1)),
            StemKind::EarlyConv => {
                let strides = &v.early_conv.as_ref().expect("validated: early_conv table present").strides;
                Stem::EarlyConv(EarlySpecialization::new(&(p / "stem"), v.width, strides))
            }
        }
    }
    /// `[B, 3, H, W]` → `[B, width, grid, grid]`.
    pub fn forward(&self, img: &Tensor, train: bool) -> Tensor {
        match self {
            Stem::Patch(c) => c.forward(img),
            Stem::EarlyConv(es) => es.forward(img, train),
        }
    }
}
