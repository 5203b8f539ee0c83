//! `ablate`: head importance per (slot, head) in each tower and in both, whole-site
//! ablations, and the vision–text agreement of importance ([`crate::causal::ablate`]).

use std::path::Path;

use serde::Serialize;

use super::{provenance, write_json};
use crate::causal::ablate::{self, AblateOptions, AblateReport, HeadAblation};
use crate::causal::Metrics;
use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::io::{CsvOut, Provenance};
use crate::model::ModelConfig;
use crate::plot;

/// The report with its provenance.
#[derive(Serialize)]
pub struct AblateOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// The sweep.
    pub ablation: AblateReport,
    /// Seconds of the sweep.
    pub seconds: f64,
    #[serde(skip)]
    config: ModelConfig,
}

/// Runs the sweep; `progress(done, total)` after each slot.
pub fn run(model: &LoadedModel, opts: &AblateOptions, progress: impl FnMut(usize, usize)) -> Result<AblateOutput> {
    let t0 = std::time::Instant::now();
    let ablation = ablate::run(&model.model, opts, progress)?;
    let mut provenance =
        provenance(model, format!("synthetic-heldout:seed={}:zero_shot={}:pairs={}", opts.seed, opts.items, opts.items), opts.seed);
    provenance.notes.push(format!(
        "ablation: {} of each head's output z (before the out-projection){}; metrics are ablated − clean",
        opts.kind.name(),
        match opts.kind {
            ablate::AblationKind::Mean => format!(
                ", means over a reference set of {} held-out items of the world with seed {}",
                opts.reference_items, opts.reference_seed
            ),
            ablate::AblationKind::Resample =>
                format!(", each item taking another item's activation (a derangement from seed {})", opts.seed),
            ablate::AblationKind::Zero => String::new(),
        }
    ));
    provenance.notes.push("whole sites: a slot's attention output, its FFN output, the parallel branch's stage outputs; importance = −Δ; Spearman ρ of vision vs text importance with a permutation p-value".into());
    Ok(AblateOutput { provenance, ablation, seconds: t0.elapsed().as_secs_f64(), config: model.model.config.clone() })
}

fn delta_cols(m: &Option<Metrics>) -> [String; 4] {
    match m {
        Some(d) => crate::csv_row![d.zero_shot_top1, d.image_to_text_r1, d.text_to_image_r1, d.matched_cosine],
        None => Default::default(),
    }
}

impl AblateOutput {
    /// `ablation.json`, `heads.csv`, `sites.csv`, `agreement.csv` and the figures
    /// (`importance_matched_cosine`, `importance_zero_shot`: slot × head heatmaps, vision |
    /// text | both; `importance_scatter`: vision vs text importance per head).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "ablation.json", self)?;
        let p = self.provenance.csv_header();
        let deltas = ["d_zero_shot_top1", "d_image_to_text_r1", "d_text_to_image_r1", "d_matched_cosine"];
        let mut csv = CsvOut::new(&p, &[&["slot", "head", "shared", "tower"][..], &deltas[..]].concat());
        for h in &self.ablation.heads {
            for (tower, d) in [("vision", &h.vision), ("text", &h.text), ("both", &h.both)] {
                if d.is_some() {
                    csv.row(&[&crate::csv_row![h.slot, h.head, h.shared, tower][..], &delta_cols(d)[..]].concat());
                }
            }
        }
        csv.write(&dir.join("heads.csv"))?;
        let mut csv = CsvOut::new(&p, &[&["site", "slot", "towers"][..], &deltas[..]].concat());
        for s in &self.ablation.sites {
            let slot = s.slot.map(|x| x.to_string()).unwrap_or_default();
            csv.row(&[&crate::csv_row![s.site, slot, s.towers][..], &delta_cols(&Some(s.delta))[..]].concat());
        }
        csv.write(&dir.join("sites.csv"))?;
        let mut csv = CsvOut::new(&p, &["metric", "scope", "heads", "spearman", "p_value"]);
        for a in &self.ablation.agreement {
            csv.row(&crate::csv_row![a.metric, a.scope, a.heads, a.spearman, a.p_value]);
        }
        csv.write(&dir.join("agreement.csv"))?;
        let cfg = &self.config;
        for (stem, label, f) in [
            ("importance_matched_cosine", "−Δ matched cosine", (|m: &Metrics| -m.matched_cosine) as fn(&Metrics) -> f64),
            ("importance_zero_shot", "−Δ zero-shot top-1", |m: &Metrics| -m.zero_shot_top1),
        ] {
            let panels = vec![["vision", "text", "both"]
                .iter()
                .map(|t| plot::Heatmap { unit: "importance (−Δ)".into(), ..heatmap(cfg, &self.ablation.heads, t, f) })
                .collect()];
            plot::render(
                &dir.join(stem),
                &plot::HeatmapPanels {
                    title: format!(
                        "{} — head importance ({label}, {} ablation): vision | text | both",
                        cfg.name,
                        self.ablation.kind.name()
                    ),
                    panels,
                    shared_scale: true,
                    missing: None,
                    caption: Some(format!(
                        "Each cell: how much {label} falls when that one head's output is replaced by {}, measured on {} held-out items, in the vision tower, the text tower, or both at once (a shared head is one set of weights). Red: the head matters; blue: removing it helps; near white: unused. A head that matters for both towers is red in the first two panels.",
                        match self.ablation.kind {
                            crate::causal::ablate::AblationKind::Mean => format!("its mean over {} reference items", self.ablation.reference_items),
                            crate::causal::ablate::AblationKind::Zero => "zero".to_string(),
                            crate::causal::ablate::AblationKind::Resample => "its value on another reference item".to_string(),
                        },
                        self.ablation.items
                    )),
                },
            )?;
        }
        let (points, groups): (Vec<(f64, f64)>, Vec<String>) = self
            .ablation
            .heads
            .iter()
            .filter_map(|h| Some(((-h.text.as_ref()?.matched_cosine, -h.vision.as_ref()?.matched_cosine), format!("slot {}", h.slot))))
            .unzip();
        if !points.is_empty() {
            let a =
                self.ablation.agreement.iter().find(|a| {
                    a.metric == "matched_cosine" && (a.scope == "shared slots" || a.scope == "unshared slots (null)") && a.heads > 0
                });
            plot::scatter_png_svg(
                &dir.join("importance_scatter"),
                &plot::Scatter {
                    // Short enough to print at a readable size; the axes name the towers.
                    title: format!(
                        "{}{}",
                        cfg.name,
                        a.map(|a| format!(
                            ", {}: ρ = {:.2} ({}; null 95 % [{:.2}, {:.2}])",
                            a.scope,
                            a.spearman,
                            crate::analysis::stats::p_stated(a.p_value),
                            a.null_95[0],
                            a.null_95[1]
                        ))
                        .unwrap_or_default()
                    ),
                    x_label: "text importance (−Δ matched cosine)".into(),
                    y_label: "vision importance (−Δ matched cosine)".into(),
                    points,
                    groups,
                },
            )?;
        }
        Ok(())
    }
}

fn heatmap(cfg: &ModelConfig, heads: &[HeadAblation], tower: &str, f: fn(&Metrics) -> f64) -> plot::Heatmap {
    let slots: Vec<usize> = heads.iter().map(|h| h.slot).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let n = cfg.vision.heads.max(cfg.text.heads) as usize;
    let values = slots
        .iter()
        .map(|&s| {
            (0..n)
                .map(|hh| {
                    heads
                        .iter()
                        .find(|h| h.slot == s && h.head == hh)
                        .and_then(|h| match tower {
                            "vision" => h.vision.as_ref(),
                            "text" => h.text.as_ref(),
                            _ => h.both.as_ref(),
                        })
                        .map_or(f64::NAN, f)
                })
                .collect()
        })
        .collect();
    // Signed (an ablation can also help): diverging about 0; grey cells: the tower has no
    // attention there (MS-CLIP-S's vision slot 0 is the conv stem).
    plot::Heatmap {
        title: match tower {
            "both" => "both towers".into(),
            t => format!("{t} tower"),
        },
        values,
        row_labels: slots.iter().map(|s| format!("slot {s}")).collect(),
        col_labels: (0..n).map(|h| format!("head {h}")).collect(),
        scale: plot::ColorScale::Diverging,
        unit: String::new(),
        caption: None,
    }
}
