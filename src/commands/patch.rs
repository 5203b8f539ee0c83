//! `patch`: activation patching on minimal pairs of the synthetic world
//! ([`crate::causal::patch`]): the recovered fraction of the clean − corrupted logit
//! difference per (slot, token position) of the residual stream and per (slot, head).

use std::path::Path;

use serde::Serialize;

use super::{provenance, write_json};
use crate::causal::patch::{self, Attribute, PatchResult};
use crate::checkpoint::LoadedModel;
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
    Ok(PatchOutput { provenance, patching, model_name: m.config.name.clone() })
}

/// Column labels of a text patching table: the words of the first pair's clean caption at
/// the template's positions, the changed one as `clean→corrupted` (every pair shares the
/// template; only the words differ). The template's role names where the caption does not
/// split into the template's words.
fn word_labels(r: &PatchResult) -> Vec<String> {
    let Some(pair) = r.pairs.first() else { return r.positions.clone() };
    let (clean, corrupt): (Vec<&str>, Vec<&str>) = (pair.clean.split_whitespace().collect(), pair.corrupt.split_whitespace().collect());
    if clean.len() + 2 != r.positions.len() || corrupt.len() != clean.len() {
        return r.positions.clone();
    }
    let mut out = vec![r.positions[0].clone()];
    out.extend(clean.iter().zip(&corrupt).map(|(a, b)| if a == b { a.to_string() } else { format!("{a}→{b}") }));
    out.push(r.positions[r.positions.len() - 1].clone());
    out
}

impl PatchOutput {
    /// `patch.json`, `resid.csv`, `heads.csv` and the figures: `resid` (slot × token
    /// heatmap; for vision `resid_aligned.png/.svg/.csv` instead, each slot's patch map by
    /// offset from the recoloured object) and `heads` (slot × head).
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
        let what = if r.tower == "text" { format!("{} word", r.attribute) } else { "recolouring".to_string() };
        if r.tower == "text" {
            plot::heatmap_png_svg(
                &dir.join("resid"),
                &plot::Heatmap {
                    title: format!(
                        "{}: {what} effect recovered per token patched ({} pairs; words of pair 0)",
                        self.model_name,
                        r.pairs.len()
                    ),
                    values: r.resid.clone(),
                    row_labels: rows.clone(),
                    col_labels: word_labels(r),
                    scale: plot::ColorScale::Diverging,
                    unit: "share recovered".into(),
                    caption: Some(format!(
                        "Minimal pairs of captions that differ in the {} word only, each scored against its image. A cell: the share of the clean − corrupted logit difference restored when the clean run's residual stream entering that slot, at that token, is patched into the corrupted run (1 = all of it; pooled over {} pairs). The {} word's column shows where its information sits; where it moves to the last token, the caption has read it.",
                        r.attribute, r.pairs.len() - r.excluded_pairs, r.attribute
                    )),
                },
            )?;
        } else if !r.aligned.is_empty() {
            // Object-aligned: each pair's grid shifted so its recoloured object sits at the
            // centre, then pooled; objects in different places add up at one place. One
            // diverging scale for every slot (the shares are signed and compared across
            // slots); each slot's CLS result, which a patch grid cannot show, in its title.
            let rad = r.aligned_radius as i64;
            let side = 2 * r.aligned_radius + 1;
            let offsets: Vec<String> = (-rad..=rad).map(|d| format!("{d:+}").replace("+0", "0")).collect();
            let mut csv = crate::io::CsvOut::new(&p, &["slot", "d_row", "d_col", "recovered"]);
            let mut row = Vec::new();
            for ((slot, map), full) in r.slots.iter().zip(&r.aligned).zip(&r.resid) {
                for (k, v) in map.iter().enumerate() {
                    csv.row(&crate::csv_row![slot, k as i64 / side as i64 - rad, k as i64 % side as i64 - rad, v]);
                }
                row.push(plot::Heatmap {
                    title: format!("slot {slot} · CLS {:.2}", full[0]),
                    values: map.chunks(side).map(|c| c.to_vec()).collect(),
                    row_labels: offsets.clone(),
                    col_labels: offsets.clone(),
                    scale: plot::ColorScale::Diverging,
                    unit: "share recovered".into(),
                    caption: None,
                });
            }
            csv.write(&dir.join("resid_aligned.csv"))?;
            let per_row = 3;
            plot::render(
                &dir.join("resid_aligned"),
                &plot::HeatmapPanels {
                    title: format!(
                        "{}: recolouring effect recovered per patch, by offset from the recoloured object (patches; {} pairs, object at 0,0)",
                        self.model_name,
                        r.pairs.len()
                    ),
                    panels: row.chunks(per_row).map(|c| c.to_vec()).collect(),
                    shared_scale: true,
                    missing: Some("fewer than half the pairs have a patch at that offset (objects near the border)".into()),
                    caption: Some(format!(
                        "Minimal pairs of scenes that differ in one object's colour, scored against the clean caption. A cell: the share of the clean − corrupted logit difference restored when the clean run's residual stream entering the slot is patched into the corrupted run at one patch, placed by its offset (rows down, columns right) from the patch holding the recoloured object's centre and pooled over {} pairs; each panel's title has the share restored at CLS. Red at (0, 0) in early slots: the colour sits on the object; high CLS share in late slots: it has been gathered.",
                        r.pairs.len() - r.excluded_pairs
                    )),
                },
            )?;
        }
        plot::heatmap_png_svg(
            &dir.join("heads"),
            &plot::Heatmap {
                title: format!("{}: {what} effect recovered per head patched ({} pairs)", self.model_name, r.pairs.len()),
                values: r.heads.clone(),
                row_labels: rows,
                col_labels: (0..r.heads.first().map_or(0, |h| h.len())).map(|h| format!("head {h}")).collect(),
                scale: plot::ColorScale::Diverging,
                unit: "share recovered".into(),
                caption: Some(format!(
                    "The share of the clean − corrupted logit difference restored when one head's output (at every position) is patched from the clean into the corrupted {} run, pooled over {} minimal pairs. Red heads move the {what} information.",
                    r.tower,
                    r.pairs.len() - r.excluded_pairs
                )),
            },
        )
    }
}
