//! Run directories are never destroyed (issue 9 §1), each property on a real run directory of
//! the micro MS-CLIP-S (`fixtures/check/micro-msclip-s.toml`, 7 MB checkpoints).

use std::path::{Path, PathBuf};
use std::process::Command;

use msclip::checkpoint::{self, RunLock};
use msclip::train::{train, Resume, TrainConfig, TrainOptions};

fn config(steps: i64, save_every: i64, keep: usize) -> TrainConfig {
    TrainConfig {
        model: "fixtures/check/micro-msclip-s.toml".into(),
        data_items: 64,
        steps,
        batch_size: 8,
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_steps: 1,
        grad_clip: 1.0,
        seed: 5,
        save_every,
        keep,
        eval_every: 0,
        eval_items: 16,
        workers: 1,
        ..Default::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-rundir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn steps_of(root: &Path) -> Vec<i64> {
    checkpoint::list(root).iter().map(|p| checkpoint::parse_step_dir(p.file_name().unwrap().to_str().unwrap()).unwrap()).collect()
}

fn metric_steps(run: &Path) -> Vec<i64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_i64().unwrap())
        .collect()
}

/// Corrupts a checkpoint's model file (its hash no longer verifies).
fn corrupt(dir: &Path) {
    let f = dir.join("model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    let n = b.len();
    b[n - 5] ^= 0xFF;
    std::fs::write(&f, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn discovery_takes_only_well_formed_step_directories() {
    assert_eq!(checkpoint::parse_step_dir("step-00000200"), Some(200));
    assert_eq!(checkpoint::parse_step_dir("step-123456789"), Some(123_456_789));
    for bad in ["step-backup", "step-12", "step-00000200.old", "step-0000020a", "step--0000001", "xstep-00000001"] {
        assert_eq!(checkpoint::parse_step_dir(bad), None, "{bad}");
    }
    let run = tmp("names");
    train(&config(2, 1, 5), &run, &TrainOptions::fresh()).unwrap();
    let root = run.join("checkpoints");
    // A copied backup, a longer-padded name and a file are ignored; order is numeric.
    copy_dir(&root.join("step-00000002"), &root.join("step-backup"));
    copy_dir(&root.join("step-00000001"), &root.join("step-00000001.old"));
    assert_eq!(steps_of(&root), vec![2, 1]);
    assert_eq!(checkpoint::latest_valid(&root).unwrap().1.step, 2);
}

#[test]
fn resume_with_corrupt_newer_checkpoints_never_prunes_valid_ones() {
    let run = tmp("prune");
    let root = run.join("checkpoints");
    // Steps 1..4 saved, keep 4.
    train(&TrainConfig { stop_after: Some(4), ..config(8, 1, 4) }, &run, &TrainOptions::fresh()).unwrap();
    assert_eq!(steps_of(&root), vec![4, 3, 2, 1]);
    corrupt(&root.join("step-00000004"));
    corrupt(&root.join("step-00000003"));
    // Resume (from step 2) for two steps with keep = 2: the valid new step-3 replaces the
    // corrupt one, 2 stays, and the corrupt step-4 is neither counted nor deleted.
    train(&TrainConfig { stop_after: Some(3), ..config(8, 1, 2) }, &run, &TrainOptions::resume(Resume::Latest)).unwrap();
    assert_eq!(steps_of(&root), vec![4, 3, 2]);
    assert!(checkpoint::verify(&root.join("step-00000003")).is_ok());
    assert!(checkpoint::verify(&root.join("step-00000002")).is_ok());
    assert!(checkpoint::verify(&root.join("step-00000004")).is_err());
    // Another step: step-4 is rewritten valid; keep 2 leaves 4 and 3.
    train(&TrainConfig { stop_after: Some(4), ..config(8, 1, 2) }, &run, &TrainOptions::resume(Resume::Latest)).unwrap();
    assert_eq!(steps_of(&root), vec![4, 3]);
    assert!(root.join("step-00000004").exists() && checkpoint::verify(&root.join("step-00000004")).is_ok());
    assert_eq!(metric_steps(&run), vec![1, 2, 3, 4]);
}

#[test]
fn fresh_run_into_a_used_directory_refuses_unless_forced() {
    let run = tmp("fresh");
    train(&config(2, 1, 2), &run, &TrainOptions::fresh()).unwrap();
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let err = train(&config(2, 1, 2), &run, &TrainOptions::fresh()).unwrap_err().to_string();
    assert!(err.contains(run.to_str().unwrap()) && err.contains("metrics.jsonl") && err.contains("--force"), "{err}");
    // Nothing was touched.
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), before);
    assert_eq!(steps_of(&run.join("checkpoints")), vec![2, 1]);
    // --force starts over: the old checkpoints go, the new run's are there.
    let opts = TrainOptions { force: true, ..TrainOptions::fresh() };
    train(&config(1, 1, 2), &run, &opts).unwrap();
    assert_eq!(steps_of(&run.join("checkpoints")), vec![1]);
    assert_eq!(metric_steps(&run), vec![1]);
    // The CLI says the same with exit 2.
    let cfg = run.join("train-in.toml");
    std::fs::write(&cfg, toml::to_string(&config(1, 1, 2)).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-train"))
        .args(["--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn resume_with_nothing_loadable_is_an_error_unless_fresh_is_allowed() {
    let run = tmp("nothing");
    let err = train(&config(2, 1, 2), &run, &TrainOptions::resume(Resume::Latest)).unwrap_err().to_string();
    assert!(err.contains("no checkpoint that verifies") && err.contains("--resume-or-fresh"), "{err}");
    // Only corrupt checkpoints: still nothing loadable.
    train(&config(1, 1, 2), &run, &TrainOptions::fresh()).unwrap();
    corrupt(&run.join("checkpoints/step-00000001"));
    assert!(train(&config(2, 1, 2), &run, &TrainOptions::resume(Resume::Latest)).is_err());
    let fresh = tmp("nothing-fresh");
    let out = train(&config(2, 1, 2), &fresh, &TrainOptions::resume(Resume::LatestOrFresh)).unwrap();
    assert_eq!(out.final_step, 2);
    // And it resumes on the next submission (a finished run is a no-op).
    let out = train(&config(2, 1, 2), &fresh, &TrainOptions::resume(Resume::LatestOrFresh)).unwrap();
    assert_eq!(out.final_step, 2);
    assert_eq!(metric_steps(&fresh), vec![1, 2]);
}

#[test]
fn resume_or_fresh_restarts_a_run_stopped_before_its_first_checkpoint() {
    // A run killed before step 1's checkpoint leaves metrics.jsonl and nothing to resume.
    let run = tmp("interrupted");
    std::fs::create_dir_all(&run).unwrap();
    let stale = "{\"step\":1,\"loss\":9.5}\n";
    std::fs::write(run.join("metrics.jsonl"), stale).unwrap();
    // A plain fresh start still refuses it ...
    let err = train(&config(2, 1, 2), &run, &TrainOptions::fresh()).unwrap_err().to_string();
    assert!(err.contains("holds an earlier run") && err.contains("metrics.jsonl"), "{err}");
    // ... --resume-or-fresh starts over and keeps the old metrics beside the new ones.
    let out = train(&config(2, 1, 2), &run, &TrainOptions::resume(Resume::LatestOrFresh)).unwrap();
    assert_eq!(out.final_step, 2);
    assert_eq!(metric_steps(&run), vec![1, 2]);
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl.interrupted-1")).unwrap(), stale);
    // Checkpoints that do not verify are never set aside: that needs --force.
    let bad = tmp("interrupted-corrupt");
    train(&config(1, 1, 2), &bad, &TrainOptions::fresh()).unwrap();
    corrupt(&bad.join("checkpoints/step-00000001"));
    let err = train(&config(2, 1, 2), &bad, &TrainOptions::resume(Resume::LatestOrFresh)).unwrap_err().to_string();
    assert!(err.contains("holds an earlier run") && err.contains("checkpoints/"), "{err}");
    assert!(bad.join("checkpoints/step-00000001").exists());
}

#[test]
fn two_trainings_cannot_share_a_run_directory() {
    let run = tmp("lock");
    let held = RunLock::acquire(&run).unwrap();
    let err = train(&config(1, 1, 1), &run, &TrainOptions::fresh()).unwrap_err().to_string();
    assert!(err.contains("in use by another training") && err.contains(&format!("pid {}", std::process::id())), "{err}");
    let cfg = run.join("train-in.toml");
    std::fs::write(&cfg, toml::to_string(&config(1, 1, 1)).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-train"))
        .args(["--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {}", std::process::id())));
    drop(held);
    train(&config(1, 1, 1), &run, &TrainOptions::fresh()).unwrap();
}

#[test]
fn stale_temporary_checkpoints_are_removed() {
    let run = tmp("stale");
    let root = run.join("checkpoints");
    train(&TrainConfig { stop_after: Some(1), ..config(3, 1, 2) }, &run, &TrainOptions::fresh()).unwrap();
    // What killed saves leave behind, plus a user's hidden folder that must survive.
    for d in [".tmp-step-00000002-12345", ".tmp-step-00000003-999"] {
        copy_dir(&root.join("step-00000001"), &root.join(d));
    }
    std::fs::create_dir_all(root.join(".notes")).unwrap();
    train(&config(3, 1, 2), &run, &TrainOptions::resume(Resume::Latest)).unwrap();
    let left: Vec<String> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.starts_with(".tmp-")), "{left:?}");
    assert!(left.contains(&".notes".to_string()));
}

#[test]
fn nothing_non_finite_is_checkpointed_or_resumed() {
    use msclip::model::{ModelConfig, MsClip};
    let cfg = ModelConfig::from_toml_file(Path::new("fixtures/check/micro-msclip-s.toml")).unwrap();
    let (vs, model) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    // A diverged BatchNorm buffer (not a parameter) is named and nothing is written.
    let var = vs.variables();
    let name = "visual.parallel.stages.1.bn1.running_var";
    tch::no_grad(|| {
        let _ = var[name].shallow_clone().fill_(f64::INFINITY);
    });
    let meta = checkpoint::Meta {
        tool_version: msclip::VERSION.into(),
        model: cfg.clone(),
        step: 2,
        epoch: 0,
        samples_seen: 0,
        data_cursor: 0,
        seed: 0,
        train_config: String::new(),
        sha256: Default::default(),
        init: None,
    };
    let root = tmp("nonfinite");
    let err = checkpoint::save(&root, &vs, &[], meta.clone()).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("non-finite"), "{err}");
    assert!(checkpoint::list(&root).is_empty());
    // Optimizer moments are checked too.
    tch::no_grad(|| {
        let _ = var[name].shallow_clone().fill_(1.0);
    });
    let moment = tch::Tensor::from_slice(&[1.0f32, f32::NAN]);
    let err = checkpoint::save(&root, &vs, &[("v.logit_scale".into(), moment)], meta.clone()).unwrap_err().to_string();
    assert!(err.contains("v.logit_scale"), "{err}");
    // A checkpoint written with an inf buffer by an older writer (hash matching) is skipped
    // by --resume and refused by loading.
    let dir = checkpoint::save(&root, &vs, &[], meta).unwrap();
    let f = dir.join("model.safetensors");
    let mut tensors = tch::Tensor::read_safetensors(&f).unwrap();
    for (n, t) in tensors.iter_mut() {
        if n == name {
            *t = t.fill(f64::INFINITY);
        }
    }
    tch::Tensor::write_safetensors(&tensors, &f).unwrap();
    let meta_path = dir.join("meta.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    m["sha256"]["model.safetensors"] = serde_json::json!(msclip::io::sha256_file(&f).unwrap());
    std::fs::write(&meta_path, m.to_string()).unwrap();
    assert!(checkpoint::verify(&dir).is_ok(), "the hash matches");
    assert!(checkpoint::latest_valid(&root).is_none());
    let err = checkpoint::load_model(&dir, &vs).unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
    drop(model);
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze"))
        .args(["eval", "--checkpoint", dir.to_str().unwrap(), "--items", "8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(name));
}

#[test]
fn a_checkpoint_config_is_validated_like_a_toml_config() {
    let run = tmp("badmeta");
    train(&config(1, 1, 1), &run, &TrainOptions::fresh()).unwrap();
    let dir = run.join("checkpoints/step-00000001");
    let meta_path = dir.join("meta.json");
    let good = std::fs::read_to_string(&meta_path).unwrap();
    for (key, value, expect) in [
        ("heads", serde_json::json!(0), "vision.heads"),
        ("patch_size", serde_json::json!(0), "vision.patch_size"),
        ("heads", serde_json::json!(3), "divisible"),
        ("image_size", serde_json::json!(33), "vision.image_size"),
        ("width", serde_json::json!(1u64 << 40), "vision.width"),
    ] {
        let mut m: serde_json::Value = serde_json::from_str(&good).unwrap();
        m["model"]["vision"][key] = value;
        std::fs::write(&meta_path, m.to_string()).unwrap();
        for args in [
            vec!["eval", "--checkpoint", dir.to_str().unwrap(), "--items", "4"],
            vec!["gap", "--checkpoint", dir.to_str().unwrap(), "--synthetic", "4"],
            vec!["attention", "--checkpoint", dir.to_str().unwrap(), "--out", run.join("att").to_str().unwrap()],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze")).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{key}: {args:?}: {err}");
            assert!(err.contains("meta.json") && err.contains(expect), "{key}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_msclip-train"))
            .args(["export", "--checkpoint", dir.to_str().unwrap(), "--out", run.join("x.safetensors").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "export of {key}");
        assert!(!run.join("x.safetensors").exists());
    }
}

#[test]
fn keep_optimizer_strips_older_checkpoints_to_their_weights() {
    // keep = 3 checkpoints, optimizer state only in the newest one.
    let run = tmp("keep-optim");
    let cfg = TrainConfig { keep_optimizer: Some(1), ..config(3, 1, 3) };
    train(&cfg, &run, &TrainOptions::fresh()).unwrap();
    let ck = |s: i64| run.join("checkpoints").join(checkpoint::step_dir_name(s));
    assert!(ck(3).join("optim.safetensors").is_file());
    for s in [1, 2] {
        assert!(!ck(s).join("optim.safetensors").exists(), "step {s} still has its optimizer state");
        // Still a checkpoint that verifies, with its weights intact.
        let meta = checkpoint::verify_deep(&ck(s)).unwrap();
        assert_eq!(meta.step, s);
        assert!(!meta.sha256.contains_key("optim.safetensors"));
    }
    // Weights are those of the plain run (stripping touches only the optimizer file).
    let plain = tmp("keep-optim-plain");
    train(&config(3, 1, 3), &plain, &TrainOptions::fresh()).unwrap();
    let pc = plain.join("checkpoints").join(checkpoint::step_dir_name(2));
    assert_eq!(std::fs::read(ck(2).join("model.safetensors")).unwrap(), std::fs::read(pc.join("model.safetensors")).unwrap());
    // Set on a finished run, it applies at its next resume (a no-op otherwise): the plain
    // run's older checkpoints lose their optimizer state, the newest keeps it.
    assert!(pc.join("optim.safetensors").is_file());
    let out = train(&cfg, &plain, &TrainOptions::resume(Resume::Latest)).unwrap();
    assert_eq!(out.final_step, 3);
    assert!(!pc.join("optim.safetensors").exists() && checkpoint::verify(&pc).is_ok());
    assert!(plain.join("checkpoints").join(checkpoint::step_dir_name(3)).join("optim.safetensors").is_file());
    // A resume picks the newest (with its state); resuming from a stripped one says why not.
    let out = train(&TrainConfig { steps: 4, ..cfg.clone() }, &run, &TrainOptions::resume(Resume::Latest)).unwrap();
    assert_eq!(out.final_step, 4);
    let err = train(&TrainConfig { steps: 4, ..cfg.clone() }, &run, &TrainOptions::resume(Resume::Path(ck(2)))).unwrap_err().to_string();
    assert!(err.contains("no optimizer state") && err.contains("keep_optimizer"), "{err}");
    // keep_optimizer = 0 would leave nothing to resume from: refused, naming the key.
    let err = train(&TrainConfig { keep_optimizer: Some(0), ..config(1, 1, 1) }, &tmp("keep-optim-0"), &TrainOptions::fresh())
        .unwrap_err()
        .to_string();
    assert!(err.contains("keep_optimizer"), "{err}");
    for d in [run, plain] {
        let _ = std::fs::remove_dir_all(d);
    }
}
