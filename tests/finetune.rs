//! Training from existing weights: fine-tuning an imported OpenCLIP model against OpenCLIP's
//! own training script (fixtures/gen_openclip_finetune.py), frozen parameters, and
//! transplanting parts of one checkpoint into a fresh model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use msclip::checkpoint;
use msclip::model::{ModelConfig, MsClip};
use msclip::train::{init, train, InitConfig, Resume, TrainConfig, TrainOptions};
use tch::{Device, Tensor};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-ft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-train")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into())
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// The OpenCLIP micro CLIP as OpenCLIP names it, loaded into msclip's names.
fn openclip_as_ours(path: &Path, cfg: &ModelConfig) -> BTreeMap<String, Tensor> {
    let (vs, _) = MsClip::build_for_loading(cfg, Device::Cpu);
    msclip::checkpoint::import::import_into(Tensor::read_safetensors(path).unwrap(), cfg, &vs, "reference").unwrap();
    vs.variables().into_iter().collect()
}

/// Fine-tuning a published CLIP: import the OpenCLIP micro model, train 3 steps with --init
/// on the reference batch with OpenCLIP's decay groups, and match OpenCLIP's own training run
/// (losses and every parameter) within the noise floor the reference script measured by
/// reordering the batch. The same run with msclip's default decay groups must fail the check
/// (so the check can tell the groups apart), and resuming the imported checkpoint gives an
/// error whose advice (--init) is what this test then follows.
#[test]
fn fine_tuning_an_imported_openclip_matches_openclip_training() {
    let dir = tmp("openclip");
    let fx = root().join("fixtures/torch");
    let cfg_path = fx.join("openclip-micro.toml");
    let imported = dir.join("imported");
    let (code, err) = train_cli(&[
        "import",
        "--from",
        fx.join("openclip-micro.safetensors").to_str().unwrap(),
        "--model-config",
        cfg_path.to_str().unwrap(),
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(fx.join("openclip-micro-finetune.json")).unwrap()).unwrap();
    let hp = &reference["hyper_parameters"];
    // The shipped config (docs/finetune.md) holds the reference run's hyper-parameters.
    let shipped = std::fs::read_to_string(root().join("configs/train/finetune-openclip-micro.toml")).unwrap();
    let tc: TrainConfig = toml::from_str(&shipped).unwrap();
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert_eq!(
        (tc.lr, tc.warmup_steps, tc.steps, tc.batch_size as i64),
        (f(&hp["lr"]), hp["warmup"].as_i64().unwrap(), hp["steps"].as_i64().unwrap(), hp["batch"].as_i64().unwrap())
    );
    let o = &tc.optimizer;
    assert_eq!((o.beta1, o.beta2, o.eps, o.weight_decay), (f(&hp["beta1"]), f(&hp["beta2"]), f(&hp["eps"]), f(&hp["wd"])));
    assert!(o.weight_decay_embeddings && tc.min_lr == 0.0 && tc.grad_clip == 0.0);
    let config = |decay_embeddings: bool| {
        let line = "weight_decay_embeddings = true";
        assert!(shipped.contains(line));
        shipped.replace(line, &format!("weight_decay_embeddings = {decay_embeddings}"))
    };
    // The imported checkpoint has no optimizer state: --resume says to use --init.
    std::fs::write(dir.join("oc.toml"), config(true)).unwrap();
    let (code, err) = train_cli(&[
        "--config",
        dir.join("oc.toml").to_str().unwrap(),
        "--out",
        dir.join("resumed").to_str().unwrap(),
        "--resume",
        imported.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no optimizer state") && err.contains(&format!("--init {}", imported.display())), "{err}");

    let cfg = ModelConfig::from_toml_file(&cfg_path).unwrap();
    let want = openclip_as_ours(&fx.join("openclip-micro-finetune.safetensors"), &cfg);
    let start = openclip_as_ours(&fx.join("openclip-micro.safetensors"), &cfg);
    // The reference's per-tensor floor, keyed by our names.
    let (map, _) = msclip::checkpoint::import::key_map(&cfg);
    let floor: BTreeMap<String, f64> = map
        .iter()
        .map(|(oc, ours)| (ours.clone(), reference["noise_floor_rel_l2_of_update"][oc].as_f64().unwrap_or_else(|| panic!("{oc}"))))
        .collect();
    let loss_floor = reference["noise_floor_loss_abs"].as_f64().unwrap();
    let run = |decay_embeddings: bool, name: &str| -> (Vec<f64>, Vec<(String, f64, f64)>) {
        let toml = dir.join(format!("{name}.toml"));
        std::fs::write(&toml, config(decay_embeddings)).unwrap();
        let out = dir.join(name);
        let (code, err) =
            train_cli(&["--config", toml.to_str().unwrap(), "--out", out.to_str().unwrap(), "--init", imported.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let got = tensors(&checkpoint::list(&out.join("checkpoints"))[0].join("model.safetensors"));
        // Error relative to how far the reference moved the tensor, against 5× its floor
        // (at least 1e-4: tensors whose reordered runs agreed to the last bit).
        let errs = want
            .iter()
            .map(|(n, w)| {
                let moved = (w - &start[n]).norm().double_value(&[]);
                let rel = (&got[n] - w).norm().double_value(&[]) / moved;
                (n.clone(), rel, (5.0 * floor[n]).max(1e-4))
            })
            .collect();
        (losses(&out), errs)
    };
    let (l, errs) = run(true, "openclip-groups");
    let want_losses: Vec<f64> = reference["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (a, b) in l.iter().zip(&want_losses) {
        assert!((a - b).abs() <= 5.0 * loss_floor.max(1e-6), "loss {a} vs OpenCLIP {b} (floor {loss_floor})");
    }
    assert_eq!(l.len(), 3);
    let worst = errs.iter().map(|(_, r, t)| r / t).fold(0.0, f64::max);
    for (n, rel, tol) in &errs {
        assert!(rel <= tol, "{n}: relative error {rel:.2e} > {tol:.2e}");
    }
    eprintln!("worst parameter error / tolerance: {worst:.3}");
    // msclip's default groups (embeddings not decayed) differ from OpenCLIP's: caught.
    let (_, errs) = run(false, "msclip-groups");
    let caught: Vec<&String> = errs.iter().filter(|(_, r, t)| r > t).map(|(n, _, _)| n).collect();
    assert!(caught.iter().any(|n| n.contains("embedding")), "default decay groups not told apart: {caught:?}");
}

fn tiny(steps: i64, seed: u64) -> TrainConfig {
    TrainConfig {
        model: "tiny-msclip-s".into(),
        data_items: 64,
        steps,
        batch_size: 8,
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_steps: 1,
        grad_clip: 1.0,
        seed,
        save_every: 0,
        keep: 1,
        eval_every: 0,
        eval_items: 16,
        workers: 1,
        ..Default::default()
    }
}

/// A fresh tiny-msclip-s of `seed` written as a step-0 checkpoint (no optimizer state).
fn save_fresh(dir: &Path, seed: u64) -> PathBuf {
    let cfg = ModelConfig::preset("tiny-msclip-s").unwrap();
    let (vs, _) = MsClip::build(&cfg, Device::Cpu, seed as i64);
    let meta = checkpoint::Meta::initial(cfg, seed, String::new());
    checkpoint::save_dir(dir, &vs, &[], meta).unwrap();
    dir.to_path_buf()
}

/// Frozen parameters are bit-identical after training and absent from the optimizer state;
/// the others moved. Freezing the vision tower of MS-CLIP-S fixes the shared tensors too.
#[test]
fn frozen_parameters_stay_bit_identical_and_get_no_state() {
    let dir = tmp("freeze");
    let tc = TrainConfig { freeze: vec!["vision".into(), "logit_scale".into()], ..tiny(4, 2) };
    let out = train(&tc, &dir.join("run"), &TrainOptions::fresh()).unwrap();
    let ck = out.last_checkpoint.unwrap();
    let after = tensors(&ck.join("model.safetensors"));
    let optim = tensors(&ck.join("optim.safetensors"));
    let cfg = ModelConfig::preset("tiny-msclip-s").unwrap();
    let (vs, _) = MsClip::build(&cfg, Device::Cpu, 2);
    let before: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let trainable: Vec<String> = before.iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n.clone()).collect();
    let (mut frozen, mut moved) = (0, 0);
    for name in &trainable {
        let is_frozen = name.starts_with("visual.") || name.starts_with("shared.") || name == "logit_scale";
        let same = after[name].equal(&before[name]);
        if is_frozen {
            assert!(same, "{name}: frozen but changed");
            assert!(!optim.contains_key(&format!("m.{name}")) && !optim.contains_key(&format!("v.{name}")), "{name}: has optimizer state");
            frozen += 1;
        } else {
            assert!(!same, "{name}: trainable but did not move");
            assert!(optim.contains_key(&format!("m.{name}")), "{name}: no optimizer state");
            moved += 1;
        }
    }
    assert!(frozen > 20 && moved > 10, "{frozen} frozen, {moved} moved");
    assert!(trainable.iter().any(|n| n.starts_with("shared.")), "the preset shares tensors");
    // A resume keeps the freeze list and continues; a selector that matches nothing is an
    // error naming it, before anything is written.
    let tc6 = TrainConfig { steps: 6, ..tc.clone() };
    train(&tc6, &dir.join("run"), &TrainOptions::resume(Resume::Latest)).unwrap();
    let bad = TrainConfig { freeze: vec!["shared.attn:0".into()], ..tiny(2, 2) };
    let err = train(&bad, &dir.join("bad"), &TrainOptions::fresh()).unwrap_err().to_string();
    assert!(err.contains("`freeze`") && err.contains("shared.attn:0"), "{err}");
    assert!(!dir.join("bad/train.toml").exists());
}

/// Transplant: the shared attention of one checkpoint into a fresh tiny-msclip-s. The
/// selected tensors equal the source, all others equal the seed's initialisation, and the
/// provenance names the source's sha256. Training from it runs and records the init.
/// Transplanting the fresh initialisation itself reproduces the plain run bit for bit.
#[test]
fn transplanting_shared_attention_into_a_fresh_model() {
    let dir = tmp("transplant");
    let src = save_fresh(&dir.join("source"), 5);
    let cfg = ModelConfig::preset("tiny-msclip-s").unwrap();
    let (vs, _) = MsClip::build(&cfg, Device::Cpu, 0);
    let ic = InitConfig { from: src.clone(), select: vec!["shared.attn".into()] };
    let rec = init::apply(&ic, &vs).unwrap();
    let source = tensors(&src.join("model.safetensors"));
    let (fresh_vs, _) = MsClip::build(&cfg, Device::Cpu, 0);
    let fresh: BTreeMap<String, Tensor> = fresh_vs.variables().into_iter().collect();
    let mut selected = 0;
    for (name, t) in vs.variables() {
        let is_attn = name.starts_with("shared.blocks.") && name.contains(".attn_");
        if is_attn {
            assert!(t.equal(&source[&name]), "{name}: not the source's");
            if name.ends_with(".weight") {
                assert!(!t.equal(&fresh[&name]), "{name}: source and fresh coincide (biases start at zero in both)");
            }
            selected += 1;
        } else {
            assert!(t.equal(&fresh[&name]), "{name}: not the seed's initialisation");
        }
    }
    let shared_slots = (0..cfg.text.layers).filter(|s| cfg.is_shared(*s, msclip::model::SharedSite::AttnIn)).count();
    assert_eq!(selected, 4 * shared_slots, "attn_in/attn_out weight and bias per shared slot");
    assert_eq!(rec.tensors.len(), selected);
    let sha = msclip::io::sha256_file(&src.join("model.safetensors")).unwrap();
    assert_eq!(rec.source_sha256, sha);

    // Training from it runs and records the init in init.json and every checkpoint.
    let run = dir.join("run");
    let out = train(&TrainConfig { init: Some(ic), ..tiny(2, 0) }, &run, &TrainOptions::fresh()).unwrap();
    let meta = checkpoint::verify(&out.last_checkpoint.unwrap()).unwrap();
    assert_eq!(meta.init.as_ref().unwrap().source_sha256, sha);
    let recorded: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("init.json")).unwrap()).unwrap();
    assert_eq!(recorded["select"][0], "shared.attn");

    // The transplant path with the fresh initialisation as source equals the plain run.
    let same = save_fresh(&dir.join("fresh-0"), 0);
    let plain = train(&tiny(3, 0), &dir.join("plain"), &TrainOptions::fresh()).unwrap();
    let via = train(
        &TrainConfig { init: Some(InitConfig { from: same, select: vec!["shared.attn".into()] }), ..tiny(3, 0) },
        &dir.join("via"),
        &TrainOptions::fresh(),
    )
    .unwrap();
    assert_eq!(losses(&dir.join("plain")), losses(&dir.join("via")));
    let (a, b) = (
        tensors(&plain.last_checkpoint.unwrap().join("model.safetensors")),
        tensors(&via.last_checkpoint.unwrap().join("model.safetensors")),
    );
    for (n, t) in &a {
        assert!(t.equal(&b[n]), "{n}");
    }
    // Five tiny-model checkpoints (about 330 MB): not left behind.
    let _ = std::fs::remove_dir_all(&dir);
}

/// CLIP's text-tower attention into MS-CLIP-S's shared slots needs a stated mapping; without
/// one (same names) or with an ambiguous one it is refused, naming the tensors.
#[test]
fn cross_layout_transplants_need_an_explicit_mapping() {
    let dir = tmp("mapping");
    let clip_cfg = ModelConfig::preset("tiny-clip").unwrap();
    let (cvs, _) = MsClip::build(&clip_cfg, Device::Cpu, 9);
    let meta = checkpoint::Meta::initial(clip_cfg.clone(), 9, String::new());
    let src = dir.join("clip");
    checkpoint::save_dir(&src, &cvs, &[], meta).unwrap();
    let cfg = ModelConfig::preset("tiny-msclip-s").unwrap();
    let slots: Vec<usize> = (0..cfg.text.layers).filter(|s| cfg.is_shared(*s, msclip::model::SharedSite::AttnIn)).collect();
    let range = format!("{}-{}", slots[0], slots[slots.len() - 1]);
    let apply = |sel: &str| {
        let (vs, _) = MsClip::build(&cfg, Device::Cpu, 0);
        init::apply(&InitConfig { from: src.clone(), select: vec![sel.to_string()] }, &vs).map(|r| (r, vs))
    };
    let err = apply(&format!("shared.attn:{range}")).unwrap_err().to_string();
    assert!(err.contains("TARGET=SOURCE"), "{err}");
    let err = apply(&format!("shared.attn:{range}=attn:{range}")).unwrap_err().to_string();
    assert!(err.contains("ambiguous"), "{err}");
    let (rec, vs) = apply(&format!("shared.attn:{range}=text.attn:{range}")).unwrap();
    let vars = vs.variables();
    let source: BTreeMap<String, Tensor> = cvs.variables().into_iter().collect();
    for (t, s) in &rec.tensors {
        assert!(s.starts_with("text.blocks.") && t.starts_with("shared.blocks."), "{t} ← {s}");
        assert!(vars[t].equal(&source[s]), "{t}");
    }
    assert_eq!(rec.tensors.len(), 4 * slots.len());
}
