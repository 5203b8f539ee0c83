//! The direct-effect decomposition of both embeddings (Gandelsman, Efros & Steinhardt, ICLR
//! 2024, "Interpreting CLIP's Image Representation via Text-Based Decomposition").
//!
//! The pooled token (CLS / first EOT) leaving the last block is a sum: the embedding term
//! (the stream entering the first block), and per slot the attention output — per head
//! `z_h·W_O,hᵀ` (itself a sum over tokens `Σ_t A_h[q, t]·v_h[t]·W_O,hᵀ`) plus the out-bias —
//! and the FFN output. MS-CLIP-S's lateral adapters re-normalise the stream
//! (`cls' = LN_adapt(2·cls)`): with the item's own centring and scale held fixed that is a
//! linear map of every earlier term plus a bias term (`adapter k`); the parallel branch's
//! features reach CLS only through later heads' attention to the patch tokens, so they are
//! counted in those heads' terms. The final LayerNorm is linear the same way (its β a term of
//! its own), then the projection: every term lands in the joint space, and the terms sum to
//! the embedding before L2 normalisation.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::layers::LayerNorm;
use crate::model::towers::TextTower;
use crate::model::{ActivationCache, Capture, Modality, MsClip, Site};

/// One term of a decomposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Term {
    /// The stream entering the first block.
    Embed,
    /// One head's output at the pooled row.
    Head {
        /// The slot.
        slot: usize,
        /// The head.
        head: usize,
    },
    /// The attention out-projection's bias.
    AttnBias {
        /// The slot.
        slot: usize,
    },
    /// The FFN output at the pooled row.
    Mlp {
        /// The slot.
        slot: usize,
    },
    /// A lateral adapter's LayerNorm bias (MS-CLIP-S).
    Adapter {
        /// The slot the adapter precedes.
        slot: usize,
    },
    /// The final LayerNorm's bias.
    LnBias,
}

impl Term {
    /// The slot of a layer term.
    pub fn slot(&self) -> Option<usize> {
        match *self {
            Term::Head { slot, .. } | Term::AttnBias { slot } | Term::Mlp { slot } | Term::Adapter { slot } => Some(slot),
            _ => None,
        }
    }
}

/// How the final LayerNorm's centring and bias, and the attention out-projection's bias, are
/// attributed to the terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Convention {
    /// Each term is centred by its own coordinate mean (LayerNorm's centring is linear, so this
    /// is exact term by term), and the biases are terms of their own (`AttnBias`, `LnBias`):
    /// a head's term is what that head's output alone adds. The default.
    #[default]
    Separate,
    /// Gandelsman et al.'s `prs_hook.py`: the out-projection bias is split evenly over the
    /// layer's heads (b/H each); the final LayerNorm's mean μ and bias β are split evenly over
    /// the layer outputs (embedding, each FFN, each attention layer — within it b/H per head,
    /// and adapters as one output each): term' = γ⊙(t − s·μ)/σ + s·β with s = share/len; and
    /// every term is divided by the norm of the unnormalised embedding. `AttnBias` and `LnBias`
    /// are then zero, and the terms sum to the L2-normalised embedding.
    Reference,
}

/// The terms of one tower's embeddings of N inputs.
pub struct Decomposition {
    /// The tower.
    pub modality: Modality,
    /// What each term is.
    pub terms: Vec<Term>,
    /// `[N, T, E]`: each term through the final LayerNorm (the item's centring and scale
    /// fixed) and the projection.
    pub values: Tensor,
    /// `[N, E]`: the embedding before L2 normalisation, as the model computes it (in
    /// [`Convention::Reference`] divided by its norm, as the terms).
    pub embedding: Tensor,
}

impl Decomposition {
    /// max over items of ‖Σ terms − embedding‖ / ‖embedding‖.
    pub fn sum_error(&self) -> f64 {
        let s = self.values.sum_dim_intlist(&[1i64][..], false, Kind::Double);
        let e = self.embedding.to_kind(Kind::Double);
        ((&s - &e).norm_scalaropt_dim(2.0, [-1], false) / e.norm_scalaropt_dim(2.0, [-1], false)).max().double_value(&[])
    }

    /// The values of one term `[N, E]`.
    pub fn term(&self, t: Term) -> Option<Tensor> {
        self.terms.iter().position(|x| *x == t).map(|i| self.values.select(1, i as i64))
    }
}

/// Rows `rows[b]` of `x: [B, L, D]` → `[B, D]`.
fn pick(x: &Tensor, rows: &Tensor) -> Tensor {
    let (b, _, d) = x.size3().expect("[B, L, D]");
    x.gather(1, &rows.view([b, 1, 1]).expand([b, 1, d], true), false).squeeze_dim(1)
}

/// The linear part of `ln` at inputs `x: [B, D]` applied to terms `t: [B, T, D]`:
/// `γ ⊙ (t − mean(t)) / σ(x)` with `σ(x) = √(var(x) + ε)` (biased variance, as LayerNorm).
fn ln_linear(ln: &LayerNorm, x: &Tensor, t: &Tensor, scale: f64) -> Tensor {
    let x = x.to_kind(Kind::Double) * scale;
    let var = x.var_dim(&[-1i64][..], false, true);
    let sigma = (var + ln.eps).sqrt().unsqueeze(1); // [B, 1, 1]
    let t = t.to_kind(Kind::Double) * scale;
    let centred = &t - t.mean_dim(&[-1i64][..], true, Kind::Double);
    centred / sigma * ln.weight.to_kind(Kind::Double)
}

/// The final LayerNorm in [`Convention::Reference`]: the out-projection biases folded into
/// their heads, then `γ⊙(t − s·μ(x))/σ(x) + s·β` per term with `s` its share of the layer
/// outputs (1 for the embedding, an FFN or an adapter; 1/H for a head) over their total; the
/// bias terms become zero. `terms: [B, T, D]` with `names` (no `LnBias` yet); returns
/// `[B, T + 1, D]` (a zero `LnBias` appended).
fn ln_reference(ln: &LayerNorm, x: &Tensor, terms: &Tensor, names: &[Term], heads_of: impl Fn(usize) -> usize) -> Tensor {
    let b = terms.size()[0];
    let t = terms.to_kind(Kind::Double);
    // Each AttnBias{slot} folded into the slot's heads (b/H each), then zero.
    let bias_of = |slot: usize| names.iter().position(|n| *n == Term::AttnBias { slot }).map(|i| t.select(1, i as i64));
    let parts: Vec<Tensor> = names
        .iter()
        .enumerate()
        .map(|(j, n)| {
            let tj = t.select(1, j as i64);
            match *n {
                Term::Head { slot, .. } => match bias_of(slot) {
                    Some(bias) => tj + bias / heads_of(slot) as f64,
                    None => tj,
                },
                Term::AttnBias { .. } => tj.zeros_like(),
                _ => tj,
            }
        })
        .collect();
    let t = Tensor::stack(&parts, 1);
    let shares: Vec<f64> = names
        .iter()
        .map(|n| match *n {
            Term::Head { slot, .. } => 1.0 / heads_of(slot) as f64,
            Term::AttnBias { .. } | Term::LnBias => 0.0,
            Term::Embed | Term::Mlp { .. } | Term::Adapter { .. } => 1.0,
        })
        .collect();
    let len: f64 = shares.iter().sum();
    let s = Tensor::from_slice(&shares.iter().map(|v| v / len).collect::<Vec<_>>()).to_kind(Kind::Double).view([1, -1, 1]);
    let xd = x.to_kind(Kind::Double);
    let mu = xd.mean_dim(&[-1i64][..], true, Kind::Double).unsqueeze(1); // [B, 1, 1]
    let sigma = (xd.var_dim(&[-1i64][..], false, true) + ln.eps).sqrt().unsqueeze(1); // [B, 1, 1]
    let gamma = ln.weight.to_kind(Kind::Double);
    let beta = ln.bias.to_kind(Kind::Double);
    let out = (&t - &s * &mu) / sigma * gamma + &s * beta;
    let d = out.size()[2];
    Tensor::cat(&[out, Tensor::zeros([b, 1, d], (Kind::Double, terms.device()))], 1)
}

/// Adds `[B, D]` as a new term to `[B, T, D]`.
fn push(terms: &Tensor, t: &Tensor) -> Tensor {
    Tensor::cat(&[terms.shallow_clone(), t.to_kind(Kind::Double).unsqueeze(1)], 1)
}

/// Head terms of one slot at the pooled rows: `z_h[row]·W_O,hᵀ` per head, `[B, H, D]`.
fn head_terms(model: &MsClip, m: Modality, slot: usize, z: &Tensor, rows: &Tensor) -> Tensor {
    let block = match m {
        Modality::Vision => model.vision.blocks[slot].as_ref().expect("a vision block"),
        Modality::Text => &model.text.blocks[slot],
    };
    let (b, h, _, hd) = z.size4().expect("[B, H, L, d]");
    let zr = z.gather(2, &rows.view([b, 1, 1, 1]).expand([b, h, 1, hd], true), false).squeeze_dim(2); // [B, H, d]
    let w = block.attn_out.weight.to_kind(Kind::Double); // [D, D], columns h·d..(h+1)·d per head
    let d = w.size()[0];
    let wh = w.view([d, h, hd]).permute([1, 2, 0]); // [H, d, D]
    zr.to_kind(Kind::Double).unsqueeze(2).matmul(&wh.unsqueeze(0)).squeeze_dim(2)
    // [B, H, D]
}

/// Decomposes the image embeddings of `images` (the `attention` slots' heads, the FFNs, the
/// embedding, adapters, and the final LayerNorm's bias), in [`Convention::Separate`].
pub fn image(model: &MsClip, images: &Tensor) -> Result<Decomposition> {
    image_as(model, images, Convention::Separate)
}

/// [`image()`] in either convention.
pub fn image_as(model: &MsClip, images: &Tensor, convention: Convention) -> Result<Decomposition> {
    let cfg = &model.config;
    let v = &model.vision;
    let slots = cfg.vision_attention_slots();
    let cap = Capture::sites(&[Site::Z, Site::MlpOut, Site::Resid, Site::Pooled]);
    let mut cache = ActivationCache::new();
    let b = images.size()[0];
    let rows = Tensor::zeros([b], (Kind::Int64, images.device()));
    let (embedding, mut terms, names) = tch::no_grad(|| -> Result<(Tensor, Tensor, Vec<Term>)> {
        let x0 = v.embed(images, &Capture::none(), &mut cache, false)?;
        let tops = v.branch(images, false);
        let pooled = v.run_from(v.first_slot(), &x0, &tops, &cap, &mut cache, false)?;
        let embedding = v.project(&v.ln_post().forward(&pooled));
        crate::model::msclip::check_outputs("vision", &embedding)?;
        let embedding = embedding.to_kind(Kind::Double);
        let mut names = vec![Term::Embed];
        let mut terms = x0.select(1, 0).to_kind(Kind::Double).unsqueeze(1);
        let adapters: Vec<usize> = cfg.vision.parallel_branch.as_ref().map(|p| p.adapter_slots.clone()).unwrap_or_default();
        let mut before = x0.select(1, 0);
        for (i, &slot) in slots.iter().enumerate() {
            if let Some(k) = adapters.iter().position(|&s| s == slot) {
                // cls' = LN_adapt(2·cls): the earlier terms through its linear part, then β.
                let ln = v.adapter_ln(k).expect("adapter exists");
                terms = ln_linear(ln, &before, &terms, 2.0);
                terms = push(&terms, &ln.bias.to_kind(Kind::Double).unsqueeze(0).expand([b, -1], true));
                names.push(Term::Adapter { slot });
            }
            let z = cache.require(Modality::Vision, slot, Site::Z)?;
            let ht = head_terms(model, Modality::Vision, slot, z, &rows);
            terms = Tensor::cat(&[terms, ht], 1);
            let heads = cfg.vision.heads as usize;
            names.extend((0..heads).map(|h| Term::Head { slot, head: h }));
            let block = v.blocks[slot].as_ref().expect("a vision block");
            if let Some(bias) = &block.attn_out.bias {
                terms = push(&terms, &bias.unsqueeze(0).expand([b, -1], true));
                names.push(Term::AttnBias { slot });
            }
            terms = push(&terms, &pick(cache.require(Modality::Vision, slot, Site::MlpOut)?, &rows));
            names.push(Term::Mlp { slot });
            if i + 1 < slots.len() {
                before = cache.require(Modality::Vision, slot, Site::Resid)?.select(1, 0);
            }
        }
        let pooled_rec = cache.require(Modality::Vision, *slots.last().expect("a slot"), Site::Pooled)?;
        let ln = v.ln_post();
        terms = match convention {
            Convention::Separate => push(&ln_linear(ln, pooled_rec, &terms, 1.0), &ln.bias.unsqueeze(0).expand([b, -1], true)),
            Convention::Reference => ln_reference(ln, pooled_rec, &terms, &names, |_| cfg.vision.heads as usize),
        };
        names.push(Term::LnBias);
        Ok((embedding, terms, names))
    })?;
    terms = terms.matmul(&v.proj.to_kind(Kind::Double));
    Ok(finish(Modality::Vision, names, terms, embedding, convention))
}

/// Decomposes the text embeddings of `tokens` at their pooled (EOT) rows, in
/// [`Convention::Separate`].
pub fn text(model: &MsClip, tokens: &Tensor) -> Result<Decomposition> {
    text_as(model, tokens, Convention::Separate)
}

/// [`text()`] in either convention.
pub fn text_as(model: &MsClip, tokens: &Tensor, convention: Convention) -> Result<Decomposition> {
    let cfg = &model.config;
    let t = &model.text;
    let slots = cfg.text_attention_slots();
    let cap = Capture::sites(&[Site::Z, Site::MlpOut, Site::Pooled]);
    let mut cache = ActivationCache::new();
    let b = tokens.size()[0];
    let rows = TextTower::pooled_positions(tokens);
    let (embedding, mut terms, names) = tch::no_grad(|| -> Result<(Tensor, Tensor, Vec<Term>)> {
        let x0 = t.embed(tokens);
        let pooled = t.run_from(0, &x0, &rows, &cap, &mut cache)?;
        let embedding = t.project(&t.ln_final().forward(&pooled));
        crate::model::msclip::check_outputs("text", &embedding)?;
        let embedding = embedding.to_kind(Kind::Double);
        let mut names = vec![Term::Embed];
        let mut terms = pick(&x0, &rows).to_kind(Kind::Double).unsqueeze(1);
        for &slot in &slots {
            let z = cache.require(Modality::Text, slot, Site::Z)?;
            terms = Tensor::cat(&[terms, head_terms(model, Modality::Text, slot, z, &rows)], 1);
            names.extend((0..cfg.text.heads as usize).map(|h| Term::Head { slot, head: h }));
            if let Some(bias) = &t.blocks[slot].attn_out.bias {
                terms = push(&terms, &bias.unsqueeze(0).expand([b, -1], true));
                names.push(Term::AttnBias { slot });
            }
            terms = push(&terms, &pick(cache.require(Modality::Text, slot, Site::MlpOut)?, &rows));
            names.push(Term::Mlp { slot });
        }
        let pooled_rec = cache.require(Modality::Text, *slots.last().expect("a slot"), Site::Pooled)?;
        let ln = t.ln_final();
        terms = match convention {
            Convention::Separate => push(&ln_linear(ln, pooled_rec, &terms, 1.0), &ln.bias.unsqueeze(0).expand([b, -1], true)),
            Convention::Reference => ln_reference(ln, pooled_rec, &terms, &names, |_| cfg.text.heads as usize),
        };
        names.push(Term::LnBias);
        Ok((embedding, terms, names))
    })?;
    terms = terms.matmul(&t.projection.to_kind(Kind::Double));
    Ok(finish(Modality::Text, names, terms, embedding, convention))
}

/// The decomposition; in [`Convention::Reference`] every term and the embedding divided by
/// the embedding's norm (the terms then sum to the L2-normalised embedding).
fn finish(modality: Modality, terms: Vec<Term>, values: Tensor, embedding: Tensor, convention: Convention) -> Decomposition {
    let (values, embedding) = match convention {
        Convention::Separate => (values, embedding),
        Convention::Reference => {
            let norm = embedding.norm_scalaropt_dim(2.0, [-1], true).clamp_min(crate::tensor::NORM_EPS); // [B, 1]
            (values / norm.unsqueeze(1), embedding / norm)
        }
    };
    Decomposition { modality, terms, values, embedding }
}

/// One head's direct effect resolved by token at the pooled row, `[N, L, E]` (before the
/// final LayerNorm's scale is applied it is `A_h[q, t]·v_h[t]·W_O,hᵀ`; here through the same
/// fixed linear maps as [`image()`]/[`text()`]'s terms, for the last slot's tokens of towers
/// without adapters after `slot`). Summing over tokens gives the head's term.
pub fn head_by_token(model: &MsClip, d: &Decomposition, inputs: &Tensor, slot: usize, head: usize) -> Result<Tensor> {
    let m = d.modality;
    if m == Modality::Vision && model.config.vision.parallel_branch.as_ref().is_some_and(|p| p.adapter_slots.iter().any(|&s| s > slot)) {
        return Err(Error::Invalid(format!("slot {slot}: an adapter follows; resolve tokens at a slot after the last adapter")));
    }
    let cap = Capture::sites(&[Site::AttnProbs, Site::V, Site::Pooled])
        .with_slots(vec![slot, if m == Modality::Vision { model.config.vision.layers - 1 } else { model.config.text.layers - 1 }]);
    let mut cache = ActivationCache::new();
    tch::no_grad(|| -> Result<()> {
        match m {
            Modality::Vision => model.encode_image_with(inputs, &cap, &mut cache, false).map(|_| ()),
            Modality::Text => model.encode_text_with(inputs, &cap, &mut cache).map(|_| ()),
        }
    })?;
    let b = inputs.size()[0];
    let rows = match m {
        Modality::Vision => Tensor::zeros([b], (Kind::Int64, inputs.device())),
        Modality::Text => TextTower::pooled_positions(inputs),
    };
    let a = cache.require(m, slot, Site::AttnProbs)?.select(1, head as i64).to_kind(Kind::Double); // [B, L, L]
    let l = a.size()[1];
    let arow = a.gather(1, &rows.view([b, 1, 1]).expand([b, 1, l], true), false).squeeze_dim(1); // [B, L]
    let vh = cache.require(m, slot, Site::V)?.select(1, head as i64).to_kind(Kind::Double); // [B, L, d]
    let (block, ln, proj) = match m {
        Modality::Vision => (model.vision.blocks[slot].as_ref().expect("block"), model.vision.ln_post(), &model.vision.proj),
        Modality::Text => (&model.text.blocks[slot], model.text.ln_final(), &model.text.projection),
    };
    let w = block.attn_out.weight.to_kind(Kind::Double);
    let hd = vh.size()[2];
    let wh = w.narrow(1, head as i64 * hd, hd); // [D, d]
    let tokens = (vh * arow.unsqueeze(2)).matmul(&wh.tr()); // [B, L, D]
    let last = *match m {
        Modality::Vision => model.config.vision_attention_slots(),
        Modality::Text => model.config.text_attention_slots(),
    }
    .last()
    .expect("a slot");
    let pooled = cache.require(m, last, Site::Pooled)?;
    Ok(ln_linear(ln, pooled, &tokens, 1.0).matmul(&proj.to_kind(Kind::Double)))
}

/// The embeddings `[N, E]` (L2-normalised) with every term outside the attention heads of the
/// last `k` attention slots replaced by its mean over the N items (Gandelsman et al.'s
/// mean-ablation test): how much of the representation the last layers' heads carry directly.
pub fn mean_ablated(d: &Decomposition, slots: &[usize], k: usize) -> Tensor {
    let keep_from = slots.len().saturating_sub(k);
    let kept: Vec<bool> = d
        .terms
        .iter()
        .map(|t| matches!(t, Term::Head { slot, .. } if slots.iter().position(|s| s == slot).is_some_and(|i| i >= keep_from)))
        .collect();
    let mask = Tensor::from_slice(&kept).to_kind(Kind::Double).view([1, -1, 1]);
    let means = d.values.mean_dim(&[0i64][..], true, Kind::Double);
    let mixed: Tensor = &d.values * &mask + means * (mask.ones_like() - &mask);
    crate::tensor::l2_normalize(&mixed.sum_dim_intlist(&[1i64][..], false, Kind::Double)).to_kind(Kind::Float)
}

/// One greedy step of TextSpan.
#[derive(Debug, Clone, Serialize)]
pub struct SpanStep {
    /// The description chosen.
    pub text: String,
    /// Share of the head's (centred) contribution variance explained so far.
    pub explained: f64,
}

/// The rank of the reference's pre-projection (`--w_ov_rank 80` in Gandelsman et al.'s
/// `compute_text_set_projection.py`).
pub const REFERENCE_SPAN_RANK: usize = 80;

/// TextSpan (Gandelsman et al. 2024, Algorithm 1): a greedy basis of `m` descriptions for a
/// head's contributions `c: [N, E]`. The texts (rows of `pool: [M, E]`, L2-normalised) are
/// first projected onto the span of the top `rank` right singular vectors of the (uncentred)
/// contributions, `r ← r·V_kᵀV_k` — the reference's pre-projection (`rank` = `None` skips it;
/// a rank beyond the data's rank keeps all of its row space). At each step the text onto which
/// the centred contributions project with the most variance is chosen, then that direction is
/// removed from the contributions and from every remaining text.
pub fn text_span(c: &Tensor, pool: &Tensor, names: &[String], m: usize, rank: Option<usize>) -> Result<Vec<SpanStep>> {
    if pool.size()[0] < m as i64 || names.len() as i64 != pool.size()[0] {
        return Err(Error::config("span", m, format!("the text pool has {} descriptions; TextSpan needs at least m", pool.size()[0])));
    }
    if rank == Some(0) {
        return Err(Error::config("span rank", 0, "the pre-projection needs rank ≥ 1 (or none)"));
    }
    let c0 = c.to_kind(Kind::Double);
    let mut c = &c0 - c0.mean_dim(&[0i64][..], true, Kind::Double);
    let total = (&c * &c).sum(Kind::Double).double_value(&[]).max(1e-30);
    let mut r = crate::tensor::l2_normalize(&pool.to_kind(Kind::Double));
    if let Some(k) = rank {
        let (_, _, v) = c0.svd(true, true); // v: [E, min(N, E)]
        let vk = v.narrow(1, 0, (k as i64).min(v.size()[1]));
        r = r.matmul(&vk).matmul(&vk.tr());
    }
    let mut used = vec![false; names.len()];
    let mut out = vec![];
    for _ in 0..m {
        let proj = c.matmul(&r.tr()); // [N, M]
        let var = (&proj * &proj).sum_dim_intlist(&[0i64][..], false, Kind::Double);
        let scores = crate::tensor::to_vec_f64(&var);
        let (j, _) = scores
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .fold((usize::MAX, f64::MIN), |a, (j, &s)| if s > a.1 { (j, s) } else { a });
        if j == usize::MAX {
            break;
        }
        used[j] = true;
        let u = r.get(j as i64);
        let norm = u.norm().double_value(&[]);
        if norm < 1e-12 {
            break;
        }
        let u = &u / norm;
        c = &c - c.matmul(&u).unsqueeze(1) * u.unsqueeze(0);
        r = &r - r.matmul(&u).unsqueeze(1) * u.unsqueeze(0);
        let left = (&c * &c).sum(Kind::Double).double_value(&[]);
        out.push(SpanStep { text: names[j].clone(), explained: 1.0 - left / total });
    }
    Ok(out)
}

/// The similarity of the top-`k` principal subspaces of two contribution sets `[N, E]`: the
/// mean squared cosine of their principal angles, `‖U_aᵀU_b‖_F² / k` (1 = the same subspace,
/// about k/E for random ones).
pub fn subspace_similarity(a: &Tensor, b: &Tensor, k: i64) -> f64 {
    let basis = |x: &Tensor| {
        let x = x.to_kind(Kind::Double);
        let x = &x - x.mean_dim(&[0i64][..], true, Kind::Double);
        let (_, _, v) = x.svd(true, true);
        v.narrow(1, 0, k.min(v.size()[1]))
    };
    let (ua, ub) = (basis(a), basis(b));
    let k = ua.size()[1].min(ub.size()[1]);
    let m = ua.narrow(1, 0, k).tr().matmul(&ub.narrow(1, 0, k));
    (&m * &m).sum(Kind::Double).double_value(&[]) / k as f64
}

/// Cosine of the mean directions of two contribution sets.
pub fn mean_cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (ma, mb) = (
        a.to_kind(Kind::Double).mean_dim(&[0i64][..], false, Kind::Double),
        b.to_kind(Kind::Double).mean_dim(&[0i64][..], false, Kind::Double),
    );
    ma.dot(&mb).double_value(&[]) / (ma.norm().double_value(&[]) * mb.norm().double_value(&[])).max(1e-30)
}

/// The synthetic world's descriptions for TextSpan: every colour, shape and size word, every
/// "a {size} {colour} {shape}" phrase, the relations, and a few scene words.
pub fn synthetic_text_pool() -> Vec<String> {
    use crate::data::synth::{COLORS, SHAPES, SIZES};
    let mut v: Vec<String> = COLORS
        .iter()
        .map(|c| c.0.to_string())
        .chain(SHAPES.iter().map(|s| s.to_string()))
        .chain(SIZES.iter().map(|s| s.to_string()))
        .collect();
    for (c, _) in COLORS {
        for s in SHAPES {
            v.push(format!("a {c} {s}"));
        }
    }
    v.extend(
        ["left of", "right of", "above", "below", "two shapes", "three shapes", "a striped background", "a single object"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_span_finds_the_planted_directions() {
        // Contributions along e0 (variance 9) and e1 (variance 1); texts e0 + noise, e1, e2.
        tch::manual_seed(0);
        let n = 200;
        let a = Tensor::randn([n, 1], (Kind::Double, tch::Device::Cpu));
        let b = Tensor::randn([n, 1], (Kind::Double, tch::Device::Cpu));
        let c = Tensor::cat(&[&a * 3.0, b.shallow_clone(), Tensor::zeros([n, 2], (Kind::Double, tch::Device::Cpu))], 1);
        let pool = Tensor::from_slice(&[0.0f64, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.1, 0.0, 0.0]).view([3, 4]);
        let names = ["e2".to_string(), "e1".to_string(), "e0".to_string()];
        let steps = text_span(&c, &pool, &names, 2, None).unwrap();
        assert_eq!(steps[0].text, "e0");
        assert_eq!(steps[1].text, "e1");
        assert!(steps[1].explained > 0.999, "{:?}", steps);
        assert!(steps[0].explained > 0.85 && steps[0].explained < 0.95, "{:?}", steps);
        assert!(text_span(&c, &pool, &names, 4, None).is_err());
        // The reference's pre-projection: a rank at or beyond the data's rank (2 here: e0, e1)
        // changes nothing; rank 1 keeps only e0's direction, so e1's text is projected to zero
        // and the search stops after one step.
        for k in [2, 4, 80] {
            let with = text_span(&c, &pool, &names, 2, Some(k)).unwrap();
            assert_eq!(with.iter().map(|s| &s.text).collect::<Vec<_>>(), steps.iter().map(|s| &s.text).collect::<Vec<_>>());
            assert!((with[1].explained - steps[1].explained).abs() < 1e-9, "rank {k}");
        }
        let one = text_span(&c, &pool, &names, 2, Some(1)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].text, "e0");
        assert!(text_span(&c, &pool, &names, 2, Some(0)).is_err());
        // Subspaces: a set against itself is 1; against an orthogonal one 0.
        assert!((subspace_similarity(&c, &c, 2) - 1.0).abs() < 1e-9);
        let d = Tensor::cat(&[Tensor::zeros([n, 2], (Kind::Double, tch::Device::Cpu)), a * 2.0, b], 1);
        assert!(subspace_similarity(&c, &d, 2) < 1e-9);
    }
}
