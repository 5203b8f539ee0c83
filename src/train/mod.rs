//! Contrastive training with exact resume and per-step telemetry.

pub mod loss;
pub mod optim;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::analysis::embedding::{centroid_gap, prompt_ensemble, recall_at_k, topk_accuracy};
use crate::checkpoint::{self, Meta};
use crate::data::synthetic_set::{self, EVAL_SEED_OFFSET, TEMPLATES};
use crate::error::{Error, Result};
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
    /// Synthetic world size (items per epoch) and its seed.
    pub data_items: usize,
    pub steps: i64,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: i64,
    /// Clip the global gradient norm (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    pub save_every: i64,
    pub keep: usize,
    pub eval_every: i64,
    /// Held-out images for zero-shot and pairs for retrieval at each evaluation.
    pub eval_items: usize,
    #[serde(default)]
    pub optimizer: AdamWConfig,
    /// Stop after this many steps (checkpointing there) while the schedule still spans
    /// `steps`: for time-limited jobs that resume later.
    #[serde(default)]
    pub stop_after: Option<i64>,
}

impl TrainConfig {
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    pub fn model_config(&self) -> Result<ModelConfig> {
        if self.model.ends_with(".toml") {
            ModelConfig::from_toml_file(Path::new(&self.model))
        } else {
            ModelConfig::preset(&self.model)
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::config("batch_size", self.batch_size, "contrastive training needs at least 2"));
        }
        if self.data_items < self.batch_size {
            return Err(Error::config("data_items", self.data_items, "must be at least batch_size"));
        }
        if self.steps < 1 {
            return Err(Error::config("steps", self.steps, "must be positive"));
        }
        if !(self.lr > 0.0) {
            return Err(Error::config("lr", self.lr, "must be positive"));
        }
        Ok(())
    }
}

/// Results of one evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    pub zero_shot_top1: f64,
    pub zero_shot_top5: f64,
    pub image_to_text_r1: f64,
    pub text_to_image_r1: f64,
    pub modality_gap: f64,
    pub n_zero_shot: usize,
    pub n_pairs: usize,
}

/// Evaluation on held-out synthetic data: zero-shot over the 48 colour × shape classes
/// (prompt ensemble, ×100 logits), retrieval R@1 both ways, centroid modality gap.
pub fn evaluate(model: &MsClip, seed: u64, n: usize) -> Result<EvalResult> {
    let cfg = &model.config;
    let size = cfg.vision.image_size as u32;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    tch::no_grad(|| {
        let classes = synthetic_set::zero_shot_classes();
        let prompts: Vec<String> =
            classes.iter().flat_map(|c| TEMPLATES.iter().map(move |t| t.replace("{}", c))).collect();
        let pe = model.encode_text(&tok.tokenize_batch(&prompts))?.view([classes.len() as i64, TEMPLATES.len() as i64, -1]);
        let w = prompt_ensemble(&pe);
        let (images, labels) = synthetic_set::zero_shot_set(seed, n, size, cfg.preprocess.mean, cfg.preprocess.std);
        let mut img = Vec::new();
        for chunk in images.split(256, 0) {
            img.push(model.encode_image(&chunk)?);
        }
        let logits = MsClip::zero_shot_logits(&Tensor::cat(&img, 0), &w);
        let indices: Vec<usize> = (0..n).collect();
        let (pi, pt, _) = synthetic_set::batch(seed ^ EVAL_SEED_OFFSET, &indices, size, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let (mut ie, mut te) = (Vec::new(), Vec::new());
        for (ci, ct) in pi.split(256, 0).iter().zip(pt.split(256, 0).iter()) {
            ie.push(model.encode_image(ci)?);
            te.push(model.encode_text(ct)?);
        }
        let (ie, te) = (Tensor::cat(&ie, 0), Tensor::cat(&te, 0));
        let sim = ie.matmul(&te.tr());
        Ok(EvalResult {
            zero_shot_top1: topk_accuracy(&logits, &labels, 1),
            zero_shot_top5: topk_accuracy(&logits, &labels, 5),
            image_to_text_r1: recall_at_k(&sim, 1),
            text_to_image_r1: recall_at_k(&sim.tr(), 1),
            modality_gap: centroid_gap(&ie, &te),
            n_zero_shot: n,
            n_pairs: n,
        })
    })
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: i64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub logit_scale: f64,
    pub grad_norm: f64,
    pub samples_per_s: f64,
    pub data_wait_frac: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalResult>,
}

/// Where training starts from.
pub enum Resume {
    No,
    /// The newest valid checkpoint of the run directory.
    Latest,
    Path(PathBuf),
}

/// Outcome of [`train`].
pub struct TrainOutcome {
    pub final_step: i64,
    pub last_checkpoint: Option<PathBuf>,
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
/// `run_dir/metrics.jsonl`). `progress` prints a status line every few steps.
pub fn train(tc: &TrainConfig, run_dir: &Path, resume: Resume, device: Device, progress: bool) -> Result<TrainOutcome> {
    tc.validate()?;
    let cfg = tc.model_config()?;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let ckpt_root = run_dir.join("checkpoints");
    let (vs, model) = MsClip::build(&cfg, device, tc.seed as i64);
    let mut opt = AdamW::new(&vs, tc.optimizer.clone());
    let mut start = 0i64;
    let from = match resume {
        Resume::No => None,
        Resume::Latest => checkpoint::latest_valid(&ckpt_root).map(|(d, _)| d),
        Resume::Path(p) => Some(p),
    };
    if let Some(dir) = &from {
        let meta = checkpoint::verify(dir)?;
        if meta.model != cfg {
            return Err(Error::Invalid(format!("{}: checkpoint was trained with model {:?}, config asks for {:?}", dir.display(), meta.model.name, cfg.name)));
        }
        checkpoint::load_model(dir, &vs)?;
        let optim_path = dir.join("optim.safetensors");
        opt.load_state(Tensor::read_safetensors(&optim_path)?, &optim_path.display().to_string())?;
        start = meta.step;
        eprintln!("resumed from {} (step {start})", dir.display());
    }
    let train_toml = toml::to_string(tc).expect("train config serialises");
    crate::io::write_atomic(&run_dir.join("train.toml"), train_toml.as_bytes())?;
    let mut metrics = open_metrics(&run_dir.join("metrics.jsonl"), start)?;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let size = cfg.vision.image_size as u32;
    let n = tc.data_items;
    let bs = tc.batch_size;
    let mut last_checkpoint = None;
    let mut last_eval = None;
    let mut order_cache: Option<(u64, Vec<usize>)> = None;
    let t_run = Instant::now();
    let end = tc.stop_after.map_or(tc.steps, |s| s.clamp(start, tc.steps));
    for step in start..end {
        let t0 = Instant::now();
        // Data cursor derived from the step: exact resume needs nothing else.
        let first = step as u64 * bs as u64;
        let mut indices = Vec::with_capacity(bs);
        let mut epoch = first / n as u64;
        for k in 0..bs as u64 {
            let pos = first + k;
            let e = pos / n as u64;
            if order_cache.as_ref().is_none_or(|(oe, _)| *oe != e) {
                order_cache = Some((e, synthetic_set::epoch_order(n, tc.seed, e)));
            }
            indices.push(order_cache.as_ref().unwrap().1[(pos % n as u64) as usize]);
            epoch = e;
        }
        let (images, tokens, _) = synthetic_set::batch(tc.seed, &indices, size, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let (images, tokens) = (images.to_device(device), tokens.to_device(device));
        let data_time = t0.elapsed().as_secs_f64();
        let out = model.forward(&images, &tokens, &Capture::none(), true)?;
        let loss = clip_loss(&out.logits_per_image);
        let loss_v = loss.double_value(&[]);
        if !loss_v.is_finite() {
            return Err(Error::Invalid(format!(
                "loss is {loss_v} at step {}; stopping. The last good checkpoint stays intact in {}",
                step + 1,
                ckpt_root.display()
            )));
        }
        opt.zero_grad();
        loss.backward();
        let grad_norm = opt.clip_grad_norm(tc.grad_clip);
        let lr = cosine_lr(step, tc.steps, tc.warmup_steps, tc.lr, tc.min_lr);
        opt.step(lr);
        tch::no_grad(|| {
            let _ = model.logit_scale.shallow_clone().clamp_(f64::NEG_INFINITY, MAX_LOGIT_SCALE.ln());
        });
        let done = step + 1;
        let elapsed = t0.elapsed().as_secs_f64();
        let eval = if tc.eval_every > 0 && (done % tc.eval_every == 0 || done == tc.steps) {
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
            samples_per_s: bs as f64 / elapsed,
            data_wait_frac: data_time / elapsed,
            eval,
        };
        writeln!(metrics, "{}", serde_json::to_string(&m).unwrap()).map_err(|e| Error::io(run_dir.join("metrics.jsonl"), e))?;
        metrics.flush().map_err(|e| Error::io(run_dir.join("metrics.jsonl"), e))?;
        if progress && (done % 10 == 0 || done == tc.steps) {
            let rate = (done - start) as f64 / t_run.elapsed().as_secs_f64();
            let eta = (tc.steps - done) as f64 / rate.max(1e-9);
            eprintln!("step {done}/{} loss {loss_v:.4} lr {lr:.2e} scale {:.2} {:.1} samples/s eta {eta:.0}s", tc.steps, m.logit_scale, m.samples_per_s);
        }
        if (tc.save_every > 0 && done % tc.save_every == 0) || done == end {
            let finite = vs.trainable_variables().iter().all(|t| t.isfinite().all().int64_value(&[]) == 1);
            if !finite {
                return Err(Error::Invalid(format!("non-finite weights after step {done}; not saving")));
            }
            let meta = Meta {
                tool_version: crate::VERSION.into(),
                model: cfg.clone(),
                step: done,
                epoch: (done as u64 * bs as u64) / n as u64,
                samples_seen: done as u64 * bs as u64,
                data_cursor: (done as u64 * bs as u64) % n as u64,
                seed: tc.seed,
                train_config: train_toml.clone(),
                sha256: Default::default(),
            };
            last_checkpoint = Some(checkpoint::save(&ckpt_root, &vs, &opt.state(), meta)?);
            checkpoint::prune(&ckpt_root, tc.keep)?;
        }
    }
    Ok(TrainOutcome { final_step: end, last_checkpoint, last_eval })
}

/// Loads a model from a checkpoint directory (config from its `meta.json`).
pub fn load_checkpoint(dir: &Path, device: Device) -> Result<(nn::VarStore, MsClip, Meta)> {
    let meta = checkpoint::verify(dir)?;
    let (vs, model) = MsClip::build(&meta.model, device, 0);
    checkpoint::load_model(dir, &vs)?;
    Ok((vs, model, meta))
}
