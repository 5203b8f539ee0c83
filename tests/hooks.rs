//! Hooks that edit (issue 11 §1), on the one forward path: edits that change nothing leave
//! the output alone, zeroing a head by a hook equals zeroing its out-projection columns in
//! the weights, and patching every site from a clean run reproduces it.

use msclip::model::{ActivationCache, Capture, Edit, Hook, Modality, ModelConfig, MsClip, Site};
use msclip::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

fn build(name: &str) -> (tch::nn::VarStore, MsClip) {
    MsClip::build(&ModelConfig::preset(name).unwrap(), Device::Cpu, 0)
}

fn inputs(cfg: &ModelConfig, b: i64) -> (Tensor, Tensor) {
    tch::manual_seed(7);
    let s = cfg.vision.image_size;
    let images = Tensor::randn([b, 3, s, s], (Kind::Float, Device::Cpu));
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let caps = ["a red circle", "a large green triangle left of a small blue square", "two", "a white ring above a black cross"];
    (images, tok.tokenize_batch(&caps[..b as usize]))
}

fn embed(m: &MsClip, images: &Tensor, tokens: &Tensor, cap: &Capture) -> (Tensor, Tensor, ActivationCache) {
    let mut cache = ActivationCache::new();
    let (i, t) = tch::no_grad(|| {
        (m.encode_image_with(images, cap, &mut cache, false).unwrap(), m.encode_text_with(tokens, cap, &mut cache).unwrap())
    });
    (i, t, cache)
}

fn maxdiff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn edits_that_change_nothing_leave_the_output_alone() {
    for name in ["tiny-clip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let (pi, pt, _) = embed(&m, &images, &tokens, &Capture::none());
        // Scale by 1 at every non-last slot: the fused kernels and the pooled last block stay,
        // bit for bit.
        let last = m.config.text.layers - 1;
        let mut cap = Capture::none();
        for slot in 1..last {
            for site in [Site::ResidIn, Site::Ln1, Site::Q, Site::K, Site::V, Site::Z, Site::AttnOut, Site::Ln2, Site::MlpOut, Site::Resid]
            {
                cap = cap.with_hook(Hook::new(Modality::Vision, slot, site, Edit::Scale(1.0))).with_hook(Hook::new(
                    Modality::Text,
                    slot,
                    site,
                    Edit::Scale(1.0),
                ));
            }
        }
        let (ei, et, _) = embed(&m, &images, &tokens, &cap);
        assert!(ei.equal(&pi) && et.equal(&pt), "{name}: not bitwise equal");
        // At the last slot the full block runs instead of the pooled row: equal to ≤ 1e-6.
        let cap = Capture::hooks(vec![
            Hook::new(Modality::Vision, last, Site::Z, Edit::Scale(1.0)),
            Hook::new(Modality::Text, last, Site::MlpHidden, Edit::Scale(1.0)),
        ]);
        let (ei, et, _) = embed(&m, &images, &tokens, &cap);
        assert!(maxdiff(&ei, &pi) <= 1e-6 && maxdiff(&et, &pt) <= 1e-6, "{name}: {} {}", maxdiff(&ei, &pi), maxdiff(&et, &pt));
    }
}

/// Zero-ablating head h of slot s (its `z`, before the out-projection) equals zeroing the
/// head's input columns `W_O[:, h·d:(h+1)·d]` in the weights, an independent path.
#[test]
fn zeroing_a_head_by_hook_equals_zeroing_its_out_projection_columns() {
    for (name, slot, head) in [("tiny-clip", 2usize, 1usize), ("tiny-msclip-s", 3, 2), ("tiny-msclip-s", 5, 0)] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let cap = Capture::hooks(vec![
            Hook::new(Modality::Vision, slot, Site::Z, Edit::Zero).head(head),
            Hook::new(Modality::Text, slot, Site::Z, Edit::Zero).head(head),
        ]);
        let (hi, ht, _) = embed(&m, &images, &tokens, &cap);
        // The weight path: zero the columns in both towers' out-projections (the same tensor
        // in a shared slot), with no hook.
        let d = m.config.vision.width / m.config.vision.heads;
        tch::no_grad(|| {
            for w in [&m.vision.blocks[slot].as_ref().unwrap().attn_out.weight, &m.text.blocks[slot].attn_out.weight] {
                let _ = w.narrow(1, head as i64 * d, d).shallow_clone().zero_();
            }
        });
        let (wi, wt, _) = embed(&m, &images, &tokens, &Capture::none());
        assert!(
            maxdiff(&hi, &wi) <= 1e-5 && maxdiff(&ht, &wt) <= 1e-5,
            "{name} slot {slot} head {head}: {} {}",
            maxdiff(&hi, &wi),
            maxdiff(&ht, &wt)
        );
        // And the ablation did change the output.
        let (_vs2, fresh) = build(name);
        let (pi, _, _) = embed(&fresh, &images, &tokens, &Capture::none());
        assert!(maxdiff(&hi, &pi) > 1e-4, "{name}: the ablation changed nothing");
    }
}

/// Patching every site of every slot from a clean run into a run on other inputs gives the
/// clean embeddings exactly.
#[test]
fn patching_every_site_from_a_clean_run_reproduces_it() {
    for name in ["tiny-clip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let sites = [
            Site::ResidIn,
            Site::Ln1,
            Site::Q,
            Site::K,
            Site::V,
            Site::Z,
            Site::AttnOut,
            Site::Ln2,
            Site::MlpOut,
            Site::Resid,
            Site::Pooled,
        ];
        let (ci, ct, clean) = embed(&m, &images, &tokens, &Capture::sites(&sites));
        // Corrupted inputs: other images, captions shuffled.
        let other = Tensor::randn(images.size(), (Kind::Float, Device::Cpu));
        let shuffled = tokens.index_select(0, &Tensor::from_slice(&[2i64, 0, 1]));
        let mut cap = Capture::none();
        for &(mo, slot, site) in clean.keys() {
            cap = cap.with_hook(Hook::new(mo, slot, site, Edit::Patch(clean.get(mo, slot, site).unwrap().shallow_clone())));
        }
        assert!(cap.hooks.len() > 50, "{name}: {} hooks", cap.hooks.len());
        let (pi, pt, _) = embed(&m, &other, &shuffled, &cap);
        assert!(pi.equal(&ci) && pt.equal(&ct), "{name}: {} {}", maxdiff(&pi, &ci), maxdiff(&pt, &ct));
        // Patching only the residual stream entering the middle slot does it too.
        let mid = m.config.text.layers / 2;
        let cap = Capture::hooks(vec![
            Hook::new(
                Modality::Vision,
                mid,
                Site::ResidIn,
                Edit::Patch(clean.get(Modality::Vision, mid, Site::ResidIn).unwrap().shallow_clone()),
            ),
            Hook::new(
                Modality::Text,
                mid,
                Site::ResidIn,
                Edit::Patch(clean.get(Modality::Text, mid, Site::ResidIn).unwrap().shallow_clone()),
            ),
        ]);
        let (_, pt2, _) = embed(&m, &other, &tokens, &cap);
        assert!(maxdiff(&pt2, &ct) < 1e-6, "{name}");
    }
}

#[test]
fn bad_hooks_are_errors_naming_the_hook() {
    let (_vs, m) = build("tiny-clip");
    let (images, tokens) = inputs(&m.config, 2);
    let mut cache = ActivationCache::new();
    let cases = [
        (Hook::new(Modality::Vision, 9, Site::Z, Edit::Zero), "no block at slot 9"),
        (Hook::new(Modality::Vision, 1, Site::Z, Edit::Zero).head(7), "head 7"),
        (Hook::new(Modality::Vision, 1, Site::Adapter, Edit::Zero), "no lateral adapter"),
        (Hook::new(Modality::Vision, 1, Site::Ln1, Edit::Zero).head(0), "head 0"),
        (
            Hook::new(Modality::Vision, 1, Site::Resid, Edit::Patch(Tensor::zeros([2, 3, 4], (Kind::Float, Device::Cpu)))),
            "patch source has shape",
        ),
        (Hook::new(Modality::Vision, 1, Site::Resid, Edit::Zero).positions(vec![99]), "positions [99]"),
        (
            Hook::new(Modality::Vision, 1, Site::Z, Edit::Mean(Tensor::zeros([1, 4, 7, 32], (Kind::Float, Device::Cpu)))).head(0),
            "does not broadcast",
        ),
    ];
    for (hook, want) in cases {
        let err = tch::no_grad(|| m.encode_image_with(&images, &Capture::hooks(vec![hook]), &mut cache, false)).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    assert!(m
        .encode_text_with(&tokens, &Capture::hooks(vec![Hook::new(Modality::Text, 0, Site::Pooled, Edit::Zero)]), &mut cache)
        .is_err());
}

/// A hook edits only its selection: one head, some positions, some items.
#[test]
fn hooks_edit_only_their_selection() {
    let x = Tensor::ones([2, 3, 4, 2], (Kind::Float, Device::Cpu));
    let h = Hook::new(Modality::Text, 0, Site::Z, Edit::Zero).head(1).positions(vec![0, 3]).items(vec![1]);
    let y = h.apply(&x);
    assert_eq!(y.sum(Kind::Float).double_value(&[]), 48.0 - 4.0);
    assert_eq!(y.double_value(&[1, 1, 3, 1]), 0.0);
    assert_eq!(y.double_value(&[0, 1, 3, 1]), 1.0);
    assert_eq!(y.double_value(&[1, 1, 2, 1]), 1.0);
    let m = Hook::new(Modality::Text, 0, Site::Resid, Edit::Mean(Tensor::from_slice(&[5.0f32, 6.0]))).positions(vec![1]);
    let y = m.apply(&Tensor::zeros([1, 3, 2], (Kind::Float, Device::Cpu)));
    assert_eq!(Vec::<f32>::try_from(y.view([-1])).unwrap(), vec![0.0, 0.0, 5.0, 6.0, 0.0, 0.0]);
    let r =
        Hook::new(Modality::Text, 0, Site::Resid, Edit::Resample(vec![1, 0])).apply(&Tensor::from_slice(&[1.0f32, 2.0]).view([2, 1, 1]));
    assert_eq!(Vec::<f32>::try_from(r.view([-1])).unwrap(), vec![2.0, 1.0]);
    let f = Hook::new(Modality::Text, 0, Site::Resid, Edit::Custom(std::sync::Arc::new(|t: &Tensor| t * 3.0))).items(vec![0]);
    assert_eq!(Vec::<f32>::try_from(f.apply(&Tensor::ones([2, 1, 1], (Kind::Float, Device::Cpu))).view([-1])).unwrap(), vec![3.0, 1.0]);
}
