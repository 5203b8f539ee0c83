//! The dependency rules of the layout (docs/layout.md), checked on the sources:
//! `model/` imports nothing of data/train/analysis/plot/eval/commands/checkpoint;
//! `analysis/` never imports plot/, data/, train/, eval/ or commands/; `plot/` draws tables
//! and never touches a model or a tensor; `bin/` holds no computation (no tensor code).

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

fn check(dir: &str, forbidden: &[&str]) {
    let mut files = vec![];
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir), &mut files);
    assert!(!files.is_empty(), "{dir}");
    for (path, text) in files {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                assert!(!code.contains(f), "{path}:{}: `{f}` is not allowed in src/{dir}: {line}", i + 1);
            }
        }
    }
}

#[test]
fn the_layers_import_only_downwards() {
    check(
        "model",
        &[
            "crate::data",
            "crate::train",
            "crate::analysis",
            "crate::plot",
            "crate::eval",
            "crate::commands",
            "crate::checkpoint",
            "super::super",
        ],
    );
    check("analysis", &["crate::plot", "crate::data", "crate::train", "crate::eval", "crate::commands", "crate::checkpoint"]);
    check("plot", &["crate::model", "crate::analysis", "crate::eval", "crate::train", "tch::"]);
    check(
        "dist",
        &[
            "crate::model",
            "crate::data",
            "crate::train",
            "crate::analysis",
            "crate::plot",
            "crate::eval",
            "crate::commands",
            "crate::checkpoint",
        ],
    );
    check("bin", &["Tensor", "tch::no_grad", "crate::analysis::", "msclip::analysis::gap", "msclip::eval::embed"]);
}
