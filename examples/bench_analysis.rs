//! Timings: (1) forward with all attention maps captured vs a plain (fused) forward;
//! (2) gap metrics and k-means NMI on N pairs of 512-d embeddings.
//! Usage: bench_analysis [MODEL] [BATCH] [N_PAIRS]
use std::time::Instant;

use msclip::analysis::{gap::gap_report, nmi::modality_nmi};
use msclip::model::{ActivationCache, Capture, ModelConfig, MsClip};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let name = a.get(1).cloned().unwrap_or("clip-b32".into());
    let bs: i64 = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(8);
    let n: i64 = a.get(3).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let cfg = ModelConfig::preset(&name).unwrap();
    let (_vs, m) = MsClip::build(&cfg, Device::Cpu, 0);
    tch::manual_seed(0);
    let s = cfg.vision.image_size;
    let images = Tensor::randn([bs, 3, s, s], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint_low(1, 49000, [bs, cfg.text.context_length], (Kind::Int64, Device::Cpu));
    let _ = tokens.narrow(1, cfg.text.context_length - 1, 1).fill_(49407);
    let run = |cap: &Capture| {
        let mut t = vec![];
        for _ in 0..7 {
            let s = Instant::now();
            tch::no_grad(|| {
                let mut c = ActivationCache::new();
                let _ = m.encode_image_with(&images, cap, &mut c, false).unwrap();
                let _ = m.encode_text_with(&tokens, cap, &mut c).unwrap();
            });
            t.push(s.elapsed().as_secs_f64());
        }
        median(t)
    };
    let plain = run(&Capture::none());
    let attn = run(&Capture::attention());
    println!("{name} batch {bs}: plain forward {plain:.3}s, with all attention maps {attn:.3}s, ratio {:.2}", attn / plain);

    let x = Tensor::randn([n, 512], (Kind::Float, Device::Cpu)) + 0.5;
    let y = Tensor::randn([n, 512], (Kind::Float, Device::Cpu)) - 0.5;
    let (x, y) = (&x / x.norm_scalaropt_dim(2.0, [-1], true), &y / y.norm_scalaropt_dim(2.0, [-1], true));
    let t = Instant::now();
    let g = gap_report(&x, &y, msclip::analysis::gap::DEFAULT_UNIFORMITY_MAX).unwrap();
    let gap_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (nmi, _) = modality_nmi(&x, &y, 2, 3, 0).unwrap();
    let nmi_s = t.elapsed().as_secs_f64();
    println!(
        "{n} pairs × 512: gap metrics {gap_s:.2}s (centroid gap {:.4}), k-means NMI (k=2, 3 restarts) {nmi_s:.2}s (NMI {nmi:.4})",
        g.centroid_gap
    );
}
