//! CUDA checks (run on a GPU machine with a `--features cuda` build; CI has no GPU):
//! the same seed-0 model on CPU and CUDA gives the same embeddings, attention probabilities
//! and gradients (fp32), and autocast (fp16, bf16) stays close to fp32. Prints one JSON line
//! per check; exits 1 when an fp32 check exceeds its tolerance.
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
            (m_c.forward(&images, &tokens, &cap, false).unwrap(), m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &cap, false).unwrap())
        });
        let d_img = max_abs(&oc.image, &og.image);
        let d_txt = max_abs(&oc.text, &og.text);
        let mut d_attn: f64 = 0.0;
        for m in [Modality::Vision, Modality::Text] {
            for slot in oc.cache.slots(m, Site::AttnProbs) {
                d_attn = d_attn.max(max_abs(oc.cache.get(m, slot, Site::AttnProbs).unwrap(), og.cache.get(m, slot, Site::AttnProbs).unwrap()));
            }
        }
        // Pooled (uncaptured) fast path on the GPU against the captured CPU path.
        let fast = tch::no_grad(|| m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &Capture::none(), false).unwrap());
        let d_fast = max_abs(&oc.image, &fast.image).max(max_abs(&oc.text, &fast.text));
        // Gradients of one training loss.
        let lc = loss_and_backward(&m_c, &vs_c, &images, &tokens, 1, 1.0).unwrap();
        let lg = loss_and_backward(&m_g, &vs_g, &images.to_device(gpu), &tokens.to_device(gpu), 1, 1.0).unwrap();
        let (vc, vg) = (vs_c.variables(), vs_g.variables());
        let mut d_grad: f64 = 0.0;
        for (k, t) in &vc {
            let (a, b) = (t.grad(), vg[k].grad());
            if a.defined() && b.defined() {
                let scale = a.abs().max().double_value(&[]).max(1e-6);
                d_grad = d_grad.max(max_abs(&a, &b) / scale);
            }
        }
        // Autocast forward, fp16 and bf16, against fp32 (cosine of embeddings).
        let mut amp = Vec::new();
        for kind in [Kind::Half, Kind::BFloat16] {
            set_cuda_autocast_kind(kind);
            let o = tch::no_grad(|| tch::autocast(true, || m_g.forward(&images.to_device(gpu), &tokens.to_device(gpu), &Capture::none(), false).unwrap()));
            let cos = |a: &Tensor, b: &Tensor| (a.to_kind(Kind::Float) * b.to_kind(Kind::Float)).sum_dim_intlist(&[-1i64][..], false, Kind::Float).min().double_value(&[]);
            amp.push((format!("{kind:?}"), cos(&o.image, &og.image).min(cos(&o.text, &og.text)), format!("{:?}", o.image.kind())));
        }
        set_cuda_autocast_kind(Kind::Half);
        let ok = d_img < 1e-4 && d_txt < 1e-4 && d_attn < 1e-4 && d_fast < 1e-4 && d_grad < 1e-3 && (lc - lg).abs() < 1e-4;
        failed |= !ok;
        println!(
            "{{\"check\":\"cpu_vs_cuda\",\"model\":\"{name}\",\"embed_max_abs\":[{d_img:.3e},{d_txt:.3e}],\"attn_probs_max_abs\":{d_attn:.3e},\"fast_path_max_abs\":{d_fast:.3e},\"loss\":[{lc:.6},{lg:.6}],\"grad_max_rel\":{d_grad:.3e},\"amp_min_cosine\":{:?},\"ok\":{ok}}}",
            amp
        );
    }
    if failed {
        std::process::exit(1);
    }
}
