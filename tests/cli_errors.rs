//! Bad input gives a clear error naming the key/value and exit status 2, never a panic.

use std::process::Command;

use msclip::model::ModelConfig;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn with_config(text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("msclip-cli-{}-{}", std::process::id(), text.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.toml");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run(&["params", "--config", path.to_str().unwrap()]);
    (code, err)
}

fn preset_text(name: &str) -> String {
    ModelConfig::preset(name).unwrap().to_toml()
}

#[test]
fn params_json_prints_the_exact_totals() {
    let (code, out, _) = run(&["params", "--model", "msclip-s-b16", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["total"], 132_503_617);
    assert_eq!(v["shared"], 77_932_800);
    // MS-CLIP-S text: slot 0 is a whole text-only block (12w² + 13w), slots 1..11 keep their
    // two LayerNorms (4w each); plus token/position embeddings, ln_final, the projection.
    let w = 768i64;
    assert_eq!(v["text_only"].as_i64().unwrap(), (12 * w * w + 13 * w) + 11 * 4 * w + 49_408 * w + 77 * w + 2 * w + w * 512);
}

#[test]
fn config_file_round_trips_through_params() {
    // The preset written out as a file gives the preset's exact parameter counts.
    let dir = std::env::temp_dir().join(format!("msclip-cli-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.toml");
    std::fs::write(&path, preset_text("tiny-msclip-s")).unwrap();
    let (code, from_file, err) = run(&["params", "--config", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let (_, preset, _) = run(&["params", "--model", "tiny-msclip-s", "--json"]);
    let (a, b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&from_file).unwrap(), serde_json::from_str(&preset).unwrap());
    assert_eq!(a, b);
    assert_eq!(a["total"], 7_790_273, "{a}");
    assert_eq!(a["shared"], 988_800, "{a}");
}

#[test]
fn unknown_preset_is_exit_2_with_the_name() {
    let (code, _, err) = run(&["params", "--model", "msclip-xl"]);
    assert_eq!(code, 2);
    assert!(err.contains("msclip-xl") && err.contains("unknown preset"), "{err}");
}

#[test]
fn malformed_toml_names_file_and_line() {
    let (code, err) = with_config("name = \"x\"\nembed_dim = = 3\n");
    assert_eq!(code, 2);
    assert!(err.contains("model.toml") && err.contains("line 2"), "{err}");
    let (code, err) = with_config(&preset_text("tiny-clip").replace("ln_eps", "ln_epsilon"));
    assert_eq!(code, 2);
    assert!(err.contains("ln_epsilon"), "{err}");
}

#[test]
fn impossible_configs_name_key_and_value() {
    let t = preset_text("tiny-clip");
    let (code, err) = with_config(&t.replacen("heads = 4", "heads = 5", 1));
    assert_eq!(code, 2);
    assert!(err.contains("vision.heads") && err.contains('5') && err.contains("divisible"), "{err}");
    let (code, err) = with_config(&t.replace("image_size = 64", "image_size = 60"));
    assert_eq!(code, 2);
    assert!(err.contains("vision.image_size") && err.contains("60"), "{err}");
    // Sharing across towers of different widths.
    let s = preset_text("tiny-msclip");
    let text_width =
        s.replacen("width = 128\nheads = 4\nlayers = 6\n\n[preprocess]", "width = 256\nheads = 4\nlayers = 6\n\n[preprocess]", 1);
    assert_ne!(text_width, s, "test edits the text tower width");
    let (code, err) = with_config(&text_width);
    assert_eq!(code, 2);
    assert!(err.contains("text.width") && err.contains("256"), "{err}");
    // Sharing slot 0 with an early-conv stem.
    let es = preset_text("tiny-msclip-s").replace("slots = [1, 2, 3, 4, 5]\nsites", "slots = [0, 1, 2, 3, 4, 5]\nsites");
    let (code, err) = with_config(&es);
    assert_eq!(code, 2);
    assert!(err.contains("sharing[0].slots") && err.contains('0'), "{err}");
}

#[test]
fn tokenize_and_attention_errors() {
    let (code, out, _) = run(&["tokenize", "a photo of a cat", "--json"]);
    assert_eq!(code, 0);
    let ids: Vec<i64> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    let dir = std::env::temp_dir().join(format!("msclip-att-{}", std::process::id()));
    let (code, _, err) = run(&["attention", "--model", "tiny-clip", "--out", dir.to_str().unwrap(), "--layers", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("layer 9"), "{err}");
    let (code, _, err) =
        run(&["attention", "--model", "tiny-clip", "--out", dir.to_str().unwrap(), "--image", "/nonexistent.png", "--caption", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.png"), "{err}");
}

#[test]
fn attention_writes_maps_for_every_layer() {
    let dir = std::env::temp_dir().join(format!("msclip-att-ok-{}", std::process::id()));
    let (code, _, err) = run(&["attention", "--model", "tiny-msclip-s", "--out", dir.to_str().unwrap(), "--seed", "3"]);
    assert_eq!(code, 0, "{err}");
    let png = image::open(dir.join("vision_cls_attention.png")).unwrap().to_rgb8();
    // 5 rows of attention layers (slots 1..5) × (4 heads + mean).
    assert!(png.width() > 400 && png.height() > 400);
    let distinct: std::collections::HashSet<_> = png.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 500, "overlay has real content");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("attention.json")).unwrap()).unwrap();
    assert_eq!(json["vision_slots"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(json["text_slots"], serde_json::json!([0, 1, 2, 3, 4, 5]));
    assert_eq!(json["provenance"]["preprocess"]["mean"], serde_json::json!([0.485, 0.456, 0.406]));
    let csv = std::fs::read_to_string(dir.join("attention.csv")).unwrap();
    assert!(csv.starts_with("# provenance: "));
    // Vision rows: 5 slots × 5 maps (4 heads + mean) × 64 patches.
    assert_eq!(csv.lines().filter(|l| l.starts_with("vision,")).count(), 5 * 5 * 64);
    for slot in 0..6 {
        assert!(dir.join(format!("text_attention_slot{slot}.svg")).exists());
    }
    // Attribution methods with deletion/insertion AUCs of 11-point curves.
    for method in ["raw", "rollout", "relevancy"] {
        let f = &json["faithfulness"][method];
        assert_eq!(f["deletion_curve"].as_array().unwrap().len(), 11, "{method}");
        let ins = f["insertion_curve"].as_array().unwrap();
        // Fully shown image at the end of insertion = the unmasked image's cosine.
        assert!((ins[10].as_f64().unwrap() - json["similarity"].as_f64().unwrap()).abs() < 1e-4, "{method}");
        assert!(f["deletion_auc"].as_f64().unwrap().is_finite());
    }
    assert!(image::open(dir.join("attribution.png")).is_ok());
    let attr = std::fs::read_to_string(dir.join("attribution.csv")).unwrap();
    assert_eq!(attr.lines().filter(|l| l.contains(",image_patch,")).count(), 3 * 64);
    assert!(attr.lines().any(|l| l.starts_with("relevancy,text_token,")));
}

/// Zero, empty and huge arguments are refused when the arguments are parsed, naming the flag
/// (issue 9 §3); none of these runs, hangs or panics.
#[test]
fn zero_empty_and_huge_flags_name_the_flag() {
    let dir = std::env::temp_dir().join(format!("msclip-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["embed", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0", "--out", &out], "--batch"),
        (vec!["gap", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0"], "--batch"),
        (vec!["nmi", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0"], "--batch"),
        (vec!["heads", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0", "--out", &out], "--batch"),
        (vec!["retrieval", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0"], "--batch"),
        (vec!["check", "--model", "tiny-clip", "--synthetic", "4", "--batch", "0", "--baseline", "x.json"], "--batch"),
        (vec!["gap", "--model", "tiny-clip", "--synthetic", "0"], "--synthetic"),
        (vec!["zeroshot", "--model", "tiny-clip", "--synthetic", "0"], "--synthetic"),
        (vec!["gap", "--model", "tiny-clip", "--synthetic", "4", "--uniformity-max", "0"], "--uniformity-max"),
        (vec!["attention", "--model", "tiny-clip", "--out", &out, "--faith-steps", "0"], "--faith-steps"),
        (vec!["attention", "--model", "tiny-clip", "--out", &out, "--faith-steps", "100000"], "--faith-steps"),
        (vec!["attention", "--model", "tiny-clip", "--out", &out, "--query=-1"], "--query"),
        (vec!["tokenize", "x", "--context", "18446744073709551615"], "--context"),
        (vec!["tokenize", "x", "--context", "1"], "--context"),
        (vec!["probe", "--model", "tiny-clip", "--synthetic", "--train", "0"], "--train"),
        (vec!["probe", "--model", "tiny-clip", "--synthetic", "--val", "0"], "--val"),
        (vec!["probe", "--model", "tiny-clip", "--synthetic", "--c", "0,-1"], "--c"),
        (vec!["eval", "--model", "tiny-clip", "--items", "0"], "--items"),
        (vec!["nmi", "--model", "tiny-clip", "--synthetic", "4", "--k", "0"], "--k"),
        (vec!["heads", "--model", "tiny-clip", "--synthetic", "4", "--permutations", "0", "--out", &out], "--permutations"),
    ];
    for (args, flag) in cases {
        let t = std::time::Instant::now();
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "{args:?}");
    }
    assert!(!dir.join("out").exists(), "nothing was written");
    // The train binary: --eval-items 0, --batch-size 0, huge steps.
    let train = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_msclip-train")).args(args).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
    };
    for (flag, value) in [("--eval-items", "0"), ("--batch-size", "0"), ("--steps", "-3"), ("--keep", "0"), ("--lr", "nan")] {
        let (code, err) = train(&["--config", "configs/train/tiny-clip.toml", "--out", &out, &format!("{flag}={value}")]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

/// Empty inputs and empty results are errors, not NaN tables with exit 0.
#[test]
fn empty_inputs_and_results_are_errors() {
    let dir = std::env::temp_dir().join(format!("msclip-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("folder/a")).unwrap();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3])).save(dir.join("folder/a/0.png")).unwrap();
    let d = |s: &str| dir.join(s).display().to_string();
    std::fs::write(dir.join("empty.txt"), "\n  \n").unwrap();
    let (code, _, err) = run(&["zeroshot", "--model", "tiny-clip", "--folder", &d("folder"), "--templates", &d("empty.txt")]);
    assert_eq!(code, 2);
    assert!(err.contains("empty.txt") && err.contains("no templates"), "{err}");
    // heads over a manifest whose images are all missing.
    std::fs::write(dir.join("m.tsv"), "filepath\ttitle\nnope1.png\ta\nnope2.png\tb\n").unwrap();
    let (code, _, err) = run(&["heads", "--model", "tiny-clip", "--manifest", &d("m.tsv"), "--out", &d("heads")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("none of the 2 items"), "{err}");
    // .npy files with 0 columns.
    std::fs::copy("fixtures/fuzz/zero-columns.npy", dir.join("a.npy")).unwrap();
    let (code, _, err) = run(&["gap", "--image-npy", &d("a.npy"), "--text-npy", &d("a.npy")]);
    assert_eq!(code, 2);
    assert!(err.contains("0 columns"), "{err}");
    // A baseline with no values.
    std::fs::write(dir.join("b.json"), r#"{"tolerance": 0.001, "values": {}}"#).unwrap();
    let (code, out, err) = run(&[
        "check",
        "--checkpoint",
        "fixtures/check/ckpt",
        "--manifest",
        "fixtures/check/data/manifest.tsv",
        "--baseline",
        &d("b.json"),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("b.json") && err.contains("no values"), "{err}");
    assert!(!out.contains("check passed"));
}

/// A checkpoint of `cfg` whose tensors are `f(name, tensor)`.
fn checkpoint_with(dir: &std::path::Path, f: impl Fn(&str, &tch::Tensor) -> tch::Tensor) {
    let cfg = ModelConfig::from_toml_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/check/micro-msclip-s.toml")))
        .unwrap();
    let (vs, _) = msclip::model::MsClip::build(&cfg, tch::Device::Cpu, 0);
    tch::no_grad(|| {
        for (n, t) in vs.variables() {
            let new = f(&n, &t);
            t.shallow_clone().copy_(&new);
        }
    });
    let meta = msclip::checkpoint::Meta::initial(cfg, 0, String::new());
    msclip::checkpoint::save_dir(dir, &vs, &[], meta).unwrap();
}

/// Finite weights whose outputs overflow, and all-zero weights: every command that computes
/// on the outputs fails with exit 1 naming the tower and the cause, instead of printing
/// numbers (R@1 1.0, NaN sums) or writing NaN files.
#[test]
fn models_that_cannot_produce_numbers_are_refused() {
    let dir = std::env::temp_dir().join(format!("msclip-degenerate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (huge, zero) = (dir.join("huge"), dir.join("zero"));
    checkpoint_with(&huge, |n, t| if n == "visual.proj" { t.ones_like() * 3e38 } else { t.copy() });
    checkpoint_with(&zero, |_, t| t.zeros_like());
    let out = dir.join("out").display().to_string();
    for (ck, want) in [(&huge, "vision tower: outputs are not finite"), (&zero, "degenerate model")] {
        let ck = ck.display().to_string();
        for args in [
            vec!["eval", "--checkpoint", &ck, "--items", "8"],
            vec!["zeroshot", "--checkpoint", &ck, "--synthetic", "8"],
            vec!["embed", "--checkpoint", &ck, "--synthetic", "8", "--out", &out],
            vec!["decompose", "--checkpoint", &ck, "--synthetic", "4", "--out", &out],
            vec!["transfer", "--checkpoint", &ck, "--synthetic", "4", "--permutations", "10", "--out", &out],
        ] {
            let (code, _, err) = run(&args);
            assert_eq!(code, 1, "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
    assert!(!dir.join("out/image.npy").exists(), "no NaN embeddings written");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Options that were accepted and ignored are refused, naming the option.
#[test]
fn ignored_options_are_refused() {
    let dir = std::env::temp_dir().join(format!("msclip-ignored-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("o").display().to_string();
    let (code, _, err) =
        run(&["patch", "--model", "tiny-msclip-s", "--tower", "vision", "--attribute", "shape", "--pairs", "2", "--out", &out]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--attribute") && err.contains("colour only"), "{err}");
    // A misspelt tolerance key in a baseline.
    let ck = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/check/ckpt");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/check/data/manifest.tsv");
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gap-baseline.json")).unwrap()).unwrap();
    b["tolerances"] = serde_json::json!({"centroid_gpa": 0.5});
    let bp = dir.join("b.json");
    std::fs::write(&bp, b.to_string()).unwrap();
    let (code, _, err) = run(&["check", "--checkpoint", ck, "--manifest", manifest, "--baseline", bp.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tolerances.centroid_gpa") && err.contains("misspelt"), "{err}");
    // NCCL on a build or machine without CUDA.
    let t = std::process::Command::new(env!("CARGO_BIN_EXE_msclip-train"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/configs/train/tiny-clip.toml"),
            "--out",
            &out,
            "--dist-backend",
            "nccl",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&t.stderr);
    assert_eq!(t.status.code(), Some(2), "{err}");
    assert!(err.contains("--dist-backend") && err.contains("nccl"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A seed beyond i64::MAX is a config error before anything is deleted: with --force the
/// earlier run stays intact.
#[test]
fn a_bad_seed_with_force_deletes_nothing() {
    let dir = std::env::temp_dir().join(format!("msclip-seed-force-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/train/tiny-clip.toml");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            cfg,
            "--out",
            dir.to_str().unwrap(),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--data-items",
            "8",
            "--eval-every",
            "0",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_msclip-train")).args(&args).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, err) = train(&[]);
    assert_eq!(code, 0, "{err}");
    let before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let (code, err) = train(&["--force", "--seed", "18446744073709551615"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`seed`"), "{err}");
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), before);
    assert!(dir.join("checkpoints/step-00000001/meta.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A libtorch allocation failure (forced with a 2.5 GB address-space limit and a user-sized
/// request) is one sentence and exit 1, not a panic with a C++ backtrace (exit 101).
#[test]
fn an_allocation_failure_is_one_sentence_not_a_panic() {
    let bin = env!("CARGO_BIN_EXE_msclip-analyze");
    let o = Command::new("bash")
        .args(["-c", &format!("ulimit -v 2500000; exec {bin} eval --model tiny-msclip-s --items 100000")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: out of memory:") && err.lines().count() == 1 && !err.contains("frame #"), "{err}");
}
