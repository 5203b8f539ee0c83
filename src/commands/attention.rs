//! `attention`: per-head attention maps of both towers for one image and caption (CLS or any
//! patch query → patches over the image; token × token for the caption), and attribution
//! maps — raw last-layer attention, rollout (Abnar & Zuidema 2020) and gradient-weighted
//! relevancy (Chefer et al. 2021) — with deletion/insertion faithfulness of the image–caption
//! cosine. Relevancy differentiates the pair's logit ([`RELEVANCY_SCORE`]) and starts, by
//! default, at the last attention layer of each tower, as the reference CLIP code.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::analysis::attention::{image_query_maps, text_maps, HeadMap};
use crate::analysis::attribution::{auc, order_by_relevance, perturbation_masks, relevancy, rollout};
use crate::checkpoint::LoadedModel;
use crate::data::image::{load_rgb, resize_center_crop, to_tensor};
use crate::data::synth;
use crate::error::{Error, Result};
use crate::eval::RELEVANCY_SCORE;
use crate::io::{sha256_hex, CsvOut, Provenance};
use crate::model::{ActivationCache, Capture, Modality, MsClip, Site};
use crate::plot::{matrix_png_svg, overlay_grid_png, Matrix, OverlayGrid};
use crate::tensor::{to_vec_f32, to_vec_f64};
use crate::tokenizer::{Tokenizer, Truncation, WordTokens};

/// An attribution method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Last layer's CLS → patch attention, head mean.
    Raw,
    /// Attention rollout (Abnar & Zuidema 2020).
    Rollout,
    /// Gradient-weighted relevancy (Chefer et al. 2021).
    Relevancy,
}

impl Method {
    /// `raw`, `rollout` or `relevancy`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Raw => "raw",
            Method::Rollout => "rollout",
            Method::Relevancy => "relevancy",
        }
    }

    /// `raw`, `rollout`, `relevancy` or `all` (the three).
    pub fn parse(s: &str) -> Result<Vec<Method>> {
        match s {
            "all" => Ok(vec![Method::Raw, Method::Rollout, Method::Relevancy]),
            "raw" => Ok(vec![Method::Raw]),
            "rollout" => Ok(vec![Method::Rollout]),
            "relevancy" => Ok(vec![Method::Relevancy]),
            other => Err(Error::config("--method", other, "expected raw, rollout, relevancy or all")),
        }
    }
}

/// Settings of `attention`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOptions {
    /// Image file; without it a scene of the synthetic world (index 0 of the world `seed`).
    pub image: Option<PathBuf>,
    /// Caption; defaults to the synthetic scene's caption.
    pub caption: Option<String>,
    /// Seed of the synthetic scene (and of a fresh model's initialisation).
    pub seed: u64,
    /// Slots to draw (default: every attention layer).
    pub layers: Option<Vec<usize>>,
    /// Heads to draw (default: all).
    pub heads: Option<Vec<usize>>,
    /// Query token of the image maps: 0 = CLS, 1 + r·grid + c = the patch at row r, column c.
    pub query: i64,
    /// Attribution methods to compute.
    pub methods: Vec<Method>,
    /// First vision slot of rollout/relevancy (default: every layer for rollout, the last
    /// layer for relevancy).
    pub start_layer: Option<usize>,
    /// First text slot of relevancy (default: the last layer).
    pub text_start_layer: Option<usize>,
    /// Deletion/insertion curve resolution (fractions k/steps of the patches).
    pub faith_steps: usize,
    /// How an overlong caption is cut.
    pub truncation: Truncation,
}

impl Default for AttentionOptions {
    fn default() -> Self {
        AttentionOptions {
            image: None,
            caption: None,
            seed: 0,
            layers: None,
            heads: None,
            query: 0,
            methods: vec![Method::Raw, Method::Rollout, Method::Relevancy],
            start_layer: None,
            text_start_layer: None,
            faith_steps: 10,
            truncation: Truncation::KeepEot,
        }
    }
}

/// Which layers relevancy and rollout used, and what was differentiated.
#[derive(Debug, Clone, Serialize)]
pub struct AttributionSetup {
    /// What relevancy differentiates.
    pub score: &'static str,
    /// Vision slots relevancy propagates through.
    pub relevancy_vision_slots: Vec<usize>,
    /// Text slots relevancy propagates through.
    pub relevancy_text_slots: Vec<usize>,
    /// Vision slots of rollout.
    pub rollout_vision_slots: Vec<usize>,
    /// Text slots of rollout.
    pub rollout_text_slots: Vec<usize>,
}

/// Deletion and insertion curves of one map and their areas.
#[derive(Debug, Clone, Serialize)]
pub struct Faithfulness {
    /// Area under the deletion curve (lower = more faithful).
    pub deletion_auc: f64,
    /// Cosine after removing k/steps of the patches, most relevant first.
    pub deletion_curve: Vec<f64>,
    /// Area under the insertion curve (higher = more faithful).
    pub insertion_auc: f64,
    /// Cosine after showing k/steps of the patches, most relevant first.
    pub insertion_curve: Vec<f64>,
}

/// The report of `attention` (`attention.json`); the maps themselves go to the CSVs and
/// figures.
#[derive(Serialize)]
pub struct AttentionOutput {
    /// Where the outputs came from.
    pub provenance: Provenance,
    /// The caption analysed.
    pub caption: String,
    /// Its token ids.
    pub token_ids: Vec<i64>,
    /// The pooled position.
    pub eot_position: usize,
    /// Word → token positions.
    pub words: Vec<WordTokens>,
    /// The image–caption cosine.
    pub similarity: f64,
    /// Vision slots drawn.
    pub vision_slots: Vec<usize>,
    /// Text slots drawn.
    pub text_slots: Vec<usize>,
    /// Patch grid side.
    pub grid: i64,
    /// Per method name.
    pub faithfulness: std::collections::BTreeMap<String, Faithfulness>,
    /// The layers and score of the attribution maps.
    pub attribution: AttributionSetup,
    /// Per vision slot: each selected head's map, then the head mean.
    #[serde(skip)]
    pub vision_maps: Vec<Vec<HeadMap>>,
    /// Per text slot: each head's token × token matrix, then the head mean.
    #[serde(skip)]
    pub text_maps: Vec<Vec<HeadMap>>,
    /// (method, image map over the grid).
    #[serde(skip)]
    pub image_attribution: Vec<(String, Vec<f32>)>,
    /// (method, per-token relevance SOT..=EOT).
    #[serde(skip)]
    pub text_attribution: Vec<(String, Vec<f64>)>,
    /// The image as the model saw it (resized, cropped).
    #[serde(skip)]
    pub rgb: RgbImage,
    /// Token labels SOT..=EOT.
    #[serde(skip)]
    pub labels: Vec<String>,
    /// Heads drawn.
    #[serde(skip)]
    pub heads: Vec<usize>,
    /// The model's name.
    #[serde(skip)]
    pub model_name: String,
    /// The query token of the image maps.
    #[serde(skip)]
    pub query: i64,
    /// Vision heads.
    #[serde(skip)]
    pub vision_heads: usize,
    /// Whether the caption was cut.
    #[serde(skip)]
    pub truncated: bool,
}

fn select<T: Copy + PartialEq + std::fmt::Display>(wanted: &Option<Vec<T>>, all: &[T], what: &str) -> Result<Vec<T>> {
    match wanted {
        None => Ok(all.to_vec()),
        Some(w) => {
            for x in w {
                if !all.contains(x) {
                    let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
                    return Err(Error::Invalid(format!("{what} {x} out of range; available: {}", list.join(","))));
                }
            }
            Ok(w.clone())
        }
    }
}

/// Runs the analysis. Every option is checked before anything is computed or written.
pub fn run(model: &LoadedModel, opts: &AttentionOptions) -> Result<AttentionOutput> {
    let m = &model.model;
    let cfg = m.config.clone();
    let size = cfg.vision.image_size as u32;
    let grid = cfg.grid();
    let all_v = cfg.vision_attention_slots();
    let all_t = cfg.text_attention_slots();
    let vslots = select(&opts.layers.as_ref().map(|l| l.iter().copied().filter(|s| cfg.vision_has_block(*s)).collect()), &all_v, "layer")?;
    let tslots = select(&opts.layers, &all_t, "layer")?;
    let heads_all: Vec<usize> = (0..cfg.vision.heads.max(cfg.text.heads) as usize).collect();
    let heads = select(&opts.heads, &heads_all, "head")?;
    if opts.query < 0 || opts.query > grid * grid {
        return Err(Error::config("--query", opts.query, format!("must be 0 (CLS) or a patch token 1..={}", grid * grid)));
    }
    if let Some(s0) = opts.start_layer {
        if !all_v.contains(&s0) {
            return Err(Error::Invalid(format!("--start-layer {s0} is not a vision attention slot ({all_v:?})")));
        }
    }
    if let Some(s0) = opts.text_start_layer {
        if !all_t.contains(&s0) {
            return Err(Error::Invalid(format!("--text-start-layer {s0} is not a text attention slot ({all_t:?})")));
        }
    }
    if opts.faith_steps == 0 || opts.methods.is_empty() {
        return Err(Error::config("--faith-steps", opts.faith_steps, "need at least one step and one method"));
    }
    let (rgb, default_caption, data_id) = match &opts.image {
        Some(path) => {
            let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            (resize_center_crop(&load_rgb(path)?, size), None, sha256_hex(&raw))
        }
        None => {
            let scene = synth::scene(opts.seed, 0, size);
            let im = RgbImage::from_raw(size, size, scene.pixels.clone()).expect("scene size");
            (im, Some(scene.caption.clone()), format!("synthetic:seed={}:index=0", opts.seed))
        }
    };
    let caption = opts.caption.clone().or(default_caption).ok_or_else(|| Error::Invalid("--caption is required with --image".into()))?;
    let tok = Tokenizer::new(cfg.text.context_length as usize).with_truncation(opts.truncation);
    let enc = tok.tokenize(&caption);
    let pixels = to_tensor(rgb.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std).unsqueeze(0);
    let tokens = Tensor::from_slice(&enc.ids).view([1, -1]);

    let mut cache = ActivationCache::new();
    let capture = Capture::attention();
    let (ie, te) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        Ok((m.encode_image_with(&pixels, &capture, &mut cache, false)?, m.encode_text_with(&tokens, &capture, &mut cache)?))
    })?;
    let similarity = ie.matmul(&te.tr()).double_value(&[0, 0]);

    let mut provenance = Provenance::new(&cfg.name, model.weights_id.clone(), data_id, cfg.preprocess.clone(), opts.seed);
    if model.meta.is_none() {
        provenance.notes.push("model weights are a fresh initialisation (no checkpoint given)".into());
    }
    provenance.notes.push("attention = post-softmax probabilities per head; image maps are CLS→patch rows".into());
    let mut vision_maps = vec![];
    for &slot in &vslots {
        let probs = cache.require(Modality::Vision, slot, Site::AttnProbs)?;
        let maps = image_query_maps(probs, slot, 0, opts.query, grid)?;
        vision_maps
            .push(maps.into_iter().filter(|mp| mp.head.is_none_or(|h| heads.contains(&h) && h < cfg.vision.heads as usize)).collect());
    }
    let mut tmaps = vec![];
    for &slot in &tslots {
        let probs = cache.require(Modality::Text, slot, Site::AttnProbs)?;
        tmaps.push(text_maps(probs, slot, 0, enc.eot_position as i64)?);
    }
    let labels: Vec<String> = enc.ids[..=enc.eot_position].iter().map(|&i| tok.token_label(i)).collect();
    let v_from = opts.start_layer.map_or(0, |s| all_v.iter().position(|&x| x == s).expect("checked"));
    let v_rel_from = opts.start_layer.map_or(all_v.len() - 1, |s| all_v.iter().position(|&x| x == s).expect("checked"));
    let t_rel_from = opts.text_start_layer.map_or(all_t.len() - 1, |s| all_t.iter().position(|&x| x == s).expect("checked"));
    let setup = AttributionSetup {
        score: RELEVANCY_SCORE,
        relevancy_vision_slots: all_v[v_rel_from..].to_vec(),
        relevancy_text_slots: all_t[t_rel_from..].to_vec(),
        rollout_vision_slots: all_v[v_from..].to_vec(),
        rollout_text_slots: all_t.clone(),
    };
    provenance.notes.push(format!(
        "relevancy differentiates the {RELEVANCY_SCORE}; vision slots {:?}, text slots {:?}; rollout over vision slots {:?}, text slots {:?}",
        setup.relevancy_vision_slots, setup.relevancy_text_slots, setup.rollout_vision_slots, setup.rollout_text_slots
    ));
    let (image_attribution, text_attribution, faithfulness) =
        attribution(m, &pixels, &tokens, enc.eot_position as i64, &opts.methods, (v_from, v_rel_from, t_rel_from), opts.faith_steps)?;
    Ok(AttentionOutput {
        provenance,
        caption,
        token_ids: enc.ids.clone(),
        eot_position: enc.eot_position,
        words: enc.words.clone(),
        similarity,
        vision_slots: vslots,
        text_slots: tslots,
        grid,
        faithfulness,
        attribution: setup,
        vision_maps,
        text_maps: tmaps,
        image_attribution,
        text_attribution,
        rgb,
        labels,
        heads,
        model_name: cfg.name.clone(),
        query: opts.query,
        vision_heads: cfg.vision.heads as usize,
        truncated: enc.truncated,
    })
}

type Attribution = (Vec<(String, Vec<f32>)>, Vec<(String, Vec<f64>)>, std::collections::BTreeMap<String, Faithfulness>);

/// Raw / rollout / relevancy maps for one image–caption pair, text relevancy, and
/// deletion/insertion AUCs of the image–caption cosine. `from` = (rollout vision start,
/// relevancy vision start, relevancy text start) as indices into the attention slots.
fn attribution(
    m: &MsClip,
    pixels: &Tensor,
    tokens: &Tensor,
    eot: i64,
    methods: &[Method],
    from: (usize, usize, usize),
    steps: usize,
) -> Result<Attribution> {
    let cfg = &m.config;
    let grid = cfg.grid();
    let vslots = cfg.vision_attention_slots();
    let tslots = cfg.text_attention_slots();
    // One forward with the graph kept, so ∂s/∂A can be taken for relevancy.
    let mut cache = ActivationCache::new();
    let cap = Capture::attention().keep_graph();
    let ie = m.encode_image_with(pixels, &cap, &mut cache, false)?;
    let te = m.encode_text_with(tokens, &cap, &mut cache)?;
    let score = (&ie * &te).sum(Kind::Float) * m.logit_scale.exp();
    let pv: Vec<Tensor> =
        vslots.iter().map(|&s| cache.require(Modality::Vision, s, Site::AttnProbs).map(|t| t.shallow_clone())).collect::<Result<_>>()?;
    let pt: Vec<Tensor> =
        tslots.iter().map(|&s| cache.require(Modality::Text, s, Site::AttnProbs).map(|t| t.shallow_clone())).collect::<Result<_>>()?;
    let mut maps: Vec<(String, Vec<f32>)> = Vec::new();
    let mut text_rel: Vec<(String, Vec<f64>)> = Vec::new();
    let e = eot;
    let item0 = |ts: &[Tensor]| ts.iter().map(|t| t.get(0).detach()).collect::<Vec<_>>();
    for &method in methods {
        match method {
            Method::Raw => {
                let last = pv.last().expect("a vision attention layer").get(0).detach().mean_dim(0, false, Kind::Float);
                maps.push(("raw".into(), to_vec_f32(&last.get(0).narrow(0, 1, grid * grid))));
            }
            Method::Rollout => {
                let r = rollout(&item0(&pv[from.0..]));
                maps.push(("rollout".into(), to_vec_f32(&r.get(0).narrow(0, 1, grid * grid))));
                let rt = rollout(&item0(&pt));
                text_rel.push(("rollout".into(), to_vec_f64(&rt.get(e).narrow(0, 0, e + 1))));
            }
            Method::Relevancy => {
                let (fv, ft) = (from.1, from.2);
                let inputs: Vec<&Tensor> = pv[fv..].iter().chain(pt[ft..].iter()).collect();
                let grads = Tensor::run_backward(&[&score], &inputs, true, false);
                let nv = pv.len() - fv;
                let rv = relevancy(&item0(&pv[fv..]), &grads[..nv].iter().map(|g| g.get(0)).collect::<Vec<_>>());
                maps.push(("relevancy".into(), to_vec_f32(&rv.get(0).narrow(0, 1, grid * grid))));
                let rt = relevancy(&item0(&pt[ft..]), &grads[nv..].iter().map(|g| g.get(0)).collect::<Vec<_>>());
                let row = to_vec_f64(&rt.get(e).narrow(0, 0, e + 1));
                // Words only (1..e), normalised to sum 1.
                let words: f64 = row.get(1..e as usize).map_or(0.0, |w| w.iter().sum());
                let norm: Vec<f64> =
                    row.iter().enumerate().map(|(i, v)| if i >= 1 && i < e as usize && words > 0.0 { v / words } else { 0.0 }).collect();
                text_rel.push(("relevancy".into(), norm));
            }
        }
    }
    // Faithfulness: mask patches (normalised value 0 = the mean colour) in relevance order.
    let p = cfg.vision.patch_size;
    let mut report = std::collections::BTreeMap::new();
    for (name, map) in &maps {
        let order = order_by_relevance(map);
        let mut curves = vec![];
        for insertion in [false, true] {
            let masks = perturbation_masks(&order, steps, insertion);
            let mk = Tensor::from_slice(&masks.concat()).view([masks.len() as i64, 1, grid, grid]);
            let up = mk.repeat_interleave_self_int(p, Some(2), None).repeat_interleave_self_int(p, Some(3), None);
            let mut curve = vec![];
            // The masked images in chunks of 64: memory bounded whatever the step count.
            for chunk in up.split(64, 0) {
                let batch = pixels * chunk;
                curve.extend(tch::no_grad(|| -> Result<Vec<f64>> {
                    let emb = m.encode_image(&batch)?;
                    Ok(to_vec_f64(&emb.matmul(&te.detach().tr()).squeeze_dim(1)))
                })?);
            }
            curves.push(curve);
        }
        let insertion_curve = curves.pop().expect("two curves");
        let deletion_curve = curves.pop().expect("two curves");
        report.insert(
            name.clone(),
            Faithfulness { deletion_auc: auc(&deletion_curve), deletion_curve, insertion_auc: auc(&insertion_curve), insertion_curve },
        );
    }
    Ok((maps, text_rel, report))
}

fn short(s: &str) -> String {
    if s.chars().count() > 48 {
        format!("{}…", s.chars().take(47).collect::<String>())
    } else {
        s.to_string()
    }
}

fn push_csv(csv: &mut CsvOut, modality: &str, m: &HeadMap, query: i64) {
    let head = m.head.map(|h| h.to_string()).unwrap_or_else(|| "mean".into());
    for (i, v) in m.values.iter().enumerate() {
        // Image rows: key = patch index (row-major); text rows: query,key inside SOT..EOT.
        let (q, k) = if query >= 0 { (query as usize, i) } else { (i / m.side, i % m.side) };
        csv.row(&crate::csv_row![modality, m.slot, head, q, k, format!("{v:.6e}")]);
    }
}

impl AttentionOutput {
    /// `vision_cls_attention.png`, `text_attention_slot{S}.png/.svg`, `attention.csv`,
    /// `attribution.png`, `attribution.csv`, `attention.json`, into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let prov = &self.provenance;
        let grid = self.grid;
        let mut csv = CsvOut::new(&prov.csv_header(), &["modality", "slot", "head", "query", "key", "value"]);
        let mut cells = Vec::new();
        for maps in &self.vision_maps {
            let mut row = Vec::new();
            for m in maps {
                push_csv(&mut csv, "vision", m, self.query);
                row.push((m.values.clone(), m.side));
            }
            cells.push(row);
        }
        let mut col_labels: Vec<String> = self.heads.iter().filter(|&&h| h < self.vision_heads).map(|h| format!("head {h}")).collect();
        col_labels.push("mean".into());
        overlay_grid_png(
            &dir.join("vision_cls_attention.png"),
            &OverlayGrid {
                title: format!(
                    "{} — {}→patch attention, \"{}\"",
                    self.model_name,
                    if self.query == 0 { "CLS".to_string() } else { format!("patch {}", self.query - 1) },
                    short(&self.caption)
                ),
                base: &self.rgb,
                cells,
                row_labels: self.vision_slots.iter().map(|s| format!("slot {s}")).collect(),
                col_labels,
                cell: 96,
                alpha: 0.55,
                shared_scale: false,
                unit: "attention".into(),
            },
        )?;
        for (slot, maps) in self.text_slots.iter().zip(&self.text_maps) {
            for m in maps.iter().filter(|m| m.head.is_none_or(|h| self.heads.contains(&h))) {
                push_csv(&mut csv, "text", m, -1);
            }
            let mean = maps.last().expect("head mean");
            matrix_png_svg(
                &dir.join(format!("text_attention_slot{slot}")),
                &Matrix {
                    title: format!("{} — text attention, slot {slot} (head mean)", self.model_name),
                    values: &mean.values,
                    side: mean.side,
                    labels: self.labels.clone(),
                },
            )?;
        }
        csv.write(&dir.join("attention.csv"))?;
        overlay_grid_png(
            &dir.join("attribution.png"),
            &OverlayGrid {
                title: format!("{} — image attribution for \"{}\" (AUC: deletion ↓, insertion ↑)", self.model_name, short(&self.caption)),
                base: &self.rgb,
                cells: vec![self.image_attribution.iter().map(|(_, v)| (v.clone(), grid as usize)).collect()],
                row_labels: vec!["image".into()],
                col_labels: self
                    .image_attribution
                    .iter()
                    .map(|(n, _)| match self.faithfulness.get(n) {
                        Some(f) => format!("{n} (del {:.2}, ins {:.2})", f.deletion_auc, f.insertion_auc),
                        None => n.clone(),
                    })
                    .collect(),
                cell: 128,
                alpha: 0.55,
                shared_scale: false,
                unit: "attribution".into(),
            },
        )?;
        let mut csv = CsvOut::new(&prov.csv_header(), &["method", "kind", "index", "label", "value"]);
        for (name, v) in &self.image_attribution {
            for (i, x) in v.iter().enumerate() {
                csv.row(&crate::csv_row![name, "image_patch", i, "", format!("{x:.6e}")]);
            }
        }
        for (name, v) in &self.text_attribution {
            for (i, x) in v.iter().enumerate() {
                // Token labels are caption text: quoted by the writer, never altered.
                csv.row(&crate::csv_row![name, "text_token", i, self.labels.get(i).cloned().unwrap_or_default(), format!("{x:.6e}")]);
            }
        }
        csv.write(&dir.join("attribution.csv"))?;
        super::write_json(dir, "attention.json", self)
    }
}
