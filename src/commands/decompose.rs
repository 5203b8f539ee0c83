//! `decompose`: the direct-effect decomposition of both embeddings
//! ([`crate::causal::decompose`]) with its sum check, the mean-ablation curve over the last K
//! layers, TextSpan descriptions per head, and the comparison of each shared head's
//! contributions to image and to text embeddings (CLIP's head pairs the baseline).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use super::{provenance, write_json};
use crate::causal::decompose::{self, mean_ablated, mean_cosine, subspace_similarity, synthetic_text_pool, text_span, SpanStep, Term};
use crate::causal::{EvalSet, Metrics};
use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::io::{CsvOut, Provenance};
use crate::model::config::SharedSite;
use crate::plot;
use crate::tokenizer::Tokenizer;

/// Settings of `decompose`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecomposeOptions {
    /// Held-out zero-shot images and captioned pairs.
    pub items: usize,
    /// Seed of the held-out world.
    pub seed: u64,
    /// Descriptions per head (TextSpan's m).
    pub span: usize,
    /// More descriptions for the TextSpan pool, one per line.
    pub texts: Option<PathBuf>,
    /// Principal components compared per head.
    pub subspace_k: i64,
    /// TextSpan's pre-projection rank (`None`: none; default the reference's 80).
    pub span_rank: Option<usize>,
    /// How biases and the final LayerNorm's centring are attributed.
    pub convention: decompose::Convention,
}

impl Default for DecomposeOptions {
    fn default() -> Self {
        DecomposeOptions {
            items: 128,
            seed: 0,
            span: 5,
            texts: None,
            subspace_k: 3,
            span_rank: Some(decompose::REFERENCE_SPAN_RANK),
            convention: decompose::Convention::Separate,
        }
    }
}

/// Zero-shot and retrieval with all but the last K layers' heads mean-ablated.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Attention layers whose head terms are kept.
    pub k: usize,
    /// Image embeddings ablated, text clean.
    pub image: Metrics,
    /// Text embeddings ablated, image clean.
    pub text: Metrics,
}

/// A head's TextSpan descriptions.
#[derive(Debug, Clone, Serialize)]
pub struct HeadSpan {
    /// `vision` or `text`.
    pub tower: String,
    /// The slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Share of the embedding variance this head's direct contribution carries.
    pub variance_share: f64,
    /// The greedy descriptions.
    pub steps: Vec<SpanStep>,
}

/// One head seen from both towers.
#[derive(Debug, Clone, Serialize)]
pub struct BothSides {
    /// The slot.
    pub slot: usize,
    /// The head.
    pub head: usize,
    /// Whether the slot's attention is shared (otherwise the pair is the null baseline).
    pub shared: bool,
    /// Cosine of the mean image and text contributions.
    pub mean_cosine: f64,
    /// Mean cos² of the principal angles between their top-k subspaces.
    pub subspace_similarity: f64,
    /// Jaccard overlap of the two TextSpan description sets.
    pub span_overlap: f64,
}

/// The report of `decompose`.
#[derive(Serialize)]
pub struct DecomposeOutput {
    /// Where the numbers came from.
    pub provenance: Provenance,
    /// max relative error of Σ terms vs the image embedding.
    pub image_sum_error: f64,
    /// The same for text.
    pub text_sum_error: f64,
    /// Terms per image / per caption.
    pub terms: (usize, usize),
    /// Metrics with all but the last K layers' heads mean-ablated, K = 0..=layers.
    pub mean_ablation: Vec<CurvePoint>,
    /// The clean metrics.
    pub clean: Metrics,
    /// TextSpan per head.
    pub spans: Vec<HeadSpan>,
    /// Heads of the slots both towers have.
    pub both_sides: Vec<BothSides>,
    /// Mean subspace similarity of shared heads and of unshared pairs (NaN if none).
    pub subspace_similarity_shared: f64,
    /// The same for unshared pairs.
    pub subspace_similarity_unshared: f64,
    /// Held-out items decomposed (image–caption pairs).
    pub items: usize,
    /// Principal directions compared by the subspace similarity.
    pub subspace_k: i64,
    #[serde(skip)]
    model_name: String,
}

/// Decomposes both towers' embeddings of the held-out items and runs the analyses on them.
pub fn run(model: &LoadedModel, opts: &DecomposeOptions) -> Result<DecomposeOutput> {
    let m = &model.model;
    let cfg = &m.config;
    let set = EvalSet::synthetic(m, opts.items, opts.seed)?;
    let mut pool = synthetic_text_pool();
    if let Some(p) = &opts.texts {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        pool.extend(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
    }
    pool.sort();
    pool.dedup();
    if pool.len() < opts.span {
        return Err(Error::config("--span", opts.span, format!("the text pool has only {} descriptions", pool.len())));
    }
    if opts.subspace_k < 1 {
        return Err(Error::config("--subspace-k", opts.subspace_k, "must be at least 1"));
    }
    // The subspaces are principal components of the centred contributions of the items:
    // at most min(items − 1, embedding width) of them exist.
    let rank = (set.images.size()[0] - 1).min(cfg.embed_dim).max(1);
    let subspace_k = opts.subspace_k.min(rank);
    if subspace_k < opts.subspace_k {
        eprintln!(
            "warning: --subspace-k {} is more than the {rank} principal components {} items give; using {subspace_k}",
            opts.subspace_k,
            set.images.size()[0]
        );
    }
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let pool_emb = tch::no_grad(|| -> Result<Tensor> {
        let parts: Vec<Tensor> = pool.chunks(256).map(|c| m.encode_text(&tok.tokenize_batch(c))).collect::<Result<_>>()?;
        Ok(Tensor::cat(&parts, 0))
    })?;
    let di = decompose::image_as(m, &set.images, opts.convention)?;
    let dt = decompose::text_as(m, &set.tokens, opts.convention)?;
    let clean = set.metrics(
        &crate::tensor::l2_normalize(&di.embedding).to_kind(Kind::Float),
        &crate::tensor::l2_normalize(&dt.embedding).to_kind(Kind::Float),
    );
    let (vslots, tslots) = (cfg.vision_attention_slots(), cfg.text_attention_slots());
    let (ci, ct) =
        (crate::tensor::l2_normalize(&di.embedding).to_kind(Kind::Float), crate::tensor::l2_normalize(&dt.embedding).to_kind(Kind::Float));
    let mean_ablation = (0..=vslots.len().max(tslots.len()))
        .map(|k| CurvePoint {
            k,
            image: set.metrics(&mean_ablated(&di, &vslots, k), &ct),
            text: set.metrics(&ci, &mean_ablated(&dt, &tslots, k)),
        })
        .collect();
    // Contributions on the captioned pairs (rows after the zero-shot images / prompts).
    let (nz, np) = (set.n_zero_shot as i64, set.n_pairs as i64);
    let ctn = (set.classes * set.templates) as i64;
    let contrib = |d: &decompose::Decomposition, t: Term, from: i64| d.term(t).map(|x| x.narrow(0, from, np));
    let variance = |d: &decompose::Decomposition, from: i64| {
        let e = d.embedding.narrow(0, from, np);
        let e = &e - e.mean_dim(&[0i64][..], true, Kind::Double);
        (&e * &e).sum(Kind::Double).double_value(&[]).max(1e-30)
    };
    let (vi, vt) = (variance(&di, nz), variance(&dt, ctn));
    let mut spans = vec![];
    let mut sides = vec![];
    let all: BTreeSet<usize> = vslots.iter().chain(&tslots).copied().collect();
    for slot in all {
        for head in 0..cfg.vision.heads.max(cfg.text.heads) as usize {
            let t = Term::Head { slot, head };
            let span_of = |tower: &str, c: &Tensor, total: f64| -> Result<HeadSpan> {
                let c0 = c - c.mean_dim(&[0i64][..], true, Kind::Double);
                Ok(HeadSpan {
                    tower: tower.into(),
                    slot,
                    head,
                    variance_share: (&c0 * &c0).sum(Kind::Double).double_value(&[]) / total,
                    steps: text_span(c, &pool_emb, &pool, opts.span, opts.span_rank)?,
                })
            };
            let (a, b) = (contrib(&di, t, nz), contrib(&dt, t, ctn));
            let sa = a.as_ref().map(|c| span_of("vision", c, vi)).transpose()?;
            let sb = b.as_ref().map(|c| span_of("text", c, vt)).transpose()?;
            if let (Some(a), Some(b), Some(sa), Some(sb)) = (&a, &b, &sa, &sb) {
                let (x, y): (BTreeSet<&str>, BTreeSet<&str>) =
                    (sa.steps.iter().map(|s| s.text.as_str()).collect(), sb.steps.iter().map(|s| s.text.as_str()).collect());
                sides.push(BothSides {
                    slot,
                    head,
                    shared: cfg.is_shared(slot, SharedSite::AttnIn) && cfg.is_shared(slot, SharedSite::AttnOut),
                    mean_cosine: mean_cosine(a, b),
                    subspace_similarity: subspace_similarity(a, b, subspace_k),
                    span_overlap: x.intersection(&y).count() as f64 / x.union(&y).count().max(1) as f64,
                });
            }
            spans.extend(sa);
            spans.extend(sb);
        }
    }
    let avg = |shared: bool| {
        let v: Vec<f64> = sides.iter().filter(|s| s.shared == shared).map(|s| s.subspace_similarity).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let mut provenance = provenance(model, set.data_id.clone(), opts.seed);
    provenance.notes.push(match opts.convention {
        decompose::Convention::Separate => "decomposition (convention separate): terms through the final LayerNorm with the item's own centring and scale fixed, each term centred by its own mean, biases as terms of their own, and the projection; adapters (MS-CLIP-S) likewise; terms sum to the embedding before normalisation".into(),
        decompose::Convention::Reference => "decomposition (convention reference, prs_hook.py): out-projection bias split over the heads, the final LayerNorm's mean and bias split evenly over the layer outputs, every term divided by the embedding's norm; adapters (MS-CLIP-S) keep their own centring; terms sum to the normalised embedding".into(),
    });
    provenance.notes.push(format!(
        "mean ablation: all terms but the heads of the last K attention layers replaced by their means over the {} items; TextSpan m = {} over {} descriptions (synthetic vocabulary{}), {}; subspaces: top {} principal components",
        set.images.size()[0],
        opts.span,
        pool.len(),
        if opts.texts.is_some() { " + the user's file" } else { "" },
        match opts.span_rank {
            Some(k) => format!("texts pre-projected onto each head's top {k} right singular vectors (the reference's w_ov_rank; all of the row space when its rank is lower)"),
            None => "no PCA pre-projection".into(),
        },
        if subspace_k < opts.subspace_k { format!("{subspace_k} (requested {}, more than the available rank)", opts.subspace_k) } else { subspace_k.to_string() }
    ));
    Ok(DecomposeOutput {
        provenance,
        image_sum_error: di.sum_error(),
        text_sum_error: dt.sum_error(),
        terms: (di.terms.len(), dt.terms.len()),
        mean_ablation,
        clean,
        spans,
        subspace_similarity_shared: avg(true),
        subspace_similarity_unshared: avg(false),
        both_sides: sides,
        items: opts.items,
        subspace_k,
        model_name: cfg.name.clone(),
    })
}

impl DecomposeOutput {
    /// `decompose.json`, `mean_ablation.csv` + chart, `text_span.csv`, `both_sides.csv` +
    /// heatmaps of the subspace similarity and mean cosine per (slot, head).
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(dir, "decompose.json", self)?;
        let p = self.provenance.csv_header();
        let mut csv = CsvOut::new(&p, &["k", "image_zero_shot_top1", "image_i2t_r1", "text_zero_shot_top1", "text_t2i_r1"]);
        for c in &self.mean_ablation {
            csv.row(&crate::csv_row![
                c.k,
                c.image.zero_shot_top1,
                c.image.image_to_text_r1,
                c.text.zero_shot_top1,
                c.text.text_to_image_r1
            ]);
        }
        csv.write(&dir.join("mean_ablation.csv"))?;
        let pts = |f: fn(&CurvePoint) -> f64| self.mean_ablation.iter().map(|c| (c.k as f64, f(c))).collect::<Vec<_>>();
        plot::line_chart_png_svg(
            &dir.join("mean_ablation"),
            &plot::LineChart {
                title: format!("{} — heads of the last K layers kept, everything else mean-ablated", self.model_name),
                x_label: "K (attention layers kept)".into(),
                y_label: "zero-shot top-1".into(),
                series: vec![("image side".into(), pts(|c| c.image.zero_shot_top1)), ("text side".into(), pts(|c| c.text.zero_shot_top1))],
                y_range: (0.0, 1.0),
                x_integer: true,
                hlines: vec![
                    (self.clean.zero_shot_top1, "full model".into()),
                    (1.0 / crate::data::synthetic_set::zero_shot_classes().len() as f64, "chance".into()),
                ],
                caption: Some(format!(
                    "Zero-shot top-1 on {} held-out images when every head outside the last K attention layers is replaced by its mean, on the image side (text intact) or the text side (images intact). Where the curve reaches the full model, the last K layers' heads carry the decision.",
                    self.items
                )),
                ..Default::default()
            },
        )?;
        let mut csv = CsvOut::new(&p, &["tower", "slot", "head", "variance_share", "rank", "text", "explained"]);
        for s in &self.spans {
            for (i, st) in s.steps.iter().enumerate() {
                // Descriptions are free text: quoted by the writer, never altered.
                csv.row(&crate::csv_row![s.tower, s.slot, s.head, s.variance_share, i + 1, st.text, st.explained]);
            }
        }
        csv.write(&dir.join("text_span.csv"))?;
        let mut csv = CsvOut::new(&p, &["slot", "head", "shared", "mean_cosine", "subspace_similarity", "span_overlap"]);
        for s in &self.both_sides {
            csv.row(&crate::csv_row![s.slot, s.head, s.shared, s.mean_cosine, s.subspace_similarity, s.span_overlap]);
        }
        csv.write(&dir.join("both_sides.csv"))?;
        if !self.both_sides.is_empty() {
            let slots: Vec<usize> = self.both_sides.iter().map(|s| s.slot).collect::<BTreeSet<_>>().into_iter().collect();
            let heads = self.both_sides.iter().map(|s| s.head).max().unwrap_or(0) + 1;
            let grid = |f: fn(&BothSides) -> f64| -> Vec<Vec<f64>> {
                slots
                    .iter()
                    .map(|&sl| {
                        (0..heads).map(|h| self.both_sides.iter().find(|s| s.slot == sl && s.head == h).map_or(f64::NAN, f)).collect()
                    })
                    .collect()
            };
            let rows: Vec<String> = slots
                .iter()
                .map(|s| format!("slot {s}{}", if self.both_sides.iter().any(|x| x.slot == *s && x.shared) { " (shared)" } else { "" }))
                .collect();
            let cols: Vec<String> = (0..heads).map(|h| format!("h{h}")).collect();
            let panels = vec![vec![
                plot::Heatmap {
                    title: "subspace similarity".into(),
                    values: grid(|s| s.subspace_similarity),
                    row_labels: rows.clone(),
                    col_labels: cols.clone(),
                    scale: plot::ColorScale::Fixed(0.0, 1.0),
                    unit: "similarity (0–1)".into(),
                    caption: None,
                },
                plot::Heatmap {
                    title: "cosine of mean contributions".into(),
                    values: grid(|s| s.mean_cosine),
                    row_labels: rows,
                    col_labels: cols,
                    scale: plot::ColorScale::Diverging,
                    unit: "cosine".into(),
                    caption: None,
                },
            ]];
            plot::render(
                &dir.join("both_sides"),
                &plot::HeatmapPanels {
                    title: format!("{} — each head's direct contributions to image vs text embeddings", self.model_name),
                    panels,
                    shared_scale: false,
                    missing: None,
                    caption: Some(format!(
                        "Per head of the slots both towers have, over {} held-out pairs: left, how much the top-{} principal directions of its direct contributions to the image embeddings and to the caption embeddings coincide (1 = one subspace; random subspaces score about k/E); right, the cosine of the two mean contributions. A shared head that writes the same thing for both modalities is bright on the left and red on the right.",
                        self.items, self.subspace_k
                    )),
                },
            )?;
        }
        Ok(())
    }
}
