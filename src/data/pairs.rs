//! Image–caption pairs for evaluation and analysis: where they come from ([`PairData`]) and
//! the one loop that walks them in fixed order and batch size ([`for_each_batch`]).

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;
use tch::Tensor;

use super::image::{resize_center_crop, to_tensor};
use super::loader::{ManifestSource, PairSource, SyntheticSource};
use super::manifest::{self, ManifestFormat};
use super::synth;
use super::synthetic_set::EVAL_SEED_OFFSET;
use crate::error::{Error, Result};
use crate::model::config::Preprocess;
use crate::tokenizer::Tokenizer;

/// Where the pairs of an analysis come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PairData {
    /// A manifest (TSV/CSV with `filepath` and `title` columns; paths relative to it).
    Manifest(PathBuf),
    /// `n` scenes of the held-out synthetic world with seed `seed` (the world of seed
    /// `seed ^ EVAL_SEED_OFFSET`, disjoint from training worlds).
    Synthetic {
        /// Scenes.
        n: usize,
        /// The world's seed (before the held-out offset).
        seed: u64,
        /// Which world.
        world: synth::World,
    },
}

impl PairData {
    /// The source and its identity for provenance (the manifest's sha256, or the synthetic
    /// world's seed and size).
    pub fn open(&self, image_size: u32) -> Result<(Arc<dyn PairSource>, String)> {
        match self {
            PairData::Manifest(m) => {
                let pairs = manifest::read(m, &ManifestFormat::for_path(m))?;
                Ok((Arc::new(ManifestSource { pairs }), manifest::manifest_hash(m)?))
            }
            PairData::Synthetic { n, seed, world } => {
                if *n == 0 {
                    return Err(Error::config("synthetic", 0, "need at least one scene"));
                }
                let s = seed ^ EVAL_SEED_OFFSET;
                let id = match world {
                    synth::World::Shapes => format!("synthetic:seed={s}:n={n}"),
                    synth::World::Relations => format!("synthetic-relations:seed={s}:n={n}"),
                };
                Ok((Arc::new(SyntheticSource { seed: s, n: *n, size: image_size, world: *world }), id))
            }
        }
    }

    /// The ground-truth objects of item `index` (synthetic scenes only).
    pub fn objects(&self, index: usize, image_size: u32) -> Option<Vec<synth::Object>> {
        match self {
            PairData::Synthetic { seed, world, .. } => {
                Some(synth::scene_in(*world, seed ^ EVAL_SEED_OFFSET, index as u64, image_size).objects)
            }
            PairData::Manifest(_) => None,
        }
    }
}

/// An item that could not be read: (index, what, why).
pub type Skipped = (usize, String, String);

/// One batch of readable items, preprocessed for a model.
pub struct ItemBatch {
    /// Item indices in the source.
    pub indices: Vec<usize>,
    /// The resized, centre-cropped images (before normalisation).
    pub rgb: Vec<RgbImage>,
    /// Normalised `[B, 3, S, S]`.
    pub images: Tensor,
    /// `[B, context]` token ids.
    pub tokens: Tensor,
    /// The captions.
    pub captions: Vec<String>,
}

/// How items become tensors: image side, normalisation constants, tokenizer.
pub struct Prep<'a> {
    /// Image side in pixels.
    pub size: u32,
    /// Normalisation constants.
    pub preprocess: &'a Preprocess,
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
}

/// Walks items `0..n` of `src` in order, in batches of `batch` (the last may be short),
/// calling `f` on each batch of readable items; unreadable items are returned, not passed.
pub fn for_each_batch(
    src: &dyn PairSource,
    n: usize,
    batch: usize,
    prep: &Prep,
    mut f: impl FnMut(ItemBatch) -> Result<()>,
) -> Result<Vec<Skipped>> {
    if batch == 0 {
        return Err(Error::config("batch", 0, "must be at least 1"));
    }
    let n = n.min(src.len());
    let mut skipped = vec![];
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let (mut rgb, mut imgs, mut captions, mut indices) = (vec![], vec![], vec![], vec![]);
        for i in start..end {
            match src.get(i) {
                Ok((img, cap)) => {
                    let img = resize_center_crop(&img, prep.size);
                    imgs.push(to_tensor(img.as_raw(), prep.size, prep.size, prep.preprocess.mean, prep.preprocess.std));
                    rgb.push(img);
                    captions.push(cap);
                    indices.push(i);
                }
                Err(why) => skipped.push((i, src.describe(i), why)),
            }
        }
        start = end;
        if imgs.is_empty() {
            continue;
        }
        let tokens = prep.tokenizer.tokenize_batch(&captions);
        f(ItemBatch { indices, rgb, images: Tensor::stack(&imgs, 0), tokens, captions })?;
    }
    Ok(skipped)
}
