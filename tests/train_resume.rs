//! Training: exact resume, crash safety (SIGKILL during saves), clear checkpoint errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use msclip::checkpoint;
use msclip::model::{ModelConfig, MsClip};
use msclip::train::{load_checkpoint, train, Resume, TrainConfig};
use tch::Device;

fn config(steps: i64, save_every: i64) -> TrainConfig {
    TrainConfig {
        model: "tiny-msclip-s".into(),
        data_items: 64,
        steps,
        batch_size: 8,
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_steps: 2,
        grad_clip: 1.0,
        seed: 3,
        save_every,
        keep: 3,
        eval_every: 0,
        eval_items: 16,
        workers: 2,
        ..Default::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn losses(run: &Path) -> Vec<(i64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_i64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn k_steps_resume_k_steps_equals_2k_steps() {
    let k = 3;
    let full = tmp("full");
    train(&config(2 * k, 0), &full, Resume::No, Device::Cpu, false).unwrap();
    let split = tmp("split");
    // Stop after k steps (the schedule still spans 2k), then resume in a second call.
    let first = TrainConfig { stop_after: Some(k), ..config(2 * k, k) };
    let out = train(&first, &split, Resume::No, Device::Cpu, false).unwrap();
    assert_eq!(out.final_step, k);
    assert_eq!(losses(&split).len(), k as usize);
    train(&config(2 * k, k), &split, Resume::Latest, Device::Cpu, false).unwrap();
    let a = losses(&full);
    let b = losses(&split);
    assert_eq!(a.len(), (2 * k) as usize);
    assert_eq!(a, b, "losses after resume must be identical at every step");
    // The resumed run rewrote steps k+1..2k; the model weights agree too.
    let (_, ma, _) = load_checkpoint(&full.join("checkpoints").join(checkpoint::step_dir_name(2 * k)), Device::Cpu).unwrap();
    let (_, mb, _) = load_checkpoint(&split.join("checkpoints").join(checkpoint::step_dir_name(2 * k)), Device::Cpu).unwrap();
    assert!(ma.logit_scale.equal(&mb.logit_scale));
    assert!(ma.text.token_embedding.equal(&mb.text.token_embedding));
}

#[test]
fn checkpoint_errors_name_tensors_and_files() {
    let run = tmp("errs");
    train(&config(2, 2), &run, Resume::No, Device::Cpu, false).unwrap();
    let dir = run.join("checkpoints").join(checkpoint::step_dir_name(2));
    // Another architecture: names the missing / unexpected tensors.
    let other = ModelConfig::preset("tiny-clip").unwrap();
    let (vs, _) = MsClip::build(&other, Device::Cpu, 0);
    let err = checkpoint::load_model(&dir, &vs).unwrap_err().to_string();
    // tiny-clip owns every block per tower; tiny-msclip-s shares slots 1..5 and has a conv stem.
    assert!(err.contains("missing: text.blocks.1.attn_in.bias [384], "), "{err}");
    assert!(err.contains("unexpected: shared.blocks.1.attn_in.bias, "), "{err}");
    assert!(err.contains(" … and "), "long lists are cut: {err}");
    // Same layout, other joint width: exactly the two projections mismatch.
    let mut narrow = ModelConfig::preset("tiny-msclip-s").unwrap();
    narrow.embed_dim = 32;
    let (vs, _) = MsClip::build(&narrow, Device::Cpu, 0);
    let err = checkpoint::load_model(&dir, &vs).unwrap_err().to_string();
    assert!(err.contains("2 shape mismatches: text.projection: expected [128, 32], found [128, 64], visual.proj: expected [128, 32], found [128, 64]"), "{err}");
    assert!(!err.contains("missing") && !err.contains("unexpected"), "{err}");
    // Truncated file: verify() names it, resume skips it.
    let model = dir.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::verify(&dir).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("sha256"), "{err}");
    let (vs, _) = MsClip::build(&ModelConfig::preset("tiny-msclip-s").unwrap(), Device::Cpu, 0);
    let err = checkpoint::load_model(&dir, &vs).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(checkpoint::latest_valid(&run.join("checkpoints")).is_none());
}

#[test]
fn sigkill_at_any_moment_leaves_the_run_resumable() {
    let run = tmp("kill");
    std::fs::create_dir_all(&run).unwrap();
    let cfg_path = run.join("train.toml.in");
    let mut tc = config(12, 1);
    tc.keep = 2;
    std::fs::write(&cfg_path, toml::to_string(&tc).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_msclip-train");
    // Kill at staggered moments (some inside saves: every step saves).
    for (i, delay_ms) in [900u64, 1300, 1700, 2300].iter().enumerate() {
        let mut args = vec!["--config".to_string(), cfg_path.display().to_string(), "--out".into(), run.display().to_string()];
        if i > 0 {
            args.push("--resume".into());
        }
        let mut child = Command::new(bin).args(&args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        for dir in checkpoint::list(&run.join("checkpoints")) {
            let meta = checkpoint::verify(&dir).unwrap_or_else(|e| panic!("listed checkpoint does not verify: {e}"));
            let (vs, _) = MsClip::build(&meta.model, Device::Cpu, 0);
            checkpoint::load_model(&dir, &vs).unwrap();
        }
    }
    let status = Command::new(bin)
        .args(["--config", cfg_path.to_str().unwrap(), "--out", run.to_str().unwrap(), "--resume"])
        .status()
        .unwrap();
    assert!(status.success());
    let l = losses(&run);
    assert_eq!(l.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    // The interrupted run's losses equal an uninterrupted run's.
    let clean = tmp("kill-ref");
    train(&tc, &clean, Resume::No, Device::Cpu, false).unwrap();
    assert_eq!(l, losses(&clean));
}
