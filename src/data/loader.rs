//! A multi-threaded batch loader (decode, augment, tokenize) with a bounded prefetch queue.
//!
//! Step `s` always gets the same items, in the same order, with the same augmentation: item
//! positions come from `s·B .. (s+1)·B` in the epoch order of `(seed, epoch)`, and each item's
//! crop comes from an RNG seeded by `(seed, epoch, position)`. Worker `w` builds the steps
//! with `s mod W = w` into its own bounded channel and the consumer reads them in order, so
//! the result does not depend on the number of workers.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use image::RgbImage;
use tch::Tensor;

use super::image::{load_rgb, resize_center_crop, resized_crop, to_tensor};
use super::manifest::Pair;
use super::synth::{self, Rng};
use super::synthetic_set::epoch_order;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// A source of image–caption pairs.
pub trait PairSource: Send + Sync {
    /// Number of pairs.
    fn len(&self) -> usize;
    /// Item `i`, or why it cannot be read.
    fn get(&self, i: usize) -> std::result::Result<(RgbImage, String), String>;
    /// What to name in `skipped.tsv`.
    fn describe(&self, i: usize) -> String;
    /// Whether the source has no pairs.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pre-processed tensors, batched as they are (no decoding, augmentation or tokenising).
    fn preprocessed(&self) -> Option<&super::tensors::TensorPairs> {
        None
    }
}

impl PairSource for super::tensors::TensorPairs {
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, _i: usize) -> std::result::Result<(RgbImage, String), String> {
        Err("pre-processed tensors have no image file or caption".into())
    }
    fn describe(&self, i: usize) -> String {
        format!("tensors:{i}")
    }
    fn preprocessed(&self) -> Option<&super::tensors::TensorPairs> {
        Some(self)
    }
}

/// The synthetic world, item `i` = `synth::scene(seed, i)`.
pub struct SyntheticSource {
    /// The world's seed.
    pub seed: u64,
    /// Items per epoch.
    pub n: usize,
    /// Image side in pixels.
    pub size: u32,
    /// Which world.
    pub world: synth::World,
}

impl PairSource for SyntheticSource {
    fn len(&self) -> usize {
        self.n
    }
    fn get(&self, i: usize) -> std::result::Result<(RgbImage, String), String> {
        let sc = synth::scene_in(self.world, self.seed, i as u64, self.size);
        Ok((RgbImage::from_raw(self.size, self.size, sc.pixels).expect("scene buffer"), sc.caption))
    }
    fn describe(&self, i: usize) -> String {
        match self.world {
            synth::World::Shapes => format!("synthetic:{}:{i}", self.seed),
            synth::World::Relations => format!("synthetic-relations:{}:{i}", self.seed),
        }
    }
}

/// Pairs read from a manifest; images are decoded on demand.
pub struct ManifestSource {
    /// The manifest's rows.
    pub pairs: Vec<Pair>,
}

impl PairSource for ManifestSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, i: usize) -> std::result::Result<(RgbImage, String), String> {
        let p = &self.pairs[i];
        let img = load_rgb(&p.image).map_err(|e| e.to_string())?;
        Ok((img, p.caption.clone()))
    }
    fn describe(&self, i: usize) -> String {
        self.pairs[i].image.display().to_string()
    }
}

/// Training-time augmentation: torchvision-style random resized crop (area fraction in
/// `scale`, aspect ratio in [3/4, 4/3], 10 tries, centre-crop fallback), Pillow's bicubic
/// resize of the crop.
/// `scale = (1, 1)` with an already square image is the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Area fraction range of the crop.
    pub scale: (f64, f64),
}

/// torchvision's `RandomResizedCrop` on `img` with `rng`, resized to `size × size`.
pub fn random_resized_crop(img: &RgbImage, size: u32, aug: Augment, rng: &mut Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    if aug.scale == (1.0, 1.0) {
        return resize_center_crop(img, size);
    }
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * (aug.scale.0 + (aug.scale.1 - aug.scale.0) * rng.unit());
        let log_r = (3f64 / 4.0).ln() + ((4f64 / 3.0).ln() - (3f64 / 4.0).ln()) * rng.unit();
        let ratio = log_r.exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.below((w - cw + 1) as u64) as u32;
            let y = rng.below((h - ch + 1) as u64) as u32;
            return resized_crop(img, x, y, cw, ch, size, size);
        }
    }
    resize_center_crop(img, size)
}

/// A prepared batch.
pub struct Batch {
    /// The optimizer step this batch is for (0-based).
    pub step: i64,
    /// The epoch of its first item.
    pub epoch: u64,
    /// Normalised `[B, 3, S, S]`.
    pub images: Tensor,
    /// `[B, context]` token ids.
    pub tokens: Tensor,
    /// Item indices actually in the batch.
    pub indices: Vec<usize>,
    /// Items that could not be read: (index, what, why).
    pub skipped: Vec<(usize, String, String)>,
    /// Seconds the worker spent building it.
    pub build_s: f64,
}

/// Fixed description of the batches to build.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The run's seed.
    pub seed: u64,
    /// Pairs per step.
    pub batch_size: usize,
    /// First step to build.
    pub start_step: i64,
    /// One past the last step.
    pub end_step: i64,
    /// Image side in pixels.
    pub image_size: u32,
    /// Normalisation mean.
    pub mean: [f64; 3],
    /// Normalisation standard deviation.
    pub std: [f64; 3],
    /// Random resized crop, if any.
    pub augment: Option<Augment>,
    /// `(rank, world)`: build only this rank's slice `[rank·b, (rank+1)·b)` of each step's
    /// `batch_size` items, `b = batch_size / world` (data-parallel training). The global batch
    /// of step s stays a function of (seed, s) whatever the world size. `(0, 1)`: all of it.
    pub shard: (usize, usize),
}

fn build_batch(src: &dyn PairSource, tok: &Tokenizer, plan: &Plan, step: i64) -> Result<Batch> {
    let t0 = Instant::now();
    let n = src.len() as u64;
    let first = step as u64 * plan.batch_size as u64;
    let mut order: Option<(u64, Vec<usize>)> = None;
    let (mut imgs, mut caps, mut indices, mut skipped) = (vec![], vec![], vec![], vec![]);
    let mut pre_tokens: Vec<Tensor> = vec![];
    let mut epoch = first / n;
    let (rank, world) = plan.shard;
    let local = (plan.batch_size / world.max(1)) as u64;
    for k in rank as u64 * local..(rank as u64 + 1) * local {
        let pos = first + k;
        let e = pos / n;
        if order.as_ref().is_none_or(|(oe, _)| *oe != e) {
            order = Some((e, epoch_order(n as usize, plan.seed, e)));
        }
        epoch = e;
        let i = order.as_ref().expect("the epoch order is drawn above").1[(pos % n) as usize];
        if let Some(tp) = src.preprocessed() {
            let (img, tok) = tp.item(i);
            imgs.push(img);
            pre_tokens.push(tok);
            indices.push(i);
            continue;
        }
        match src.get(i) {
            Ok((img, cap)) => {
                let img = match plan.augment {
                    Some(aug) => {
                        let mut rng = Rng::new(plan.seed ^ pos.wrapping_mul(0x2545_F491_4F6C_DD1D));
                        random_resized_crop(&img, plan.image_size, aug, &mut rng)
                    }
                    None => resize_center_crop(&img, plan.image_size),
                };
                imgs.push(to_tensor(img.as_raw(), plan.image_size, plan.image_size, plan.mean, plan.std));
                caps.push(cap);
                indices.push(i);
            }
            Err(why) => skipped.push((i, src.describe(i), why)),
        }
    }
    if imgs.len() < 2 {
        return Err(Error::Data(format!("step {}: fewer than 2 readable items in the batch ({} skipped)", step + 1, skipped.len())));
    }
    Ok(Batch {
        step,
        epoch,
        images: Tensor::stack(&imgs, 0),
        tokens: if pre_tokens.is_empty() { tok.tokenize_batch(&caps) } else { Tensor::stack(&pre_tokens, 0) },
        indices,
        skipped,
        build_s: t0.elapsed().as_secs_f64(),
    })
}

/// Background workers producing the batches of a [`Plan`] in step order.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    start: i64,
    next: i64,
    end: i64,
}

impl Loader {
    /// Starts `workers` threads, each keeping up to `prefetch` batches ready.
    pub fn new(src: Arc<dyn PairSource>, tok: Arc<Tokenizer>, plan: Plan, workers: usize, prefetch: usize) -> Loader {
        let workers = workers.max(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(prefetch.max(1));
            let (src, tok, plan) = (src.clone(), tok.clone(), plan.clone());
            handles.push(std::thread::spawn(move || {
                let mut step = plan.start_step + w as i64;
                while step < plan.end_step {
                    let b = build_batch(src.as_ref(), &tok, &plan, step);
                    if tx.send(b).is_err() {
                        return;
                    }
                    step += workers as i64;
                }
            }));
            receivers.push(rx);
        }
        Loader { receivers, handles, start: plan.start_step, next: plan.start_step, end: plan.end_step }
    }

    /// The next batch in step order, or `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        // Worker w builds steps start + w + k·W.
        let idx = (self.next - self.start) as usize % self.receivers.len();
        self.next += 1;
        Some(self.receivers[idx].recv().unwrap_or_else(|_| Err(Error::Data("data loader worker stopped".into()))))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Appends skipped items to `RUN_DIR/skipped.tsv` (`step  index  item  reason`).
pub fn record_skipped(path: &PathBuf, step: i64, skipped: &[(usize, String, String)]) -> Result<()> {
    use std::io::Write;
    if skipped.is_empty() {
        return Ok(());
    }
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    if new {
        writeln!(f, "step\tindex\titem\treason").map_err(|e| Error::io(path, e))?;
    }
    for (i, what, why) in skipped {
        writeln!(f, "{}\t{i}\t{what}\t{}", step + 1, why.replace(['\t', '\n'], " ")).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}
