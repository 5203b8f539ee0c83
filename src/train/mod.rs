//! Contrastive training with exact resume and per-step telemetry.

pub mod amp;
pub mod init;
pub mod loss;
pub mod optim;
pub mod select;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::checkpoint::{self, Meta};
use crate::data::loader::{record_skipped, Augment, Loader, ManifestSource, PairSource, Plan, SyntheticSource};
use crate::data::manifest::{self, ManifestFormat};
use crate::data::shards::ShardSource;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalResult};
use crate::model::{Capture, ModelConfig, MsClip};
use crate::tokenizer::Tokenizer;
use loss::clip_loss;
use optim::{cosine_lr, AdamW, AdamWConfig};

/// The largest temperature scale (OpenCLIP clamps `logit_scale` at ln 100).
pub const MAX_LOGIT_SCALE: f64 = 100.0;

/// A training run, as data (TOML). Every field can be overridden on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model preset name or a path to a model TOML.
    pub model: String,
    /// Synthetic world size (items per epoch) when no manifest is given.
    pub data_items: usize,
    /// Which synthetic world (`shapes`, the default, or `relations`: two objects of few kinds
    /// whose arrangement the captions name; see [`crate::data::synth::World`]).
    #[serde(default, skip_serializing_if = "is_default_world")]
    pub world: crate::data::synth::World,
    /// Image–caption data instead of the synthetic world: a manifest (CSV/TSV, OpenCLIP
    /// convention) or WebDataset tar shards (`dir/shard-{000..009}.tar`, comma-separated).
    #[serde(default)]
    pub data: Option<String>,
    /// The manifest's image column.
    #[serde(default = "default_img_key")]
    pub csv_img_key: String,
    /// The manifest's caption column.
    #[serde(default = "default_caption_key")]
    pub csv_caption_key: String,
    /// Random-resized-crop area range `[lo, hi]`; None = resize + centre crop only.
    #[serde(default, deserialize_with = "two_floats")]
    pub augment_scale: Option<[f64; 2]>,
    /// Loader threads and batches queued per thread.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Batches queued per loader thread.
    #[serde(default = "default_workers")]
    pub prefetch: usize,
    /// Stop at the first unreadable image instead of skipping it.
    #[serde(default)]
    pub strict: bool,
    /// Split each batch into this many micro-batches with the same gradient as one big batch.
    #[serde(default = "default_accum")]
    pub accum_freq: usize,
    /// Optimizer steps of the schedule.
    pub steps: i64,
    /// Pairs per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: i64,
    /// Clip the global gradient norm (0 = off).
    pub grad_clip: f64,
    /// Seed of the initialisation, data order and augmentation.
    pub seed: u64,
    /// Save every N steps (0 = only at the end).
    pub save_every: i64,
    /// Checkpoints kept.
    pub keep: usize,
    /// Keep the optimizer state (`optim.safetensors`, twice the weights' size under AdamW)
    /// only in the newest N kept checkpoints; older ones keep their weights and verify as
    /// before, but cannot be resumed from (None: every kept checkpoint can). For runs that
    /// keep many checkpoints for analysis over training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_optimizer: Option<usize>,
    /// Evaluate every N steps (0 = never).
    pub eval_every: i64,
    /// Held-out images for zero-shot and pairs for retrieval at each evaluation.
    pub eval_items: usize,
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// `fp32`; `amp` (= `amp-fp16`): CUDA autocast (fp16 matmuls, fp32 master weights) with a
    /// dynamic loss scale (×2 every 2000 good steps, ½ and skip the update on overflow), CUDA
    /// only; `amp-bf16`: autocast in bf16 on CUDA or CPU (matmuls, convolutions and attention
    /// in bf16; LayerNorm, softmax of the loss and the optimizer in fp32), no loss scale.
    #[serde(default)]
    pub precision: amp::Precision,
    /// Overrides the model's initial raw `logit_scale` (official MS-CLIP: 1.0, i.e. scale e;
    /// OpenAI: ln(1/0.07)). Short runs learn far faster from OpenAI's value.
    #[serde(default)]
    pub logit_scale_init: Option<f64>,
    /// Stop after this many steps (checkpointing there) while the schedule still spans
    /// `steps`: for time-limited jobs that resume later.
    #[serde(default)]
    pub stop_after: Option<i64>,
    /// Data-parallel runs: each rank computes the loss of its own rows (its images against all
    /// texts, its texts against all images) instead of the whole `B × B` logit matrix
    /// (OpenCLIP's `--local-loss`; the same gradient, `B/world × B` logits per rank).
    #[serde(default)]
    pub local_loss: bool,
    /// Start a fresh run from another checkpoint's weights, all of them or a selection (the
    /// rest comes from the seed); the run still starts at step 0 with a fresh optimizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitConfig>,
    /// Parameters kept fixed for the whole run: selectors as in [`select`] (`text`,
    /// `shared.attn:2-5`, `visual.parallel.*`, …). Frozen parameters get no gradient and no
    /// optimizer state and stay bit-identical. A shared tensor is one tensor: freezing it
    /// through one tower freezes it for both. BatchNorm running statistics are buffers, not
    /// parameters: they keep updating (as OpenCLIP's `--lock-image` without
    /// `--lock-image-freeze-bn-stats`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
}

/// Where a fresh run's weights come from (see [`TrainConfig::init`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A checkpoint directory (trained or imported with `msclip-train import`), or a run
    /// directory (its newest checkpoint).
    pub from: PathBuf,
    /// Which tensors to load, as [`select`] entries: `TARGET` (same names in the source) or
    /// `TARGET=SOURCE` (a mapping across layouts). Empty: every tensor, by name.
    #[serde(default)]
    pub select: Vec<String>,
}

/// `[lo, hi]`: exactly two numbers (serde's fixed-size arrays would silently drop extras).
fn two_floats<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<[f64; 2]>, D::Error> {
    let v: Option<Vec<f64>> = Option::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(v) if v.len() == 2 => Ok(Some([v[0], v[1]])),
        Some(v) => Err(serde::de::Error::custom(format!("expected 2 values [lo, hi], got {}", v.len()))),
    }
}

fn is_default_world(w: &crate::data::synth::World) -> bool {
    *w == crate::data::synth::World::Shapes
}

fn default_img_key() -> String {
    "filepath".into()
}
fn default_caption_key() -> String {
    "title".into()
}
fn default_workers() -> usize {
    2
}
fn default_accum() -> usize {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "tiny-msclip-s".into(),
            data_items: 20000,
            world: Default::default(),
            data: None,
            csv_img_key: default_img_key(),
            csv_caption_key: default_caption_key(),
            augment_scale: None,
            workers: 2,
            prefetch: 2,
            strict: false,
            accum_freq: 1,
            steps: 1000,
            batch_size: 32,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            grad_clip: 1.0,
            seed: 0,
            save_every: 200,
            keep: 2,
            keep_optimizer: None,
            eval_every: 200,
            eval_items: 1000,
            optimizer: AdamWConfig::default(),
            stop_after: None,
            logit_scale_init: None,
            precision: amp::Precision::Fp32,
            local_loss: false,
            init: None,
            freeze: vec![],
        }
    }
}

impl TrainConfig {
    /// Reads a training config TOML (validated by [`TrainConfig::validate`] when training).
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// The model config with this run's overrides applied.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let mut cfg = if self.model.ends_with(".toml") {
            ModelConfig::from_toml_file(Path::new(&self.model))?
        } else {
            ModelConfig::preset(&self.model)?
        };
        if let Some(v) = self.logit_scale_init {
            cfg.logit_scale_init = v;
        }
        Ok(cfg)
    }

    /// Checks every field's domain; the error names the key and the value.
    pub fn validate(&self) -> Result<()> {
        let finite = |key: &str, v: f64| if v.is_finite() { Ok(()) } else { Err(Error::config(key, v, "must be finite")) };
        if !(2..=1 << 20).contains(&self.batch_size) {
            return Err(Error::config("batch_size", self.batch_size, "contrastive training needs 2 to 1,048,576"));
        }
        if self.data.is_none() && !(self.batch_size..=1 << 40).contains(&self.data_items) {
            return Err(Error::config(
                "data_items",
                self.data_items,
                format!("must be at least batch_size {} (and at most 2^40)", self.batch_size),
            ));
        }
        if self.accum_freq < 1 || !self.batch_size.is_multiple_of(self.accum_freq) || self.batch_size / self.accum_freq < 1 {
            return Err(Error::config("accum_freq", self.accum_freq, format!("must divide batch_size {}", self.batch_size)));
        }
        if !(1..=1i64 << 40).contains(&self.steps) {
            return Err(Error::config("steps", self.steps, "must be in 1..=2^40"));
        }
        finite("lr", self.lr)?;
        if self.lr <= 0.0 {
            return Err(Error::config("lr", self.lr, "must be positive"));
        }
        finite("min_lr", self.min_lr)?;
        if self.min_lr < 0.0 || self.min_lr > self.lr {
            return Err(Error::config("min_lr", self.min_lr, format!("must be in [0, lr = {}]", self.lr)));
        }
        if self.warmup_steps < 0 {
            return Err(Error::config("warmup_steps", self.warmup_steps, "must not be negative"));
        }
        finite("grad_clip", self.grad_clip)?;
        if self.grad_clip < 0.0 {
            return Err(Error::config("grad_clip", self.grad_clip, "must not be negative (0 = off)"));
        }
        if self.save_every < 0 {
            return Err(Error::config("save_every", self.save_every, "must not be negative (0 = only at the end)"));
        }
        if self.keep < 1 {
            return Err(Error::config("keep", self.keep, "must be at least 1"));
        }
        if self.keep_optimizer == Some(0) {
            return Err(Error::config("keep_optimizer", 0, "must be at least 1 (the newest checkpoint is what a resume needs)"));
        }
        if self.eval_every < 0 {
            return Err(Error::config("eval_every", self.eval_every, "must not be negative (0 = off)"));
        }
        if self.eval_every > 0 && !(2..=1_000_000).contains(&self.eval_items) {
            return Err(Error::config("eval_items", self.eval_items, "must be in 2..=1,000,000 when eval_every > 0"));
        }
        if !(1..=256).contains(&self.workers) {
            return Err(Error::config("workers", self.workers, "must be in 1..=256"));
        }
        if !(1..=64).contains(&self.prefetch) {
            return Err(Error::config("prefetch", self.prefetch, "must be in 1..=64"));
        }
        if let Some(s) = self.stop_after {
            if s < 1 {
                return Err(Error::config("stop_after", s, "must be at least 1"));
            }
        }
        if let Some([lo, hi]) = self.augment_scale {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return Err(Error::config("augment_scale", format!("[{lo}, {hi}]"), "need 0 < lo ≤ hi ≤ 1 (area fractions)"));
            }
        }
        if let Some(v) = self.logit_scale_init {
            finite("logit_scale_init", v)?;
        }
        if self.seed > i64::MAX as u64 {
            return Err(Error::config(
                "seed",
                self.seed,
                format!("must be at most {} (checkpoints store it as a signed integer)", i64::MAX),
            ));
        }
        if let Some(init) = &self.init {
            if init.from.as_os_str().is_empty() {
                return Err(Error::config("init.from", "\"\"", "name a checkpoint or run directory"));
            }
            select::check_syntax(&init.select, "init.select", true)?;
        }
        select::check_syntax(&self.freeze, "freeze", false)?;
        self.optimizer.validate()
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps completed.
    pub step: i64,
    /// Epoch of the step's first item.
    pub epoch: u64,
    /// The contrastive loss.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
    /// exp(logit_scale) after the step.
    pub logit_scale: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Throughput of the step.
    pub samples_per_s: f64,
    /// Share of the step spent waiting for data.
    pub data_wait_frac: f64,
    /// Data-parallel runs: the number of ranks (the batch of the step is `world × batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<usize>,
    /// Data-parallel runs: pairs per step over all ranks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    /// Data-parallel runs: share of rank 0's step spent in collectives (feature all-gather,
    /// gradient and buffer all-reduce).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_frac: Option<f64>,
    /// The evaluation after this step, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalResult>,
}

/// Where training starts from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// A fresh run; the run directory must hold no earlier run's outputs (see
    /// [`TrainOptions::force`]).
    No,
    /// The newest checkpoint of the run directory that verifies; an error if there is none.
    Latest,
    /// The newest valid checkpoint, or a fresh start when the run directory has none (for job
    /// scripts that are re-submitted until done).
    LatestOrFresh,
    /// A given checkpoint directory.
    Path(PathBuf),
}

/// How [`train`] treats the run directory and where it runs.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Where to start from.
    pub resume: Resume,
    /// Start fresh even though the run directory holds an earlier run's `metrics.jsonl` or
    /// checkpoints: they are deleted first.
    pub force: bool,
    /// The device to train on.
    pub device: Device,
    /// Print a status line with an ETA every 10 steps on stderr.
    pub progress: bool,
    /// Data-parallel training over this process group (None: one process). `batch_size` is
    /// then per rank; see [`crate::distributed`] and [`train`].
    pub group: Option<std::rc::Rc<crate::distributed::ProcessGroup>>,
}

impl TrainOptions {
    /// A fresh CPU run without progress output.
    pub fn fresh() -> TrainOptions {
        TrainOptions { resume: Resume::No, force: false, device: Device::Cpu, progress: false, group: None }
    }
    /// A CPU run resuming per `resume`.
    pub fn resume(resume: Resume) -> TrainOptions {
        TrainOptions { resume, ..TrainOptions::fresh() }
    }
}

/// What of an earlier run lies in `run_dir` (`metrics.jsonl`, a non-empty `checkpoints/`).
fn earlier_outputs(run_dir: &Path) -> Vec<String> {
    let mut found = vec![];
    if run_dir.join("metrics.jsonl").exists() {
        found.push("metrics.jsonl".to_string());
    }
    let ck = run_dir.join("checkpoints");
    if std::fs::read_dir(&ck).map(|mut rd| rd.next().is_some()).unwrap_or(false) {
        found.push("checkpoints/".to_string());
    }
    found
}

/// Outcome of [`train`].
#[derive(Debug)]
pub struct TrainOutcome {
    /// The last step trained.
    pub final_step: i64,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// The last evaluation.
    pub last_eval: Option<EvalResult>,
}

/// Keeps the lines of `metrics.jsonl` up to `step` (after a resume) and opens it for append.
fn open_metrics(path: &Path, upto: i64) -> Result<std::fs::File> {
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_i64()).is_some_and(|s| s <= upto))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::io::write_atomic(path, kept.as_bytes())?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))
}

/// Trains per `tc` into `run_dir` (checkpoints in `run_dir/checkpoints`, telemetry in
/// `run_dir/metrics.jsonl`). The run directory is locked for the duration (`RUN/.lock`); a
/// fresh run refuses a directory holding an earlier run unless `opts.force`; stale temporary
/// checkpoint directories of killed saves are removed.
///
/// With a process group (`opts.group`, data-parallel): `batch_size` is per rank and the step's
/// batch is `world × batch_size` pairs, of which rank r takes the slice `[r·b, (r+1)·b)`; the
/// sequence of global batches is the one-process run's. Image and text features are
/// all-gathered so the loss sees the global batch, gradients are summed over ranks (bucketed
/// all-reduce) and every rank applies the same clipping and AdamW update. BatchNorm (MS-CLIP-S's
/// parallel branch) normalises with per-rank statistics; its running statistics are averaged
/// over ranks after each step. Rank 0 alone locks and cleans the run directory, writes
/// `metrics.jsonl` and checkpoints (then all ranks pass a barrier); all ranks resume from the
/// same checkpoint. A resume may change the world size if `world × batch_size` stays equal.
pub fn train(tc: &TrainConfig, run_dir: &Path, opts: &TrainOptions) -> Result<TrainOutcome> {
    tc.validate()?;
    let cfg = tc.model_config()?;
    let device = opts.device;
    let group = opts.group.as_deref();
    let (rank, world) = group.map_or((0, 1), |g| (g.rank, g.world));
    let lead = rank == 0;
    let progress = opts.progress && lead;
    check_setup(tc, &cfg, device, group)?;
    let global_bs = tc.batch_size * world;
    let _lock = if lead { Some(checkpoint::RunLock::acquire(run_dir)?) } else { None };
    let ckpt_root = run_dir.join("checkpoints");
    if lead {
        let removed = checkpoint::remove_stale_temps(&ckpt_root)?;
        if removed > 0 {
            eprintln!(
                "removed {removed} stale temporary checkpoint director{} of interrupted saves",
                if removed == 1 { "y" } else { "ies" }
            );
        }
    }
    let from = resume_point(&opts.resume, &ckpt_root)?;
    let train_toml = toml::to_string(tc).map_err(|e| Error::Invalid(format!("the training config cannot be written as TOML: {e}")))?;
    // Build the model and resolve init and freeze before anything in the run directory is
    // touched: a bad selection must not cost the user an earlier run deleted by --force.
    let (vs, model) = MsClip::build(&cfg, device, tc.seed as i64);
    let buffers: std::collections::BTreeSet<String> =
        vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(n, _)| n).collect();
    let mut init_record = match (&from, &tc.init) {
        (None, Some(ic)) => Some(init::apply(ic, &vs)?),
        _ => None,
    };
    let frozen = init::freeze(&tc.freeze, &vs)?;
    if let Some(r) = &init_record {
        if lead {
            eprintln!("init: {} tensors from {} ({}, sha256 {})", r.tensors.len(), r.from.display(), r.source_model, r.source_sha256);
        }
    }
    if !frozen.is_empty() && lead {
        let shared = frozen.iter().filter(|n| n.starts_with("shared.")).count();
        let note = if shared > 0 { format!(", {shared} of them shared by both towers") } else { String::new() };
        eprintln!("freeze: {} parameter tensors fixed{note}", frozen.len());
    }
    if from.is_none() {
        let interrupted_ok = opts.resume == Resume::LatestOrFresh;
        clear_for_fresh_run(run_dir, &ckpt_root, opts.force, interrupted_ok, group, lead)?;
    }
    let mut opt = AdamW::new(&vs, tc.optimizer.clone());
    let mut comm_s = 0.0f64;
    let mut start = 0i64;
    let mut verified = std::collections::HashSet::new();
    if let Some(dir) = &from {
        let meta = restore(dir, &cfg, &vs, &mut opt, &frozen, tc, world)?;
        start = meta.step;
        init_record = meta.init;
        verified.insert(dir.clone());
        eprintln!("resumed from {} (step {start})", dir.display());
        if let (Some(k), true) = (tc.keep_optimizer, lead) {
            // keep_optimizer also applies to checkpoints saved before it was set (a finished
            // run resumed with it): those older than this one that verify are stripped.
            let mut ok: std::collections::HashSet<PathBuf> = [dir.clone()].into();
            for d in checkpoint::list(&ckpt_root).into_iter().skip_while(|d| d != dir).skip(1) {
                if d.join("optim.safetensors").exists() && checkpoint::verify(&d).is_ok() {
                    ok.insert(d);
                }
            }
            checkpoint::drop_old_optimizer_state(&ckpt_root, k, &ok)?;
        }
    }
    if let Some(g) = group {
        // Identical weights on every rank (the same seed builds the same model; this makes it
        // certain), and rank 0 has finished clearing the run directory.
        let mut all: Vec<Tensor> = named_in_order(&vs).into_iter().map(|(_, t)| t).collect();
        timed(&mut comm_s, || tch::no_grad(|| g.broadcast(&mut all, 0)).and_then(|()| g.barrier()))?;
    }
    let mut metrics = if lead {
        crate::io::write_atomic(&run_dir.join("train.toml"), train_toml.as_bytes())?;
        if let Some(r) = &init_record {
            crate::io::write_atomic(
                &run_dir.join("init.json"),
                serde_json::to_string_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?.as_bytes(),
            )?;
        }
        Some(open_metrics(&run_dir.join("metrics.jsonl"), start)?)
    } else {
        None
    };
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let size = cfg.vision.image_size as u32;
    let bs = global_bs;
    let mut last_checkpoint = None;
    let mut last_eval = None;
    let end = tc.stop_after.map_or(tc.steps, |s| s.clamp(start, tc.steps));
    let source = open_source(tc, &cfg, bs)?;
    let plan = Plan {
        seed: tc.seed,
        batch_size: bs,
        start_step: start,
        end_step: end,
        image_size: size,
        mean: cfg.preprocess.mean,
        std: cfg.preprocess.std,
        augment: tc.augment_scale.map(|[lo, hi]| Augment { scale: (lo, hi) }),
        shard: (rank, world),
    };
    let mut loader = Loader::new(source.clone(), Arc::new(tok), plan, tc.workers, tc.prefetch);
    let skipped_path = run_dir.join(if lead { "skipped.tsv".to_string() } else { format!("skipped-rank-{rank}.tsv") });
    let (mut loss_scale, mut good_steps) = (65536.0f64, 0u64);
    let precision = tc.precision;
    if precision == amp::Precision::AmpFp16 && !device.is_cuda() {
        return Err(Error::config(
            "precision",
            "amp-fp16",
            "fp16 autocast needs CUDA (its loss scaling is CUDA-only); on CPU use amp-bf16",
        ));
    }
    let t_run = Instant::now();
    for step in start..end {
        let t0 = Instant::now();
        let batch = loader.next_batch().expect("loader covers the step range")?;
        debug_assert_eq!(batch.step, step);
        if !batch.skipped.is_empty() {
            if tc.strict {
                let (_, what, why) = &batch.skipped[0];
                return Err(Error::Invalid(format!("step {}: cannot read {what}: {why} (--strict)", step + 1)));
            }
            record_skipped(&skipped_path, step, &batch.skipped)?;
        }
        let epoch = batch.epoch;
        let (mut images, mut tokens) = (batch.images.to_device(device), batch.tokens.to_device(device));
        let mut bs_now = batch.indices.len();
        let data_time = t0.elapsed().as_secs_f64();
        opt.zero_grad();
        let amp = precision.needs_loss_scale() && device.is_cuda();
        let scale = if amp { loss_scale } else { 1.0 };
        let comm_before = comm_s;
        let loss_v = match group {
            None => {
                amp::autocast(device, precision.autocast_kind(), || loss_and_backward(&model, &vs, &images, &tokens, tc.accum_freq, scale))?
            }
            Some(g) => {
                // Skipped (unreadable) items leave ranks with different counts: all ranks keep
                // the smallest count, a multiple of accum_freq.
                let counts = timed(&mut comm_s, || g.all_gather(&Tensor::from_slice(&[bs_now as i64]).to_device(g.device)))?;
                let least = Vec::<i64>::try_from(&counts).map_err(Error::Torch)?.into_iter().min().unwrap_or(0) as usize;
                let keep = least / tc.accum_freq * tc.accum_freq;
                if keep < 1 {
                    return Err(Error::Invalid(format!(
                        "step {}: a rank has fewer than accum_freq = {} readable items",
                        step + 1,
                        tc.accum_freq
                    )));
                }
                if keep < bs_now {
                    images = images.narrow(0, 0, keep as i64);
                    tokens = tokens.narrow(0, 0, keep as i64);
                }
                bs_now = keep * world;
                let how = DistLoss { group: g, accum: tc.accum_freq, loss_scale: scale, local_loss: tc.local_loss };
                let (v, c) =
                    amp::autocast(device, precision.autocast_kind(), || loss_and_backward_dist(&model, &vs, &images, &tokens, &how))?;
                comm_s += c;
                timed(&mut comm_s, || g.all_reduce_bucketed(&opt.grads(), 25 << 20))?;
                v
            }
        };
        if !loss_v.is_finite() {
            return Err(Error::Stopped(format!(
                "loss is {loss_v} at step {}; stopping. The last good checkpoint stays intact in {}",
                step + 1,
                ckpt_root.display()
            )));
        }
        let lr = cosine_lr(step, tc.steps, tc.warmup_steps, tc.lr, tc.min_lr);
        let grad_norm = if amp {
            scaled_update(&mut opt, tc.grad_clip, lr, &mut loss_scale, &mut good_steps)?
        } else {
            update(&mut opt, tc.grad_clip, lr)?
        };
        clamp_logit_scale(&model);
        if let Some(g) = group {
            timed(&mut comm_s, || average_buffers(g, &vs, &buffers))?;
        }
        let done = step + 1;
        let elapsed = t0.elapsed().as_secs_f64();
        let eval = if lead && tc.eval_every > 0 && (done % tc.eval_every == 0 || done == tc.steps) {
            let e = evaluate(&model, tc.seed, tc.eval_items)?;
            last_eval = Some(e.clone());
            Some(e)
        } else {
            None
        };
        let m = StepMetrics {
            step: done,
            epoch,
            loss: loss_v,
            lr,
            logit_scale: model.logit_scale.exp().double_value(&[]),
            grad_norm,
            samples_per_s: bs_now as f64 / elapsed,
            data_wait_frac: data_time / elapsed,
            world: group.map(|_| world),
            global_batch: group.map(|_| bs_now),
            comm_frac: group.map(|_| (comm_s - comm_before) / elapsed),
            eval,
        };
        if let Some(metrics) = metrics.as_mut() {
            writeln!(metrics, "{}", serde_json::to_string(&m).expect("step metrics serialise"))
                .map_err(|e| Error::io(run_dir.join("metrics.jsonl"), e))?;
            metrics.flush().map_err(|e| Error::io(run_dir.join("metrics.jsonl"), e))?;
        } else if is_report_step(done, tc.steps) {
            eprintln!(
                "rank {rank}: step {done}/{} loss {loss_v:.4} {:.1} samples/s (all ranks) comm {:.0}%",
                tc.steps,
                m.samples_per_s,
                100.0 * m.comm_frac.unwrap_or(0.0)
            );
        }
        if progress && is_report_step(done, tc.steps) {
            let rate = (done - start) as f64 / t_run.elapsed().as_secs_f64();
            let eta = (tc.steps - done) as f64 / rate.max(1e-9);
            eprintln!(
                "step {done}/{} loss {loss_v:.4} lr {lr:.2e} scale {:.2} {:.1} samples/s eta {eta:.0}s",
                tc.steps, m.logit_scale, m.samples_per_s
            );
        }
        if (tc.save_every > 0 && done % tc.save_every == 0) || done == end {
            let meta = step_meta(&cfg, tc, done, bs as u64, source.len() as u64, &train_toml, init_record.clone());
            if lead {
                let saved = checkpoint::save(&ckpt_root, &vs, &opt.state(), meta).map_err(|e| {
                    Error::Stopped(format!("{e}; stopping, not saving. The last good checkpoint stays intact in {}", ckpt_root.display()))
                })?;
                verified.insert(saved.clone());
                checkpoint::prune(&ckpt_root, tc.keep, &mut verified)?;
                if let Some(k) = tc.keep_optimizer {
                    checkpoint::drop_old_optimizer_state(&ckpt_root, k, &verified)?;
                }
                last_checkpoint = Some(saved);
            } else {
                last_checkpoint = Some(ckpt_root.join(checkpoint::step_dir_name(done)));
            }
            if let Some(g) = group {
                // No rank runs ahead of a checkpoint that rank 0 has not finished writing.
                timed(&mut comm_s, || g.barrier())?;
            }
        }
    }
    Ok(TrainOutcome { final_step: end, last_checkpoint, last_eval })
}

/// Step 1 of [`train`]: the device matches the process group, every rank trains the same
/// thing, and a data-parallel run has data for one global batch.
fn check_setup(tc: &TrainConfig, cfg: &ModelConfig, device: Device, group: Option<&crate::distributed::ProcessGroup>) -> Result<()> {
    let world = group.map_or(1, |g| g.world);
    if let Some(g) = group {
        if g.device.is_cuda() != device.is_cuda() {
            let (b, d) = if g.device.is_cuda() { ("nccl", "CUDA") } else { ("gloo", "CPU") };
            return Err(Error::Invalid(format!("the {b} process group takes {d} tensors, but training runs on {device:?}")));
        }
        // Before anything else touches the group: every rank must train the same thing.
        agree_across_ranks(g, tc, cfg)?;
    }
    let global_bs = tc.batch_size * world;
    if tc.local_loss && world == 1 {
        eprintln!("note: local_loss only changes data-parallel runs; a one-process run computes the full loss");
    }
    if world > 1 && tc.data.is_none() && tc.data_items < global_bs {
        return Err(Error::config(
            "data_items",
            tc.data_items,
            format!("must be at least world {world} × batch_size {} = {global_bs}", tc.batch_size),
        ));
    }
    Ok(())
}

/// Step 2: the checkpoint a resume starts from (`None`: a fresh run).
fn resume_point(resume: &Resume, ckpt_root: &Path) -> Result<Option<PathBuf>> {
    Ok(match resume {
        Resume::No => None,
        Resume::Latest | Resume::LatestOrFresh => match checkpoint::latest_valid(ckpt_root) {
            Some((d, _)) => Some(d),
            None if *resume == Resume::LatestOrFresh => None,
            None => {
                return Err(Error::Invalid(format!(
                    "{}: --resume found no checkpoint that verifies; start fresh with --resume-or-fresh (or without --resume)",
                    ckpt_root.display()
                )))
            }
        },
        Resume::Path(p) => Some(p.clone()),
    })
}

/// Step 3 of a fresh run: refuse a directory holding an earlier run unless `force`, in which
/// case rank 0 deletes its outputs (after every rank has seen the directory as it was).
///
/// `interrupted_ok` (`--resume-or-fresh`): an earlier run that was stopped before its first
/// checkpoint left a `metrics.jsonl` and nothing to resume from. Its files are kept beside
/// the new run as `<name>.interrupted-<n>` and the run starts fresh, so that a job script
/// re-submitted until done is not stuck on it. A non-empty `checkpoints/` (even one that does
/// not verify) is never moved or deleted without `force`.
fn clear_for_fresh_run(
    run_dir: &Path,
    ckpt_root: &Path,
    force: bool,
    interrupted_ok: bool,
    group: Option<&crate::distributed::ProcessGroup>,
    lead: bool,
) -> Result<()> {
    let found = earlier_outputs(run_dir);
    if interrupted_ok && !force && !found.is_empty() && !found.iter().any(|f| f == "checkpoints/") {
        if let Some(g) = group {
            g.barrier()?;
        }
        if lead {
            let n = (1..).find(|n| !run_dir.join(format!("metrics.jsonl.interrupted-{n}")).exists()).unwrap_or(1);
            for f in ["metrics.jsonl", "skipped.tsv", "init.json"] {
                let p = run_dir.join(f);
                if p.exists() {
                    let to = run_dir.join(format!("{f}.interrupted-{n}"));
                    std::fs::rename(&p, &to).map_err(|e| Error::io(&p, e))?;
                }
            }
            eprintln!(
                "note: {}: an earlier run stopped before its first checkpoint; its metrics are kept as metrics.jsonl.interrupted-{n} and the run starts fresh",
                run_dir.display()
            );
        }
        return Ok(());
    }
    if !found.is_empty() && !force {
        return Err(Error::Invalid(format!(
            "{}: holds an earlier run ({}); resume it with --resume, or pass --force to delete it and start fresh",
            run_dir.display(),
            found.join(", ")
        )));
    }
    if let Some(g) = group {
        // Every rank has seen the run directory as it was before rank 0 clears it.
        g.barrier()?;
    }
    if force && lead {
        for f in ["metrics.jsonl", "skipped.tsv", "init.json"] {
            let p = run_dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        for dir in checkpoint::list(ckpt_root) {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    Ok(())
}

/// Step 3 of a resume: weights and optimizer state from `dir`, after checking that the
/// checkpoint belongs to this run (model, freeze list, pairs per step, step range).
fn restore(
    dir: &Path,
    cfg: &ModelConfig,
    vs: &nn::VarStore,
    opt: &mut AdamW,
    frozen: &std::collections::BTreeSet<String>,
    tc: &TrainConfig,
    world: usize,
) -> Result<Meta> {
    let global_bs = tc.batch_size * world;
    let meta = checkpoint::verify(dir)?;
    if &meta.model != cfg {
        return Err(Error::Invalid(format!(
            "{}: checkpoint was trained with model {:?}, config asks for {:?}",
            dir.display(),
            meta.model.name,
            cfg.name
        )));
    }
    checkpoint::load_model(dir, vs)?;
    let optim_path = dir.join("optim.safetensors");
    if !optim_path.exists() {
        return Err(Error::Invalid(format!(
            "{}: no optimizer state to resume (an imported checkpoint has none, and a run with keep_optimizer = N keeps it only in its newest N checkpoints); to train from its weights, start a fresh run with --init {} (config: [init] from = ...)",
            dir.display(),
            dir.display()
        )));
    }
    let optim = Tensor::read_safetensors(&optim_path).map_err(|e| Error::Invalid(format!("{}: {e}", optim_path.display())))?;
    checkpoint::check_finite(&optim_path.display().to_string(), optim.iter().map(|(n, t)| (n.as_str(), t)))?;
    if let Some(n) = optim.iter().map(|(n, _)| n).find(|n| n.strip_prefix("m.").is_some_and(|p| frozen.contains(p))) {
        return Err(Error::Invalid(format!(
            "{}: holds optimizer state for {}, which this run freezes; a resume keeps the run's freeze list",
            optim_path.display(),
            &n[2..]
        )));
    }
    opt.load_state(optim, &optim_path.display().to_string())?;
    if meta.step > 0 && meta.samples_seen != meta.step as u64 * global_bs as u64 {
        return Err(Error::Invalid(format!(
            "{}: checkpoint was trained with {} pairs per step (samples_seen {} / step {}); this run's step has world {world} × batch_size {} = {global_bs}. A resume may change the world size, but world × batch_size must stay equal",
            dir.display(),
            meta.samples_seen / meta.step as u64,
            meta.samples_seen,
            meta.step,
            tc.batch_size
        )));
    }
    if meta.step > tc.steps {
        return Err(Error::Invalid(format!("{}: checkpoint is at step {}, past the run's steps = {}", dir.display(), meta.step, tc.steps)));
    }
    Ok(meta)
}

/// Step 4: the pairs, by the data spec (tensors, shards, a manifest) or the synthetic world;
/// each must hold at least one global batch `bs`.
fn open_source(tc: &TrainConfig, cfg: &ModelConfig, bs: usize) -> Result<Arc<dyn PairSource>> {
    let size = cfg.vision.image_size as u32;
    Ok(match tc.data.as_deref().map(crate::data::DataSpec::parse).transpose()? {
        Some(crate::data::DataSpec::Tensors(path)) => {
            let tp = crate::data::tensors::TensorPairs::read(&path)?;
            tp.check_fits(&path, size as usize, cfg.text.context_length as usize, cfg.text.vocab_size)?;
            if tc.augment_scale.is_some() {
                return Err(Error::config(
                    "augment_scale",
                    "set",
                    format!("{}: pre-processed tensors are used as they are; remove augment_scale", path.display()),
                ));
            }
            if tp.n < bs {
                return Err(Error::Invalid(format!("{}: {} pairs, fewer than the step's batch {bs}", path.display(), tp.n)));
            }
            Arc::new(tp)
        }
        Some(crate::data::DataSpec::Shards(spec)) => {
            let src = ShardSource::open(&spec)?;
            if src.len() < bs {
                return Err(Error::Invalid(format!("{spec}: {} pairs, fewer than the step's batch {bs}", src.len())));
            }
            Arc::new(src)
        }
        Some(crate::data::DataSpec::Manifest(path)) => {
            let mut fmt = ManifestFormat::for_path(&path);
            fmt.img_key = tc.csv_img_key.clone();
            fmt.caption_key = tc.csv_caption_key.clone();
            let pairs = manifest::read(&path, &fmt)?;
            if pairs.len() < bs {
                return Err(Error::Invalid(format!("{}: {} pairs, fewer than the step's batch {bs}", path.display(), pairs.len())));
            }
            Arc::new(ManifestSource { pairs })
        }
        None => Arc::new(SyntheticSource { seed: tc.seed, n: tc.data_items, size, world: tc.world }),
    })
}

/// The update of one step: clip the gradient norm to `clip`, AdamW at `lr`; returns the norm
/// before clipping.
fn update(opt: &mut AdamW, clip: f64, lr: f64) -> Result<f64> {
    let n = opt.clip_grad_norm(clip);
    opt.step(lr)?;
    Ok(n)
}

/// [`update`] under dynamic loss scaling: unscale; on inf/NaN gradients skip the update and
/// halve the scale (the norm is then NaN); double it after 2,000 good steps in a row.
fn scaled_update(opt: &mut AdamW, clip: f64, lr: f64, loss_scale: &mut f64, good_steps: &mut u64) -> Result<f64> {
    let finite = opt.unscale_grads(1.0 / *loss_scale);
    *good_steps = if finite { *good_steps + 1 } else { 0 };
    if !finite {
        *loss_scale /= 2.0;
        return Ok(f64::NAN);
    }
    if (*good_steps).is_multiple_of(2000) {
        *loss_scale *= 2.0;
    }
    update(opt, clip, lr)
}

/// The metadata of the checkpoint saved after step `done` (`bs` pairs per step over a source
/// of `n` pairs).
fn step_meta(
    cfg: &ModelConfig,
    tc: &TrainConfig,
    done: i64,
    bs: u64,
    n: u64,
    train_toml: &str,
    init: Option<checkpoint::InitRecord>,
) -> Meta {
    Meta {
        tool_version: crate::VERSION.into(),
        model: cfg.clone(),
        step: done,
        epoch: (done as u64 * bs) / n,
        samples_seen: done as u64 * bs,
        data_cursor: (done as u64 * bs) % n,
        seed: tc.seed,
        train_config: train_toml.to_string(),
        sha256: Default::default(),
        init,
    }
}

/// Trains one run per seed into `out/seed-<s>` (a group, as recipes name it with
/// `runs = ["OUT/seed-{seed}"]`), each a full [`train`] with `tc.seed = s`; `report` gets each
/// seed's last evaluation. A duplicated seed, or `--resume PATH` (which names one run), is an
/// error before anything trains.
pub fn train_seeds(
    tc: &TrainConfig,
    seeds: &[u64],
    out: &Path,
    opts: &TrainOptions,
    mut report: impl FnMut(u64, &EvalResult),
) -> Result<()> {
    if matches!(opts.resume, Resume::Path(_)) {
        return Err(Error::Invalid(
            "--seeds with --resume PATH: resume a group with --resume (latest of each seed) or --resume-or-fresh".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(s) = seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(Error::config("--seeds", s, "each seed once"));
    }
    for &seed in seeds {
        let tc = TrainConfig { seed, ..tc.clone() };
        let dir = out.join(format!("seed-{seed}"));
        eprintln!("seed {seed} → {}", dir.display());
        let outcome = train(&tc, &dir, opts)?;
        if let Some(e) = &outcome.last_eval {
            report(seed, e);
        }
    }
    Ok(())
}

/// The variables in name order: collectives must see the same tensors in the same order on
/// every rank (a VarStore's HashMap order differs from process to process).
fn named_in_order(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Exchanges a fingerprint of the run (model config, per-rank batch, loss mode, steps,
/// precision, accumulation, seed, init and freeze) with one all-gather and fails on every rank,
/// naming each disagreement with every rank's value, when the ranks were started differently
/// (otherwise Gloo aborts one rank mid-collective, or the run goes on with a wrong global
/// batch).
fn agree_across_ranks(g: &crate::distributed::ProcessGroup, tc: &TrainConfig, cfg: &ModelConfig) -> Result<()> {
    let h = |s: &str| {
        let d = crate::io::sha256_hex(s.as_bytes());
        i64::from_str_radix(&d[..15], 16).unwrap_or(0)
    };
    let items: [(&str, i64); 8] = [
        ("model config (hash)", h(&cfg.to_toml())),
        ("batch_size (per rank)", tc.batch_size as i64),
        ("local_loss", tc.local_loss as i64),
        ("steps", tc.steps),
        ("precision", h(&format!("{:?}", tc.precision))),
        ("accum_freq", tc.accum_freq as i64),
        ("seed", tc.seed as i64),
        ("init and freeze (hash)", h(&format!("{:?}{:?}", tc.init, tc.freeze))),
    ];
    let mine: Vec<i64> = items.iter().map(|(_, v)| *v).collect();
    let all = g.all_gather(&Tensor::from_slice(&mine).to_device(g.device))?;
    let all = Vec::<i64>::try_from(&all.to_device(Device::Cpu)).map_err(Error::Torch)?;
    let k = items.len();
    let mut differ = Vec::new();
    for (j, (name, _)) in items.iter().enumerate() {
        let values: Vec<i64> = (0..g.world).map(|r| all[r * k + j]).collect();
        if values.iter().any(|v| *v != values[0]) {
            let shown: Vec<String> = values.iter().enumerate().map(|(r, v)| format!("rank {r}: {v}")).collect();
            differ.push(format!("{name} ({})", shown.join(", ")));
        }
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::Distributed(format!(
            "rank {} of {}: the ranks were started with different configurations: {}; start every rank with the same config and flags",
            g.rank,
            g.world,
            differ.join("; ")
        )))
    }
}

/// Whether step `done` prints a progress line (every 10 steps and the last).
fn is_report_step(done: i64, steps: i64) -> bool {
    done % 10 == 0 || done == steps
}

/// Runs `f`, adding its wall time to `acc` (the seconds a step spends in collectives).
fn timed<T>(acc: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *acc += t.elapsed().as_secs_f64();
    out
}

/// Averages BatchNorm running statistics (every floating-point buffer) over the ranks, so all
/// ranks and the checkpoint hold the same buffers: with per-rank batch statistics each rank's
/// running mean moves towards its own batch, and their mean moves towards the mean of the
/// per-rank statistics.
fn average_buffers(g: &crate::distributed::ProcessGroup, vs: &nn::VarStore, names: &std::collections::BTreeSet<String>) -> Result<()> {
    // Buffers by name (frozen parameters also require no gradient, and stay as they are).
    let buffers: Vec<Tensor> =
        named_in_order(vs).into_iter().filter(|(n, t)| names.contains(n) && t.is_floating_point()).map(|(_, t)| t).collect();
    if buffers.is_empty() {
        return Ok(());
    }
    g.all_reduce_bucketed(&buffers, 25 << 20)?;
    tch::no_grad(|| {
        for b in &buffers {
            let _ = b.shallow_clone().g_div_scalar_(g.world as f64);
        }
    });
    Ok(())
}

/// How [`loss_and_backward_dist`] runs.
pub struct DistLoss<'a> {
    /// The ranks.
    pub group: &'a crate::distributed::ProcessGroup,
    /// Micro-batches per rank.
    pub accum: usize,
    /// Multiplier of the loss before back-propagation (mixed precision).
    pub loss_scale: f64,
    /// Each rank computes only its own rows of the loss (see [`TrainConfig::local_loss`]).
    pub local_loss: bool,
}

/// Contrastive loss of the global batch and this rank's share of its gradient (summed over
/// ranks by the caller's all-reduce, it is the one-process gradient). Returns the loss and the
/// seconds spent in collectives.
///
/// 1. Features of the rank's items: with gradient when `accum = 1` (the graph is kept), else
///    per micro-batch without gradient (BatchNorm buffers restored, as in
///    [`loss_and_backward`]).
/// 2. All-gather them: `I, T: [B, E]` in rank order, leaves that take gradients.
/// 3. The loss — `L = ½[CE(S) + CE(Sᵀ)]`, `S = e^t·I·Tᵀ` (every rank), or with `local_loss`
///    rank r's rows `L_r` with `Σ_r L_r = L` — back-propagated to `∂L/∂I`, `∂L/∂T` (summed over
///    ranks for `local_loss`: the reduce-scatter that an all-gather with gradient implies).
///    The temperature's gradient is taken once: rank 0's, for the full loss.
/// 4. This rank's rows of `∂L/∂I`, `∂L/∂T` are back-propagated through its encoders (per
///    micro-batch, re-embedded with gradient, when `accum > 1`).
pub fn loss_and_backward_dist(model: &MsClip, vs: &nn::VarStore, images: &Tensor, tokens: &Tensor, how: &DistLoss) -> Result<(f64, f64)> {
    let g = how.group;
    let (rank, k) = (g.rank as i64, how.accum as i64);
    let b = images.size()[0];
    let mut comm = 0.0;
    let embed = |x: &Tensor, t: &Tensor| -> Result<(Tensor, Tensor)> {
        let mut cache = crate::model::ActivationCache::new();
        Ok((model.encode_image_with(x, &Capture::none(), &mut cache, true)?, model.encode_text(t)?))
    };
    let (ims, tks) = (images.chunk(k, 0), tokens.chunk(k, 0));
    let (own, li, lt) = if k == 1 {
        let (fi, ft) = embed(images, tokens)?;
        let (li, lt) = (fi.detach().to_kind(tch::Kind::Float), ft.detach().to_kind(tch::Kind::Float));
        (Some((fi, ft)), li, lt)
    } else {
        let (ci, ct) = embed_without_grad(model, vs, &ims, &tks)?;
        (None, Tensor::cat(&ci, 0).to_kind(tch::Kind::Float), Tensor::cat(&ct, 0).to_kind(tch::Kind::Float))
    };
    let (gi, gt) = timed(&mut comm, || Ok::<_, Error>((g.all_gather(&li)?, g.all_gather(&lt)?)))?;
    let (gi, gt) = (gi.set_requires_grad(true), gt.set_requires_grad(true));
    let n = gi.size()[0];
    let value;
    if how.local_loss {
        let scale = model.logit_scale.exp();
        let rows = Tensor::arange_start(rank * b, (rank + 1) * b, (tch::Kind::Int64, gi.device()));
        let li_rows = gi.narrow(0, rank * b, b);
        let lt_rows = gt.narrow(0, rank * b, b);
        let logits_i = (li_rows.matmul(&gt.tr()) * &scale).to_kind(tch::Kind::Float);
        let logits_t = (lt_rows.matmul(&gi.tr()) * &scale).to_kind(tch::Kind::Float);
        let sum = |l: &Tensor| l.log_softmax(-1, tch::Kind::Float).gather(1, &rows.unsqueeze(1), false).sum(tch::Kind::Float).neg();
        let loss = (sum(&logits_i) + sum(&logits_t)) / (2 * n) as f64;
        let mine = loss.double_value(&[]);
        (loss * how.loss_scale).backward();
        value = timed(&mut comm, || g.sum_f64(mine))?;
    } else {
        let loss = clip_loss(&(gi.matmul(&gt.tr()) * model.logit_scale.exp()));
        value = loss.double_value(&[]);
        (loss * how.loss_scale).backward();
        if rank != 0 {
            // Every rank computed the same loss; its temperature gradient counts once. (Zeroed
            // rather than detached: every rank must hold the same set of gradients.)
            let _ = model.logit_scale.grad().zero_();
        }
    }
    if !value.is_finite() {
        return Ok((value, comm));
    }
    let mut grads = [gi.grad(), gt.grad()];
    if how.local_loss {
        timed(&mut comm, || g.all_reduce_sum(&mut grads))?;
    }
    let (di, dt) = (grads[0].narrow(0, rank * b, b), grads[1].narrow(0, rank * b, b));
    let vjp = |fi: &Tensor, ft: &Tensor, di: &Tensor, dt: &Tensor| {
        ((fi.to_kind(tch::Kind::Float) * di).sum(tch::Kind::Float) + (ft.to_kind(tch::Kind::Float) * dt).sum(tch::Kind::Float)).backward();
    };
    match own {
        Some((fi, ft)) => vjp(&fi, &ft, &di, &dt),
        None => {
            let m = b / k;
            for j in 0..k {
                let (fi, ft) = embed(&ims[j as usize], &tks[j as usize])?;
                vjp(&fi, &ft, &di.narrow(0, j * m, m), &dt.narrow(0, j * m, m));
            }
        }
    }
    Ok((value, comm))
}

/// Clamps the raw temperature to `[0, ln 100]` in place, as OpenCLIP does after every step
/// (`logit_scale.clamp_(0, math.log(100))`): the scale stays within `[1, 100]`.
pub fn clamp_logit_scale(model: &MsClip) {
    tch::no_grad(|| {
        let _ = model.logit_scale.shallow_clone().clamp_(0.0, MAX_LOGIT_SCALE.ln());
    });
}

/// The image and text features of every micro-batch, without gradient (the cache of gradient
/// accumulation). BatchNorm running statistics are restored afterwards, so the re-embedding
/// with gradient updates them once per micro-batch, as without caching.
fn embed_without_grad(model: &MsClip, vs: &nn::VarStore, ims: &[Tensor], tks: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let buffers: Vec<(Tensor, Tensor)> = vs.variables().into_values().filter(|t| !t.requires_grad()).map(|t| (t.copy(), t)).collect();
    let features = tch::no_grad(|| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut cache = crate::model::ActivationCache::new();
        let ci = ims.iter().map(|x| model.encode_image_with(x, &Capture::none(), &mut cache, true)).collect::<Result<Vec<_>>>()?;
        let ct = tks.iter().map(|t| model.encode_text(t)).collect::<Result<Vec<_>>>()?;
        Ok((ci, ct))
    })?;
    tch::no_grad(|| {
        for (saved, mut live) in buffers {
            live.copy_(&saved);
        }
    });
    Ok(features)
}

/// Computes the contrastive loss of the batch and accumulates its gradient.
///
/// With `accum > 1` (OpenCLIP PR #267's method): embed all micro-batches without gradient,
/// then for each micro-batch j re-embed it with gradient, splice it into the cached features
/// and back-propagate the *full-batch* loss. Σ_j of these gradients equals the gradient of one
/// big batch for every encoder weight; the temperature's gradient is taken once (it is
/// detached for j > 0). BatchNorm running statistics are restored after the no-grad pass so
/// they are updated once per micro-batch, as without caching. The loss is multiplied by
/// `loss_scale` before back-propagation (1 except under mixed precision).
pub fn loss_and_backward(
    model: &MsClip,
    vs: &nn::VarStore,
    images: &Tensor,
    tokens: &Tensor,
    accum: usize,
    loss_scale: f64,
) -> Result<f64> {
    if accum <= 1 {
        let out = model.forward(images, tokens, &Capture::none(), true)?;
        let loss = clip_loss(&out.logits_per_image);
        let v = loss.double_value(&[]);
        if v.is_finite() {
            (loss * loss_scale).backward();
        }
        return Ok(v);
    }
    let ims = images.chunk(accum as i64, 0);
    let tks = tokens.chunk(accum as i64, 0);
    let (ci, ct) = embed_without_grad(model, vs, &ims, &tks)?;
    let mut value = f64::NAN;
    for j in 0..accum {
        let mut cache = crate::model::ActivationCache::new();
        let fi = model.encode_image_with(&ims[j], &Capture::none(), &mut cache, true)?;
        let ft = model.encode_text(&tks[j])?;
        let all_i: Vec<Tensor> = (0..accum).map(|k| if k == j { fi.shallow_clone() } else { ci[k].shallow_clone() }).collect();
        let all_t: Vec<Tensor> = (0..accum).map(|k| if k == j { ft.shallow_clone() } else { ct[k].shallow_clone() }).collect();
        let scale = if j == 0 { model.logit_scale.exp() } else { model.logit_scale.exp().detach() };
        let logits = Tensor::cat(&all_i, 0).matmul(&Tensor::cat(&all_t, 0).tr()) * scale;
        let loss = clip_loss(&logits);
        value = loss.double_value(&[]);
        if !value.is_finite() {
            return Ok(value);
        }
        (loss * loss_scale).backward();
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenCLIP's clamp: the raw temperature stays in [0, ln 100] (scale in [1, 100]).
    #[test]
    fn logit_scale_is_clamped_on_both_sides() {
        let cfg = ModelConfig::preset("tiny-clip").unwrap();
        let (_vs, model) = MsClip::build(&cfg, Device::Cpu, 0);
        for (raw, want) in [(10.0, 100f64.ln()), (-1.0, 0.0), (2.5, 2.5), (100f64.ln(), 100f64.ln())] {
            tch::no_grad(|| {
                let _ = model.logit_scale.shallow_clone().fill_(raw);
            });
            clamp_logit_scale(&model);
            let got = model.logit_scale.double_value(&[]);
            assert!((got - want).abs() < 1e-6, "{raw}: {got} vs {want}");
        }
    }

    #[test]
    fn train_config_domains_name_the_key() {
        let ok = TrainConfig::default();
        ok.validate().unwrap();
        let cases: Vec<(TrainConfig, &str)> = vec![
            (TrainConfig { optimizer: AdamWConfig { beta1: 1.0, ..Default::default() }, ..ok.clone() }, "optimizer.beta1"),
            (TrainConfig { optimizer: AdamWConfig { beta2: -0.1, ..Default::default() }, ..ok.clone() }, "optimizer.beta2"),
            (TrainConfig { optimizer: AdamWConfig { eps: 0.0, ..Default::default() }, ..ok.clone() }, "optimizer.eps"),
            (
                TrainConfig { optimizer: AdamWConfig { weight_decay: f64::NAN, ..Default::default() }, ..ok.clone() },
                "optimizer.weight_decay",
            ),
            (TrainConfig { grad_clip: f64::INFINITY, ..ok.clone() }, "grad_clip"),
            (TrainConfig { grad_clip: -1.0, ..ok.clone() }, "grad_clip"),
            (TrainConfig { warmup_steps: -5, ..ok.clone() }, "warmup_steps"),
            (TrainConfig { eval_items: 0, eval_every: 10, ..ok.clone() }, "eval_items"),
            (TrainConfig { keep: 0, ..ok.clone() }, "keep"),
            (TrainConfig { workers: 0, ..ok.clone() }, "workers"),
            (TrainConfig { augment_scale: Some([0.0, 1.0]), ..ok.clone() }, "augment_scale"),
            (TrainConfig { augment_scale: Some([0.9, 0.5]), ..ok.clone() }, "augment_scale"),
            (TrainConfig { min_lr: 1.0, ..ok.clone() }, "min_lr"),
            (TrainConfig { batch_size: 1, ..ok.clone() }, "batch_size"),
            (TrainConfig { stop_after: Some(0), ..ok.clone() }, "stop_after"),
        ];
        for (tc, key) in cases {
            let err = tc.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        // An augment_scale of the wrong length is refused at parse time, not truncated.
        let text = "augment_scale = [0.5, 0.9, 1.0]\n".to_string() + &toml::to_string(&ok).unwrap();
        let err = toml::from_str::<TrainConfig>(&text).unwrap_err().to_string();
        assert!(err.contains("expected 2 values") && err.contains("augment_scale"), "{err}");
    }
}
