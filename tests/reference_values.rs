//! Numbers from independent implementations (`fixtures/gen_reference_values.py`: numpy and
//! `torch.optim.AdamW`), so these tests fail when a formula is wrong, not only when two of our
//! own implementations disagree.

use std::collections::BTreeMap;

use msclip::analysis::gap::linear_cka;
use msclip::train::optim::{AdamW, AdamWConfig, Kernel};
use tch::{nn, Device, Kind, Tensor};

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/reference_values.json")).unwrap()).unwrap()
}

/// x[i, j] = sin(a·i + b·j) + 0.1·j, as the generator builds it.
fn mat(n: i64, d: i64, a: f64, b: f64) -> Tensor {
    let v: Vec<f64> = (0..n).flat_map(|i| (0..d).map(move |j| (a * i as f64 + b * j as f64).sin() + 0.1 * j as f64)).collect();
    Tensor::from_slice(&v).view([n, d])
}

#[test]
fn linear_cka_matches_numpy_on_fixed_matrices() {
    let r = reference();
    for c in r["cka"].as_array().unwrap() {
        let (n, dx, dy) = (c["n"].as_i64().unwrap(), c["dx"].as_i64().unwrap(), c["dy"].as_i64().unwrap());
        let x = mat(n, dx, c["x"][0].as_f64().unwrap(), c["x"][1].as_f64().unwrap());
        let y = mat(n, dy, c["y"][0].as_f64().unwrap(), c["y"][1].as_f64().unwrap());
        let want = c["cka"].as_f64().unwrap();
        let got = linear_cka(&x, &y).unwrap();
        assert!((got - want).abs() < 1e-12, "n {n}: {got} vs numpy {want}");
        // In f32 too (rows used as given, no normalisation).
        let got32 = linear_cka(&x.to_kind(Kind::Float), &y.to_kind(Kind::Float)).unwrap();
        assert!((got32 - want).abs() < 1e-5, "{got32} vs {want}");
    }
    assert!(linear_cka(&mat(3, 2, 1.0, 1.0), &mat(4, 2, 1.0, 1.0)).is_err());
}

/// Our AdamW (both the single-pass CPU update and the tensor-op path) follows
/// `torch.optim.AdamW` over 6 steps with a changing learning rate, in a decayed parameter, an
/// undecayed one and a shared one (own weight decay and learning-rate scale).
#[test]
fn adamw_matches_torch_over_several_steps() {
    let r = reference();
    let a = &r["adamw"];
    // Our names put each tensor in the generator's group: decay / no decay / shared.
    let names =
        [("w", "visual.proj", vec![2i64, 3]), ("b", "visual.blocks.1.fc1.bias", vec![3]), ("s", "shared.blocks.1.fc1.weight", vec![2, 2])];
    for kernel in [Kernel::Aten, Kernel::SinglePass, Kernel::Tensor] {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut vars = BTreeMap::new();
        for (key, name, shape) in &names {
            let init: Vec<f32> = a["init"][key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let mut p = vs.root();
            let parts: Vec<&str> = name.split('.').collect();
            for part in &parts[..parts.len() - 1] {
                p = p / *part;
            }
            vars.insert(*key, p.var_copy(parts[parts.len() - 1], &Tensor::from_slice(&init).view(&shape[..])));
        }
        let cfg = AdamWConfig {
            beta1: a["betas"][0].as_f64().unwrap(),
            beta2: a["betas"][1].as_f64().unwrap(),
            eps: a["eps"].as_f64().unwrap(),
            weight_decay: a["weight_decay"]["w"].as_f64().unwrap(),
            weight_decay_shared: a["weight_decay"]["s"].as_f64().unwrap(),
            lr_scale_shared: a["lr_scale"]["s"].as_f64().unwrap(),
            weight_decay_embeddings: false,
        };
        let mut opt = AdamW::new(&vs, cfg);
        opt.kernel = kernel;
        for (step, lr) in a["lrs"].as_array().unwrap().iter().enumerate() {
            opt.zero_grad();
            for (k, (key, _, _)) in names.iter().enumerate() {
                let p = &vars[key];
                let n = p.numel();
                // g[i] = cos(0.7·i + 1.3·step + k)·(1 + step), as the generator.
                let g: Vec<f32> =
                    (0..n).map(|i| ((0.7 * i as f64 + 1.3 * step as f64 + k as f64).cos() * (1.0 + step as f64)) as f32).collect();
                (p * Tensor::from_slice(&g).view(p.size().as_slice())).sum(Kind::Float).backward();
            }
            opt.step(lr.as_f64().unwrap()).unwrap();
            for (key, _, _) in &names {
                let want: Vec<f64> = a["params_after_step"][step][key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let got = Vec::<f32>::try_from(vars[key].view([-1])).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 2e-6, "{kernel:?}, step {step}, {key}: {g} vs torch {w}");
                }
            }
        }
    }
}
