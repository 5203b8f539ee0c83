//! `zeroshot`: prompt-ensemble zero-shot classification (mean of the L2-normalised prompt
//! embeddings per class, renormalised; logits = 100 · image · W, the official evaluation's
//! fixed scale): top-1, top-5 and mean-per-class accuracy on an ImageFolder tree or on the
//! synthetic world's 48 colour × shape classes.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;

use super::{provenance, write_json};
use crate::analysis::embedding::{accuracies, prompt_ensemble, topk_accuracy};
use crate::checkpoint::LoadedModel;
use crate::data::image::{load_rgb, resize_center_crop, to_tensor};
use crate::data::{shards, synthetic_set};
use crate::error::{Error, Result};
use crate::io::Provenance;
use crate::model::MsClip;
use crate::tokenizer::Tokenizer;

/// The images to classify.
#[derive(Debug, Clone, PartialEq)]
pub enum ZeroshotData {
    /// An ImageFolder root (one sub-folder per class; folder names, `_` → space, are the
    /// class names).
    Folder(PathBuf),
    /// N held-out single-object synthetic images over the 48 colour × shape classes.
    Synthetic(usize),
}

/// Reads a templates file: one template per non-empty line, each with `{}` for the class.
pub fn read_templates(path: &Path) -> Result<Vec<String>> {
    let t: Vec<String> = std::fs::read_to_string(path)
        .map_err(|e| Error::io(path, e))?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if let Some((i, bad)) = t.iter().enumerate().find(|(_, l)| !l.contains("{}")) {
        return Err(Error::Parse { path: path.to_path_buf(), message: format!("line {}: template {bad:?} has no {{}}", i + 1) });
    }
    if t.is_empty() {
        return Err(Error::Parse { path: path.to_path_buf(), message: "no templates (every line is empty)".into() });
    }
    Ok(t)
}

/// The synthetic world's templates.
pub fn default_templates() -> Vec<String> {
    synthetic_set::TEMPLATES.iter().map(|s| s.to_string()).collect()
}

/// Zero-shot results.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroshotOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// Images classified.
    pub n: i64,
    /// Class names.
    pub classes: Vec<String>,
    /// Prompt templates.
    pub templates: Vec<String>,
    /// Top-1 accuracy.
    pub top1: f64,
    /// Top-k with k = min(5, classes).
    pub top5: f64,
    /// Mean over classes of each class's accuracy.
    pub mean_per_class: f64,
    /// The model's name.
    #[serde(skip)]
    pub model_name: String,
}

/// Classifies the images of `data` with the prompt ensemble of `templates`.
pub fn run(model: &LoadedModel, data: &ZeroshotData, templates: &[String], batch: usize) -> Result<ZeroshotOutput> {
    if templates.is_empty() || batch == 0 {
        return Err(Error::Invalid("zero-shot needs at least one template and a positive batch".into()));
    }
    let m = &model.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let (images, labels, classes, data_id) = match data {
        ZeroshotData::Folder(root) => {
            let (paths, labels, classes) = shards::image_folder(root)?;
            let mut ts = Vec::new();
            for p in &paths {
                let im = resize_center_crop(&load_rgb(p)?, size);
                ts.push(to_tensor(im.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std));
            }
            if ts.is_empty() {
                return Err(Error::Invalid(format!("{}: no images", root.display())));
            }
            (
                Tensor::stack(&ts, 0),
                labels,
                classes.iter().map(|c| c.replace('_', " ")).collect::<Vec<_>>(),
                format!("folder:{}", root.display()),
            )
        }
        ZeroshotData::Synthetic(n) => {
            if *n == 0 {
                return Err(Error::config("synthetic", 0, "need at least one image"));
            }
            let (im, l) = synthetic_set::zero_shot_set(0, *n, size, cfg.preprocess.mean, cfg.preprocess.std);
            (im, l, synthetic_set::zero_shot_classes(), format!("synthetic-zeroshot:seed=0:n={n}"))
        }
    };
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let prompts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{}", c))).collect();
    let (logits, n) = tch::no_grad(|| -> Result<(Tensor, i64)> {
        let mut pe = Vec::new();
        for chunk in prompts.chunks(256) {
            pe.push(m.encode_text(&tok.tokenize_batch(chunk))?);
        }
        let w = prompt_ensemble(&Tensor::cat(&pe, 0).view([classes.len() as i64, templates.len() as i64, -1]));
        let mut ie = Vec::new();
        for chunk in images.split(batch as i64, 0) {
            ie.push(m.encode_image(&chunk)?);
        }
        Ok((MsClip::zero_shot_logits(&Tensor::cat(&ie, 0), &w), images.size()[0]))
    })?;
    let top5 = topk_accuracy(&logits, &labels, 5.min(classes.len() as i64));
    let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).expect("int64 predictions");
    let (top1, mean_per_class) = accuracies(&pred, &labels, classes.len() as i64);
    let mut provenance = provenance(model, data_id, 0);
    provenance.notes.push("classifier: mean of L2-normalised prompt embeddings per class, renormalised; logits = 100 · image · W".into());
    Ok(ZeroshotOutput { provenance, n, classes, templates: templates.to_vec(), top1, top5, mean_per_class, model_name: cfg.name.clone() })
}

impl ZeroshotOutput {
    /// `dir/zeroshot.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "zeroshot.json", self)
    }
}
