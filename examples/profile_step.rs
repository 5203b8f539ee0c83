use msclip::data::synthetic_set;
use msclip::model::{Capture, ModelConfig, MsClip};
use msclip::tokenizer::Tokenizer;
use msclip::train::{
    loss::clip_loss,
    optim::{AdamW, AdamWConfig},
};
use std::time::Instant;
use tch::Device;
fn main() {
    let name = std::env::args().nth(1).unwrap_or("tiny-msclip-s".into());
    let bs: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(64);
    let cfg = ModelConfig::preset(&name).unwrap();
    let t = Instant::now();
    let (vs, m) = MsClip::build(&cfg, Device::Cpu, 0);
    println!("build {:?} threads {}", t.elapsed(), tch::get_num_threads());
    let mut opt = AdamW::new(&vs, AdamWConfig::default());
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    for it in 0..4 {
        let idx: Vec<usize> = (it * bs..(it + 1) * bs).collect();
        let t0 = Instant::now();
        let (im, tk, _) = synthetic_set::batch(0, &idx, cfg.vision.image_size as u32, cfg.preprocess.mean, cfg.preprocess.std, &tok);
        let t1 = Instant::now();
        let out = m.forward(&im, &tk, &Capture::none(), true).unwrap();
        let loss = clip_loss(&out.logits_per_image);
        let t2 = Instant::now();
        opt.zero_grad();
        loss.backward();
        let t3 = Instant::now();
        let _ = opt.clip_grad_norm(1.0);
        opt.step(1e-3).unwrap();
        let t4 = Instant::now();
        println!("data {:?} fwd {:?} bwd {:?} opt {:?}", t1 - t0, t2 - t1, t3 - t2, t4 - t3);
    }
}
