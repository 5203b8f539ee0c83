//! The analysis commands on a small synthetic set: outputs exist, carry provenance, and the
//! figures are valid images with content.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn nontrivial_png(p: &Path) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8();
    let distinct: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 8, "{} looks empty", p.display());
}

#[test]
fn embed_gap_nmi_and_heads_write_their_outputs() {
    let dir = std::env::temp_dir().join(format!("msclip-analysis-{}", std::process::id()));
    let d = |s: &str| dir.join(s).display().to_string();
    let (code, _, err) = run(&["embed", "--model", "tiny-msclip-s", "--synthetic", "24", "--out", &d("emb")]);
    assert_eq!(code, 0, "{err}");
    let x = msclip::analysis::npy::read(&dir.join("emb/image.npy")).unwrap();
    assert_eq!(x.size(), [24, 64]);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("emb/embed.json")).unwrap()).unwrap();
    assert_eq!(meta["provenance"]["checkpoint_sha256"], "init:seed=0");

    let (code, out, err) = run(&["gap", "--image-npy", &d("emb/image.npy"), "--text-npy", &d("emb/text.npy"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let g: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(g["gap"]["n"], 24);
    assert!(g["gap"]["centroid_gap"].as_f64().unwrap() > 0.0);

    let (code, out, err) = run(&["nmi", "--model", "tiny-msclip-s", "--synthetic", "24", "--json", "--out", &d("nmi")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = v["layers"].as_array().unwrap();
    // Slots 1..5 (ln1 exists only where vision has a block) + the joint space.
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r["nmi"].as_f64().unwrap())));
    nontrivial_png(&dir.join("nmi/nmi.png"));
    assert!(std::fs::read_to_string(dir.join("nmi/nmi.svg")).unwrap().contains("<svg"));
    // Unequal widths need the projected space.
    let (code, _, err) = run(&["nmi", "--model", "clip-b32", "--synthetic", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("--projected"), "{err}");

    let (code, out, err) = run(&["heads", "--model", "tiny-msclip-s", "--synthetic", "12", "--out", &d("heads"), "--permutations", "200"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("entropy") && out.contains("spearman"));
    let csv = std::fs::read_to_string(dir.join("heads/head_stats.csv")).unwrap();
    // 5 vision slots × 4 heads + 6 text slots × 4 heads.
    assert_eq!(csv.lines().filter(|l| l.starts_with("vision,") || l.starts_with("text,")).count(), 20 + 24);
    let agree: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("heads/agreement.json")).unwrap()).unwrap();
    assert_eq!(agree["agreement"][0]["heads"], 20);
    assert!(std::fs::read_to_string(dir.join("heads/grounding.csv")).unwrap().lines().count() > 20);
    for f in ["entropy_vision.png", "entropy_text.png", "distance_scatter.png"] {
        nontrivial_png(&dir.join("heads").join(f));
    }
}

#[test]
fn zeroshot_on_an_image_folder_and_retrieval() {
    let dir = std::env::temp_dir().join(format!("msclip-zs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (class, rgb) in [("red_thing", [220u8, 40, 40]), ("blue_thing", [40, 80, 220])] {
        std::fs::create_dir_all(dir.join("folder").join(class)).unwrap();
        for i in 0..3 {
            let img = image::RgbImage::from_fn(80, 64, |x, _| if x > 10 + i * 5 { image::Rgb(rgb) } else { image::Rgb([255, 255, 255]) });
            img.save(dir.join("folder").join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(dir.join("templates.txt"), "a photo of a {}\na {}\n").unwrap();
    let d = |s: &str| dir.join(s).display().to_string();
    let (code, out, err) = run(&["zeroshot", "--model", "tiny-clip", "--folder", &d("folder"), "--templates", &d("templates.txt"), "--out", &d("zs")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n 6 classes 2 templates 2"), "{out}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("zs/zeroshot.json")).unwrap()).unwrap();
    assert_eq!(j["classes"], serde_json::json!(["blue thing", "red thing"]));
    let top1 = j["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && j["top5"].as_f64().unwrap() == 1.0);
    std::fs::write(dir.join("bad.txt"), "a photo\n").unwrap();
    let (code, _, err) = run(&["zeroshot", "--model", "tiny-clip", "--folder", &d("folder"), "--templates", &d("bad.txt")]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.txt") && err.contains("line 1"), "{err}");
    let (code, out, err) = run(&["retrieval", "--model", "tiny-clip", "--synthetic", "16"]);
    assert_eq!(code, 0, "{err}");
    // Recall grows with k.
    let vals: Vec<f64> = out.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).filter(|v| *v <= 1.0).collect();
    assert_eq!(vals.len(), 6, "{out}");
    assert!(vals[0] <= vals[1] && vals[1] <= vals[2] && vals[3] <= vals[4] && vals[4] <= vals[5], "{out}");
}
