//! `nmi`: layer-wise NMI between k-means clusters and modality (the official MS-CLIP code's
//! `OUTPUT_*` feature hooks), last row the joint space; or the NMI of two saved `.npy`
//! embedding files (in memory up to 1 GiB, streamed above).

use std::path::Path;

use serde::Serialize;
use tch::Tensor;

use super::gap::NPY_CHUNK;
use super::{npy_provenance, provenance_with, to_json_pretty, write_json, DataOptions, SkippedItem};
use crate::analysis::gap::{gap_report, GapReport, DEFAULT_UNIFORMITY_MAX};
use crate::analysis::nmi::{kmeans, kmeans_rows, modality_nmi, nmi, LayerNmi, NpyPairRows};
use crate::analysis::npy;
use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::eval::{embed_pairs, LayerSpec, Pooling};
use crate::io::{write_atomic, Provenance};
use crate::model::Site;
use crate::plot::{line_chart_png_svg, LineChart};

/// Above this much embedding data `nmi` of `.npy` files streams instead of loading.
pub const IN_MEMORY_BYTES: u64 = 1 << 30;

/// Settings of the layer-wise NMI.
#[derive(Debug, Clone, PartialEq)]
pub struct NmiOptions {
    /// Site pooled per slot: ln1 (official OUTPUT_BEFORE_ATTN), attn_out, ln2, resid.
    pub site: Site,
    /// How tokens are pooled.
    pub pooling: Pooling,
    /// Map pooled tokens through the final LN + projection (needed for unequal widths).
    pub projected: bool,
    /// k-means clusters.
    pub k: i64,
    /// k-means restarts (lowest inertia wins).
    pub restarts: usize,
    /// Seed of k-means++ seeding.
    pub seed: u64,
}

impl Default for NmiOptions {
    fn default() -> Self {
        NmiOptions { site: Site::Ln1, pooling: Pooling::Special, projected: false, k: 2, restarts: 5, seed: 0 }
    }
}

/// Layer-wise NMI of a model, with the joint space's gap report (what `check` compares).
#[derive(Debug, Clone, Serialize)]
pub struct NmiOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// One row per slot, the joint space last.
    pub layers: Vec<LayerNmi>,
    /// Gap metrics of the joint space (for `check`).
    #[serde(skip)]
    pub joint_gap: GapReport,
    /// The model's name.
    #[serde(skip)]
    pub model_name: String,
    /// Items that could not be read.
    #[serde(skip)]
    pub skipped: Vec<SkippedItem>,
}

/// NMI per slot of `opts.site` pooled features, then of the joint embedding space (its row's
/// slot is the number of text slots).
pub fn run(model: &LoadedModel, data: &DataOptions, opts: &NmiOptions) -> Result<NmiOutput> {
    if opts.k < 2 || opts.restarts < 1 {
        return Err(Error::config("k", opts.k, "k-means needs k ≥ 2 and at least one restart"));
    }
    let (src, data_id, n) = data.open(model)?;
    let spec = LayerSpec { site: opts.site, pooling: opts.pooling, projected: opts.projected };
    let f = embed_pairs(&model.model, src.as_ref(), n, data.batch, &data.tokenizer(model), Some(spec))?;
    let mut layers = Vec::new();
    for (slot, (img, txt)) in &f.layers {
        let (v, inertia) = modality_nmi(img, txt, opts.k, opts.restarts, opts.seed)?;
        layers.push(LayerNmi { slot: *slot, nmi: v, inertia });
    }
    let (v, inertia) = modality_nmi(&f.image, &f.text, opts.k, opts.restarts, opts.seed)?;
    layers.push(LayerNmi { slot: model.model.config.text.layers, nmi: v, inertia });
    let mut provenance = provenance_with(model, data_id, opts.seed, data);
    provenance.notes.push(format!(
        "NMI: site {}, pooling {:?}, projected {}, k {}, restarts {}; last row = joint embedding space",
        opts.site.name(),
        opts.pooling,
        opts.projected,
        opts.k,
        opts.restarts
    ));
    Ok(NmiOutput {
        provenance,
        layers,
        joint_gap: gap_report(&f.image, &f.text, DEFAULT_UNIFORMITY_MAX)?,
        model_name: model.model.config.name.clone(),
        skipped: SkippedItem::from_all(&f.skipped),
    })
}

impl NmiOutput {
    /// `dir/nmi.csv`, `dir/nmi.json` and the line chart `dir/nmi.png/.svg`.
    pub fn write(&self, dir: &Path, site: Site) -> Result<()> {
        let mut csv = crate::io::CsvOut::new(&self.provenance.csv_header(), &["slot", "nmi", "inertia"]);
        for r in &self.layers {
            csv.row(&crate::csv_row![r.slot, r.nmi, r.inertia]);
        }
        csv.write(&dir.join("nmi.csv"))?;
        write_json(dir, "nmi.json", self)?;
        let pts: Vec<(f64, f64)> = self.layers.iter().map(|r| (r.slot as f64, r.nmi)).collect();
        line_chart_png_svg(
            &dir.join("nmi"),
            &LineChart {
                title: format!("{} — NMI(k-means, modality) by layer ({})", self.model_name, site.name()),
                x_label: "slot (last = joint space)".into(),
                y_label: "NMI".into(),
                series: vec![(self.model_name.clone(), pts)],
                y_range: (0.0, 1.0),
                x_integer: true,
                ..Default::default()
            },
        )
    }
}

/// NMI of two saved embedding files.
#[derive(Debug, Clone, Serialize)]
pub struct NmiNpyOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// NMI(k-means clusters, modality).
    pub nmi: f64,
    /// k-means inertia.
    pub inertia: f64,
    /// Lloyd iterations of the best restart.
    pub iterations: usize,
    /// Wall time.
    pub seconds: f64,
    /// Rows of (image, text).
    #[serde(skip)]
    pub counts: (i64, i64),
}

/// k-means (vs the modality label) of the rows of two `.npy` files: held in memory up to
/// [`IN_MEMORY_BYTES`], above that streamed over both files in 4,096-row chunks (memory: one
/// chunk + the labels; the same labels).
pub fn run_npy(image: &Path, text: &Path, opts: &NmiOptions) -> Result<NmiNpyOutput> {
    let mut rows = NpyPairRows::open(image, text, NPY_CHUNK)?;
    let (ni, nt) = rows.counts();
    let t = std::time::Instant::now();
    let file_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error::io(p, e));
    let in_memory = file_len(image)? + file_len(text)? <= IN_MEMORY_BYTES;
    let km = if in_memory {
        let x = Tensor::cat(&[npy::read(image)?, npy::read(text)?], 0);
        kmeans(&x, opts.k, opts.restarts, 100, opts.seed)?
    } else {
        kmeans_rows(&mut rows, opts.k, opts.restarts, 100, opts.seed)?
    };
    let truth: Vec<i64> = std::iter::repeat_n(0, ni as usize).chain(std::iter::repeat_n(1, nt as usize)).collect();
    let v = nmi(&km.labels, &truth);
    let mut provenance = npy_provenance(image, text, opts.seed)?;
    provenance.notes.push(format!(
        "{ni} + {nt} rows, {}",
        if in_memory { "held in memory".to_string() } else { format!("streamed in chunks of {NPY_CHUNK} rows") }
    ));
    provenance.notes.push(format!(
        "NMI: k-means k {}, restarts {}, seed {}; arithmetic normalisation (scikit-learn's default)",
        opts.k, opts.restarts, opts.seed
    ));
    Ok(NmiNpyOutput {
        provenance,
        nmi: v,
        inertia: km.inertia,
        iterations: km.iterations,
        seconds: t.elapsed().as_secs_f64(),
        counts: (ni, nt),
    })
}

impl NmiNpyOutput {
    /// `dir/nmi.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("nmi.json"), to_json_pretty(self).as_bytes())
    }
}
