//! Mixed precision of a training run: [`Precision`] (`precision` in the train config) and the
//! autocast regions it turns into (libtorch's autocast state lives in [`crate::autocast`],
//! re-exported here).

use tch::Kind;

pub use crate::autocast::{autocast, cpu_autocast_enabled, cuda_autocast_kind, set_cuda_autocast_kind, without_cpu_autocast};
use crate::error::{Error, Result};

/// Training precision (`precision` in the train config, `--precision`): `fp32`, `amp-fp16`
/// (alias `amp`) or `amp-bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// fp32 everywhere.
    #[default]
    Fp32,
    /// CUDA autocast in fp16, fp32 master weights, dynamic loss scale (CUDA only).
    #[serde(alias = "amp")]
    #[value(alias = "amp")]
    AmpFp16,
    /// Autocast in bf16 (CUDA or CPU), fp32 master weights, no loss scale (bf16 has fp32's
    /// range).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_names() {
        assert_eq!(Precision::parse("amp-bf16").unwrap().autocast_kind(), Some(Kind::BFloat16));
        assert_eq!(Precision::parse("amp").unwrap(), Precision::AmpFp16);
        assert_eq!(Precision::parse("fp32").unwrap().autocast_kind(), None);
        assert!(Precision::parse("bf16").unwrap_err().to_string().contains("precision"));
    }
}
