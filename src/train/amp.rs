//! Mixed precision on CUDA: which dtype autocast runs matrix products in.
//!
//! tch exposes autocast only as on/off, which means fp16 (libtorch's default for CUDA).
//! bf16 needs `at::autocast::set_autocast_dtype(DeviceType::CUDA, ScalarType::BFloat16)`,
//! a plain C++ function of `libtorch_cpu.so` (always linked) that takes two 8-bit enums;
//! it is bound here by its Itanium-mangled name.

use tch::Kind;

use crate::error::{Error, Result};

extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device: i8) -> i8;
}

/// `c10::DeviceType::CUDA`.
const CUDA: i8 = 1;

/// `c10::ScalarType` codes of the dtypes autocast can use (c10/core/ScalarType.h).
fn scalar_type(kind: Kind) -> i8 {
    match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::BFloat16 => 15,
        other => panic!("autocast dtype {other:?} is not supported"),
    }
}

/// Training precision (`precision` in the train config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// fp32 everywhere.
    Fp32,
    /// CUDA autocast in fp16, fp32 master weights, dynamic loss scale.
    AmpFp16,
    /// CUDA autocast in bf16, fp32 master weights, no loss scale (bf16 has fp32's range).
    AmpBf16,
}

impl Precision {
    /// `fp32`, `amp` (= `amp-fp16`) or `amp-bf16`.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "amp" | "amp-fp16" => Ok(Precision::AmpFp16),
            "amp-bf16" => Ok(Precision::AmpBf16),
            other => Err(Error::config("precision", other, "expected fp32, amp (= amp-fp16) or amp-bf16")),
        }
    }
    /// The autocast dtype, `None` for fp32.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::Fp32 => None,
            Precision::AmpFp16 => Some(Kind::Half),
            Precision::AmpBf16 => Some(Kind::BFloat16),
        }
    }
    /// Whether gradients need a dynamic loss scale (fp16's narrow range).
    pub fn needs_loss_scale(self) -> bool {
        self == Precision::AmpFp16
    }
}

/// Sets the dtype CUDA autocast casts to (thread-local in libtorch: call it on the thread that
/// runs the forward pass).
pub fn set_cuda_autocast_kind(kind: Kind) {
    // SAFETY: both arguments are valid enum values; the function only stores them.
    unsafe { at_set_autocast_dtype(CUDA, scalar_type(kind)) }
}

/// The dtype CUDA autocast casts to now.
pub fn cuda_autocast_kind() -> Option<Kind> {
    // SAFETY: reads thread-local state.
    let v = unsafe { at_get_autocast_dtype(CUDA) };
    [Kind::Half, Kind::BFloat16, Kind::Float].into_iter().find(|&k| scalar_type(k) == v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binding reaches libtorch's state (no GPU needed: the setting is plain data).
    #[test]
    fn autocast_dtype_round_trips_through_libtorch() {
        assert_eq!(cuda_autocast_kind(), Some(Kind::Half), "libtorch's default for CUDA");
        set_cuda_autocast_kind(Kind::BFloat16);
        assert_eq!(cuda_autocast_kind(), Some(Kind::BFloat16));
        set_cuda_autocast_kind(Kind::Half);
        assert_eq!(cuda_autocast_kind(), Some(Kind::Half));
        assert!(Precision::parse("amp-bf16").unwrap().autocast_kind() == Some(Kind::BFloat16));
        assert!(Precision::parse("bf16").is_err());
    }
}
