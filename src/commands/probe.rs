//! `probe`: a linear probe on frozen image features — multinomial logistic regression by
//! L-BFGS ([`sweep_and_fit`]), C swept on a validation split, refit on train+val, test top-1
//! and mean-per-class — on Fashion-MNIST or the synthetic world's 48 classes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{provenance, write_json};
use crate::analysis::npy;
use crate::analysis::probe::{sweep_and_fit, ProbeResult};
use crate::checkpoint::LoadedModel;
use crate::data::image::{resize_center_crop, to_tensor};
use crate::data::{idx, synthetic_set};
use crate::error::{Error, Result};
use crate::io::{write_atomic, Provenance};
use crate::model::{ActivationCache, Capture};

/// Which image features the probe sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// The pre-projection CLS after `ln_post` (OpenAI's probe choice).
    Pre,
    /// The projected, L2-normalised embedding (CLIP_benchmark's).
    Post,
}

impl Feature {
    /// `pre` or `post`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Pre => "pre",
            Feature::Post => "post",
        }
    }
}

/// The labelled images.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeData {
    /// A Fashion-MNIST folder with the IDX files (`msclip-data fetch fashion-mnist`).
    FashionMnist(PathBuf),
    /// The synthetic world's 48 colour × shape classes (single objects; splits from seeds
    /// 101/202/303).
    Synthetic,
}

/// Settings of a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOptions {
    /// The labelled images.
    pub data: ProbeData,
    /// Which features.
    pub feature: Feature,
    /// Train, validation and test sizes.
    pub splits: [usize; 3],
    /// Values of C (scikit-learn's inverse regularisation) to sweep.
    pub cs: Vec<f64>,
    /// Standardise each feature with the train split's mean and standard deviation.
    pub standardize: bool,
}

impl ProbeOptions {
    /// Errors on empty or non-positive C values and empty splits.
    pub fn validate(&self) -> Result<()> {
        if self.cs.is_empty() || self.cs.iter().any(|c| !(*c > 0.0 && c.is_finite())) {
            return Err(Error::config("c", format!("{:?}", self.cs), "values must be positive and finite"));
        }
        if self.splits[0] < 2 || self.splits[1] < 1 || self.splits[2] < 1 {
            return Err(Error::config("splits", format!("{:?}", self.splits), "need at least 2 train, 1 validation and 1 test item"));
        }
        Ok(())
    }
}

/// The fitted probe's report; `features` (the standardised train/val/test features and
/// labels actually fitted) is kept for side-by-side benchmarks.
#[derive(Debug, Serialize)]
pub struct ProbeOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// `pre` or `post`.
    pub feature: &'static str,
    /// Whether features were standardised.
    pub standardized: bool,
    /// The sweep and the test scores.
    pub result: ProbeResult,
    /// Seconds of sweep + refit.
    pub fit_seconds: f64,
    /// Seconds extracting features.
    #[serde(skip)]
    pub feature_seconds: f64,
    /// Feature width.
    #[serde(skip)]
    pub dim: i64,
    /// (features, labels) of train, validation and test, as fitted.
    #[serde(skip)]
    pub features: Option<[(Tensor, Vec<i64>); 3]>,
    /// Classes.
    #[serde(skip)]
    pub classes: i64,
    /// C values swept.
    #[serde(skip)]
    pub cs: Vec<f64>,
}

/// Images (normalised tensors) and labels of one split.
fn split(data: &ProbeData, which: &str, start: usize, n: usize, size: u32, mean: [f64; 3], std: [f64; 3]) -> Result<(Tensor, Vec<i64>)> {
    match data {
        ProbeData::FashionMnist(dir) => {
            let prefix = if which == "test" { "t10k" } else { "train" };
            let (dims, pixels) = idx::read(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
            let (_, labels) = idx::read(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
            if dims.len() != 3 {
                return Err(Error::Invalid(format!("{}: {prefix} images are not [n, h, w]", dir.display())));
            }
            let (h, w) = (dims[1], dims[2]);
            if start + n > dims[0] || start + n > labels.len() {
                return Err(Error::Invalid(format!(
                    "{}: {which} split asks for items {start}..{} of {}",
                    dir.display(),
                    start + n,
                    dims[0].min(labels.len())
                )));
            }
            let mut ts = Vec::with_capacity(n);
            for i in start..start + n {
                let g = &pixels[i * h * w..(i + 1) * h * w];
                let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let v = g[y as usize * w + x as usize];
                    image::Rgb([v, v, v])
                });
                let im = resize_center_crop(&rgb, size);
                ts.push(to_tensor(im.as_raw(), size, size, mean, std));
            }
            Ok((Tensor::stack(&ts, 0), labels[start..start + n].iter().map(|&l| l as i64).collect()))
        }
        ProbeData::Synthetic => {
            let seed = match which {
                "train" => 101,
                "val" => 202,
                _ => 303,
            };
            Ok(synthetic_set::zero_shot_set(seed, n, size, mean, std))
        }
    }
}

/// Extracts features, sweeps C and scores the test split.
pub fn run(model: &LoadedModel, opts: &ProbeOptions) -> Result<ProbeOutput> {
    opts.validate()?;
    let m = &model.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let (classes, data_id) = match &opts.data {
        ProbeData::FashionMnist(d) => (10, format!("fashion-mnist:{}", crate::io::sha256_file(&d.join("train-labels-idx1-ubyte.gz"))?)),
        ProbeData::Synthetic => (48, "synthetic-zeroshot-splits:101/202/303".to_string()),
    };
    let t0 = std::time::Instant::now();
    let featurize = |images: &Tensor| -> Result<Tensor> {
        tch::no_grad(|| {
            let mut parts = vec![];
            for chunk in images.split(256, 0) {
                parts.push(match opts.feature {
                    Feature::Post => m.encode_image(&chunk)?,
                    Feature::Pre => m.vision.forward_features(&chunk, &Capture::none(), &mut ActivationCache::new(), false)?,
                });
            }
            Ok(Tensor::cat(&parts, 0))
        })
    };
    let fashion = matches!(opts.data, ProbeData::FashionMnist(_));
    let [ntr, nva, nte] = opts.splits;
    let (xtr, ytr) = split(&opts.data, "train", 0, ntr, size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (xva, yva) = split(&opts.data, "val", if fashion { ntr } else { 0 }, nva, size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (xte, yte) = split(&opts.data, "test", 0, nte, size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (mut ftr, mut fva, mut fte) = (featurize(&xtr)?, featurize(&xva)?, featurize(&xte)?);
    if opts.standardize {
        // z = (x − μ_train) / σ_train per feature (σ floored at 1e-6 for constant features).
        let mu = ftr.mean_dim(0, true, Kind::Float);
        let sd = ftr.std_dim(0, false, true).clamp_min(1e-6);
        let z = |t: &Tensor| (t - &mu) / &sd;
        (ftr, fva, fte) = (z(&ftr), z(&fva), z(&fte));
    }
    let feature_seconds = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let result = sweep_and_fit((&ftr, &ytr), (&fva, &yva), (&fte, &yte), classes, &opts.cs)?;
    let fit_seconds = t1.elapsed().as_secs_f64();
    let mut provenance = provenance(model, data_id, 0);
    provenance
        .notes
        .push(format!("probe features: {}; multinomial logistic regression, L-BFGS, λ = 1/(C·n), bias unpenalised", opts.feature.name()));
    provenance.notes.push(if opts.standardize {
        "features standardised with the train split's per-feature mean and standard deviation".into()
    } else {
        "raw features (--no-standardize)".to_string()
    });
    Ok(ProbeOutput {
        provenance,
        feature: opts.feature.name(),
        standardized: opts.standardize,
        result,
        fit_seconds,
        feature_seconds,
        dim: ftr.size()[1],
        features: Some([(ftr, ytr), (fva, yva), (fte, yte)]),
        classes,
        cs: opts.cs.clone(),
    })
}

impl ProbeOutput {
    /// `dir/probe.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "probe.json", self)
    }

    /// The fitted features (`train.npy`, `val.npy`, `test.npy`) and `labels.json`.
    pub fn write_features(&self, dir: &Path) -> Result<()> {
        let Some([(ftr, ytr), (fva, yva), (fte, yte)]) = &self.features else { return Ok(()) };
        npy::write_f32(&dir.join("train.npy"), ftr)?;
        npy::write_f32(&dir.join("val.npy"), fva)?;
        npy::write_f32(&dir.join("test.npy"), fte)?;
        let j = serde_json::json!({"train": ytr, "val": yva, "test": yte, "classes": self.classes, "c": self.cs});
        write_atomic(&dir.join("labels.json"), j.to_string().as_bytes())
    }
}
