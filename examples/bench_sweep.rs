//! Benchmarks of the causal sweeps (issue 11 §6), side by side in one run:
//! 1. the head-ablation sweep (clean streams reused, edits of a slot batched) against naive
//!    full reruns with one hook each, same metrics, on `N` items;
//! 2. a forward recording every site against a plain forward.
//!
//! Usage: bench_sweep [MODEL=tiny-msclip-s] [N=256]
use std::time::Instant;

use msclip::causal::ablate::{self, AblateOptions, AblationKind};
use msclip::causal::EvalSet;
#[allow(unused_imports)]
use msclip::causal::Metrics;
use msclip::model::{ActivationCache, Capture, Edit, Hook, Modality, ModelConfig, MsClip, Site};

fn main() -> msclip::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let name = a.get(1).cloned().unwrap_or("tiny-msclip-s".into());
    let n: usize = a.get(2).map(|s| s.parse().unwrap()).unwrap_or(256);
    let cfg = ModelConfig::preset(&name)?;
    let (_vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    println!("{name}, {n} items, {} libtorch threads", tch::get_num_threads());

    // 1. Sweep vs naive (zero ablation: no reference set to compute for either); skipped
    //    with a third argument `capture`.
    if a.get(3).is_some_and(|x| x == "capture") {
        return capture(&m, &cfg, &EvalSet::synthetic(&m, n, 0)?);
    }
    let opts = AblateOptions { kind: AblationKind::Zero, items: n, sites: false, permutations: 100, ..Default::default() };
    let t = Instant::now();
    let r = ablate::run(&m, &opts, |_, _| {})?;
    let sweep = t.elapsed().as_secs_f64();
    let set = EvalSet::synthetic(&m, n, 0)?;
    // The naive way: for each (slot, head) and each of the three ablations (vision, text,
    // both), one forward of the whole model with the hooks (`run_with_hooks` per edit).
    let t = Instant::now();
    let clean = {
        let o = tch::no_grad(|| m.forward(&set.images, &set.tokens, &Capture::none(), false))?;
        set.metrics(&o.image, &o.text)
    };
    let mut max_diff: f64 = 0.0;
    for h in &r.heads {
        let hook = |mo: Modality| Hook::new(mo, h.slot, Site::Z, Edit::Zero).head(h.head);
        let runs = [
            (h.vision, vec![hook(Modality::Vision)]),
            (h.text, vec![hook(Modality::Text)]),
            (h.both, vec![hook(Modality::Vision), hook(Modality::Text)]),
        ];
        for (swept, hooks) in runs {
            let Some(swept) = swept else { continue };
            let o = tch::no_grad(|| m.forward(&set.images, &set.tokens, &Capture::hooks(hooks), false))?;
            let d = set.metrics(&o.image, &o.text).minus(&clean);
            max_diff = max_diff.max((d.matched_cosine - swept.matched_cosine).abs()).max((d.zero_shot_top1 - swept.zero_shot_top1).abs());
        }
    }
    let naive = t.elapsed().as_secs_f64();
    println!(
        "head sweep ({} heads × vision/text/both): batched {sweep:.2}s vs naive full reruns {naive:.2}s = {:.2}x (largest difference in any Δ metric {max_diff:.1e})",
        r.heads.len(),
        naive / sweep
    );

    capture(&m, &cfg, &set)
}

/// 2. Capture everything vs plain.
fn capture(m: &MsClip, cfg: &ModelConfig, set: &EvalSet) -> msclip::Result<()> {
    let b = if cfg.vision.width >= 512 { 8 } else { 64 };
    let images = set.images.narrow(0, 0, b);
    let tokens = set.tokens.narrow(0, 0, b);
    let run = |cap: &Capture| -> msclip::Result<f64> {
        let mut ts = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            let mut c = ActivationCache::new();
            tch::no_grad(|| -> msclip::Result<()> {
                let _ = m.encode_image_with(&images, cap, &mut c, false)?;
                let _ = m.encode_text_with(&tokens, cap, &mut c)?;
                Ok(())
            })?;
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Ok(ts[2])
    };
    let (plain, all) = (run(&Capture::none())?, run(&Capture::sites(&Site::ALL))?);
    println!("forward of {b} pairs: plain {plain:.3}s, every site recorded {all:.3}s = {:.2}x", all / plain);
    Ok(())
}
