//! `retrieval`: image↔text retrieval R@1/5/10 in both directions on paired data (ties
//! counted against the model, see [`recall_at_k`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{provenance_with, write_json, DataOptions, SkippedItem};
use crate::analysis::embedding::recall_at_k;
use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::eval::embed_pairs;
use crate::io::Provenance;

/// Recall at k for k = 1, 5, 10 in both directions.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// Pairs.
    pub n: i64,
    /// `image_to_text_r{k}`, `text_to_image_r{k}`.
    pub retrieval: BTreeMap<String, f64>,
    /// The model's name.
    #[serde(skip)]
    pub model_name: String,
    /// Items that could not be read.
    #[serde(skip)]
    pub skipped: Vec<SkippedItem>,
}

/// The k values reported.
pub const KS: [i64; 3] = [1, 5, 10];

/// Embeds the pairs and scores retrieval both ways.
pub fn run(model: &LoadedModel, data: &DataOptions) -> Result<RetrievalOutput> {
    let (src, data_id, n) = data.open(model)?;
    let f = embed_pairs(&model.model, src.as_ref(), n, data.batch, &data.tokenizer(model), None)?;
    let sim = f.image.matmul(&f.text.tr());
    let mut retrieval = BTreeMap::new();
    for k in KS {
        retrieval.insert(format!("image_to_text_r{k}"), recall_at_k(&sim, k));
        retrieval.insert(format!("text_to_image_r{k}"), recall_at_k(&sim.tr(), k));
    }
    Ok(RetrievalOutput {
        provenance: provenance_with(model, data_id, 0, data),
        n: f.image.size()[0],
        retrieval,
        model_name: model.model.config.name.clone(),
        skipped: SkippedItem::from_all(&f.skipped),
    })
}

impl RetrievalOutput {
    /// `dir/retrieval.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "retrieval.json", self)
    }
}
