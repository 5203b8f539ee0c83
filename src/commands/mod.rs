//! The toolkit's commands as library functions: each takes typed options (a model, data and
//! settings) and returns a typed, serde-serialisable report; writing its files (CSV, JSON,
//! PNG, SVG) is a separate `write` step that takes the report. The binaries in `src/bin/`
//! only parse arguments, call these, write or print the reports and map errors to exit codes.
//!
//! ```no_run
//! use msclip::checkpoint::ModelSource;
//! use msclip::commands::{gap, DataOptions};
//! use msclip::data::pairs::PairData;
//!
//! let model = ModelSource::Checkpoint("fixtures/check/ckpt".into()).load(0)?;
//! let data = DataOptions::new(PairData::Manifest("fixtures/check/data/manifest.tsv".into()));
//! let report = gap::run(&model, &data, gap::DEFAULT_UNIFORMITY_MAX)?;
//! println!("centroid gap {:.4}", report.gap.centroid_gap);
//! report.write(std::path::Path::new("out/"))?;
//! # Ok::<(), msclip::Error>(())
//! ```

pub mod ablate;
pub mod attention;
pub mod check;
pub mod decompose;
pub mod docs;
pub mod embed;
pub mod eval;
pub mod explore;
pub mod figures;
pub mod gap;
pub mod heads;
pub mod nmi;
pub mod patch;
pub mod probe;
pub mod retrieval;
pub mod transfer;
pub mod zeroshot;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::checkpoint::LoadedModel;
use crate::data::loader::PairSource;
use crate::data::pairs::{PairData, Skipped};
use crate::error::Result;
use crate::io::{write_atomic, Provenance};
use crate::tokenizer::{Tokenizer, Truncation};

/// The data of a pair-based command: the pairs, how many, the forward batch and how long
/// captions are cut.
#[derive(Debug, Clone, PartialEq)]
pub struct DataOptions {
    /// The pairs.
    pub data: PairData,
    /// Use only the first N pairs (fixed order).
    pub limit: Option<usize>,
    /// Batch size of the forward passes (fixed, for reproducible numbers).
    pub batch: usize,
    /// Captions longer than the context: OpenAI's keep-EOT rule or the official MS-CLIP one.
    pub truncation: Truncation,
}

impl DataOptions {
    /// `data` with the defaults: every pair, batch 64, keep-EOT truncation.
    pub fn new(data: PairData) -> DataOptions {
        DataOptions { data, limit: None, batch: 64, truncation: Truncation::KeepEot }
    }

    /// The opened source, its identity for provenance, and the number of items to use.
    pub fn open(&self, model: &LoadedModel) -> Result<(Arc<dyn PairSource>, String, usize)> {
        let (src, id) = self.data.open(model.model.config.vision.image_size as u32)?;
        let n = self.limit.unwrap_or(src.len()).min(src.len());
        Ok((src, id, n))
    }

    /// The tokenizer for `model` with this truncation rule.
    pub fn tokenizer(&self, model: &LoadedModel) -> Tokenizer {
        Tokenizer::new(model.model.config.text.context_length as usize).with_truncation(self.truncation)
    }
}

/// The provenance block of a command's outputs: tool version, model and weights, data
/// identity, preprocessing constants, seed, and the evaluation preprocessing note.
pub fn provenance(model: &LoadedModel, data_id: String, seed: u64) -> Provenance {
    let cfg = &model.model.config;
    let mut p = Provenance::new(&cfg.name, model.weights_id.clone(), data_id, cfg.preprocess.clone(), seed);
    p.notes.push("eval preprocessing: bicubic resize of the shorter side, centre crop, normalise; fp32".into());
    p
}

/// [`provenance`] plus the caption truncation rule when it is not the default.
pub fn provenance_with(model: &LoadedModel, data_id: String, seed: u64, data: &DataOptions) -> Provenance {
    let mut p = provenance(model, data_id, seed);
    if data.truncation == Truncation::Official {
        p.notes.push("captions longer than the context: cut without EOT, pooled at SOT (the official MS-CLIP tokenizer)".into());
    }
    p
}

/// Provenance of results computed from two saved embedding files (hashes of both).
pub fn npy_provenance(a: &Path, b: &Path, seed: u64) -> Result<Provenance> {
    let id = format!("{}+{}", crate::io::sha256_file(a)?, crate::io::sha256_file(b)?);
    let mut p = Provenance::new("embeddings", "n/a".into(), id, crate::model::config::Preprocess { mean: [0.0; 3], std: [1.0; 3] }, seed);
    p.notes.push(format!("embeddings read from {} and {}", a.display(), b.display()));
    Ok(p)
}

/// An unreadable item as it appears in reports.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedItem {
    /// Index in the source.
    pub index: usize,
    /// What it is (a path, a shard member).
    pub item: String,
    /// Why it could not be read.
    pub reason: String,
}

impl SkippedItem {
    /// The report form of a loader's skipped list.
    pub fn from_all(skipped: &[Skipped]) -> Vec<SkippedItem> {
        skipped.iter().map(|(i, w, y)| SkippedItem { index: *i, item: w.clone(), reason: y.clone() }).collect()
    }
}

/// Writes `value` as pretty JSON to `dir/name` (atomically), keys sorted at every level.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<()> {
    write_atomic(&dir.join(name), to_json_pretty(value).as_bytes())
}

/// Pretty JSON with keys sorted at every level (through `serde_json::Value`).
pub fn to_json_pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(&serde_json::to_value(value).expect("reports serialise")).expect("a JSON value prints")
}

/// Compact JSON with keys sorted at every level.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_value(value).expect("reports serialise").to_string()
}
