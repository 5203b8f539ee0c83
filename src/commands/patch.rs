//! `patch`: activation patching on minimal pairs of the synthetic world
//! ([`crate::causal::patch`]): the recovered fraction of the clean − corrupted logit
//! difference per (slot, token position) of the residual stream and per (slot, head).

use std::path::Path;

use serde::Serialize;

use super::{provenance, write_json};
use crate::causal::patch::{self, Attribute, PatchResult};
use crate::checkpoint::LoadedModel;
use crate::data::synth;
use crate::data::synthetic_set::EVAL_SEED_OFFSET;
use crate::error::Result;
use crate::io::Provenance;
use crate::plot;

/// Which tower is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tower {
    /// Captions differing in one attribute word; the image fixed.
    Text,
    /// Images differing in one object's colour; the caption fixed.
    Vision,
}

/// Settings of `patch`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOptions {
    /// Which tower.
    pub tower: Tower,
    /// The attribute of text pairs.
    pub attribute: Attribute,
    /// Minimal pairs.
    pub pairs: usize,
    /// Seed of the held-out world the pairs come from.
    pub seed: u64,
}

/// The report with its provenance.
#[derive(Serialize)]
pub struct PatchOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// The recovered fractions.
    pub patching: PatchResult,
    #[serde(skip)]
    model_name: String,
    #[serde(skip)]
    grid: usize,
    #[serde(skip)]
    base: Option<image::RgbImage>,
}

/// Builds the minimal pairs and patches every (slot, position) and (slot, head).
pub fn run(model: &LoadedModel, opts: &PatchOptions) -> Result<PatchOutput> {
    let m = &model.model;
    if opts.tower == Tower::Vision && opts.attribute != Attribute::Colour {
        return Err(crate::Error::config(
            "--attribute",
            format!("{:?}", opts.attribute).to_lowercase(),
            "vision patching recolours one object (colour only); other attributes are text-only",
        ));
    }
    let patching = match opts.tower {
        Tower::Text => patch::patch_text(m, opts.seed, opts.pairs, opts.attribute)?,
        Tower::Vision => patch::patch_vision(m, opts.seed, opts.pairs)?,
    };
    let mut provenance = provenance(model, format!("synthetic-minimal-pairs:seed={}:n={}", opts.seed, opts.pairs), opts.seed);
    provenance.notes.push(format!(
        "patching: clean → corrupted {} run; pairs from the held-out world with seed {} (scenes {:?}…); recovered = Σ(L_patched − L_corrupt)/Σ(L_clean − L_corrupt), L = exp(t)·cos",
        patching.tower,
        opts.seed,
        patching.pairs.iter().take(4).map(|p| p.index).collect::<Vec<_>>()
    ));
    let size = m.config.vision.image_size as u32;
    let base = (opts.tower == Tower::Vision).then(|| {
        let sc = synth::scene(opts.seed ^ EVAL_SEED_OFFSET, patching.pairs[0].index as u64, size);
        image::RgbImage::from_raw(size, size, sc.pixels).expect("scene buffer")
    });
    Ok(PatchOutput { provenance, patching, model_name: m.config.name.clone(), grid: m.config.grid() as usize, base })
}

impl PatchOutput {
    /// `patch.json`, `resid.csv`, `heads.csv` and the figures: `resid` (slot × token
    /// heatmap; for vision also `resid_overlay.png`, each slot's patch map on the first pair's
    /// image) and `heads` (slot × head).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let r = &self.patching;
        write_json(dir, "patch.json", self)?;
        let p = self.provenance.csv_header();
        let mut csv = crate::io::CsvOut::new(&p, &["slot", "position", "label", "recovered"]);
        for (i, slot) in r.slots.iter().enumerate() {
            for (t, v) in r.resid[i].iter().enumerate() {
                csv.row(&crate::csv_row![slot, t, r.positions[t], v]);
            }
        }
        csv.write(&dir.join("resid.csv"))?;
        let mut csv = crate::io::CsvOut::new(&p, &["slot", "head", "recovered"]);
        for (i, slot) in r.slots.iter().enumerate() {
            for (h, v) in r.heads[i].iter().enumerate() {
                csv.row(&crate::csv_row![slot, h, v]);
            }
        }
        csv.write(&dir.join("heads.csv"))?;
        let rows: Vec<String> = r.slots.iter().map(|s| format!("slot {s}")).collect();
        let what = if r.tower == "text" { format!("{} word", r.attribute) } else { "recoloured".to_string() };
        if r.tower == "text" {
            plot::heatmap_png_svg(
                &dir.join("resid"),
                &plot::Heatmap {
                    title: format!("{}: recovered, resid in ({what})", self.model_name),
                    values: r.resid.clone(),
                    row_labels: rows.clone(),
                    col_labels: r.positions.clone(),
                    scale: plot::ColorScale::Diverging,
                    unit: "share recovered".into(),
                },
            )?;
        } else if let Some(first) = &self.base {
            // The values pool every pair, whose recoloured objects sit in different places: no
            // pair's image goes underneath (a neutral grey does), and each slot's CLS result,
            // which the patch grid cannot show, is in its label.
            let base = image::RgbImage::from_pixel(first.width(), first.height(), image::Rgb([128, 128, 128]));
            let cells = vec![r.resid.iter().map(|row| (row[1..].iter().map(|&v| v as f32).collect::<Vec<f32>>(), self.grid)).collect()];
            let labels: Vec<String> = r.slots.iter().zip(&r.resid).map(|(s, row)| format!("slot {s}, CLS {:.2}", row[0])).collect();
            plot::overlay_grid_png(
                &dir.join("resid_overlay.png"),
                &plot::OverlayGrid {
                    title: format!(
                        "{} — share recovered by patching one patch position of the stream entering the slot, pooled over {} pairs (one object recoloured)",
                        self.model_name,
                        r.pairs.len()
                    ),
                    base: &base,
                    cells,
                    row_labels: vec!["patch".into()],
                    col_labels: labels,
                    cell: 128,
                    alpha: 0.6,
                    shared_scale: true,
                    unit: "share recovered".into(),
                },
            )?;
        }
        plot::heatmap_png_svg(
            &dir.join("heads"),
            &plot::Heatmap {
                title: format!("{}: recovered, head z ({what})", self.model_name),
                values: r.heads.clone(),
                row_labels: rows,
                col_labels: (0..r.heads.first().map_or(0, |h| h.len())).map(|h| format!("head {h}")).collect(),
                scale: plot::ColorScale::Diverging,
                unit: "share recovered".into(),
            },
        )
    }
}
