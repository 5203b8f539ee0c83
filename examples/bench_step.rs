//! One optimizer step (forward + backward + AdamW) of msclip on a fixed synthetic batch.
//! Usage: bench_step MODEL BATCH STEPS THREADS [cpu|cuda] [fp32|amp-bf16|amp-fp16]
//! → prints one JSON line (median step time; CUDA timings synchronise after each step).
//! `amp-bf16` runs the step under bf16 autocast on either device (`train::amp::autocast`).
//! `MSCLIP_ADAMW_KERNEL=tensor|single|aten` picks the optimizer kernel (default: aten); the
//! JSON also gives the optimizer's median time and share of the step. `MSCLIP_PROFILE=trace.json`
//! records one more, untimed step with libtorch's operator profiler (`msclip::profile`).
use std::time::Instant;

use msclip::model::{ModelConfig, MsClip};
use msclip::profile::OpProfile;
use msclip::train::amp::{autocast, Precision};
use msclip::train::loss_and_backward;
use msclip::train::optim::{AdamW, AdamWConfig, Kernel};
use tch::{Device, Kind, Tensor};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (name, bs, steps, threads) =
        (a[1].clone(), a[2].parse::<i64>().unwrap(), a[3].parse::<usize>().unwrap(), a[4].parse::<i32>().unwrap());
    let device = match a.get(5).map(String::as_str) {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let precision = Precision::parse(a.get(6).map(String::as_str).unwrap_or("fp32")).unwrap();
    tch::set_num_threads(threads);
    let cfg = ModelConfig::preset(&name).unwrap();
    let (vs, m) = MsClip::build(&cfg, device, 0);
    let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.2, ..Default::default() });
    let kernel_name = std::env::var("MSCLIP_ADAMW_KERNEL").unwrap_or_else(|_| "aten".into());
    opt.kernel = match kernel_name.as_str() {
        "tensor" => Kernel::Tensor,
        "single" => Kernel::SinglePass,
        _ => Kernel::Aten,
    };
    tch::manual_seed(0);
    let s = cfg.vision.image_size;
    let images = Tensor::randn([bs, 3, s, s], (Kind::Float, device));
    let ctx = cfg.text.context_length;
    let tokens = Tensor::randint_low(1, 49000, [bs, ctx], (Kind::Int64, device));
    let _ = tokens.narrow(1, ctx - 1, 1).fill_(49407);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut times = Vec::new();
    let mut opt_times = Vec::new();
    let profile = std::env::var("MSCLIP_PROFILE").ok();
    for i in 0..steps + 3 + usize::from(profile.is_some()) {
        sync();
        // The step after the timed ones, so the profiler's overhead times nothing.
        let prof = profile.as_ref().filter(|_| i == steps + 3).map(|p| {
            OpProfile::start(p.as_ref()).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(2)
            })
        });
        let t = Instant::now();
        opt.zero_grad();
        let _ = autocast(device, precision.autocast_kind(), || loss_and_backward(&m, &vs, &images, &tokens, 1, 1.0)).unwrap();
        sync();
        let t_opt = Instant::now();
        opt.step(1e-4).unwrap();
        sync();
        if let Some(p) = prof {
            match p.finish() {
                Ok(path) => eprintln!("operator profile of one step: {}", path.display()),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2)
                }
            }
            continue;
        }
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
            opt_times.push(t_opt.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    opt_times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let optim = opt_times[opt_times.len() / 2];
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    println!(
        "{{\"impl\":\"msclip\",\"model\":\"{name}\",\"batch\":{bs},\"threads\":{threads},\"device\":\"{dev}\",\"precision\":\"{}\",\"step_s\":{median},\"samples_per_s\":{},\"adamw\":\"{kernel_name}\",\"optim_s\":{optim},\"optim_frac\":{}}}",
        a.get(6).map(String::as_str).unwrap_or("fp32"),
        bs as f64 / median,
        optim / median
    );
}
