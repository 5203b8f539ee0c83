//! Model family: shapes, exact parameter counts, sharing, masks, capture.

use msclip::model::config::PRESETS;
use msclip::model::{ActivationCache, Capture, Modality, ModelConfig, MsClip, Site};
use msclip::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

fn build(name: &str) -> (tch::nn::VarStore, MsClip) {
    let cfg = ModelConfig::preset(name).unwrap();
    MsClip::build(&cfg, Device::Cpu, 0)
}

#[test]
fn exact_parameter_totals_of_the_big_presets() {
    let expect = [("clip-b32", 151_277_313), ("msclip-s-b32", 132_408_001), ("msclip-s-b16", 132_503_617)];
    for (name, total) in expect {
        let (vs, _) = build(name);
        let c = MsClip::param_count(&vs);
        assert_eq!(c.total, total, "{name}");
    }
    // The text tower of clip-b32 counted from the architecture: 49,408 × 512 token and
    // 77 × 512 position embeddings, 12 blocks of 12w² + 13w, ln_final, a 512 × 512 projection.
    let (vs, _) = build("clip-b32");
    let w = 512i64;
    assert_eq!(MsClip::param_count(&vs).text_only, 49_408 * w + 77 * w + 12 * (12 * w * w + 13 * w) + 2 * w + w * 512);
    // clip-b32 has nothing shared; msclip-s-b32 shares 11 slots of attention + FFN.
    let (vs, _) = build("clip-b32");
    let c = MsClip::param_count(&vs);
    assert_eq!(c.shared, 0);
    assert_eq!(c.vision_only, 87_849_216);
    let (vs, _) = build("msclip-s-b32");
    let c = MsClip::param_count(&vs);
    let w = 768i64;
    assert_eq!(c.shared, 11 * ((3 * w * w + 3 * w) + (w * w + w) + (4 * w * w + 4 * w) + (4 * w * w + w)));
}

#[test]
fn tiny_clip_s_is_tiny_msclip_s_unshared() {
    // The spectrum's ablation: same stem, branch and widths, nothing shared, so every shared
    // parameter of tiny-msclip-s exists twice (once per tower).
    let (vs, _) = build("tiny-msclip-s");
    let s = MsClip::param_count(&vs);
    let (vs, _) = build("tiny-clip-s");
    let u = MsClip::param_count(&vs);
    assert_eq!((s.total, s.shared), (7_790_273, 988_800));
    assert_eq!((u.total, u.shared), (8_779_073, 0));
    assert_eq!(u.total, s.total + s.shared);
}

#[test]
fn tiny_clip_msnorm_is_tiny_clip_with_msclip_s_constants() {
    // The spectrum's other control: tiny-clip's architecture with tiny-msclip-s's normalisation
    // and LayerNorm ε, trained from the shipped train config (a model file, not a preset, so
    // `--model auto` never confuses it with tiny-clip, whose keys it shares).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let train = msclip::train::TrainConfig::from_toml_file(&root.join("configs/train/tiny-clip-msnorm.toml")).unwrap();
    let cfg = ModelConfig::from_toml_file(&root.join(&train.model)).unwrap();
    let (clip, s) = (ModelConfig::preset("tiny-clip").unwrap(), ModelConfig::preset("tiny-msclip-s").unwrap());
    assert_eq!((cfg.ln_eps, &cfg.preprocess), (s.ln_eps, &s.preprocess));
    assert_ne!(cfg.preprocess, clip.preprocess);
    let (vs, _) = MsClip::build(&cfg, Device::Cpu, 0);
    let (vc, _) = build("tiny-clip");
    assert_eq!(MsClip::param_count(&vs).total, 8_756_737);
    assert_eq!(MsClip::param_count(&vc).total, 8_756_737);
    assert!(cfg.sharing.is_empty() && cfg.vision.stem == clip.vision.stem);
}

#[test]
fn every_preset_builds_and_validates() {
    for (name, _) in PRESETS {
        let cfg = ModelConfig::preset(name).unwrap();
        let (vs, m) = MsClip::build(&cfg, Device::Cpu, 0);
        assert!(MsClip::param_count(&vs).total > 0);
        let vis_layers = m.vision.blocks.iter().filter(|b| b.is_some()).count();
        let expected = if cfg.vision.stem == msclip::model::StemKind::EarlyConv { cfg.vision.layers - 1 } else { cfg.vision.layers };
        assert_eq!(vis_layers, expected, "{name}");
    }
    let s = ModelConfig::preset("msclip-s-b32").unwrap();
    assert_eq!(s.vision_attention_slots(), (1..12).collect::<Vec<_>>());
    assert_eq!(ModelConfig::preset("clip-b32").unwrap().vision_attention_slots().len(), 12);
}

fn inputs(cfg: &ModelConfig, b: i64) -> (Tensor, Tensor) {
    let s = cfg.vision.image_size;
    let images = Tensor::randn([b, 3, s, s], (Kind::Float, Device::Cpu));
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let caps: Vec<String> = (0..b).map(|i| format!("a large red circle number {i} left of a blue square")).collect();
    (images, tok.tokenize_batch(&caps))
}

#[test]
fn tiny_shapes_and_normalised_embeddings() {
    for name in ["tiny-clip", "tiny-msclip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let out = tch::no_grad(|| m.forward(&images, &tokens, &Capture::none(), false).unwrap());
        assert_eq!(out.image.size(), [3, 64]);
        assert_eq!(out.text.size(), [3, 64]);
        assert_eq!(out.logits_per_image.size(), [3, 3]);
        let norms = out.image.norm_scalaropt_dim(2.0, [-1], false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
    }
}

#[test]
fn capture_path_equals_fused_path() {
    for name in ["tiny-clip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 2);
        tch::no_grad(|| {
            let fused = m.forward(&images, &tokens, &Capture::none(), false).unwrap();
            let cap = Capture::sites(&[Site::AttnProbs, Site::AttnLogits, Site::Ln1, Site::AttnOut, Site::Ln2, Site::Resid]);
            let exp = m.forward(&images, &tokens, &cap, false).unwrap();
            let di = (&fused.image - &exp.image).abs().max().double_value(&[]);
            let dt = (&fused.text - &exp.text).abs().max().double_value(&[]);
            assert!(di <= 1e-5 && dt <= 1e-5, "{name}: {di} {dt}");
            // Attention layers per modality and row sums.
            let vslots = exp.cache.slots(Modality::Vision, Site::AttnProbs);
            assert_eq!(vslots, m.config.vision_attention_slots(), "{name}");
            assert_eq!(exp.cache.slots(Modality::Text, Site::AttnProbs).len(), m.config.text.layers);
            let g = m.config.grid();
            for &s in &vslots {
                let a = exp.cache.get(Modality::Vision, s, Site::AttnProbs).unwrap();
                assert_eq!(a.size(), [2, m.config.vision.heads, g * g + 1, g * g + 1]);
                let dev = (a.sum_dim_intlist(&[-1i64][..], false, Kind::Float) - 1.0).abs().max().double_value(&[]);
                assert!(dev < 1e-5);
            }
            let a = exp.cache.get(Modality::Text, 3, Site::AttnProbs).unwrap();
            let l = m.config.text.context_length;
            assert_eq!(a.size(), [2, m.config.text.heads, l, l]);
            // Causal: nothing above the diagonal.
            let upper = a.triu(1).abs().max().double_value(&[]);
            assert_eq!(upper, 0.0);
        });
    }
}

#[test]
fn causal_mask_hides_future_tokens() {
    let (_vs, m) = build("tiny-msclip-s");
    let tok = Tokenizer::new(m.config.text.context_length as usize);
    let a = tok.tokenize_batch(&["a red circle above a green square"]);
    let b = a.copy();
    // Change a token after position 3; positions ≤ 3 must not move.
    let _ = b.get(0).get(5).fill_(1000);
    let cap = Capture::sites(&[Site::Resid]);
    let (mut ca, mut cb) = (ActivationCache::new(), ActivationCache::new());
    tch::no_grad(|| {
        let _ = m.encode_text_with(&a, &cap, &mut ca).unwrap();
        let _ = m.encode_text_with(&b, &cap, &mut cb).unwrap();
    });
    let last = m.config.text.layers - 1;
    let ra = ca.get(Modality::Text, last, Site::Resid).unwrap();
    let rb = cb.get(Modality::Text, last, Site::Resid).unwrap();
    let before = (ra.narrow(1, 0, 5) - rb.narrow(1, 0, 5)).abs().max().double_value(&[]);
    let after = (ra.narrow(1, 5, 1) - rb.narrow(1, 5, 1)).abs().max().double_value(&[]);
    assert_eq!(before, 0.0);
    assert!(after > 1e-3);
}

#[test]
fn shared_weight_gradient_is_sum_of_both_modalities() {
    let (vs, m) = build("tiny-msclip");
    let (images, tokens) = inputs(&m.config, 2);
    let shared = vs.variables()["shared.blocks.2.fc1.weight"].shallow_clone();
    let grad_of = |f: &dyn Fn() -> Tensor| {
        for mut v in vs.trainable_variables() {
            v.zero_grad();
        }
        f().backward();
        shared.grad().copy()
    };
    let gv = grad_of(&|| m.encode_image_with(&images, &Capture::none(), &mut ActivationCache::new(), true).unwrap().sum(Kind::Float));
    let gt = grad_of(&|| m.encode_text(&tokens).unwrap().sum(Kind::Float));
    let gboth = grad_of(&|| {
        let i = m.encode_image_with(&images, &Capture::none(), &mut ActivationCache::new(), true).unwrap();
        i.sum(Kind::Float) + m.encode_text(&tokens).unwrap().sum(Kind::Float)
    });
    assert!(gv.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(gt.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let diff = (&gboth - (&gv + &gt)).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
    // One VarStore entry: changing it moves both towers.
    let (e_i, e_t) = tch::no_grad(|| (m.encode_image(&images).unwrap(), m.encode_text(&tokens).unwrap()));
    tch::no_grad(|| {
        let _ = shared.shallow_clone().g_add_(&(shared.randn_like() * 0.5));
    });
    let (f_i, f_t) = tch::no_grad(|| (m.encode_image(&images).unwrap(), m.encode_text(&tokens).unwrap()));
    assert!((e_i - f_i).abs().max().double_value(&[]) > 1e-4);
    assert!((e_t - f_t).abs().max().double_value(&[]) > 1e-4);
    assert!(!vs.variables().contains_key("visual.blocks.2.fc1.weight"));
    assert!(!vs.variables().contains_key("text.blocks.2.fc1.weight"));
    assert!(vs.variables().contains_key("visual.blocks.2.ln1.weight"));
}

#[test]
fn same_seed_same_model_and_output() {
    let (_a, ma) = build("tiny-msclip-s");
    let (_b, mb) = build("tiny-msclip-s");
    let (images, tokens) = inputs(&ma.config, 2);
    let oa = tch::no_grad(|| ma.forward(&images, &tokens, &Capture::none(), false).unwrap());
    let ob = tch::no_grad(|| mb.forward(&images, &tokens, &Capture::none(), false).unwrap());
    assert!(oa.image.equal(&ob.image) && oa.text.equal(&ob.text));
    let cfg = ModelConfig::preset("tiny-msclip-s").unwrap();
    let (_c, mc) = MsClip::build(&cfg, Device::Cpu, 1);
    let oc = tch::no_grad(|| mc.encode_image(&images).unwrap());
    assert!(!oa.image.equal(&oc));
}

/// The last block computes only the pooled row when nothing there is captured; the result and
/// the gradients must equal the full path's, for captions of different lengths (different EOT
/// rows), a row without EOT (argmax pooling) and every sharing pattern.
#[test]
fn pooled_last_block_equals_full_forward_and_gradients() {
    for name in ["tiny-clip", "tiny-msclip", "tiny-msclip-s"] {
        let (vs, m) = build(name);
        let s = m.config.vision.image_size;
        tch::manual_seed(3);
        let images = Tensor::randn([3, 3, s, s], (Kind::Float, Device::Cpu));
        let tok = Tokenizer::new(m.config.text.context_length as usize);
        let tokens = tok.tokenize_batch(&["a red circle", "a large green triangle left of a small blue square above", "x"]);
        // Third row: no EOT at all → pooled at the largest id.
        tokens.get(2).copy_(&Tensor::randint_low(1, 40000, [m.config.text.context_length], (Kind::Int64, Device::Cpu)));
        // Attention recorded at the last slot forces the full explicit forward there.
        let only_last = |modality_slots: usize| Capture::sites(&[Site::AttnProbs]).with_slots(vec![modality_slots]).keep_graph();
        let last = m.config.text.layers - 1;
        let run = |cap: &Capture| {
            vs.variables().into_values().for_each(|mut t| t.zero_grad());
            let out = m.forward(&images, &tokens, cap, true).unwrap();
            (out.image.sum(Kind::Float) * 3.0 + out.text.sum(Kind::Float) * 2.0 + (&out.image * &out.text).sum(Kind::Float)).backward();
            let grads: std::collections::BTreeMap<String, Tensor> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| {
                    let g = t.grad();
                    (n, if g.defined() { g.copy() } else { g })
                })
                .collect();
            (out.image, out.text, grads)
        };
        let (pi, pt, pg) = run(&Capture::none());
        let (fi, ft, fg) = run(&only_last(last));
        let di = (&pi - &fi).abs().max().double_value(&[]);
        let dt = (&pt - &ft).abs().max().double_value(&[]);
        assert!(di < 1e-5 && dt < 1e-5, "{name}: image {di} text {dt}");
        for ((n, a), (_, b)) in pg.iter().zip(fg.iter()) {
            if !a.defined() || !b.defined() {
                assert_eq!(a.defined(), b.defined(), "{name}: {n}");
                continue;
            }
            let scale = b.abs().max().double_value(&[]).max(1e-3);
            let d = (a - b).abs().max().double_value(&[]) / scale;
            assert!(d < 1e-4, "{name}: gradient of {n} differs by {d} (relative)");
        }
    }
}

/// Recording residual-stream and LN sites (everywhere, the last slot included) leaves the
/// computation alone: fused attention and the pooled last block stay, and the embeddings are
/// bit for bit those of a run that records nothing; the recorded last-slot tensors are the
/// full block's.
#[test]
fn non_attention_capture_is_bitwise_equal_to_a_plain_run() {
    for name in ["tiny-clip", "tiny-msclip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let plain = tch::no_grad(|| m.forward(&images, &tokens, &Capture::none(), false).unwrap());
        let cap = Capture::sites(&[Site::Ln1, Site::AttnOut, Site::Ln2, Site::Resid]);
        let rec = tch::no_grad(|| m.forward(&images, &tokens, &cap, false).unwrap());
        assert!(plain.image.equal(&rec.image) && plain.text.equal(&rec.text), "{name}: not bitwise equal");
        let last = m.config.text.layers - 1;
        let resid = rec.cache.require(Modality::Text, last, Site::Resid).unwrap();
        assert_eq!(resid.size(), [3, m.config.text.context_length, m.config.text.width]);
        for slot in m.config.vision_attention_slots() {
            assert!(rec.cache.get(Modality::Vision, slot, Site::Ln1).is_some(), "{name}: vision ln1 at {slot}");
        }
    }
}

/// QuickGELU as `silu(1.702·x)/1.702` with its constants on the FFN's input and output (the
/// CPU form) equals `x·σ(1.702x)`. (The CUDA form, constants in the weights, is checked by `scripts/gpu/check.sh` §1 against
/// CPU embeddings.)
#[test]
fn folded_quick_gelu_mlp_equals_the_textbook_form() {
    let (_vs, m) = build("tiny-clip");
    let block = &m.text.blocks[2];
    tch::manual_seed(5);
    let h = Tensor::randn([40, 7, m.config.text.width], (Kind::Float, Device::Cpu)) * 3.0;
    let z = h.linear(&block.fc1.weight, block.fc1.bias.as_ref());
    let textbook = (&z * (&z * 1.702).sigmoid()).linear(&block.fc2.weight, block.fc2.bias.as_ref());
    let folded = block.mlp(&h);
    let d = (&textbook - &folded).abs().max().double_value(&[]);
    assert!(d < 1e-5, "{d}");
}

/// Under autocast (CPU bf16 here; CI has no GPU) the pooled last block and the full forward
/// give the same embeddings, both close to fp32.
#[test]
fn pooled_path_under_bf16_autocast_matches_full_path() {
    for name in ["tiny-clip", "tiny-msclip-s"] {
        let (_vs, m) = build(name);
        let (images, tokens) = inputs(&m.config, 3);
        let reference = tch::no_grad(|| m.forward(&images, &tokens, &Capture::none(), false).unwrap());
        let amp = |cap: &Capture| {
            msclip::autocast::autocast(Device::Cpu, Some(Kind::BFloat16), || {
                tch::no_grad(|| m.forward(&images, &tokens, cap, false).unwrap())
            })
        };
        let last = m.config.text.layers - 1;
        let (fast, full) = (amp(&Capture::none()), amp(&Capture::sites(&[Site::AttnProbs]).with_slots(vec![last])));
        assert_eq!(fast.image.kind(), Kind::BFloat16, "autocast was not active");
        let cos = |a: &Tensor, b: &Tensor| {
            (a.to_kind(Kind::Float) * b.to_kind(Kind::Float)).sum_dim_intlist(&[-1i64][..], false, Kind::Float).min().double_value(&[])
        };
        for (what, a, b) in [("image", &fast.image, &full.image), ("text", &fast.text, &full.text)] {
            assert!(cos(a, b) > 0.995, "{name} {what}: fast vs full {}", cos(a, b));
        }
        assert!(cos(&fast.image, &reference.image) > 0.99 && cos(&fast.text, &reference.text) > 0.99, "{name}: bf16 vs fp32");
    }
}

/// The CPU bf16 detours (`model::block::fused_attention`, `Conv::forward`): the same values as
/// the fp32 operators to bf16 round-off, the dtype autocast would have given, and the autocast
/// state intact afterwards.
#[test]
fn cpu_bf16_detours_equal_the_plain_operators() {
    use msclip::autocast::{autocast, cpu_autocast_enabled, without_cpu_autocast};
    use msclip::model::block::fused_attention;
    let cpu = (Kind::Float, Device::Cpu);
    tch::manual_seed(3);
    let rel = |a: &Tensor, b: &Tensor| (a.to_kind(Kind::Float) - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
    // Attention: bf16 q, k, v (what autocast's linear gives) → bf16 out, computed in fp32.
    let [q, k, v] = [0, 1, 2].map(|_| Tensor::randn([2, 3, 9, 8], cpu));
    for causal in [false, true] {
        let reference = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, 0.35, false);
        let bf = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let out = autocast(Device::Cpu, Some(Kind::BFloat16), || {
            let o = fused_attention(&bf(&q), &bf(&k), &bf(&v), causal, 0.35);
            assert!(cpu_autocast_enabled(), "autocast switched back on");
            o
        });
        assert_eq!(out.kind(), Kind::BFloat16);
        // Inputs rounded to bf16 (2⁻⁹ relative) and the output rounded once more.
        let r = rel(&out, &reference);
        assert!(r < 2e-2, "causal {causal}: {r}");
    }
    // A patch projection (kernel = stride) as a matrix product, and its weight gradient.
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let patch = msclip::model::layers::Conv::new(&vs.root().sub("patch"), 3, 16, 4, 4, 0, 1);
    let depthwise = msclip::model::layers::Conv::new(&vs.root().sub("dw"), 16, 16, 2, 2, 0, 16);
    let ordinary = msclip::model::layers::Conv::new(&vs.root().sub("c3"), 3, 16, 3, 2, 1, 1);
    let x = Tensor::randn([2, 3, 16, 12], cpu);
    let plain = |c: &msclip::model::layers::Conv, x: &Tensor| x.conv2d(&c.weight, None::<Tensor>, [c.stride], [c.padding], [1], c.groups);
    let reference = plain(&patch, &x);
    reference.square().sum(Kind::Float).backward();
    let grad_ref = patch.weight.grad().copy();
    let _ = patch.weight.grad().zero_();
    let y = autocast(Device::Cpu, Some(Kind::BFloat16), || patch.forward(&x));
    assert_eq!((y.size(), y.kind()), (vec![2, 16, 4, 3], Kind::BFloat16));
    assert!(rel(&y, &reference) < 2e-2, "patch: {}", rel(&y, &reference));
    y.to_kind(Kind::Float).square().sum(Kind::Float).backward();
    assert!(rel(&patch.weight.grad(), &grad_ref) < 3e-2, "patch grad: {}", rel(&patch.weight.grad(), &grad_ref));
    // A depth-wise patch-like convolution runs in fp32: equal to the plain one.
    let h = Tensor::randn([2, 16, 8, 8], cpu);
    let y = autocast(Device::Cpu, Some(Kind::BFloat16), || depthwise.forward(&h));
    assert_eq!(y.kind(), Kind::Float);
    assert!(rel(&y, &plain(&depthwise, &h)) < 1e-6);
    // Any other convolution stays with autocast (bf16).
    assert_eq!(autocast(Device::Cpu, Some(Kind::BFloat16), || ordinary.forward(&x)).kind(), Kind::BFloat16);
    // Outside autocast nothing changes: bit-equal to the plain operator.
    assert!(patch.forward(&x).equal(&plain(&patch, &x)));
    // without_cpu_autocast restores the state, also after a panic inside.
    autocast(Device::Cpu, Some(Kind::BFloat16), || {
        assert!(!without_cpu_autocast(cpu_autocast_enabled));
        let r = std::panic::catch_unwind(|| without_cpu_autocast(|| panic!("boom")));
        assert!(r.is_err() && cpu_autocast_enabled());
    });
    assert!(!cpu_autocast_enabled() && !without_cpu_autocast(cpu_autocast_enabled));
}
