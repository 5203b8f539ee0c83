//! `heads`: per (slot, head) attention statistics of both towers, their cross-modal agreement
//! (Spearman ρ over heads with a permutation p-value), and, on the synthetic world, grounding:
//! each head's CLS map in the objects' boxes, and caption-conditioned maps (relevancy for the
//! phrase naming each object, rollout) next to the uniform-map chance level.

use std::collections::BTreeMap;
use std::path::Path;

use image::RgbImage;
use serde::Serialize;
use tch::Tensor;

use super::{provenance_with, to_json_pretty, DataOptions, SkippedItem};
use crate::analysis::attention::image_query_maps;
use crate::analysis::heads::{agreement, box_grounding, Agreement, HeadAccumulator, HeadStat, Statistic};
use crate::checkpoint::LoadedModel;
use crate::data::pairs::{for_each_batch, Prep};
use crate::error::{Error, Result};
use crate::eval::{relevancy_grounding, RELEVANCY_SCORE};
use crate::io::{write_atomic, CsvOut, Provenance};
use crate::model::config::SharedSite;
use crate::model::towers::TextTower;
use crate::model::{ActivationCache, Capture, Modality, ModelConfig};
use crate::plot;
use crate::tensor::to_vec_f32;
use crate::tokenizer::Tokenizer;

/// Settings of `heads`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadsOptions {
    /// Permutations of the Spearman test.
    pub permutations: usize,
    /// Slots of the caption/image head gallery (synthetic data only); empty = every
    /// attention slot both towers have.
    pub gallery_slots: Vec<usize>,
}

/// Grounding of one head's CLS map over the named objects.
#[derive(Debug, Clone, Serialize)]
pub struct HeadGrounding {
    /// The layer slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Mean share of the CLS map inside the object's box.
    pub box_share: f64,
    /// Share of objects whose box holds the map's maximum.
    pub pointing_acc: f64,
    /// Objects scored.
    pub objects: f64,
}

/// Grounding of one caption-conditioned method over the named objects.
#[derive(Debug, Clone, Serialize)]
pub struct MethodGrounding {
    /// `relevancy_last`, `relevancy_all` or `rollout`.
    pub method: String,
    /// Mean share of the map inside the object's box.
    pub box_share: f64,
    /// Share of objects whose box holds the map's maximum.
    pub pointing_acc: f64,
    /// The share a flat map would get (chance level).
    pub uniform_share: f64,
    /// Objects scored.
    pub objects: f64,
}

/// The report of `heads`.
#[derive(Serialize)]
pub struct HeadsOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// Per (modality, slot, head).
    pub stats: Vec<HeadStat>,
    /// Per statistic.
    pub agreement: Vec<Agreement>,
    /// Per (slot, head), synthetic data only.
    pub grounding: Vec<HeadGrounding>,
    /// Per method, synthetic data only.
    pub relevancy_grounding: Vec<MethodGrounding>,
    /// The model's config.
    #[serde(skip)]
    pub config: ModelConfig,
    /// The caption/image head gallery of the first synthetic item.
    #[serde(skip)]
    pub gallery: Option<GalleryItem>,
    /// Items that could not be read.
    #[serde(skip)]
    pub skipped: Vec<SkippedItem>,
}

/// Runs `heads` over `data` (see the module docs).
pub fn run(model: &LoadedModel, data: &DataOptions, opts: &HeadsOptions) -> Result<HeadsOutput> {
    let m = &model.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let vslots = cfg.vision_attention_slots();
    if let Some(bad) = opts.gallery_slots.iter().find(|s| !vslots.contains(s) || !cfg.text_attention_slots().contains(s)) {
        return Err(Error::Invalid(format!("--gallery-slots: slot {bad} has no attention in both towers (vision {vslots:?})")));
    }
    if opts.permutations == 0 {
        return Err(Error::config("permutations", 0, "must be at least 1"));
    }
    let (src, data_id, n) = data.open(model)?;
    let tok: Tokenizer = data.tokenizer(model);
    let grid = cfg.grid();
    let gallery_slots: Vec<usize> = if opts.gallery_slots.is_empty() { vslots.clone() } else { opts.gallery_slots.clone() };
    let mut acc = HeadAccumulator::default();
    // (slot, head) → (Σ share, Σ hits, count) over named objects.
    let mut ground: BTreeMap<(usize, usize), (f64, f64, f64)> = BTreeMap::new();
    // method → (Σ share, Σ hits, Σ uniform share, count) of caption-conditioned maps.
    let mut rel_ground: BTreeMap<&'static str, [f64; 4]> = BTreeMap::new();
    let mut gallery: Option<GalleryItem> = None;
    let prep = Prep { size, preprocess: &cfg.preprocess, tokenizer: &tok };
    let skipped = for_each_batch(src.as_ref(), n, data.batch, &prep, |b| {
        let eot: Vec<i64> = Vec::<i64>::try_from(&TextTower::pooled_positions(&b.tokens)).expect("int64 positions");
        let mut cache = ActivationCache::new();
        tch::no_grad(|| -> Result<()> {
            let _ = m.encode_image_with(&b.images, &Capture::attention(), &mut cache, false)?;
            let _ = m.encode_text_with(&b.tokens, &Capture::attention(), &mut cache)?;
            Ok(())
        })?;
        // Ground-truth boxes of the batch's synthetic scenes (rendered once, not per slot).
        let objects: Vec<Vec<crate::data::synth::Object>> = b.indices.iter().filter_map(|&i| data.data.objects(i, size)).collect();
        for &slot in &vslots {
            let probs = cache.require(Modality::Vision, slot, crate::model::Site::AttnProbs)?;
            acc.add_vision(slot, probs, grid);
            for (bi, scene_objects) in objects.iter().enumerate() {
                let maps = image_query_maps(probs, slot, bi as i64, 0, grid)?;
                for mp in maps.iter().filter(|mp| mp.head.is_some()) {
                    for o in scene_objects {
                        let (share, hit) = box_grounding(&mp.values, grid as usize, cfg.vision.patch_size as f64, o.bbox);
                        let e = ground.entry((slot, mp.head.expect("filtered"))).or_default();
                        e.0 += share;
                        e.1 += hit as u8 as f64;
                        e.2 += 1.0;
                    }
                }
            }
        }
        for slot in cfg.text_attention_slots() {
            acc.add_text(slot, cache.require(Modality::Text, slot, crate::model::Site::AttnProbs)?, &eot);
        }
        if !objects.is_empty() {
            relevancy_grounding(m, &b.images, &objects, &tok, &mut rel_ground)?;
            if gallery.is_none() {
                gallery = Some(GalleryItem::take(&cache, b.rgb[0].clone(), &b.tokens, eot[0], &tok, &gallery_slots, cfg));
            }
        }
        Ok(())
    })?;
    let stats = acc.finish();
    if stats.is_empty() {
        return Err(Error::Invalid(format!("heads: none of the {n} items could be read")));
    }
    let agree = agreement(&stats, opts.permutations, 0);
    let mut provenance = provenance_with(model, data_id, 0, data);
    provenance.notes.push("head statistics: means over items and valid queries (text: 0..=EOT); vision distance in patch-grid units; 'neighbour' = previous-token mass (text) / 4-neighbour mass (vision)".into());
    provenance.notes.push(format!(
        "agreement: Spearman ρ over (slot, head) pairs both towers have; two-sided permutation p-value, {} permutations",
        opts.permutations
    ));
    if !rel_ground.is_empty() {
        provenance.notes.push(format!(
            "caption-conditioned grounding: relevancy differentiates the {RELEVANCY_SCORE} of the image and the phrase naming the object"
        ));
    }
    let grounding = ground
        .iter()
        .map(|(&(slot, head), &(sh, hit, c))| HeadGrounding { slot, head, box_share: sh / c, pointing_acc: hit / c, objects: c })
        .collect();
    let relevancy_grounding = rel_ground
        .iter()
        .map(|(method, &[sh, hit, uni, c])| MethodGrounding {
            method: method.to_string(),
            box_share: sh / c,
            pointing_acc: hit / c,
            uniform_share: uni / c,
            objects: c,
        })
        .collect();
    Ok(HeadsOutput {
        provenance,
        stats,
        agreement: agree,
        grounding,
        relevancy_grounding,
        config: cfg.clone(),
        gallery,
        skipped: SkippedItem::from_all(&skipped),
    })
}

impl HeadsOutput {
    /// The best single head's (box share, pointing accuracy), each maximised separately.
    pub fn best_head(&self) -> (f64, f64) {
        self.grounding.iter().fold((0.0f64, 0.0f64), |a, g| (a.0.max(g.box_share), a.1.max(g.pointing_acc)))
    }

    /// `head_stats.csv`, `grounding.csv` and `grounding_relevancy.csv` (synthetic data),
    /// `agreement.json`, the gallery and the figures, into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let prov = &self.provenance;
        let cfg = &self.config;
        let mut csv =
            CsvOut::new(&prov.csv_header(), &["modality", "slot", "head", "entropy", "distance", "special", "self_mass", "neighbour", "n"]);
        for s in &self.stats {
            csv.row(&crate::csv_row![s.modality.name(), s.slot, s.head, s.entropy, s.distance, s.special, s.self_mass, s.neighbour, s.n]);
        }
        csv.write(&dir.join("head_stats.csv"))?;
        if !self.grounding.is_empty() {
            let mut gcsv = CsvOut::new(&prov.csv_header(), &["slot", "head", "box_share", "pointing_acc", "objects"]);
            for g in &self.grounding {
                gcsv.row(&crate::csv_row![g.slot, g.head, g.box_share, g.pointing_acc, g.objects]);
            }
            gcsv.write(&dir.join("grounding.csv"))?;
            let mut rcsv = CsvOut::new(&prov.csv_header(), &["method", "box_share", "pointing_acc", "uniform_share", "objects"]);
            for r in &self.relevancy_grounding {
                rcsv.row(&crate::csv_row![r.method, r.box_share, r.pointing_acc, r.uniform_share, r.objects]);
            }
            rcsv.write(&dir.join("grounding_relevancy.csv"))?;
        }
        if let Some(g) = &self.gallery {
            g.render(dir, cfg)?;
        }
        let j = serde_json::json!({"provenance": prov, "agreement": self.agreement});
        write_atomic(&dir.join("agreement.json"), to_json_pretty(&j).as_bytes())?;
        // Figures: slot × head heatmaps per statistic and modality; text-vs-vision scatter.
        for stat in Statistic::ALL {
            let name = stat.name();
            for modality in [Modality::Vision, Modality::Text] {
                let mut hm = stat_heatmap(cfg, &self.stats, modality, stat);
                hm.title = format!("{} — {}, {} tower (slot × head)", cfg.name, stat_unit(stat), modality.name());
                plot::heatmap_png_svg(&dir.join(format!("{name}_{}", modality.name())), &hm)?;
            }
            let (mut pts, mut groups) = (vec![], vec![]);
            for s in self.stats.iter().filter(|s| s.modality == Modality::Text) {
                if let Some(v) = self.stats.iter().find(|v| v.modality == Modality::Vision && v.slot == s.slot && v.head == s.head) {
                    pts.push((s.get(stat), v.get(stat)));
                    groups.push(format!("slot {}", s.slot));
                }
            }
            if let (false, Some(a)) = (pts.is_empty(), self.agreement.iter().find(|a| a.statistic == name)) {
                plot::scatter_png_svg(
                    &dir.join(format!("{name}_scatter")),
                    &plot::Scatter {
                        title: format!(
                            "{} — {}: ρ = {:.2} ({}; null 95 % [{:.2}, {:.2}])",
                            cfg.name,
                            stat_unit(stat),
                            a.spearman,
                            crate::analysis::stats::p_stated(a.p_value),
                            a.null_95[0],
                            a.null_95[1]
                        ),
                        x_label: format!("text: {}", stat_unit(stat)),
                        y_label: format!("vision: {}", stat_unit(stat)),
                        points: pts,
                        groups,
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// The slot × head heatmap of one statistic for one modality (NaN where a slot has no head).
pub fn stat_heatmap(cfg: &ModelConfig, stats: &[HeadStat], modality: Modality, stat: Statistic) -> plot::Heatmap {
    let heads_n = cfg.vision.heads.max(cfg.text.heads) as usize;
    // The same rows for both towers (the union of their attention slots), so that a shared
    // slot sits on the same row in the text and the vision panel; grey = no attention there
    // (e.g. MS-CLIP-S's vision slot 0, the conv stem).
    let mut slots: Vec<usize> = cfg.vision_attention_slots().into_iter().chain(cfg.text_attention_slots()).collect();
    slots.sort();
    slots.dedup();
    let values = slots
        .iter()
        .map(|&sl| {
            (0..heads_n)
                .map(|h| stats.iter().find(|s| s.modality == modality && s.slot == sl && s.head == h).map_or(f64::NAN, |s| s.get(stat)))
                .collect()
        })
        .collect();
    let shared = |s: usize| cfg.is_shared(s, SharedSite::AttnIn);
    plot::Heatmap {
        title: format!("{} — {}", cfg.name, modality.name()),
        values,
        row_labels: slots.iter().map(|&s| format!("slot {s}{}", if shared(s) { " (shared)" } else { "" })).collect(),
        col_labels: (0..heads_n).map(|h| format!("head {h}")).collect(),
        scale: plot::ColorScale::Sequential,
        unit: stat_unit(stat).into(),
        caption: Some(stat_caption(stat, stats.iter().map(|s| s.n).max().unwrap_or(0))),
    }
}

/// What a statistic measures per head and why its text and vision values do not compare
/// directly (the `transfer` analysis has statistics that do).
pub fn stat_caption(stat: Statistic, items: i64) -> String {
    let what = match stat {
        Statistic::Entropy => "the entropy of each query's attention row, in nats; it grows with the number of keys (up to 77 tokens against 1 + patches), so the towers' levels differ by construction",
        Statistic::Distance => "the attention-weighted distance from query to key, in patches (vision, 2-D) or token positions (text, 1-D, causal)",
        Statistic::Special => "the attention mass on the special token (CLS for vision, SOT for text); the causal mask gives early text queries little else to attend to",
        Statistic::SelfMass => "the attention mass a query puts on itself; the causal mask makes it 1 for the first text token",
        Statistic::Neighbour => "the attention mass on the neighbours: the previous token (text) or the 4 adjacent patches (vision), two different notions",
    };
    format!(
        "Per head, averaged over queries and {items} held-out items: {what}. Compare heads within a tower; across towers, use `msclip-analyze transfer` (statistics made comparable, with nulls)."
    )
}

/// A reader's label for a statistic, with its unit.
pub fn stat_unit(stat: Statistic) -> &'static str {
    match stat {
        Statistic::Entropy => "entropy (nats)",
        Statistic::Distance => "distance (patches / tokens)",
        Statistic::Special => "CLS/SOT mass",
        Statistic::SelfMass => "mass on itself",
        Statistic::Neighbour => "neighbour mass",
    }
}

/// Per statistic, every model's text and vision heatmaps side by side (`{stat}_side_by_side`
/// .png/.svg; rows = models, columns = text, vision; one colour scale per column).
pub fn write_side_by_side(dir: &Path, models: &[(ModelConfig, Vec<HeadStat>)]) -> Result<()> {
    for stat in Statistic::ALL {
        let name = stat.name();
        let panels = models
            .iter()
            .map(|(cfg, stats)| vec![stat_heatmap(cfg, stats, Modality::Text, stat), stat_heatmap(cfg, stats, Modality::Vision, stat)])
            .collect();
        plot::render(
            &dir.join(format!("{name}_side_by_side")),
            &plot::HeatmapPanels {
                title: format!("Head {} (slot × head): text | vision, one row per model; grey: no attention there", stat_unit(stat)),
                panels,
                shared_scale: false,
                missing: None,
                caption: Some(stat_caption(stat, models.iter().flat_map(|(_, s)| s.iter().map(|h| h.n)).max().unwrap_or(0))),
            },
        )?;
    }
    Ok(())
}

/// One item's attention for the "same head on a caption and on its image" gallery.
pub struct GalleryItem {
    /// The image as the model saw it.
    pub rgb: RgbImage,
    /// (slot, text probs `[H, L, L]` cut to SOT..=EOT, vision CLS maps `[H, g²]`).
    pub slots: Vec<(usize, Tensor, Tensor)>,
    /// Token labels SOT..=EOT.
    pub labels: Vec<String>,
}

impl GalleryItem {
    /// Item 0 of a batch: its (resized) image, tokens and EOT position.
    fn take(
        cache: &ActivationCache,
        rgb: RgbImage,
        tokens: &Tensor,
        eot: i64,
        tok: &Tokenizer,
        vslots: &[usize],
        cfg: &ModelConfig,
    ) -> GalleryItem {
        let g = cfg.grid();
        let mut slots = Vec::new();
        for &slot in vslots {
            let site = crate::model::Site::AttnProbs;
            let (Some(t), Some(v)) = (cache.get(Modality::Text, slot, site), cache.get(Modality::Vision, slot, site)) else { continue };
            let t = t.get(0).narrow(1, 0, eot + 1).narrow(2, 0, eot + 1).to_kind(tch::Kind::Float);
            let v = v.get(0).select(1, 0).narrow(1, 1, g * g).to_kind(tch::Kind::Float);
            slots.push((slot, t, v));
        }
        let ids: Vec<i64> = Vec::<i64>::try_from(tokens.get(0).narrow(0, 0, eot + 1)).expect("int64 ids");
        let labels = ids.iter().map(|&i| tok.token_label(i)).collect();
        GalleryItem { rgb, slots, labels }
    }

    /// `gallery_slot{S}.png/.svg` per slot: one row per head, the caption's token × token
    /// matrix next to the CLS → patch map on the image, from the same weights (shared slots)
    /// or the same position (CLIP).
    fn render(&self, out: &Path, cfg: &ModelConfig) -> Result<()> {
        for (slot, t, v) in &self.slots {
            let heads = t.size()[0].min(v.size()[0]);
            let rows = (0..heads)
                .map(|h| plot::HeadPairRow { label: format!("h{h}"), text: to_vec_f32(&t.get(h)), image_map: to_vec_f32(&v.get(h)) })
                .collect();
            let shared = cfg.is_shared(*slot, SharedSite::AttnIn);
            plot::render(
                &out.join(format!("gallery_slot{slot}")),
                &plot::HeadPairs {
                    title: format!(
                        "{} slot {slot} ({}): each head on the caption and on its image",
                        cfg.name,
                        if shared { "shared attention" } else { "separate weights" }
                    ),
                    base: &self.rgb,
                    grid: cfg.grid() as usize,
                    labels: self.labels.clone(),
                    rows,
                },
            )?;
        }
        Ok(())
    }
}
