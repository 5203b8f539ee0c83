//! `gap`: the modality-gap metrics ([`GapReport`]) of a model's embeddings of paired data, or
//! of two saved `.npy` embedding files, streamed (two passes over 4,096-row chunks, memory
//! independent of n).

use std::path::Path;

use serde::Serialize;

use super::{npy_provenance, provenance_with, write_json, DataOptions, SkippedItem};
use crate::analysis::gap::{gap_report, GapAccumulator, GapReport};
use crate::analysis::npy;
use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::eval::embed_pairs;
use crate::io::Provenance;

pub use crate::analysis::gap::DEFAULT_UNIFORMITY_MAX;

/// Rows per chunk when `.npy` files are streamed.
pub const NPY_CHUNK: i64 = 4096;

/// The gap metrics with their provenance.
#[derive(Debug, Clone, Serialize)]
pub struct GapOutput {
    /// Where the embeddings came from.
    pub provenance: Provenance,
    /// The metrics.
    pub gap: GapReport,
    /// Items that could not be read.
    #[serde(skip)]
    pub skipped: Vec<SkippedItem>,
}

/// Gap metrics of `model`'s embeddings of `data`; uniformity on the first `uniformity_max`.
pub fn run(model: &LoadedModel, data: &DataOptions, uniformity_max: i64) -> Result<GapOutput> {
    let (src, data_id, n) = data.open(model)?;
    let f = embed_pairs(&model.model, src.as_ref(), n, data.batch, &data.tokenizer(model), None)?;
    let gap = gap_report(&f.image, &f.text, uniformity_max)?;
    Ok(GapOutput { provenance: provenance_with(model, data_id, 0, data), gap, skipped: SkippedItem::from_all(&f.skipped) })
}

/// Gap metrics of two `.npy` files of paired embeddings, read chunk by chunk.
pub fn run_npy(image: &Path, text: &Path, uniformity_max: i64) -> Result<GapOutput> {
    let (mut ra, mut rb) = (npy::Reader::open(image)?, npy::Reader::open(text)?);
    if (ra.rows, ra.cols) != (rb.rows, rb.cols) {
        return Err(Error::Invalid(format!(
            "{} is [{}, {}] but {} is [{}, {}]: paired embeddings must have equal shapes",
            image.display(),
            ra.rows,
            ra.cols,
            text.display(),
            rb.rows,
            rb.cols
        )));
    }
    if ra.rows < 3 {
        return Err(Error::Invalid(format!("{}: need at least 3 pairs, got {}", image.display(), ra.rows)));
    }
    let mut acc = GapAccumulator::new(ra.cols, uniformity_max);
    for pass in 0..2 {
        let mut start = 0;
        while start < ra.rows {
            let (x, y) = (ra.read_rows(start, NPY_CHUNK)?, rb.read_rows(start, NPY_CHUNK)?);
            if pass == 0 {
                acc.add(&x, &y)?
            } else {
                acc.add_centred(&x, &y)?
            }
            start += NPY_CHUNK;
        }
    }
    let mut provenance = npy_provenance(image, text, 0)?;
    provenance.notes.push(format!("streamed: two passes over chunks of {NPY_CHUNK} rows"));
    Ok(GapOutput { provenance, gap: acc.finish()?, skipped: vec![] })
}

impl GapOutput {
    /// The metrics as `(name, value)` rows in name order (what the table and CSV show).
    pub fn rows(&self) -> Vec<(String, serde_json::Value)> {
        serde_json::to_value(&self.gap)
            .expect("report serialises")
            .as_object()
            .expect("a struct")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `dir/gap.json` and `dir/gap.csv`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "gap.json", self)?;
        let mut csv = crate::io::CsvOut::new(&self.provenance.csv_header(), &["metric", "value"]);
        for (k, v) in self.rows() {
            csv.row(&crate::csv_row![k, v]);
        }
        csv.write(&dir.join("gap.csv"))
    }
}
