//! Training: exact resume, crash safety (SIGKILL during saves), clear checkpoint errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use msclip::checkpoint;
use msclip::checkpoint::load as load_checkpoint;
use msclip::model::{ModelConfig, MsClip};
use msclip::train::{train, Resume, TrainConfig, TrainOptions};
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
    train(&config(2 * k, 0), &full, &TrainOptions::fresh()).unwrap();
    let split = tmp("split");
    // Stop after k steps (the schedule still spans 2k), then resume in a second call.
    let first = TrainConfig { stop_after: Some(k), ..config(2 * k, k) };
    let out = train(&first, &split, &TrainOptions::fresh()).unwrap();
    assert_eq!(out.final_step, k);
    assert_eq!(losses(&split).len(), k as usize);
    train(&config(2 * k, k), &split, &TrainOptions::resume(Resume::Latest)).unwrap();
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
    train(&config(2, 2), &run, &TrainOptions::fresh()).unwrap();
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
    assert!(
        err.contains(
            "2 shape mismatches: text.projection: expected [128, 32], found [128, 64], visual.proj: expected [128, 32], found [128, 64]"
        ),
        "{err}"
    );
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

/// Whether a `.tmp-step-*` directory (a save in flight) exists under `root`.
fn save_in_flight(root: &Path) -> bool {
    std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with(".tmp-step-")))
        .unwrap_or(false)
}

#[test]
fn sigkill_mid_run_and_mid_save_leaves_the_run_resumable() {
    let run = tmp("kill");
    std::fs::create_dir_all(&run).unwrap();
    let root = run.join("checkpoints");
    let cfg_path = run.join("train.toml.in");
    let mut tc = config(12, 1);
    tc.keep = 2;
    std::fs::write(&cfg_path, toml::to_string(&tc).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_msclip-train");
    let args = ["--config", cfg_path.to_str().unwrap(), "--out", run.to_str().unwrap(), "--resume-or-fresh"];
    let (mut mid_run, mut mid_save) = (0, 0);
    // Kill 0 lands between saves once a checkpoint exists; kills 1..3 land while a save's
    // temporary directory exists (every step saves; the directory is polled every 0.2 ms).
    for round in 0..4 {
        let mut child = Command::new(bin).args(args).stderr(std::process::Stdio::null()).spawn().unwrap();
        let t0 = std::time::Instant::now();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(120), "no kill moment reached in round {round}");
            if let Ok(Some(_)) = child.try_wait() {
                panic!("the run finished before round {round}'s kill");
            }
            let ready = if round == 0 { !checkpoint::list(&root).is_empty() && !save_in_flight(&root) } else { save_in_flight(&root) };
            if ready {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if round == 0 {
            assert!(!checkpoint::list(&root).is_empty(), "checkpoints existed before the kill");
            mid_run += 1;
        } else if save_in_flight(&root) {
            // The temporary directory outlived the process: the kill landed inside a save.
            mid_save += 1;
        }
        for dir in checkpoint::list(&root) {
            let meta = checkpoint::verify(&dir).unwrap_or_else(|e| panic!("listed checkpoint does not verify: {e}"));
            let (vs, _) = MsClip::build(&meta.model, Device::Cpu, 0);
            checkpoint::load_model(&dir, &vs).unwrap();
        }
    }
    assert_eq!(mid_run, 1);
    assert!(mid_save >= 2, "at least two kills landed mid-save ({mid_save})");
    let status = Command::new(bin).args(args).status().unwrap();
    assert!(status.success());
    assert!(!save_in_flight(&root), "stale temporary directories are removed");
    let l = losses(&run);
    assert_eq!(l.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    // The interrupted run's losses equal an uninterrupted run's.
    let clean = tmp("kill-ref");
    train(&tc, &clean, &TrainOptions::fresh()).unwrap();
    assert_eq!(l, losses(&clean));
}
