//! The analysis commands on a small synthetic set: outputs exist, carry provenance, and the
//! figures are valid images with content.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Asserts the PNG decodes, is not blank (more than 8 colours, and not almost all white) and
/// returns its size.
fn nontrivial_png(p: &Path) -> (u32, u32) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).to_rgb8();
    let distinct: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 8, "{} looks empty", p.display());
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(inked * 100 > img.pixels().len(), "{}: under 1 % of pixels drawn", p.display());
    img.dimensions()
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

    let (code, out, err) = run(&["nmi", "--image-npy", &d("emb/image.npy"), "--text-npy", &d("emb/text.npy"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["inertia"].as_f64().unwrap() > 0.0, "{v}");
    // Two well separated modalities: k-means finds them exactly, NMI = 1; one cloud split in
    // two halves at random positions: NMI near 0.
    let sep_i = tch::Tensor::randn([40, 8], (tch::Kind::Float, tch::Device::Cpu)) * 0.1 + 3.0;
    let sep_t = tch::Tensor::randn([40, 8], (tch::Kind::Float, tch::Device::Cpu)) * 0.1 - 3.0;
    msclip::analysis::npy::write_f32(&dir.join("sep_i.npy"), &sep_i).unwrap();
    msclip::analysis::npy::write_f32(&dir.join("sep_t.npy"), &sep_t).unwrap();
    let (code, out, err) = run(&["nmi", "--image-npy", &d("sep_i.npy"), "--text-npy", &d("sep_t.npy"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!((v["nmi"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{v}");
    let mix = tch::Tensor::randn([80, 8], (tch::Kind::Float, tch::Device::Cpu));
    msclip::analysis::npy::write_f32(&dir.join("mix_i.npy"), &mix.narrow(0, 0, 40)).unwrap();
    msclip::analysis::npy::write_f32(&dir.join("mix_t.npy"), &mix.narrow(0, 40, 40)).unwrap();
    let (_, out, _) = run(&["nmi", "--image-npy", &d("mix_i.npy"), "--text-npy", &d("mix_t.npy"), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["nmi"].as_f64().unwrap() < 0.2, "{v}");
    let (code, out, err) = run(&["nmi", "--model", "tiny-msclip-s", "--synthetic", "24", "--json", "--out", &d("nmi")]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = v["layers"].as_array().unwrap();
    // Slots 1..5 (ln1 exists only where vision has a block) + the joint space.
    assert_eq!(rows.len(), 6);
    assert_eq!(rows.iter().map(|r| r["slot"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
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
    for f in ["entropy_vision.png", "entropy_text.png", "distance_scatter.png", "gallery_slot1.png", "gallery_slot5.png"] {
        nontrivial_png(&dir.join("heads").join(f));
    }
    assert!(!dir.join("heads/gallery_slot0.png").exists(), "slot 0 is the conv stem: no attention");
    // Caption-conditioned grounding: three methods over every object of the 12 scenes.
    let rel = std::fs::read_to_string(dir.join("heads/grounding_relevancy.csv")).unwrap();
    let rows: Vec<Vec<&str>> =
        rel.lines().filter(|l| !l.starts_with('#') && !l.starts_with("method")).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["relevancy_all", "relevancy_last", "rollout"]);
    let scenes: Vec<_> = (0..12).map(|i| msclip::data::synth::scene(msclip::data::synthetic_set::EVAL_SEED_OFFSET, i, 64)).collect();
    let objects: usize = scenes.iter().map(|s| s.objects.len()).sum();
    // The chance level is the mean fraction of the 8×8 patch centres inside each box,
    // computed here independently of box_grounding.
    let inside = |b: [u32; 4]| {
        (0..64)
            .filter(|p| {
                let (x, y) = ((p % 8) as f64 * 8.0 + 4.0, (p / 8) as f64 * 8.0 + 4.0);
                x >= b[0] as f64 && x < b[2] as f64 && y >= b[1] as f64 && y < b[3] as f64
            })
            .count() as f64
            / 64.0
    };
    let chance = scenes.iter().flat_map(|s| s.objects.iter().map(|o| inside(o.bbox))).sum::<f64>() / objects as f64;
    for r in &rows {
        let (point, uniform): (f64, f64) = (r[2].parse().unwrap(), r[3].parse().unwrap());
        assert!((uniform - chance).abs() < 1e-12, "{r:?}: uniform {uniform} vs {chance}");
        // Pointing accuracy is a count of hits over the objects.
        let hits = point * objects as f64;
        assert!((hits - hits.round()).abs() < 1e-9, "{r:?}");
        assert_eq!(r[4].parse::<f64>().unwrap() as usize, objects, "{r:?}");
    }
    let (code, _, err) = run(&["heads", "--model", "tiny-msclip-s", "--synthetic", "4", "--out", &d("heads0"), "--gallery-slots", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--gallery-slots") && err.contains("slot 0"), "{err}");
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
    let (code, out, err) =
        run(&["zeroshot", "--model", "tiny-clip", "--folder", &d("folder"), "--templates", &d("templates.txt"), "--out", &d("zs")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n 6 classes 2 templates 2"), "{out}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("zs/zeroshot.json")).unwrap()).unwrap();
    assert_eq!(j["classes"], serde_json::json!(["blue thing", "red thing"]));
    // 6 images, 3 per class: top-1 is a count over 6, and with balanced classes the
    // mean-per-class accuracy equals it.
    let top1 = j["top1"].as_f64().unwrap();
    assert!(((top1 * 6.0) - (top1 * 6.0).round()).abs() < 1e-9, "{top1}");
    assert!((j["mean_per_class"].as_f64().unwrap() - top1).abs() < 1e-12);
    std::fs::write(dir.join("bad.txt"), "a photo\n").unwrap();
    let (code, _, err) = run(&["zeroshot", "--model", "tiny-clip", "--folder", &d("folder"), "--templates", &d("bad.txt")]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.txt") && err.contains("line 1"), "{err}");
    let (code, _, err) = run(&["retrieval", "--model", "tiny-clip", "--synthetic", "16", "--out", &d("ret")]);
    assert_eq!(code, 0, "{err}");
    // The recalls equal those recomputed from the same model's embeddings (`embed`).
    let (code, _, err) = run(&["embed", "--model", "tiny-clip", "--synthetic", "16", "--out", &d("emb")]);
    assert_eq!(code, 0, "{err}");
    let (x, y) =
        (msclip::analysis::npy::read(&dir.join("emb/image.npy")).unwrap(), msclip::analysis::npy::read(&dir.join("emb/text.npy")).unwrap());
    let sim = x.matmul(&y.tr());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ret/retrieval.json")).unwrap()).unwrap();
    for k in [1, 5, 10] {
        let (i2t, t2i) = (msclip::analysis::embedding::recall_at_k(&sim, k), msclip::analysis::embedding::recall_at_k(&sim.tr(), k));
        assert!((j["retrieval"][format!("image_to_text_r{k}")].as_f64().unwrap() - i2t).abs() < 1e-6, "{j}");
        assert!((j["retrieval"][format!("text_to_image_r{k}")].as_f64().unwrap() - t2i).abs() < 1e-6, "{j}");
    }
}

#[test]
fn figures_regenerate_from_recipes() {
    let dir = std::env::temp_dir().join(format!("msclip-figs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let recipes = dir.join("analyses");
    std::fs::create_dir_all(&recipes).unwrap();
    let ck = format!("{}/fixtures/check/ckpt", env!("CARGO_MANIFEST_DIR"));
    // A run directory with eval telemetry for the training-curves recipe.
    let run_dir = dir.join("run-a");
    std::fs::create_dir_all(&run_dir).unwrap();
    let lines: Vec<String> = (1..=3)
        .map(|s| {
            format!(
                r#"{{"step":{},"loss":{},"eval":{{"zero_shot_top1":{},"image_to_text_r1":0.1,"modality_gap":{}}}}}"#,
                s * 10,
                3.0 / s as f64,
                0.1 * s as f64,
                0.5 / s as f64
            )
        })
        .collect();
    std::fs::write(run_dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    // Groups of seeds: two "seeds" of the fixture checkpoint per group (identical weights), and
    // two seeds of telemetry whose zero-shot differs by 0.2 at every step.
    for g in ["grp-a", "grp-b"] {
        for s in [0, 1] {
            std::fs::create_dir_all(dir.join(g)).unwrap();
            std::os::unix::fs::symlink(&ck, dir.join(g).join(format!("seed-{s}"))).unwrap();
        }
    }
    for s in [0, 1] {
        let seed_dir = dir.join("curves-grp").join(format!("seed-{s}"));
        std::fs::create_dir_all(&seed_dir).unwrap();
        let lines: Vec<String> = (1..=3)
            .map(|k| {
                format!(
                    r#"{{"step":{},"loss":1.0,"eval":{{"zero_shot_top1":{},"image_to_text_r1":0.1,"modality_gap":0.5}}}}"#,
                    k * 10,
                    0.1 * k as f64 + 0.2 * s as f64
                )
            })
            .collect();
        std::fs::write(seed_dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    }
    let grp = |g: &str| format!("{}/{g}/seed-{{seed}}", dir.display());
    let two = format!("{}\", \"{}", grp("grp-a"), grp("grp-b"));
    for (name, analysis, runs, extra) in [
        ("comparison", "comparison", ck.clone(), "synthetic = 16\nbootstrap = 50"),
        ("cmp-seeds", "comparison", two.clone(), "synthetic = 16\nseeds = [0, 1]\nbootstrap = 50"),
        ("nmi", "nmi-by-layer", ck.clone(), "synthetic = 16\nbootstrap = 20"),
        ("nmi-seeds", "nmi-by-layer", two.clone(), "synthetic = 16\nseeds = [0, 1]\nbootstrap = 20"),
        ("gap", "gap-by-layer", ck.clone(), "synthetic = 16\nsite = \"ln2\"\nbootstrap = 20"),
        ("heads", "heads-transfer", ck.clone(), "synthetic = 16"),
        ("gallery", "attention-gallery", ck.clone(), "seed = 3"),
        ("curves", "training-curves", run_dir.display().to_string(), ""),
        ("curves-seeds", "training-curves", format!("{}/curves-grp/seed-{{seed}}", dir.display()), "seeds = [0, 1]"),
        ("probe", "probe-table", ck.clone(), "splits = [96, 48, 48]\nc = [1.0, 10.0]"),
        ("zsr", "zeroshot-retrieval", ck.clone(), "synthetic = 16\nbootstrap = 50"),
        ("abl", "ablation", ck.clone(), "synthetic = 8"),
        ("pat", "patching", ck.clone(), "synthetic = 4"),
        ("dec", "decomposition", ck.clone(), "synthetic = 8"),
        ("shh", "shared-heads", ck.clone(), "synthetic = 8"),
        ("tr", "transfer", grp("grp-a"), "synthetic = 8\nseeds = [0, 1]\nworld = \"relations\""),
    ] {
        std::fs::write(
            recipes.join(format!("{name}.toml")),
            format!("analysis = \"{analysis}\"\ntitle = \"{name}\"\nruns = [\"{runs}\"]\n{extra}\n"),
        )
        .unwrap();
    }
    let out = dir.join("figures");
    let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // --index-only rebuilds the same index from the folders, rendering nothing; a recipe
    // whose folder is missing is named.
    let index = std::fs::read_to_string(out.join("README.md")).unwrap();
    std::fs::remove_file(out.join("README.md")).unwrap();
    let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap(), "--index-only"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(out.join("README.md")).unwrap(), index);
    let empty = dir.join("no-figures");
    let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", empty.to_str().unwrap(), "--index-only"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist") && err.contains("render it first"), "{err}");
    for png in [
        "abl/micro-msclip-s/importance_matched_cosine.png",
        "pat/micro-msclip-s/text_colour/resid.png",
        "pat/micro-msclip-s/vision_colour/resid_aligned.png",
        "dec/micro-msclip-s/mean_ablation.png",
        "dec/micro-msclip-s/both_sides.png",
        "heads/micro-msclip-s/entropy_scatter.png",
        "heads/entropy_side_by_side.png",
        "heads/micro-msclip-s/gallery_slot5.png",
        "gallery/micro-msclip-s/attribution.png",
    ] {
        nontrivial_png(&out.join(png));
    }
    // The vision patching map is object-aligned: per slot a (2R+1)² window of offsets from
    // the recoloured object, its centre (the object itself) always held by every pair.
    let aligned = std::fs::read_to_string(out.join("pat/micro-msclip-s/vision_colour/resid_aligned.csv")).unwrap();
    let rows: Vec<Vec<&str>> = aligned.lines().filter(|l| !l.starts_with('#')).skip(1).map(|l| l.split(',').collect()).collect();
    let slots: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0]).collect();
    let per_slot = rows.len() / slots.len();
    let side = (per_slot as f64).sqrt().round() as usize;
    assert!(side % 2 == 1 && side * side * slots.len() == rows.len(), "{} rows for {} slots", rows.len(), slots.len());
    let centres: Vec<f64> = rows.iter().filter(|r| r[1] == "0" && r[2] == "0").map(|r| r[3].parse().unwrap()).collect();
    assert!(centres.len() == slots.len() && centres.iter().all(|v| v.is_finite()), "{centres:?}");
    // Line charts: 900 wide, 440 high plus the caption every one carries (layer curves explain
    // their bands; a single-run training curve says it shows one seed): 12 px plus 17 px per
    // wrapped line (all lines shown).
    for png in [
        "nmi/nmi_by_layer.png",
        "nmi/separation_by_layer.png",
        "nmi-seeds/separation_by_layer.png",
        "gap/gap_by_layer.png",
        "curves/modality_gap.png",
        "curves/zero_shot.png",
        "curves-seeds/zero_shot.png",
    ] {
        let (w, h) = nontrivial_png(&out.join(png));
        assert_eq!(w, 900, "{png}");
        assert!(h >= 440 + 12 + 17 && (h - 440 - 12) % 17 == 0, "{png}: height {h}");
    }
    // Interval panels: one per metric (6 in the comparison, 8 in zero-shot/retrieval), 4 to
    // a row, each row as high as its models plus 70, and the caption: 46 px plus 17 per
    // wrapped line (1 to 4 lines).
    for (png, panels, models) in
        [("comparison/comparison.png", 6u32, 1u32), ("cmp-seeds/comparison.png", 6, 2), ("zsr/zeroshot_retrieval.png", 8, 1)]
    {
        let (w, h) = nontrivial_png(&out.join(png));
        assert_eq!(w, 150 + 230 * 4 + 20, "{png}");
        let caption = h - (34 + panels.div_ceil(4) * (26 * models + 70));
        assert!((46 + 17..=46 + 4 * 17).contains(&caption) && (caption - 46) % 17 == 0, "{png}: height {h}");
    }
    for csv in [
        "abl/importance_agreement.csv",
        "shh/shared_heads.csv",
        "abl/micro-msclip-s/heads.csv",
        "dec/micro-msclip-s/text_span.csv",
        "nmi/nmi_by_layer.csv",
        "gap/gap_by_layer.csv",
        "comparison/comparison.csv",
        "curves/training_curves.csv",
        "probe/probe_table.csv",
        "zsr/zeroshot_retrieval.csv",
    ] {
        assert!(std::fs::read_to_string(out.join(csv)).unwrap().starts_with("# provenance: "), "{csv}");
    }
    // Probe table: both feature choices; retrieval: recall grows with k in both directions.
    let probe_rows: Vec<String> = std::fs::read_to_string(out.join("probe/probe_table.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("micro-msclip-s,"))
        .map(String::from)
        .collect();
    assert_eq!(probe_rows.len(), 2, "{probe_rows:?}");
    assert!(probe_rows[0].contains(",pre,") && probe_rows[1].contains(",post,"));
    // Interval tables: model,params_total,params_shared,metric,seeds,items,mean,lo,hi,delta,...
    let rows = |csv: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(out.join(csv))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("micro-msclip-s,"))
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let num = |v: &str| v.parse::<f64>().unwrap();
    let zsr = rows("zsr/zeroshot_retrieval.csv");
    assert_eq!(zsr.len(), 8);
    // Columns: model, params_total, params_shared, metric, seeds, items, per_seed, mean, lo, hi,
    // crossed_lo, crossed_hi, delta_vs_first, delta_lo, delta_hi, p_value, p_holm.
    let mean = |metric: &str| num(&zsr.iter().find(|r| r[3] == metric).unwrap()[7]);
    assert!(mean("i→t R@1") <= mean("i→t R@5") && mean("i→t R@5") <= mean("i→t R@10"), "{zsr:?}");
    assert!(mean("t→i R@1") <= mean("t→i R@5") && mean("t→i R@5") <= mean("t→i R@10"), "{zsr:?}");
    for r in zsr.iter().chain(&rows("comparison/comparison.csv")) {
        let (m, lo, hi) = (num(&r[7]), num(&r[8]), num(&r[9]));
        assert!(lo <= m + 1e-12 && m <= hi + 1e-12, "{r:?}");
        assert_eq!((r[4].as_str(), r[5].as_str()), ("1", "16"), "{r:?}");
    }
    // Two groups of the same weights: every paired difference is exactly 0 with p = 1 (raw
    // and Holm), both groups report 2 seeds and their per-seed values, and per-item metrics
    // carry the crossed interval.
    let grouped = rows("cmp-seeds/comparison.csv");
    assert_eq!(grouped.len(), 12);
    for r in &grouped[6..] {
        assert_eq!((r[4].as_str(), num(&r[12]), num(&r[15]), num(&r[16])), ("2", 0.0, 1.0, 1.0), "{r:?}");
        assert_eq!(r[6].split(' ').count(), 2, "{r:?}");
    }
    assert!(grouped.iter().any(|r| r[3] == "zero-shot top-1" && num(&r[10]).is_finite() && num(&r[10]) <= num(&r[7])), "{grouped:?}");
    assert!(out.join("cmp-seeds/comparison_delta.png").is_file());
    // The transfer recipe: every seed's analysis and the seed-level summary.
    let summary = std::fs::read_to_string(out.join("tr/transfer_summary.csv")).unwrap();
    assert!(summary.lines().any(|l| l.starts_with("micro-msclip-s,shape,shared slots,2,")), "{summary}");
    assert!(out.join("tr/micro-msclip-s/seed-1/profiles.csv").is_file());
    // Training curves of two seeds: both rows per step in the CSV.
    let curves = std::fs::read_to_string(out.join("curves-seeds/training_curves.csv")).unwrap();
    assert!(curves.contains("curves-grp,0,10,") && curves.contains("curves-grp,1,10,"), "{curves}");
    // NMI keeps its companion: separation rows for every slot, bands around the value.
    let nmi_csv = std::fs::read_to_string(out.join("nmi/nmi_by_layer.csv")).unwrap();
    let sep: Vec<&str> = nmi_csv.lines().filter(|l| l.contains(",separation,")).collect();
    assert_eq!(sep.len(), nmi_csv.lines().filter(|l| l.contains(",nmi,")).count());
    assert!(!sep.is_empty());
    // Recipes honour their fields: the gap-by-layer site and the probe's splits and C grid.
    assert!(std::fs::read_to_string(out.join("gap/gap_by_layer.csv")).unwrap().contains("site ln2"));
    let probe_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("probe/micro-msclip-s/pre/probe.json")).unwrap()).unwrap();
    assert_eq!(probe_json["result"]["n_train"], 96);
    assert_eq!(probe_json["result"]["sweep"].as_array().unwrap().len(), 2);
    let index = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(index.contains("![nmi_by_layer.png](nmi/nmi_by_layer.png)"), "{index}");
    // A recipe naming an unknown analysis, or a field its analysis ignores, is an error
    // naming it — before any recipe runs.
    for (body, want) in [
        ("analysis = \"bogus\"\ntitle = \"x\"\nruns = [\"a\"]\n", "bogus"),
        ("analysis = \"training-curves\"\ntitle = \"x\"\nruns = [\"a\"]\nsynthetic = 5\n", "synthetic"),
        ("analysis = \"probe-table\"\ntitle = \"x\"\nruns = [\"a\"]\nsite = \"ln1\"\n", "site"),
        ("analysis = \"comparison\"\ntitle = \"x\"\nruns = [\"a\"]\nseeds = [0, 1]\n", "{seed}"),
        ("analysis = \"comparison\"\ntitle = \"x\"\nruns = [\"a/seed-{seed}\"]\n", "seeds"),
        ("analysis = \"comparison\"\ntitle = \"x\"\nruns = [\"a/seed-{seed}\"]\nseeds = []\n", "seeds"),
        ("analysis = \"comparison\"\ntitle = \"x\"\nruns = [\"a/seed-{seed}\"]\nseeds = [1, 1]\n", "seeds"),
        ("analysis = \"comparison\"\ntitle = \"x\"\nruns = [\"a\"]\nbootstrap = 5\n", "bootstrap"),
        ("analysis = \"ablation\"\ntitle = \"x\"\nruns = [\"a/seed-{seed}\"]\nseeds = [0]\n", "seeds"),
        // Recipes share the flags' caps (an uncapped recipe once aborted or hung).
        ("analysis = \"ablation\"\ntitle = \"x\"\nruns = [\"a\"]\nsynthetic = 10000000\n", "at most 4096"),
        ("analysis = \"patching\"\ntitle = \"x\"\nruns = [\"a\"]\nsynthetic = 1000000000000\n", "at most 10000"),
    ] {
        std::fs::write(recipes.join("zz.toml"), body).unwrap();
        let t = std::time::Instant::now();
        let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(code, 2);
        assert!(err.contains("zz.toml") && err.contains(want), "{err}");
        // Checked before any recipe runs: far under the seconds the first recipe would take.
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "checked before running");
    }
}

#[test]
fn linear_probe_on_synthetic_classes() {
    let dir = std::env::temp_dir().join(format!("msclip-probe-{}", std::process::id()));
    let d = dir.display().to_string();
    let (code, out, err) = run(&[
        "probe",
        "--model",
        "tiny-clip",
        "--synthetic",
        "--train",
        "96",
        "--val",
        "48",
        "--test",
        "48",
        "--c",
        "1,10",
        "--out",
        &d,
        "--save-features",
        &d,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pre features 128"), "{out}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("probe.json")).unwrap()).unwrap();
    assert_eq!(j["result"]["sweep"].as_array().unwrap().len(), 2);
    assert_eq!(j["result"]["n_test"], 48);
    // 48 balanced classes (chance 1/48 ≈ 0.021): even random tiny-clip features separate
    // colours linearly; measured 0.146, required at least 3× chance.
    let top1 = j["result"]["test_top1"].as_f64().unwrap();
    assert!((3.0 / 48.0..=1.0).contains(&top1), "test top-1 {top1}");
    let saved = msclip::analysis::npy::read(&dir.join("train.npy")).unwrap();
    assert_eq!(saved.size(), [96, 128]);
    // Standardised with the train split's statistics: zero mean, unit (population) variance.
    let mean = saved.mean_dim(0, false, tch::Kind::Float).abs().max().double_value(&[]);
    let sd = (saved.std_dim(0, false, false) - 1.0).abs().max().double_value(&[]);
    assert!(mean < 1e-4 && sd < 1e-3, "mean {mean} sd {sd}");
    assert_eq!(j["standardized"], true);
    let (code, _, err) = run(&["probe", "--model", "tiny-clip", "--synthetic", "--feature", "mid"]);
    assert_eq!(code, 2);
    assert!(err.contains("--feature"), "{err}");
}

/// Paths built from data never leave `--out`: a checkpoint whose model name holds `../` is
/// refused by name, recipe files named `...toml` / `..toml` are refused by name, two runs of
/// one model in a recipe get their own folders, and a recipe that is not a regular file is
/// not opened.
#[test]
fn figures_never_write_outside_out() {
    let dir = std::env::temp_dir().join(format!("msclip-figs-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ck = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/check/ckpt");
    let evil = dir.join("evil-ckpt");
    std::fs::create_dir_all(&evil).unwrap();
    for f in ["model.safetensors", "meta.json"] {
        std::fs::copy(ck.join(f), evil.join(f)).unwrap();
    }
    let meta = std::fs::read_to_string(evil.join("meta.json")).unwrap().replace("\"micro-msclip-s\"", "\"../../escaped\"");
    std::fs::write(evil.join("meta.json"), meta).unwrap();
    let out = dir.join("out/figs");
    let figures = |recipes: &Path| run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let recipe = |runs: &str| format!("analysis = \"attention-gallery\"\ntitle = \"t\"\nruns = [{runs}]\nseed = 1\n");

    let r1 = dir.join("r1");
    std::fs::create_dir_all(&r1).unwrap();
    std::fs::write(r1.join("gal.toml"), recipe(&format!("\"{}\"", evil.display()))).unwrap();
    let (code, _, err) = figures(&r1);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"../../escaped\"") && err.contains("model name"), "{err}");
    assert!(!dir.join("escaped").exists() && !dir.join("out/escaped").exists());

    for stem in ["..", "."] {
        let r = dir.join(format!("r-{}", stem.len()));
        std::fs::create_dir_all(&r).unwrap();
        std::fs::write(r.join(format!("{stem}.toml")), recipe(&format!("\"{}\"", ck.display()))).unwrap();
        let (code, _, err) = figures(&r);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("{stem}.toml")) && err.contains("starts with a dot"), "{err}");
    }
    assert!(!dir.join("out/gal").exists() && !dir.join("out/README.md").exists(), "nothing written next to --out");

    let r2 = dir.join("r2");
    std::fs::create_dir_all(&r2).unwrap();
    std::fs::write(r2.join("gal.toml"), recipe(&format!("\"{}\", \"{}\"", ck.display(), ck.display()))).unwrap();
    let (code, _, err) = figures(&r2);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("micro-msclip-s-2"), "the second folder is named on stderr: {err}");
    for sub in ["micro-msclip-s", "micro-msclip-s-2"] {
        assert!(out.join("gal").join(sub).join("attention.json").is_file(), "{sub}");
    }

    let r3 = dir.join("r3");
    std::fs::create_dir_all(&r3).unwrap();
    let fifo = std::ffi::CString::new(r3.join("pipe.toml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let (code, _, err) = figures(&r3);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pipe.toml") && err.contains("not a regular file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `transfer` on a short tiny-msclip-s run: comparable statistics for every head of both
/// towers, agreement rows for shared and unshared slots with nulls and p-values, relation
/// lifts on two-object scenes, and over training one row per checkpoint (step 0 = the seed's
/// initialisation) with settling steps and sign tests.
#[test]
fn transfer_writes_statistics_nulls_and_the_over_training_table() {
    let dir = std::env::temp_dir().join(format!("msclip-transfer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run_dir = dir.join("run");
    let tc = msclip::train::TrainConfig {
        model: "tiny-msclip-s".into(),
        data_items: 64,
        world: msclip::data::synth::World::Relations,
        steps: 6,
        batch_size: 8,
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_steps: 1,
        grad_clip: 1.0,
        seed: 1,
        save_every: 2,
        keep: 10,
        eval_every: 0,
        eval_items: 16,
        workers: 1,
        ..Default::default()
    };
    msclip::train::train(&tc, &run_dir, &msclip::train::TrainOptions::fresh()).unwrap();
    let ck = run_dir.join("checkpoints/step-00000006");
    let out = dir.join("out");
    let (code, stdout, err) = run(&[
        "transfer",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--synthetic",
        "24",
        "--world",
        "relations",
        "--permutations",
        "200",
        "--run",
        run_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("shared slots") && stdout.contains("settling"), "{stdout}");
    let cfg = msclip::model::ModelConfig::preset("tiny-msclip-s").unwrap();
    let heads = cfg.vision.heads;
    let csv = std::fs::read_to_string(out.join("profiles.csv")).unwrap();
    assert!(csv.starts_with("# provenance: "));
    let rows: Vec<&str> = csv.lines().skip(2).collect();
    let want = (cfg.vision_attention_slots().len() + cfg.text_attention_slots().len()) * heads as usize;
    assert_eq!(rows.len(), want, "{csv}");
    let agree: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("transfer.json")).unwrap()).unwrap();
    let a = agree["agreement"].as_array().unwrap();
    for row in a {
        let p = row["p_value"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0 && row["null_lo"].as_f64().unwrap() <= row["null_hi"].as_f64().unwrap(), "{row}");
    }
    for stat in ["norm_entropy", "special_lift", "locality", "relation_lift", "shape"] {
        assert!(a.iter().any(|r| r["statistic"] == stat && r["scope"] == "shared slots"), "{stat}");
    }
    // Step 0 and the three checkpoints.
    let steps: Vec<i64> = agree["over_training"].as_array().unwrap().iter().map(|c| c["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, vec![0, 2, 4, 6]);
    assert!(!agree["settle_tests"].as_array().unwrap().is_empty());
    for f in ["agreement.png", "offset_shape.png", "scatter_locality.png", "over_training_locality.png", "settle.csv", "relations.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The transfer recipe over seeds (the same run twice): per statistic, each seed's mean
    // (vision − text) settling lead over the shared heads, with its t-test over seeds.
    for s in [0, 1] {
        std::fs::create_dir_all(dir.join("grp")).unwrap();
        std::os::unix::fs::symlink(&run_dir, dir.join("grp").join(format!("seed-{s}"))).unwrap();
    }
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    let recipe = recipes.join("tr.toml");
    std::fs::write(
        &recipe,
        format!(
            "analysis = \"transfer\"\ntitle = \"t\"\nruns = [\"{}\"]\nseeds = [0, 1]\nsynthetic = 24\nworld = \"relations\"\n",
            dir.join("grp/seed-{seed}").display()
        ),
    )
    .unwrap();
    let figs = dir.join("figs");
    let (code, _, err) = run(&["figures", "--recipes", recipe.to_str().unwrap(), "--out", figs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let settle = std::fs::read_to_string(figs.join("tr/transfer_settle.csv")).unwrap();
    assert!(settle.starts_with("# provenance: "), "{settle}");
    let settle_rows: Vec<Vec<&str>> = settle.lines().filter(|l| l.starts_with("tiny-msclip-s,")).map(|l| l.split(',').collect()).collect();
    assert!(!settle_rows.is_empty(), "{settle}");
    for r in &settle_rows {
        let per: Vec<f64> = r[3].split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!((r[2], per.len()), ("2", 2), "{r:?}");
        assert_eq!(per[0], per[1], "the same run twice: {r:?}");
        assert!((r[4].parse::<f64>().unwrap() - per[0]).abs() < 0.051, "{r:?}");
    }
    assert!(std::fs::read_to_string(figs.join("tr/transfer_summary.md")).unwrap().contains("settles first"));
    // Bad settings are errors naming them.
    let (code, _, err) = run(&[
        "transfer",
        "--model",
        "tiny-msclip-s",
        "--synthetic",
        "4",
        "--text-min-query",
        "3",
        "--max-distance",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("max_distance"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// training-curves `contrasts`: per-seed differences of the learning-curve summaries, paired
/// t-tests over seeds and Holm, on telemetry with known differences.
#[test]
fn training_contrasts_are_paired_over_seeds() {
    let dir = std::env::temp_dir().join(format!("msclip-contrasts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // ctl: zero-shot 0.1, 0.2, 0.3 (+0.05·seed) at steps 10, 20, 30; tx: the same + 0.1·(seed+1)
    // at every step; the relation test is 0.5 + 0.01·seed in both (Δ = 0 exactly).
    for (g, lift) in [("ctl", 0.0), ("tx", 0.1)] {
        for s in 0..3 {
            let d = dir.join(g).join(format!("seed-{s}"));
            std::fs::create_dir_all(&d).unwrap();
            let lines: Vec<String> = (1..=3)
                .map(|k| {
                    format!(
                        r#"{{"step":{},"loss":1.0,"eval":{{"zero_shot_top1":{},"image_to_text_r1":0.1,"modality_gap":0.5,"relation_acc":{}}}}}"#,
                        k * 10,
                        0.1 * k as f64 + 0.05 * s as f64 + lift * (s + 1) as f64,
                        0.5 + 0.01 * s as f64
                    )
                })
                .collect();
            std::fs::write(d.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        }
    }
    let recipes = dir.join("analyses");
    std::fs::create_dir_all(&recipes).unwrap();
    let runs = format!("runs = [\"{0}/ctl/seed-{{seed}}\", \"{0}/tx/seed-{{seed}}\"]\nseeds = [0, 1, 2]\n", dir.display());
    let write = |contrasts: &str| {
        std::fs::write(recipes.join("c.toml"), format!("analysis = \"training-curves\"\ntitle = \"c\"\n{runs}contrasts = {contrasts}\n"))
            .unwrap()
    };
    write(r#"[["tx", "ctl"]]"#);
    let out = dir.join("figures");
    let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let csv = std::fs::read_to_string(out.join("c/training_contrasts.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv.lines().filter(|l| l.starts_with("tx,")).map(|l| l.split(',').map(str::to_string).collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let num = |s: &str| s.parse::<f64>().unwrap();
    // Δ per seed 0.1, 0.2, 0.3: mean 0.2, s = 0.1, t = 0.2/(0.1/√3) = 2√3 on 2 df, whose
    // two-sided p is 1 − t/√(t² + 2) = 1 − √(12/14); Holm over 4 tests: 4p, 4p, 1, 1.
    let p = 1.0 - (12.0f64 / 14.0).sqrt();
    for (row, key) in rows.iter().zip(["zero_shot_mean", "zero_shot_final", "relation_mean", "relation_final"]) {
        assert_eq!(row[2], key);
        assert_eq!(row[3], "3");
    }
    for row in &rows[..2] {
        assert!((num(&row[8]) - 0.2).abs() < 1e-9, "{row:?}");
        let half = 4.302652729911275 * 0.1 / 3f64.sqrt();
        assert!((num(&row[9]) - (0.2 - half)).abs() < 1e-6 && (num(&row[10]) - (0.2 + half)).abs() < 1e-6, "{row:?}");
        assert!((num(&row[11]) - p).abs() < 1e-6, "{row:?} vs {p}");
        assert!((num(&row[12]) - 4.0 * p).abs() < 1e-6, "{row:?}");
    }
    assert_eq!(rows[0][4], "0.3000 0.4500 0.6000", "per-seed values of tx");
    for row in &rows[2..] {
        assert!(num(&row[8]).abs() < 1e-12 && num(&row[11]) == 1.0 && num(&row[12]) == 1.0, "{row:?}");
    }
    let md = std::fs::read_to_string(out.join("c/training_contrasts.md")).unwrap();
    assert!(md.contains("Family: the 4 rows") && md.contains("| tx | ctl | zero-shot top-1, mean over the evaluations | 3 |"), "{md}");
    // A contrast naming no group, or a group with itself, is refused before anything runs.
    for (contrasts, want) in
        [(r#"[["tx", "nope"]]"#, "names no group"), (r#"[["tx", "tx"]]"#, "itself"), ("[]", "at least one pair"), (r#"[["tx"]]"#, "")]
    {
        write(contrasts);
        let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("contrasts") && err.contains(want), "{err}");
    }
    // Runs of a pair evaluated at different steps: an error naming both.
    let m = dir.join("ctl/seed-1/metrics.jsonl");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.lines().take(2).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    write(r#"[["tx", "ctl"]]"#);
    let (code, _, err) = run(&["figures", "--recipes", recipes.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("different steps") && err.contains("ctl/seed-1") && err.contains("tx/seed-1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
