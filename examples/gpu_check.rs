//! CUDA checks (run on a GPU machine with a `--features cuda` build; CI has no GPU):
//! the same seed-0 model on CPU and CUDA gives the same embeddings, attention probabilities
//! and gradients (fp32), and autocast (fp16, bf16) stays close to fp32. Prints one JSON line
//! per check; exits 1 when an fp32 check exceeds its tolerance. `MSCLIP_TF32=0` turns TF32 off
//! in cuBLAS and cuDNN first (the first line says which TF32 switches were on).
use msclip::model::{Capture, Modality, ModelConfig, MsClip, Site};
use msclip::tokenizer::Tokenizer;
use msclip::train::amp::set_cuda_autocast_kind;
use msclip::train::loss_and_backward;
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(Device::Cpu).to_kind(Kind::Float) - b.to_device(Device::Cpu).to_kind(Kind::Float)).abs().max().double_value(&[])
}

fn main() {
    assert!(tch::Cuda::is_available(), "no CUDA device");
    // MSCLIP_TF32=0: no TF32 in cuBLAS or cuDNN (libtorch's default allows it for cuDNN
    // convolutions), to settle whether TF32 is the parallel branch's CPU-vs-CUDA gradient gap.
    if std::env::var("MSCLIP_TF32").as_deref() == Ok("0") {
        msclip::autocast::set_tf32(false, false).expect("the TF32 switch");
    }
    let (matmul, conv) = msclip::autocast::tf32().expect("the TF32 switch");
    println!("{{\"tf32\":{{\"matmul\":{matmul},\"conv\":{conv}}}}}");
    let gpu = Device::Cuda(0);
    let mut failed = false;
    for name in ["tiny-msclip-s", "tiny-clip", "msclip-s-b32"] {
        let cfg = ModelConfig::preset(name).unwrap();
        let (vs_c, m_c) = MsClip::build(&cfg, Device::Cpu, 0);
        let (vs_g, m_g) = MsClip::build(&cfg, gpu, 0);
        let s = cfg.vision.image_size;
        tch::manual_seed(1);
        let images = Tensor::randn([4, 3, s, s], (Kind::Float, Device::Cpu));
        let tok = Tokenizer::new(cfg.text.context_length as usize);
        let tokens = tok.tokenize_batch(&["a red circle", "a large green triangle left of a small blue square", "two cats", "x y z"]);
        let cap = Capture::attention();
        let (oc, og) = tch::no_grad(|| {
            (
                m_c.forward(&images, &tokens, &cap, false).unwrap(),
                m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &cap, false).unwrap(),
            )
        });
        let d_img = max_abs(&oc.image, &og.image);
        let d_txt = max_abs(&oc.text, &og.text);
        let mut d_attn: f64 = 0.0;
        for m in [Modality::Vision, Modality::Text] {
            for slot in oc.cache.slots(m, Site::AttnProbs) {
                d_attn =
                    d_attn.max(max_abs(oc.cache.get(m, slot, Site::AttnProbs).unwrap(), og.cache.get(m, slot, Site::AttnProbs).unwrap()));
            }
        }
        // Pooled (uncaptured) fast path on the GPU against the captured CPU path.
        let fast = tch::no_grad(|| m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &Capture::none(), false).unwrap());
        let d_fast = max_abs(&oc.image, &fast.image).max(max_abs(&oc.text, &fast.text));
        // Gradients of one training loss.
        let lc = loss_and_backward(&m_c, &vs_c, &images, &tokens, 1, 1.0).unwrap();
        let lg = loss_and_backward(&m_g, &vs_g, &images.to_device(gpu), &tokens.to_device(gpu), 1, 1.0).unwrap();
        let grads = |vs: &tch::nn::VarStore| -> std::collections::BTreeMap<String, Tensor> {
            vs.variables()
                .into_iter()
                .filter_map(|(k, t)| {
                    let g = t.grad();
                    g.defined().then(|| (k, g.to_device(Device::Cpu).copy()))
                })
                .collect()
        };
        let (gc, gg) = (grads(&vs_c), grads(&vs_g));
        // Global relative L2 error, and the worst tensor relative to max(its own max, 1e-3 ×
        // the largest gradient entry): tensors whose gradient is ~0 in exact arithmetic (a conv
        // feeding BatchNorm) only carry rounding noise.
        let gmax = gc.values().map(|g| g.abs().max().double_value(&[])).fold(0.0, f64::max);
        let (mut num, mut den, mut worst) = (0.0, 0.0, (0.0f64, String::new()));
        for (k, a) in &gc {
            let b = &gg[k];
            num += (a - b).square().sum(Kind::Double).double_value(&[]);
            den += a.square().sum(Kind::Double).double_value(&[]);
            let r = max_abs(a, b) / a.abs().max().double_value(&[]).max(1e-3 * gmax);
            if r > worst.0 {
                worst = (r, k.clone());
            }
        }
        let d_grad = (num / den).sqrt();
        // CUDA run-to-run: the same backward again.
        vs_g.variables().into_values().for_each(|mut t| t.zero_grad());
        let _ = loss_and_backward(&m_g, &vs_g, &images.to_device(gpu), &tokens.to_device(gpu), 1, 1.0).unwrap();
        let gg2 = grads(&vs_g);
        let rerun = gg.iter().map(|(k, a)| max_abs(a, &gg2[k])).fold(0.0, f64::max);
        // Autocast forward, fp16 and bf16, against fp32 (cosine of embeddings).
        let mut amp = Vec::new();
        for kind in [Kind::Half, Kind::BFloat16] {
            set_cuda_autocast_kind(kind);
            let o = tch::no_grad(|| {
                tch::autocast(true, || m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &Capture::none(), false).unwrap())
            });
            let cos = |a: &Tensor, b: &Tensor| {
                (a.to_kind(Kind::Float) * b.to_kind(Kind::Float)).sum_dim_intlist(&[-1i64][..], false, Kind::Float).min().double_value(&[])
            };
            amp.push((format!("{kind:?}"), cos(&o.image, &og.image).min(cos(&o.text, &og.text)), format!("{:?}", o.image.kind())));
        }
        // Where bf16 departs from fp32: per vision slot, the residual stream's relative error.
        set_cuda_autocast_kind(Kind::BFloat16);
        let cap = Capture::sites(&[Site::Resid]);
        let (mut c32, mut c16) = (msclip::model::ActivationCache::new(), msclip::model::ActivationCache::new());
        tch::no_grad(|| {
            let _ = m_g.encode_image_with(&images.to_device(gpu), &cap, &mut c32, false).unwrap();
            let _ = tch::autocast(true, || m_g.encode_image_with(&images.to_device(gpu), &cap, &mut c16, false).unwrap());
        });
        let per_slot: Vec<(usize, f64, f64)> = c32
            .slots(Modality::Vision, Site::Resid)
            .into_iter()
            .map(|sl| {
                let (a, b) = (
                    c32.get(Modality::Vision, sl, Site::Resid).unwrap().to_kind(Kind::Float),
                    c16.get(Modality::Vision, sl, Site::Resid).unwrap().to_kind(Kind::Float),
                );
                let rel = ((&a - &b).norm().double_value(&[])) / a.norm().double_value(&[]);
                let (ca, cb) = (a.select(1, 0), b.select(1, 0));
                let centred = |t: &Tensor| t - t.mean_dim(-1, true, Kind::Float);
                let (ca, cb) = (centred(&ca), centred(&cb));
                let cos = ((&ca * &cb).sum_dim_intlist(&[-1i64][..], false, Kind::Float)
                    / (ca.norm_scalaropt_dim(2.0, [-1], false) * cb.norm_scalaropt_dim(2.0, [-1], false)))
                .min()
                .double_value(&[]);
                (sl, (rel * 1e4).round() / 1e4, (cos * 1e4).round() / 1e4)
            })
            .collect();
        set_cuda_autocast_kind(Kind::Half);
        let ok = d_img < 1e-4 && d_txt < 1e-4 && d_attn < 1e-4 && d_fast < 1e-4 && d_grad < 1e-3 && (lc - lg).abs() < 1e-4;
        failed |= !ok;
        println!(
            "{{\"check\":\"cpu_vs_cuda\",\"model\":\"{name}\",\"embed_max_abs\":[{d_img:.3e},{d_txt:.3e}],\"attn_probs_max_abs\":{d_attn:.3e},\"fast_path_max_abs\":{d_fast:.3e},\"loss\":[{lc:.6},{lg:.6}],\"grad_rel_l2\":{d_grad:.3e},\"grad_worst\":[{:.3e},\"{}\"],\"cuda_rerun_grad_max_abs\":{rerun:.3e},\"amp_min_cosine\":{:?},\"bf16_resid_rel_err_and_cls_cos_by_slot\":{:?},\"ok\":{ok}}}",
            worst.0, worst.1, amp, per_slot
        );
    }
    if failed {
        std::process::exit(1);
    }
}
