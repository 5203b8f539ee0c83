//! `embed`: L2-normalised image and text embeddings of paired data, for use elsewhere
//! (`image.npy`, `text.npy`: float32, data order; `embed.json`).

use std::path::Path;

use serde::Serialize;
use tch::Tensor;

use super::{provenance_with, write_json, DataOptions, SkippedItem};
use crate::analysis::npy;
use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::eval::embed_pairs;
use crate::io::Provenance;

/// What `embed.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedReport {
    /// Where the embeddings came from.
    pub provenance: Provenance,
    /// Pairs embedded.
    pub n: i64,
    /// Embedding width.
    pub dim: i64,
    /// Items that could not be read.
    pub skipped: Vec<SkippedItem>,
}

/// The embeddings and their report.
pub struct EmbedOutput {
    /// `[n, E]`, L2-normalised.
    pub image: Tensor,
    /// `[n, E]`, L2-normalised.
    pub text: Tensor,
    /// The report.
    pub report: EmbedReport,
}

/// Embeds the pairs of `data` with `model`.
pub fn run(model: &LoadedModel, data: &DataOptions) -> Result<EmbedOutput> {
    let (src, data_id, n) = data.open(model)?;
    let f = embed_pairs(&model.model, src.as_ref(), n, data.batch, &data.tokenizer(model), None)?;
    let report = EmbedReport {
        provenance: provenance_with(model, data_id, 0, data),
        n: f.image.size()[0],
        dim: f.image.size()[1],
        skipped: SkippedItem::from_all(&f.skipped),
    };
    Ok(EmbedOutput { image: f.image, text: f.text, report })
}

impl EmbedOutput {
    /// `dir/image.npy`, `dir/text.npy`, `dir/embed.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        npy::write_f32(&dir.join("image.npy"), &self.image)?;
        npy::write_f32(&dir.join("text.npy"), &self.text)?;
        write_json(dir, "embed.json", &self.report)
    }
}
