//! `explore`: one self-contained HTML page (`DIR/index.html`) per analysis run, for one
//! image–caption pair or a small gallery. For each pair it holds every layer's and head's
//! attention in both towers (vision: every query over every key; text: SOT…EOT), the
//! caption-level attribution maps of `attention` (raw, rollout, relevancy) with their
//! deletion/insertion AUCs, and a relevancy map over the image for every caption token.
//!
//! Per-token relevancy uses the one relevancy definition of the library
//! ([`crate::analysis::attribution::relevancy`], Chefer et al. 2021) with a per-token score:
//! `s_t = exp(logit_scale) · ê_img · normalize(ln_final(h_t) · W_text)`, where `h_t` is token
//! t's residual stream leaving the text tower — the pair's logit as if token t were the pooled
//! token. At t = EOT it is the pair's logit itself, so the EOT map equals `attention`'s
//! relevancy map (tests/explorer.rs checks it). A word's map is its last BPE token's: under
//! the causal text mask that token has read the whole word.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::attention::{self, AttentionOptions, AttentionOutput, Method};
use crate::analysis::attribution::relevancy;
use crate::checkpoint::LoadedModel;
use crate::data::image::to_tensor;
use crate::data::manifest::{self, ManifestFormat};
use crate::error::{Error, Result};
use crate::io::{write_atomic, CsvOut, Provenance};
use crate::model::config::SharedSite;
use crate::model::{ActivationCache, Capture, Modality, Site};
use crate::plot::explorer::{colormap, render_page, Quantized};
use crate::tensor::{l2_normalize, to_vec_f32};
use crate::tokenizer::Truncation;

/// The most pairs one page holds (each B/32 pair is ~0.6 MB of page).
pub const MAX_PAIRS: usize = 64;

/// Settings of `explore`.
#[derive(Debug, Clone)]
pub struct ExploreOptions {
    /// The pairs: `(image, caption)`; `(None, None)` = the synthetic scene of `seed`.
    pub pairs: Vec<(Option<PathBuf>, Option<String>)>,
    /// Identity of the pair set for provenance when it came from a manifest (its sha256).
    pub data_id: Option<String>,
    /// Seed of the synthetic scene and of a fresh model's initialisation.
    pub seed: u64,
    /// First vision slot of relevancy (default: the last layer, as `attention`).
    pub start_layer: Option<usize>,
    /// Deletion/insertion curve resolution.
    pub faith_steps: usize,
    /// How an overlong caption is cut.
    pub truncation: Truncation,
}

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            pairs: vec![(None, None)],
            data_id: None,
            seed: 0,
            start_layer: None,
            faith_steps: 10,
            truncation: Truncation::KeepEot,
        }
    }
}

impl ExploreOptions {
    /// The first `limit` pairs of a manifest (OpenCLIP's `filepath`/`title` columns).
    pub fn from_manifest(path: &Path, limit: usize) -> Result<ExploreOptions> {
        if limit == 0 || limit > MAX_PAIRS {
            return Err(Error::config("--limit", limit, format!("must be 1..={MAX_PAIRS} (one page holds a small gallery)")));
        }
        let pairs = manifest::read(path, &ManifestFormat::for_path(path))?;
        if pairs.is_empty() {
            return Err(Error::Invalid(format!("{}: the manifest has no pairs", path.display())));
        }
        Ok(ExploreOptions {
            pairs: pairs.into_iter().take(limit).map(|p| (Some(p.image), Some(p.caption))).collect(),
            data_id: Some(manifest::manifest_hash(path)?),
            ..Default::default()
        })
    }
}

/// One layer slot of the page: which towers have attention there and whether it is shared.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    /// The slot.
    pub slot: usize,
    /// The vision tower has an attention layer here.
    pub vision: bool,
    /// The text tower has one.
    pub text: bool,
    /// Both attention projections (`attn_in`, `attn_out`) are one tensor for both towers.
    pub shared_attention: bool,
}

/// One tower's attention at one slot: `[heads + 1, side, side]` (the last is the head mean).
#[derive(Debug, Clone)]
pub struct SlotAttention {
    /// The slot.
    pub slot: usize,
    /// Heads (the head mean follows them).
    pub heads: usize,
    /// Tokens per side (vision: CLS + patches; text: SOT…EOT).
    pub side: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// One explored pair.
pub struct ExplorePair {
    /// `attention`'s report on the pair (maps, AUCs, tokens, the image as the model saw it).
    pub attention: AttentionOutput,
    /// Vision attention per slot.
    pub vision: Vec<SlotAttention>,
    /// Text attention per slot.
    pub text: Vec<SlotAttention>,
    /// Per token position 0..=EOT: relevancy over the `grid²` patches.
    pub token_maps: Vec<Vec<f32>>,
}

/// The report of `explore`.
pub struct ExploreOutput {
    /// Where the page came from.
    pub provenance: Provenance,
    /// The model's name.
    pub model: String,
    /// Patch grid side.
    pub grid: i64,
    /// Heads per tower.
    pub heads: (usize, usize),
    /// Per slot.
    pub slots: Vec<SlotInfo>,
    /// The pairs.
    pub pairs: Vec<ExplorePair>,
}

/// Computes the page's data. Every option is checked before the first forward pass.
pub fn run(model: &LoadedModel, opts: &ExploreOptions) -> Result<ExploreOutput> {
    if opts.pairs.is_empty() || opts.pairs.len() > MAX_PAIRS {
        return Err(Error::Invalid(format!("explore takes 1..={MAX_PAIRS} pairs, got {}", opts.pairs.len())));
    }
    let cfg = &model.model.config;
    let all_v = cfg.vision_attention_slots();
    if let Some(s) = opts.start_layer {
        if !all_v.contains(&s) {
            return Err(Error::Invalid(format!("--start-layer {s} is not a vision attention slot ({all_v:?})")));
        }
    }
    for (image, caption) in &opts.pairs {
        if let Some(p) = image {
            if !p.is_file() {
                return Err(Error::Invalid(format!("{}: no such image file", p.display())));
            }
            if caption.is_none() {
                return Err(Error::Invalid(format!("{}: --caption is required with --image", p.display())));
            }
        }
    }
    let mut pairs = Vec::with_capacity(opts.pairs.len());
    for (image, caption) in &opts.pairs {
        let att_opts = AttentionOptions {
            image: image.clone(),
            caption: caption.clone(),
            seed: opts.seed,
            methods: vec![Method::Relevancy, Method::Rollout, Method::Raw],
            start_layer: opts.start_layer,
            faith_steps: opts.faith_steps,
            truncation: opts.truncation,
            ..Default::default()
        };
        let att = attention::run(model, &att_opts)?;
        pairs.push(explore_pair(model, att, opts)?);
    }
    let mut provenance = pairs[0].attention.provenance.clone();
    if let Some(id) = &opts.data_id {
        provenance.data_sha256 = id.clone();
    }
    provenance.notes.push(
        "per-token relevancy: Chefer relevancy of s_t = exp(logit_scale)·img·normalize(ln_final(h_t)·W_text), h_t = token t's \
         last residual stream; s_EOT is the pair's logit; a word's map is its last token's"
            .into(),
    );
    provenance.notes.push(
        "page maps are u8 per row (one query's attention, one token's relevancy): q = round(255·v/max), drawn as q·max/255 \
         (error ≤ max/510)"
            .into(),
    );
    let slots = (0..cfg.vision.layers.max(cfg.text.layers))
        .map(|s| SlotInfo {
            slot: s,
            vision: all_v.contains(&s),
            text: s < cfg.text.layers,
            shared_attention: cfg.is_shared(s, SharedSite::AttnIn) && cfg.is_shared(s, SharedSite::AttnOut),
        })
        .filter(|s| s.vision || s.text)
        .collect();
    Ok(ExploreOutput {
        provenance,
        model: cfg.name.clone(),
        grid: cfg.grid(),
        heads: (cfg.vision.heads as usize, cfg.text.heads as usize),
        slots,
        pairs,
    })
}

/// `[1, H, L, L]` → `[H + 1, n, n]` values (the first n tokens; the head mean appended).
fn with_mean(probs: &Tensor, n: i64) -> (usize, Vec<f32>) {
    let a = probs.get(0).narrow(1, 0, n).narrow(2, 0, n).to_kind(Kind::Float);
    let h = a.size()[0];
    let all = Tensor::cat(&[a.shallow_clone(), a.mean_dim(0, true, Kind::Float)], 0);
    (h as usize, to_vec_f32(&all))
}

fn explore_pair(model: &LoadedModel, att: AttentionOutput, opts: &ExploreOptions) -> Result<ExplorePair> {
    let m = &model.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let grid = cfg.grid();
    let pixels = to_tensor(att.rgb.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std).unsqueeze(0);
    // The caption's ids and EOT as `attention` tokenized them (with opts.truncation).
    let t_len = att.eot_position as i64 + 1;
    let tokens = Tensor::from_slice(&att.token_ids).view([1, -1]);

    // The vision forward keeps its graph: every token's score is differentiated through it.
    let mut vcache = ActivationCache::new();
    let ie = m.encode_image_with(&pixels, &Capture::attention().keep_graph(), &mut vcache, false)?;
    let all_v = cfg.vision_attention_slots();
    let n_v = grid * grid + 1;
    let mut vision = Vec::new();
    for &s in &all_v {
        let (heads, values) = with_mean(&vcache.require(Modality::Vision, s, Site::AttnProbs)?.detach(), n_v);
        vision.push(SlotAttention { slot: s, heads, side: n_v as usize, values });
    }
    let mut tcache = ActivationCache::new();
    let _text_embedding = tch::no_grad(|| m.encode_text_with(&tokens, &Capture::attention(), &mut tcache))?;
    let mut text = Vec::new();
    for s in cfg.text_attention_slots() {
        let (heads, values) = with_mean(tcache.require(Modality::Text, s, Site::AttnProbs)?, t_len);
        text.push(SlotAttention { slot: s, heads, side: t_len as usize, values });
    }

    // Every position's text feature: the caption repeated T times, copy t pooled at t (the
    // causal mask makes h_t the same as in the single pass).
    let feats = tch::no_grad(|| -> Result<Tensor> {
        let batch = tokens.narrow(1, 0, t_len).repeat([t_len, 1]);
        let rows = Tensor::arange(t_len, (Kind::Int64, batch.device()));
        let pooled = m.text.run_from(0, &m.text.embed(&batch), &rows, &Capture::none(), &mut ActivationCache::new())?;
        Ok(l2_normalize(&m.text.head(&pooled)))
    })?;
    let scores = ie.matmul(&feats.tr()).squeeze_dim(0) * m.logit_scale.exp().detach(); // [T]
    let from = opts.start_layer.map_or(all_v.len() - 1, |s| all_v.iter().position(|&x| x == s).expect("checked"));
    let probs: Vec<Tensor> = all_v[from..]
        .iter()
        .map(|&s| vcache.require(Modality::Vision, s, Site::AttnProbs).map(|t| t.shallow_clone()))
        .collect::<Result<_>>()?;
    let inputs: Vec<&Tensor> = probs.iter().collect();
    let detached: Vec<Tensor> = probs.iter().map(|t| t.get(0).detach()).collect();
    let mut token_maps = Vec::with_capacity(t_len as usize);
    for t in 0..t_len {
        let grads = Tensor::run_backward(&[scores.get(t)], &inputs, true, false);
        let r = relevancy(&detached, &grads.iter().map(|g| g.get(0)).collect::<Vec<_>>());
        token_maps.push(to_vec_f32(&r.get(0).narrow(0, 1, grid * grid)));
    }
    Ok(ExplorePair { attention: att, vision, text, token_maps })
}

/// Quantised data of one pair, as the page reads it.
#[derive(Serialize)]
struct PagePair<'a> {
    caption: &'a str,
    image: String,
    similarity: f64,
    tokens: &'a [String],
    eot: usize,
    /// Words with at least one token inside the context (a truncated caption's tail has none).
    words: Vec<&'a crate::tokenizer::WordTokens>,
    truncated: bool,
    token_maps: Quantized,
    methods: Vec<PageMethod>,
    vision: Vec<PageAttention>,
    text: Vec<PageAttention>,
}

#[derive(Serialize)]
struct PageMethod {
    name: String,
    map: Quantized,
    deletion_auc: f64,
    insertion_auc: f64,
}

#[derive(Serialize)]
struct PageAttention {
    slot: usize,
    heads: usize,
    side: usize,
    attn: Quantized,
}

#[derive(Serialize)]
struct Page<'a> {
    model: &'a str,
    grid: i64,
    vision_heads: usize,
    text_heads: usize,
    slots: &'a [SlotInfo],
    colormap: Vec<[u8; 3]>,
    provenance: &'a Provenance,
    notes: Vec<String>,
    pairs: Vec<PagePair<'a>>,
}

/// What `explore` reports about the page it wrote (`explore.json`).
#[derive(Serialize)]
pub struct PageReport {
    /// Where it came from.
    pub provenance: Provenance,
    /// `index.html`'s size in bytes.
    pub page_bytes: usize,
    /// Pairs on the page.
    pub pairs: usize,
    /// Negative values clamped to 0 by the quantisation (0 for attention and relevancy).
    pub clamped_values: usize,
}

fn png_data_uri(rgb: &image::RgbImage) -> Result<String> {
    let mut buf = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| Error::Invalid(format!("encoding the page's image: {e}")))?;
    Ok(format!("data:image/png;base64,{}", crate::plot::explorer::base64(buf.get_ref())))
}

impl ExploreOutput {
    /// The page as HTML, and how many negative values the quantisation clamped.
    pub fn page(&self) -> Result<(String, usize)> {
        let mut clamped = 0;
        let mut pairs = Vec::new();
        for p in &self.pairs {
            let a = &p.attention;
            let np = (self.grid * self.grid) as usize;
            let token_maps = Quantized::rows(&p.token_maps.concat(), np);
            let methods: Vec<PageMethod> = a
                .image_attribution
                .iter()
                .map(|(name, map)| PageMethod {
                    name: name.clone(),
                    map: Quantized::rows(map, np),
                    deletion_auc: a.faithfulness.get(name).map_or(f64::NAN, |f| f.deletion_auc),
                    insertion_auc: a.faithfulness.get(name).map_or(f64::NAN, |f| f.insertion_auc),
                })
                .collect();
            let blocks = |v: &[SlotAttention]| -> Vec<PageAttention> {
                v.iter()
                    .map(|s| PageAttention { slot: s.slot, heads: s.heads, side: s.side, attn: Quantized::rows(&s.values, s.side) })
                    .collect()
            };
            let (vision, text) = (blocks(&p.vision), blocks(&p.text));
            clamped += token_maps.clamped
                + methods.iter().map(|m| m.map.clamped).sum::<usize>()
                + vision.iter().chain(&text).map(|b| b.attn.clamped).sum::<usize>();
            pairs.push(PagePair {
                caption: &a.caption,
                image: png_data_uri(&a.rgb)?,
                similarity: a.similarity,
                tokens: &a.labels,
                eot: a.eot_position,
                words: a.words.iter().filter(|w| !w.positions.is_empty()).collect(),
                truncated: a.truncated,
                token_maps,
                methods,
                vision,
                text,
            });
        }
        let page = Page {
            model: &self.model,
            grid: self.grid,
            vision_heads: self.heads.0,
            text_heads: self.heads.1,
            slots: &self.slots,
            colormap: colormap(),
            provenance: &self.provenance,
            notes: self.provenance.notes.clone(),
            pairs,
        };
        Ok((render_page(&page), clamped))
    }

    /// `index.html` (the page), `attribution.csv` (every map the page draws over the image,
    /// unquantised) and `explore.json` (provenance, page size) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<PageReport> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let (html, clamped) = self.page()?;
        let mut csv = CsvOut::new(&self.provenance.csv_header(), &["pair", "map", "token", "label", "patch", "value"]);
        for (i, p) in self.pairs.iter().enumerate() {
            for (name, map) in &p.attention.image_attribution {
                for (k, v) in map.iter().enumerate() {
                    csv.row(&crate::csv_row![i, name, "", "", k, format!("{v:.6e}")]);
                }
            }
            for (t, map) in p.token_maps.iter().enumerate() {
                let label = p.attention.labels.get(t).cloned().unwrap_or_default();
                for (k, v) in map.iter().enumerate() {
                    csv.row(&crate::csv_row![i, "token_relevancy", t, label, k, format!("{v:.6e}")]);
                }
            }
        }
        csv.write(&dir.join("attribution.csv"))?;
        write_atomic(&dir.join("index.html"), html.as_bytes())?;
        let report =
            PageReport { provenance: self.provenance.clone(), page_bytes: html.len(), pairs: self.pairs.len(), clamped_values: clamped };
        super::write_json(dir, "explore.json", &report)?;
        Ok(report)
    }
}
