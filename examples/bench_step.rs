//! One optimizer step (forward + backward + AdamW) of msclip on a fixed synthetic batch.
//! Usage: bench_step MODEL BATCH STEPS THREADS  → prints one JSON line.
use std::time::Instant;

use msclip::model::{ModelConfig, MsClip};
use msclip::train::optim::{AdamW, AdamWConfig};
use msclip::train::loss_and_backward;
use tch::{Device, Kind, Tensor};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (name, bs, steps, threads) = (a[1].clone(), a[2].parse::<i64>().unwrap(), a[3].parse::<usize>().unwrap(), a[4].parse::<i32>().unwrap());
    tch::set_num_threads(threads);
    let cfg = ModelConfig::preset(&name).unwrap();
    let (vs, m) = MsClip::build(&cfg, Device::Cpu, 0);
    let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.2, ..Default::default() });
    tch::manual_seed(0);
    let s = cfg.vision.image_size;
    let images = Tensor::randn([bs, 3, s, s], (Kind::Float, Device::Cpu));
    let ctx = cfg.text.context_length;
    let tokens = Tensor::randint_low(1, 49000, [bs, ctx], (Kind::Int64, Device::Cpu));
    let _ = tokens.narrow(1, ctx - 1, 1).fill_(49407);
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t = Instant::now();
        opt.zero_grad();
        let _ = loss_and_backward(&m, &vs, &images, &tokens, 1, 1.0).unwrap();
        opt.step(1e-4);
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    println!("{{\"impl\":\"msclip\",\"model\":\"{name}\",\"batch\":{bs},\"threads\":{threads},\"step_s\":{median},\"samples_per_s\":{}}}", bs as f64 / median);
}
