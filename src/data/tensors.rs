//! Pre-processed pairs: a safetensors file with `images` (float32 `[N, 3, S, S]`, already
//! normalised) and `tokens` (int64 `[N, L]`). The loader batches them as they are, with no
//! decoding, resizing or tokenising: for data prepared by another pipeline, and for exact
//! comparisons with a reference implementation fed the very same tensors.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Largest file read (bytes): the tensors are held in memory.
pub const MAX_BYTES: u64 = 8 << 30;

/// The pairs, held as flat buffers (shared read-only by the loader threads).
pub struct TensorPairs {
    images: Vec<f32>,
    tokens: Vec<i64>,
    /// Pairs.
    pub n: usize,
    /// Image side.
    pub size: usize,
    /// Tokens per caption.
    pub context: usize,
}

impl TensorPairs {
    /// Reads and checks the file: both tensors present with the dtypes and ranks above, the
    /// same N ≥ 1, square images of three channels, finite pixels.
    pub fn read(path: &Path) -> Result<TensorPairs> {
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len > MAX_BYTES {
            return Err(Error::Data(format!(
                "{}: {len} bytes, more than the {MAX_BYTES}-byte limit for in-memory tensor data",
                path.display()
            )));
        }
        let bad = |why: String| Error::Data(format!("{}: {why}", path.display()));
        let tensors = Tensor::read_safetensors(path).map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| bad(format!("no tensor `{name}` (expected `images` float32 [N, 3, S, S] and `tokens` int64 [N, L])")))
        };
        let (images, tokens) = (get("images")?, get("tokens")?);
        let (is, ts) = (images.size(), tokens.size());
        if images.kind() != Kind::Float || is.len() != 4 || is[1] != 3 || is[2] != is[3] || is[2] < 1 {
            return Err(bad(format!("`images` is {:?} {is:?}; expected float32 [N, 3, S, S]", images.kind())));
        }
        if tokens.kind() != Kind::Int64 || ts.len() != 2 || ts[1] < 1 {
            return Err(bad(format!("`tokens` is {:?} {ts:?}; expected int64 [N, L]", tokens.kind())));
        }
        if is[0] != ts[0] || is[0] < 1 {
            return Err(bad(format!("`images` holds {} items and `tokens` {}; expected the same N ≥ 1", is[0], ts[0])));
        }
        if images.isfinite().all().int64_value(&[]) == 0 {
            return Err(bad("`images` holds non-finite values".into()));
        }
        let images: Vec<f32> = Vec::try_from(images.contiguous().view([-1])).map_err(Error::Torch)?;
        let tokens: Vec<i64> = Vec::try_from(tokens.contiguous().view([-1])).map_err(Error::Torch)?;
        Ok(TensorPairs { images, tokens, n: is[0] as usize, size: is[2] as usize, context: ts[1] as usize })
    }

    /// Checks the tensors fit a model: image side, context length, token ids below `vocab`.
    pub fn check_fits(&self, origin: &Path, size: usize, context: usize, vocab: i64) -> Result<()> {
        let bad = |why: String| Err(Error::Data(format!("{}: {why}", origin.display())));
        if self.size != size {
            return bad(format!("images are {0}×{0}; the model takes {size}×{size}", self.size));
        }
        if self.context != context {
            return bad(format!("tokens have {} positions; the model's context length is {context}", self.context));
        }
        if let Some((i, t)) = self.tokens.iter().enumerate().find(|(_, t)| !(0..vocab).contains(*t)) {
            return bad(format!(
                "token {t} (item {}, position {}) is outside the vocabulary 0..{vocab}",
                i / self.context,
                i % self.context
            ));
        }
        Ok(())
    }

    /// Item `i`: its image `[3, S, S]` and tokens `[L]`.
    pub fn item(&self, i: usize) -> (Tensor, Tensor) {
        let px = 3 * self.size * self.size;
        let s = self.size as i64;
        let image = Tensor::from_slice(&self.images[i * px..(i + 1) * px]).view([3, s, s]);
        let tokens = Tensor::from_slice(&self.tokens[i * self.context..(i + 1) * self.context]);
        (image, tokens)
    }
}
