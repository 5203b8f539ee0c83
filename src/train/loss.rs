//! Symmetric InfoNCE (CLIP): `L = ½[CE(S, I) + CE(Sᵀ, I)]` with `S = exp(t)·X·Yᵀ` over the batch.

use tch::{Kind, Tensor};

/// Contrastive loss of `logits_per_image: [B, B]` (matching pairs on the diagonal), in fp32
/// whatever the logits' dtype (under bf16 autocast the log-softmax runs in fp32, as CUDA
/// autocast does by itself; a no-op for fp32 logits).
pub fn clip_loss(logits_per_image: &Tensor) -> Tensor {
    let logits_per_image = &logits_per_image.to_kind(Kind::Float);
    let b = logits_per_image.size()[0];
    let labels = Tensor::arange(b, (Kind::Int64, logits_per_image.device()));
    let li = logits_per_image.cross_entropy_for_logits(&labels);
    let lt = logits_per_image.tr().cross_entropy_for_logits(&labels);
    (li + lt) * 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_on_known_logits() {
        // Identity-like logits: each CE = −log(e^2/(e^2+1)) = log(1+e^-2).
        let s = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let want = (1.0 + (-2.0f64).exp()).ln();
        assert!((clip_loss(&s).double_value(&[]) - want).abs() < 1e-6);
        // Asymmetric logits: image→text and text→image CEs differ; the loss is their mean.
        let s = Tensor::from_slice(&[1.0f32, 3.0, 0.0, 2.0]).view([2, 2]);
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let li = ((lse(1.0, 3.0) - 1.0) + (lse(0.0, 2.0) - 2.0)) / 2.0;
        let lt = ((lse(1.0, 0.0) - 1.0) + (lse(3.0, 2.0) - 2.0)) / 2.0;
        assert!((clip_loss(&s).double_value(&[]) - (li + lt) / 2.0).abs() < 1e-6);
    }
}
