//! The dependency rules of the layout (docs/layout.md), checked on the sources, one rule per
//! area of `src/`; each rule is shown to fail on a violation planted in a temporary copy.
//!
//! From the bottom up: the foundation files (error, rng, shim, tensor, autocast, cli, io,
//! profile) → tokenizer → model → data, checkpoint, analysis, distributed → eval, causal →
//! train → commands → app → bin. `plot/` draws tables and never touches a model or a tensor;
//! `app/` parses arguments and prints, and holds no computation; `bin/` only calls `app`.

use std::path::{Path, PathBuf};

/// (area: a folder or a file under src/, what it must not contain outside comments).
fn rules() -> Vec<(&'static str, Vec<&'static str>)> {
    let above_model = [
        "crate::data",
        "crate::train",
        "crate::analysis",
        "crate::plot",
        "crate::eval",
        "crate::commands",
        "crate::checkpoint",
        "crate::causal",
        "crate::distributed",
    ];
    let with = |base: &[&'static str], more: &[&'static str]| -> Vec<&'static str> { base.iter().chain(more).copied().collect() };
    // Everything above the model except the area itself (or what it may use).
    let but = |allowed: &[&str]| -> Vec<&'static str> { above_model.iter().filter(|f| !allowed.contains(f)).copied().collect() };
    vec![
        ("tokenizer", with(&above_model, &["crate::model"])),
        ("model", with(&above_model, &["super::super"])),
        ("data", but(&["crate::data"])),
        ("checkpoint", but(&["crate::checkpoint"])),
        ("analysis", but(&["crate::analysis"])),
        ("distributed", with(&above_model, &["crate::model", "crate::tokenizer"])),
        ("eval.rs", vec!["crate::train", "crate::plot", "crate::commands", "crate::checkpoint", "crate::causal", "crate::distributed"]),
        ("causal", vec!["crate::train", "crate::plot", "crate::commands", "crate::checkpoint", "crate::eval", "crate::distributed"]),
        ("train", vec!["crate::analysis", "crate::plot", "crate::commands", "crate::causal"]),
        (
            "plot",
            vec![
                "crate::model",
                "crate::analysis",
                "crate::eval",
                "crate::train",
                "crate::data",
                "crate::causal",
                "crate::checkpoint",
                "tch::",
            ],
        ),
        ("commands", vec!["crate::distributed", "crate::train::optim", "std::process::exit"]),
        ("io.rs", but(&["crate::distributed"])),
        ("error.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands"]),
        ("rng.rs", vec!["crate::"]),
        ("limits.rs", vec!["crate::"]),
        ("tensor.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands"]),
        ("shim.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands"]),
        ("autocast.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands"]),
        ("profile.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands"]),
        ("cli.rs", vec!["crate::model", "crate::data", "crate::train", "crate::analysis", "crate::commands", "tch::"]),
        // The front-ends: argument parsing, dispatch and printing; computation lives in
        // crate::commands and crate::train.
        (
            "app",
            vec![
                "Tensor",
                "tch::no_grad",
                "crate::analysis::",
                "crate::eval::embed",
                "crate::eval::evaluate",
                "crate::causal::sweep",
                "crate::train::loss",
            ],
        ),
        // Binaries call their front-end in msclip::app and nothing else.
        ("bin", vec!["msclip::commands", "msclip::model", "msclip::train", "msclip::data", "msclip::checkpoint", "clap::", "Tensor"]),
    ]
}

fn sources(path: &Path, out: &mut Vec<(String, String)>) {
    if path.is_file() {
        out.push((path.display().to_string(), std::fs::read_to_string(path).unwrap()));
        return;
    }
    for e in std::fs::read_dir(path).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
            sources(&p, out);
        }
    }
}

/// The violations of one rule in `root/area`.
fn violations(root: &Path, area: &str, forbidden: &[&str]) -> Vec<String> {
    let mut files = vec![];
    sources(&root.join(area), &mut files);
    assert!(!files.is_empty(), "{area}: no sources");
    let mut out = vec![];
    for (path, text) in files {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                if code.contains(f) {
                    out.push(format!("{path}:{}: `{f}` is not allowed in src/{area}: {line}", i + 1));
                }
            }
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_area_imports_only_downwards() {
    let rules = rules();
    // Every folder and top-level file of src/ has a rule (lib.rs declares the modules).
    for e in std::fs::read_dir(src()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        if name != "lib.rs" {
            assert!(rules.iter().any(|(a, _)| *a == name), "src/{name} has no layering rule");
        }
    }
    let all: Vec<String> = rules.iter().flat_map(|(area, f)| violations(&src(), area, f)).collect();
    assert!(all.is_empty(), "{}", all.join("\n"));
}

/// Each rule can fail: planting its first forbidden item in a copy of the area is caught.
#[test]
fn every_rule_catches_a_planted_violation() {
    let tmp = std::env::temp_dir().join(format!("msclip-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (area, forbidden) in rules() {
        let from = src().join(area);
        let to = tmp.join(area);
        let planted = if from.is_file() {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&from, &to).unwrap();
            to.clone()
        } else {
            copy_dir(&from, &to);
            let mut files = vec![];
            sources(&to, &mut files);
            PathBuf::from(&files[0].0)
        };
        let mut text = std::fs::read_to_string(&planted).unwrap();
        text.push_str(&format!("\nfn planted() {{ let _ = {}; }}\n", forbidden[0]));
        std::fs::write(&planted, text).unwrap();
        let found = violations(&tmp, area, &forbidden);
        assert!(found.iter().any(|v| v.contains(forbidden[0])), "{area}: the planted `{}` was not caught", forbidden[0]);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}
