//! Small tensor helpers used across the crate (one home for each).

use tch::{Kind, Tensor};

/// Smallest norm [`l2_normalize`] divides by, as `torch.nn.functional.normalize` (eps 1e-12):
/// a zero row stays zero instead of becoming NaN.
pub const NORM_EPS: f64 = 1e-12;

/// Rows scaled to unit L2 norm over the last dimension: `x / max(‖x‖₂, 1e-12)`
/// (`F.normalize(x, dim=-1)`, what OpenCLIP and the official code apply to embeddings).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(NORM_EPS)
}

/// All values of a tensor, flattened in row-major order, as f32.
pub fn to_vec_f32(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).expect("a float tensor converts to Vec<f32>")
}

/// All values of a tensor, flattened in row-major order, as f64.
pub fn to_vec_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view([-1])).expect("a float tensor converts to Vec<f64>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_zero_rows_finite() {
        let x = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]).view([2, 2]);
        assert_eq!(to_vec_f32(&l2_normalize(&x)), vec![0.6, 0.8, 0.0, 0.0]);
        assert_eq!(to_vec_f64(&Tensor::from_slice(&[1.5f32])), vec![1.5]);
    }
}
