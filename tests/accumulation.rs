//! Gradient accumulation with cached features gives the gradient of one big batch.

use msclip::data::synthetic_set;
use msclip::model::{ModelConfig, MsClip};
use msclip::tokenizer::Tokenizer;
use msclip::train::loss_and_backward;
use tch::{Device, Kind, Tensor};

fn grads(accum: usize) -> (f64, Vec<(String, Tensor)>) {
    let cfg = ModelConfig::preset("tiny-clip").unwrap();
    let (vs, m) = MsClip::build(&cfg, Device::Cpu, 4);
    let tok = Tokenizer::new(24);
    let idx: Vec<usize> = (0..8).collect();
    let (im, tk, _) = synthetic_set::batch(9, &idx, 64, cfg.preprocess.mean, cfg.preprocess.std, &tok);
    let loss = loss_and_backward(&m, &vs, &im, &tk, accum, 1.0).unwrap();
    let mut g: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t.grad().copy())).collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    (loss, g)
}

#[test]
fn accumulated_gradient_equals_big_batch_gradient() {
    let (l1, g1) = grads(1);
    for accum in [2, 4] {
        let (la, ga) = grads(accum);
        assert!((l1 - la).abs() < 1e-5, "loss {l1} vs {la}");
        let mut worst: f64 = 0.0;
        for ((n1, a), (n2, b)) in g1.iter().zip(&ga) {
            assert_eq!(n1, n2);
            let scale = a.abs().max().double_value(&[]).max(1e-8);
            let d = (a - b).abs().max().double_value(&[]) / scale;
            assert!(d < 1e-4, "{n1}: relative difference {d} with accum {accum}");
            worst = worst.max(d);
        }
        assert!(g1.iter().any(|(n, g)| n == "logit_scale" && g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
        eprintln!("accum {accum}: worst relative gradient difference {worst:.2e}");
    }
}
