//! Small building blocks with explicit parameters (so a shared site can be one tensor handed
//! to both towers with `shallow_clone`, which keeps a single autograd leaf).

use tch::nn;
use tch::Tensor;

use super::config::Activation;
use super::init::{self, Init, NORMAL_02};

/// `y = x·Wᵀ + b` with `W: [out, in]` (PyTorch layout, so checkpoints map 1:1).
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if any.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear map created under `p`, initialised per `init` (bias 0).
    pub fn new(p: &nn::Path, d_in: i64, d_out: i64, bias: bool, init: Init) -> Linear {
        let weight = init::var(p, "weight", &[d_out, d_in], init);
        let bias = bias.then(|| init::var(p, "bias", &[d_out], Init::Const(0.0)));
        Linear { weight, bias }
    }
    /// `x·Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
    /// The same parameters (one autograd leaf), for a second user.
    pub fn shallow_clone(&self) -> Linear {
        Linear { weight: self.weight.shallow_clone(), bias: self.bias.as_ref().map(|b| b.shallow_clone()) }
    }
}

/// LayerNorm over the last dim: `y = w·(x−μ)/√(σ²+eps) + b` (TF-style eps inside the root,
/// as the official `LayerNorm`; identical to `torch.layer_norm`). Computed in fp32.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale γ.
    pub weight: Tensor,
    /// Shift β.
    pub bias: Tensor,
    /// ε inside the square root.
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm over `dim` (γ = 1, β = 0).
    pub fn new(p: &nn::Path, dim: i64, eps: f64) -> LayerNorm {
        LayerNorm { weight: init::var(p, "weight", &[dim], Init::Const(1.0)), bias: init::var(p, "bias", &[dim], Init::Const(0.0)), eps }
    }
    /// Normalises the last dimension (in fp32, returned in `x`'s dtype).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *self.weight.size().last().expect("a LayerNorm weight has one dimension");
        let kind = x.kind();
        let y = x.to_kind(tch::Kind::Float).layer_norm([dim], Some(&self.weight), Some(&self.bias), self.eps, false);
        if kind == tch::Kind::Float {
            y
        } else {
            y.to_kind(kind)
        }
    }
    /// The same parameters, for a second user.
    pub fn shallow_clone(&self) -> LayerNorm {
        LayerNorm { weight: self.weight.shallow_clone(), bias: self.bias.shallow_clone(), eps: self.eps }
    }
}

/// `x·σ(1.702x)` (OpenAI's QuickGELU) or exact GELU.
pub fn activate(x: &Tensor, act: Activation) -> Tensor {
    match act {
        Activation::QuickGelu => x * (x * 1.702).sigmoid(),
        Activation::Gelu => x.gelu("none"),
    }
}

/// 2-D convolution without bias, PyTorch weight layout `[out, in/groups, k, k]`.
#[derive(Debug)]
pub struct Conv {
    /// `[out, in/groups, k, k]`.
    pub weight: Tensor,
    /// Stride.
    pub stride: i64,
    /// Zero padding.
    pub padding: i64,
    /// Channel groups (= channels for depth-wise).
    pub groups: i64,
}

impl Conv {
    /// A convolution created under `p` (N(0, 0.02²) weights).
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, groups: i64) -> Conv {
        let weight = init::var(p, "weight", &[c_out, c_in / groups, k, k], NORMAL_02);
        Conv { weight, stride, padding, groups }
    }
    /// The convolution of `x: [B, C, H, W]`. On CPU under autocast, a patch-like convolution
    /// (kernel = stride > 1, no padding) avoids libtorch 2.11's bf16 CPU convolution, whose
    /// backward is pathological there: with one group it runs as the matrix product it is,
    /// `patches [B·h·w, C·k·k] · Wᵀ` (ViT-B/32's 32×32 patch projection at batch 8: ~10 ms
    /// forward + backward against ~200 ms as a bf16 convolution); depth-wise ones (the
    /// parallel branch's `t2b_dw`) run in fp32 (1.7 vs 8.0 ms). Other convolutions stay in
    /// bf16, where they are 1.5–3× faster than fp32 (measured on a 2-core Xeon with AMX).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = self.weight.size()[2];
        let patch_like = self.stride == k && k > 1 && self.padding == 0;
        if patch_like && x.device() == tch::Device::Cpu && crate::autocast::cpu_autocast_enabled() {
            if let Some(y) = self.patches_matmul(x) {
                return y;
            }
            return crate::autocast::without_cpu_autocast(|| self.conv(&x.to_kind(tch::Kind::Float)));
        }
        self.conv(x)
    }

    fn conv(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, None::<Tensor>, [self.stride], [self.padding], [1], self.groups)
    }

    /// A kernel = stride convolution as `patches [B, h·w, C·k·k] · Wᵀ` → `[B, C_out, h, w]`;
    /// `None` unless it has one group and `k` divides H and W.
    fn patches_matmul(&self, x: &Tensor) -> Option<Tensor> {
        let k = self.weight.size()[2];
        let (b, c, h, w) = x.size4().ok()?;
        if self.groups != 1 || h % k != 0 || w % k != 0 {
            return None;
        }
        let (gh, gw, cout) = (h / k, w / k, self.weight.size()[0]);
        let patches = x.view([b, c, gh, k, gw, k]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * k * k]);
        let y = patches.linear(&self.weight.view([cout, c * k * k]), None::<Tensor>);
        Some(y.view([b, gh, gw, cout]).permute([0, 3, 1, 2]))
    }
}

/// BatchNorm2d with running statistics as buffers (not parameters). `train` selects batch
/// statistics (and updates the running ones, momentum 0.1) vs running statistics.
#[derive(Debug)]
pub struct BatchNorm {
    /// Scale γ.
    pub weight: Tensor,
    /// Shift β.
    pub bias: Tensor,
    /// Running mean (buffer).
    pub running_mean: Tensor,
    /// Running variance (buffer).
    pub running_var: Tensor,
    /// ε added to the variance.
    pub eps: f64,
}

impl BatchNorm {
    /// A BatchNorm over `c` channels (γ = 1, β = 0, running mean 0, variance 1).
    pub fn new(p: &nn::Path, c: i64, eps: f64) -> BatchNorm {
        BatchNorm {
            weight: init::var(p, "weight", &[c], Init::Const(1.0)),
            bias: init::var(p, "bias", &[c], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            eps,
        }
    }
    /// Batch statistics when `train` (updating the running ones), else running statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        x.batch_norm(Some(&self.weight), Some(&self.bias), Some(&self.running_mean), Some(&self.running_var), train, 0.1, self.eps, false)
    }
}

/// conv → BN (the `nn.Sequential(conv, bn)` pairs of the official code).
#[derive(Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv,
    /// The BatchNorm after it.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// A conv → BN pair.
    #[allow(clippy::too_many_arguments)]
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, groups: i64, eps: f64) -> ConvBn {
        ConvBn { conv: Conv::new(&(p / "conv"), c_in, c_out, k, stride, padding, groups), bn: BatchNorm::new(&(p / "bn"), c_out, eps) }
    }
    /// `BN(conv(x))`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&self.conv.forward(x), train)
    }
}
