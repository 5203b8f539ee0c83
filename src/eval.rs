//! Evaluation: a model and data in, embeddings (and pooled per-layer features) or held-out
//! scores out, in fixed order and batch size, fp32 — the inputs of the analyses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::analysis::embedding::{centroid_gap, prompt_ensemble};
use crate::data::loader::PairSource;
use crate::data::pairs::{for_each_batch, Prep, Skipped};
use crate::data::synthetic_set::{self, EVAL_SEED_OFFSET, TEMPLATES};
use crate::error::{Error, Result};
use crate::model::towers::TextTower;
use crate::model::{ActivationCache, Capture, Modality, MsClip, Site};
use crate::tensor::l2_normalize;
use crate::tokenizer::Tokenizer;

/// How a layer's tokens become one vector per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Vision CLS (token 0), text EOT (first id 49407).
    Special,
    /// Mean over patch tokens (CLS excluded) / over text positions up to EOT.
    Mean,
}

/// Which per-layer features to pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The site recorded per slot.
    pub site: Site,
    /// How its tokens are pooled.
    pub pooling: Pooling,
    /// Map pooled tokens through the frozen final LN + projection (needed when the towers'
    /// widths differ, as in OpenAI CLIP), then L2-normalise.
    pub projected: bool,
}

/// Embeddings of a set of pairs.
pub struct PairFeatures {
    /// L2-normalised `[N, E]`.
    pub image: Tensor,
    /// L2-normalised text embeddings `[N, E]`.
    pub text: Tensor,
    /// slot → (image `[N, W]`, text `[N, W]`) pooled features, for slots both towers have.
    pub layers: BTreeMap<usize, (Tensor, Tensor)>,
    /// Items that could not be read: (index, what, why).
    pub skipped: Vec<Skipped>,
}

fn pool(x: &Tensor, modality: Modality, pooling: Pooling, eot: &Tensor) -> Tensor {
    let (b, l, w) = x.size3().expect("[B, L, W]");
    match (modality, pooling) {
        (Modality::Vision, Pooling::Special) => x.select(1, 0),
        (Modality::Vision, Pooling::Mean) => x.narrow(1, 1, l - 1).mean_dim(1, false, Kind::Float),
        (Modality::Text, Pooling::Special) => x.gather(1, &eot.view([b, 1, 1]).expand([b, 1, w], true), false).squeeze_dim(1),
        (Modality::Text, Pooling::Mean) => {
            let pos = Tensor::arange(l, (Kind::Int64, x.device())).unsqueeze(0);
            let mask = pos.le_tensor(&eot.unsqueeze(1)).to_kind(Kind::Float).unsqueeze(2);
            (x * &mask).sum_dim_intlist(&[1i64][..], false, Kind::Float) / mask.sum_dim_intlist(&[1i64][..], false, Kind::Float)
        }
    }
}

/// Embeds items `0..n` of `src` in batches of `batch` with `tok`; with `layers`, also pools
/// the chosen site of every slot both towers have.
pub fn embed_pairs(
    model: &MsClip,
    src: &dyn PairSource,
    n: usize,
    batch: usize,
    tok: &Tokenizer,
    layers: Option<LayerSpec>,
) -> Result<PairFeatures> {
    let cfg = &model.config;
    let slots: Vec<usize> = (0..cfg.vision.layers.max(cfg.text.layers))
        .filter(|&s| cfg.text_has_block(s) && (cfg.vision_has_block(s) || (s == 0 && layers.is_some_and(|l| l.site == Site::Resid))))
        .collect();
    if let Some(spec) = layers {
        if !matches!(spec.site, Site::Ln1 | Site::AttnOut | Site::Ln2 | Site::Resid) {
            return Err(Error::config("site", spec.site.name(), "pooled layer features come from ln1, attn_out, ln2 or resid"));
        }
        if !spec.projected && cfg.vision.width != cfg.text.width {
            return Err(Error::Invalid(format!(
                "the towers' widths differ ({} vs {}): pool in the joint space with --projected",
                cfg.vision.width, cfg.text.width
            )));
        }
    }
    let capture = match layers {
        Some(spec) => Capture::sites(&[spec.site]),
        None => Capture::none(),
    };
    let (mut ie, mut te) = (vec![], vec![]);
    let mut per_layer: BTreeMap<usize, (Vec<Tensor>, Vec<Tensor>)> = BTreeMap::new();
    let prep = Prep { size: cfg.vision.image_size as u32, preprocess: &cfg.preprocess, tokenizer: tok };
    let skipped = for_each_batch(src, n, batch, &prep, |b| {
        let mut cache = ActivationCache::new();
        let (i_emb, t_emb) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok((model.encode_image_with(&b.images, &capture, &mut cache, false)?, model.encode_text_with(&b.tokens, &capture, &mut cache)?))
        })?;
        ie.push(i_emb);
        te.push(t_emb);
        if let Some(spec) = layers {
            let eot = TextTower::pooled_positions(&b.tokens);
            for &slot in &slots {
                let (Some(xv), Some(xt)) = (cache.get(Modality::Vision, slot, spec.site), cache.get(Modality::Text, slot, spec.site))
                else {
                    continue;
                };
                let (mut pv, mut pt) = (pool(xv, Modality::Vision, spec.pooling, &eot), pool(xt, Modality::Text, spec.pooling, &eot));
                if spec.projected {
                    tch::no_grad(|| {
                        pv = l2_normalize(&model.vision.head(&pv));
                        pt = l2_normalize(&model.text.head(&pt));
                    });
                }
                let e = per_layer.entry(slot).or_default();
                e.0.push(pv);
                e.1.push(pt);
            }
        }
        Ok(())
    })?;
    if ie.is_empty() {
        return Err(Error::Invalid(format!("none of the {} items could be read", n.min(src.len()))));
    }
    let layers = per_layer.into_iter().map(|(s, (a, b))| (s, (Tensor::cat(&a, 0), Tensor::cat(&b, 0)))).collect();
    Ok(PairFeatures { image: Tensor::cat(&ie, 0), text: Tensor::cat(&te, 0), layers, skipped })
}

/// Results of one held-out evaluation ([`evaluate`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalResult {
    /// Zero-shot top-1 accuracy over the 48 colour × shape classes.
    pub zero_shot_top1: f64,
    /// Zero-shot top-5 accuracy.
    pub zero_shot_top5: f64,
    /// Image → text recall@1 on held-out captioned scenes.
    pub image_to_text_r1: f64,
    /// Text → image recall@1.
    pub text_to_image_r1: f64,
    /// Centroid modality gap ‖x̄ − ȳ‖ of the held-out pairs.
    pub modality_gap: f64,
    /// Single-object images classified.
    pub n_zero_shot: usize,
    /// Pairs retrieved.
    pub n_pairs: usize,
    /// Relation test: share of held-out relations-world scenes whose caption scores above the
    /// same caption with the relation reversed (chance 0.5; ties count as misses).
    #[serde(default)]
    pub relation_acc: f64,
}

impl EvalResult {
    /// An error naming the first non-finite metric (a diverged model scores NaN).
    pub fn check_finite(&self) -> Result<()> {
        for (k, v) in [
            ("zero_shot_top1", self.zero_shot_top1),
            ("zero_shot_top5", self.zero_shot_top5),
            ("image_to_text_r1", self.image_to_text_r1),
            ("text_to_image_r1", self.text_to_image_r1),
            ("modality_gap", self.modality_gap),
        ] {
            if !v.is_finite() {
                return Err(Error::Invalid(format!("evaluation gave {k} = {v}: the model's outputs are not finite")));
            }
        }
        Ok(())
    }
}

/// Per-item outcomes of the held-out evaluation (what [`evaluate`] averages; the input of
/// bootstrap intervals and paired tests).
pub struct ItemResults {
    /// Zero-shot image i classified correctly (top-1).
    pub zero_shot_hit: Vec<f64>,
    /// Its true class among the top 5.
    pub zero_shot_top5_hit: Vec<f64>,
    /// Pair i's caption retrieved first for its image (ties against the model).
    pub image_to_text_hit: Vec<f64>,
    /// Pair i's image retrieved first for its caption.
    pub text_to_image_hit: Vec<f64>,
    /// Relations-world scene i: its caption beat the reversed one.
    pub relation_hit: Vec<f64>,
    /// L2-normalised embeddings of the pairs `[N, E]`.
    pub image: Tensor,
    /// L2-normalised text embeddings of the pairs.
    pub text: Tensor,
}

impl ItemResults {
    /// The averages.
    pub fn summary(&self) -> EvalResult {
        let m = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        EvalResult {
            zero_shot_top1: m(&self.zero_shot_hit),
            zero_shot_top5: m(&self.zero_shot_top5_hit),
            image_to_text_r1: m(&self.image_to_text_hit),
            text_to_image_r1: m(&self.text_to_image_hit),
            modality_gap: centroid_gap(&self.image, &self.text),
            n_zero_shot: self.zero_shot_hit.len(),
            n_pairs: self.image_to_text_hit.len(),
            relation_acc: m(&self.relation_hit),
        }
    }
}

/// Rank-1 hits of every row of `sim` (the true pair on the diagonal, ties against the model).
pub fn rank1_hits(sim: &Tensor) -> Vec<f64> {
    crate::analysis::embedding::rank_hits(sim, 1)
}

/// Evaluation on held-out synthetic data: zero-shot over the 48 colour × shape classes
/// (prompt ensemble, ×100 logits), retrieval R@1 both ways, centroid modality gap. Runs on
/// the model's device, in chunks of 256.
pub fn evaluate(model: &MsClip, seed: u64, n: usize) -> Result<EvalResult> {
    Ok(evaluate_items(model, seed, n)?.summary())
}

/// [`evaluate`] item by item.
pub fn evaluate_items(model: &MsClip, seed: u64, n: usize) -> Result<ItemResults> {
    if n < 2 {
        return Err(Error::config("eval_items", n, "need at least 2"));
    }
    let cfg = &model.config;
    let size = cfg.vision.image_size as u32;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    tch::no_grad(|| {
        let classes = synthetic_set::zero_shot_classes();
        let prompts: Vec<String> = classes.iter().flat_map(|c| TEMPLATES.iter().map(move |t| t.replace("{}", c))).collect();
        let dev = model.device();
        let cpu = tch::Device::Cpu;
        let pe = model.encode_text(&tok.tokenize_batch(&prompts).to_device(dev))?.to_device(cpu).view([
            classes.len() as i64,
            TEMPLATES.len() as i64,
            -1,
        ]);
        let w = prompt_ensemble(&pe);
        let (images, labels) = synthetic_set::zero_shot_set(seed, n, size, cfg.preprocess.mean, cfg.preprocess.std);
        let mut img = Vec::new();
        for chunk in images.split(256, 0) {
            img.push(model.encode_image(&chunk.to_device(dev))?.to_device(cpu));
        }
        let logits = MsClip::zero_shot_logits(&Tensor::cat(&img, 0), &w);
        let target = Tensor::from_slice(&labels).view([-1, 1]);
        let (_, top) = logits.topk(5.min(classes.len() as i64), -1, true, true);
        let zero_shot_top5_hit = crate::tensor::to_vec_f64(&top.eq_tensor(&target).any_dim(1, false));
        let zero_shot_hit = crate::tensor::to_vec_f64(&top.narrow(1, 0, 1).eq_tensor(&target).any_dim(1, false));
        let indices: Vec<usize> = (0..n).collect();
        let (pi, pt, _) = synthetic_set::batch(seed ^ EVAL_SEED_OFFSET, &indices, size, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let (mut ie, mut te) = (Vec::new(), Vec::new());
        for (ci, ct) in pi.split(256, 0).iter().zip(pt.split(256, 0).iter()) {
            ie.push(model.encode_image(&ci.to_device(dev))?.to_device(cpu));
            te.push(model.encode_text(&ct.to_device(dev))?.to_device(cpu));
        }
        let (ie, te) = (Tensor::cat(&ie, 0), Tensor::cat(&te, 0));
        let sim = ie.matmul(&te.tr());
        let (ri, rt, rs) = synthetic_set::relation_set(seed, n, size, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let mut relation_hit = Vec::with_capacity(n);
        for ((ci, ct), cs) in ri.split(256, 0).iter().zip(rt.split(256, 0).iter()).zip(rs.split(256, 0).iter()) {
            let i = model.encode_image(&ci.to_device(dev))?;
            let (t, s) = (model.encode_text(&ct.to_device(dev))?, model.encode_text(&cs.to_device(dev))?);
            let win = (&i * t).sum_dim_intlist(&[-1i64][..], false, Kind::Float).gt_tensor(&(&i * s).sum_dim_intlist(
                &[-1i64][..],
                false,
                Kind::Float,
            ));
            relation_hit.extend(crate::tensor::to_vec_f64(&win.to_device(cpu)));
        }
        Ok(ItemResults {
            relation_hit,
            zero_shot_hit,
            zero_shot_top5_hit,
            image_to_text_hit: rank1_hits(&sim),
            text_to_image_hit: rank1_hits(&sim.tr()),
            image: ie,
            text: te,
        })
    })
}

/// What relevancy differentiates: the pair's logit `exp(logit_scale) · cos(image, text)`, as
/// Chefer et al.'s CLIP code (`logits_per_image`). Used by `attention` and by the grounding in
/// `heads`, so both produce the same maps.
pub const RELEVANCY_SCORE: &str = "logit = exp(logit_scale) · cos(image, text)";

/// Grounding of caption-conditioned maps on the synthetic scenes: for every object, the phrase
/// naming it (`a {size} {colour} {shape}`) scores s = exp(t)·⟨image, phrase⟩ (the logit, see
/// [`RELEVANCY_SCORE`]); the image map of each method is compared with the object's box
/// ([`crate::analysis::heads::box_grounding`]); `uniform` is the share a flat map would get
/// (the chance level). Methods: Chefer relevancy from the last attention layer (the
/// `attention` command's default) and from all layers, and caption-independent rollout.
/// Items do not interact in the vision tower, so one backward per object index serves a batch.
/// `acc[method]` accumulates (Σ box share, Σ pointing hits, Σ uniform share, objects).
pub fn relevancy_grounding(
    m: &MsClip,
    images: &Tensor,
    objects: &[Vec<crate::data::synth::Object>],
    tok: &Tokenizer,
    acc: &mut BTreeMap<&'static str, [f64; 4]>,
) -> Result<()> {
    use crate::analysis::attribution::{relevancy, rollout};
    use crate::analysis::heads::box_grounding;
    use crate::tensor::to_vec_f32;
    let cfg = &m.config;
    let (grid, patch) = (cfg.grid(), cfg.vision.patch_size as f64);
    let vslots = cfg.vision_attention_slots();
    let mut cache = ActivationCache::new();
    let ie = m.encode_image_with(images, &Capture::attention().keep_graph(), &mut cache, false)?;
    let pv: Vec<Tensor> =
        vslots.iter().map(|&s| cache.require(Modality::Vision, s, Site::AttnProbs).map(|t| t.shallow_clone())).collect::<Result<_>>()?;
    let kmax = objects.iter().map(|o| o.len()).max().unwrap_or(0);
    let scale = m.logit_scale.exp().detach();
    for k in 0..kmax {
        let phrases: Vec<String> = objects
            .iter()
            .map(|os| os.get(k).map_or_else(|| "a".to_string(), |o| format!("a {} {} {}", o.size, o.color, o.shape)))
            .collect();
        let te = tch::no_grad(|| m.encode_text(&tok.tokenize_batch(&phrases).to_device(m.device())))?;
        let present: Vec<f32> = objects.iter().map(|os| if os.len() > k { 1.0 } else { 0.0 }).collect();
        let score = ((&ie * te).sum_dim_intlist(&[-1i64][..], false, Kind::Float) * Tensor::from_slice(&present).to_device(ie.device()))
            .sum(Kind::Float)
            * &scale;
        let grads = Tensor::run_backward(&[&score], &pv.iter().collect::<Vec<_>>(), true, false);
        for (b, os) in objects.iter().enumerate() {
            let Some(o) = os.get(k) else { continue };
            let b = b as i64;
            let item = |ts: &[Tensor]| ts.iter().map(|t| t.get(b).detach()).collect::<Vec<_>>();
            let (a, g) = (item(&pv), item(&grads));
            let last = a.len() - 1;
            let maps =
                [("relevancy_last", relevancy(&a[last..], &g[last..])), ("relevancy_all", relevancy(&a, &g)), ("rollout", rollout(&a))];
            let (uniform, _) = box_grounding(&vec![1.0; (grid * grid) as usize], grid as usize, patch, o.bbox);
            for (name, r) in maps {
                let map = to_vec_f32(&r.get(0).narrow(0, 1, grid * grid));
                let (share, hit) = box_grounding(&map, grid as usize, patch, o.bbox);
                let e = acc.entry(name).or_default();
                e[0] += share;
                e[1] += hit as u8 as f64;
                e[2] += uniform;
                e[3] += 1.0;
            }
        }
    }
    Ok(())
}
