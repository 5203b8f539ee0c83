//! `figures`: the declarative recipes in `analyses/*.toml`, each rendered into
//! `figures/<recipe>/` (PNG + SVG + the CSV/JSON behind it) and indexed in
//! `figures/README.md`.
//!
//! A recipe names an analysis, a title and its runs (run directories, whose newest checkpoint
//! is used, or checkpoint directories); the other fields depend on the analysis, and a field
//! the analysis does not use is an error naming it (a recipe never silently ignores a field):
//!
//! | analysis | fields |
//! |---|---|
//! | `nmi-by-layer` | `synthetic` (300), `site` (`ln1`), `seed` |
//! | `gap-by-layer` | `synthetic` (300), `site` (`resid`), `seed` |
//! | `training-curves` | — |
//! | `comparison`, `zeroshot-retrieval` | `synthetic` (300), `seed` |
//! | `probe-table` | `splits` ([2000, 500, 1000]), `c` ([0.01, 0.1, 1, 10, 100]) |
//! | `heads-transfer` | `synthetic` (300), `seed` |
//! | `attention-gallery` | `seed` |
//! | `ablation` | `synthetic` (128 items), `seed` |
//! | `patching` | `synthetic` (32 pairs), `seed` |
//! | `decomposition`, `shared-heads` | `synthetic` (128 items), `seed` |

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::attention::{self, AttentionOptions};
use super::heads::{self, HeadsOptions};
use super::nmi::{self, NmiOptions};
use super::probe::{self, Feature, ProbeData, ProbeOptions};
use super::{provenance, DataOptions};
use crate::analysis::embedding::{centroid_gap, recall_at_k};
use crate::analysis::gap::{gap_report, DEFAULT_UNIFORMITY_MAX};
use crate::checkpoint::ModelSource;
use crate::data::pairs::PairData;
use crate::error::{Error, Result};
use crate::eval::{embed_pairs, evaluate, LayerSpec, Pooling};
use crate::io::{write_atomic, Provenance};
use crate::model::{MsClip, Site};
use crate::plot::{line_chart_png_svg, LineChart};

/// One recipe file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// nmi-by-layer | gap-by-layer | training-curves | comparison | heads-transfer |
    /// attention-gallery | probe-table | zeroshot-retrieval
    pub analysis: String,
    /// Title of the figure.
    pub title: String,
    /// Run directories (their newest checkpoint is used) or checkpoint directories.
    pub runs: Vec<PathBuf>,
    /// Held-out synthetic pairs to analyse.
    #[serde(default)]
    pub synthetic: Option<usize>,
    /// Site for layer-wise analyses.
    #[serde(default)]
    pub site: Option<String>,
    /// Seed of the held-out data (and of fresh initialisations).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Probe: train, validation and test sizes.
    #[serde(default)]
    pub splits: Option<[usize; 3]>,
    /// Probe: the values of C swept.
    #[serde(default)]
    pub c: Option<Vec<f64>>,
}

/// The analyses and the optional fields each uses.
const ANALYSES: [(&str, &[&str]); 12] = [
    ("ablation", &["synthetic", "seed"]),
    ("patching", &["synthetic", "seed"]),
    ("decomposition", &["synthetic", "seed"]),
    ("shared-heads", &["synthetic", "seed"]),
    ("nmi-by-layer", &["synthetic", "site", "seed"]),
    ("gap-by-layer", &["synthetic", "site", "seed"]),
    ("training-curves", &[]),
    ("comparison", &["synthetic", "seed"]),
    ("probe-table", &["splits", "c"]),
    ("zeroshot-retrieval", &["synthetic", "seed"]),
    ("heads-transfer", &["synthetic", "seed"]),
    ("attention-gallery", &["seed"]),
];

impl Recipe {
    /// Reads a recipe; an unknown analysis, a field it does not use, or a value out of its
    /// domain is an error naming the file.
    pub fn read(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r: Recipe = toml::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        r.check().map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        let Some((_, allowed)) = ANALYSES.iter().find(|(a, _)| *a == self.analysis) else {
            let names: Vec<&str> = ANALYSES.iter().map(|(a, _)| *a).collect();
            return Err(Error::config("analysis", &self.analysis, format!("expected one of {}", names.join(", "))));
        };
        let given = [
            ("synthetic", self.synthetic.is_some()),
            ("site", self.site.is_some()),
            ("seed", self.seed.is_some()),
            ("splits", self.splits.is_some()),
            ("c", self.c.is_some()),
        ];
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            return Err(Error::config(*field, "(set)", format!("analysis {} does not use it", self.analysis)));
        }
        if self.synthetic == Some(0) {
            return Err(Error::config("synthetic", 0, "need at least one item"));
        }
        if let Some(s) = &self.site {
            let site = Site::parse(s)?;
            if matches!(site, Site::AttnProbs | Site::AttnLogits) {
                return Err(Error::config("site", s, "layer features come from ln1, attn_out, ln2 or resid"));
            }
        }
        if self.runs.is_empty() {
            return Err(Error::config("runs", "[]", "name at least one run or checkpoint"));
        }
        Ok(())
    }

    fn synthetic(&self) -> usize {
        self.synthetic.unwrap_or(300)
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    fn data(&self) -> DataOptions {
        DataOptions::new(PairData::Synthetic { n: self.synthetic(), seed: self.seed() })
    }

    fn models(&self) -> Result<Vec<ModelSource>> {
        self.runs.iter().map(|p| ModelSource::for_run(p)).collect()
    }
}

/// Renders every `*.toml` recipe in `recipes` into `out/<name>/` and writes `out/README.md`.
/// Every recipe is read and checked before any is run.
pub fn run_all(recipes: &Path, out: &Path) -> Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(recipes)
        .map_err(|e| Error::io(recipes, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Invalid(format!("{}: no *.toml recipes", recipes.display())));
    }
    let parsed: Vec<(String, Recipe)> = files
        .iter()
        .map(|f| Ok((f.file_stem().expect("a file name").to_string_lossy().to_string(), Recipe::read(f)?)))
        .collect::<Result<_>>()?;
    let mut index = String::from("# Figures\n\nRegenerated by `msclip-analyze figures` (the last step of `make demo`) from the recipes in `analyses/`; every CSV/JSON carries a provenance block.\n\n");
    for (name, r) in &parsed {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        eprintln!("recipe {name}: {}", r.analysis);
        let files = run_one(r, &dir)?;
        index.push_str(&format!("## {name}\n\n{} (`analyses/{name}.toml`, analysis `{}`)\n\n", r.title, r.analysis));
        for file in files {
            let sub = dir.join(&file);
            if sub.is_dir() {
                index.push_str(&format!("### {file}\n\n"));
                for key in ["attribution.png", "vision_cls_attention.png", "entropy_scatter.png", "distance_scatter.png", "distance_vision.png", "distance_text.png"] {
                    if sub.join(key).exists() {
                        index.push_str(&format!("![{file}/{key}]({name}/{file}/{key})\n\n"));
                    }
                }
                index.push_str(&format!("- all files: [{name}/{file}/]({name}/{file}/)\n\n"));
            } else if file.ends_with(".png") {
                index.push_str(&format!("![{file}]({name}/{file})\n\n"));
            } else {
                index.push_str(&format!("- [{file}]({name}/{file})\n"));
            }
        }
        index.push('\n');
    }
    write_atomic(&out.join("README.md"), index.as_bytes())?;
    Ok(parsed.len())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort_by_key(|f| (!f.ends_with(".png"), f.clone()));
    v.retain(|f| !f.ends_with(".tmp"));
    v
}

/// Renders one recipe into `dir`; returns the files there.
pub fn run_one(r: &Recipe, dir: &Path) -> Result<Vec<String>> {
    r.check()?;
    match r.analysis.as_str() {
        "nmi-by-layer" | "gap-by-layer" => layer_curves(r, dir)?,
        "training-curves" => training_curves(r, dir)?,
        "comparison" => comparison(r, dir)?,
        "probe-table" => probe_table(r, dir)?,
        "zeroshot-retrieval" => zeroshot_retrieval(r, dir)?,
        "heads-transfer" => {
            let mut all = Vec::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let cfg = model.model.config.clone();
                // One gallery per model (the last attention slot) keeps figures/ small.
                let last = cfg.vision_attention_slots().last().copied();
                let out = heads::run(&model, &r.data(), &HeadsOptions { permutations: 2000, gallery_slots: last.into_iter().collect() })?;
                let sub = dir.join(&cfg.name);
                std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
                out.write(&sub)?;
                all.push((cfg, out.stats));
            }
            heads::write_side_by_side(dir, &all)?;
        }
        "ablation" => {
            let mut csv = String::from("model,metric,scope,heads,spearman,p_value\n");
            let mut md = String::from("| model | scope | heads | ρ (−Δ matched cosine) | p | ρ (−Δ zero-shot) | p |\n|---|---|---:|---:|---:|---:|---:|\n");
            let mut header = String::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let opts = crate::causal::ablate::AblateOptions { items: r.synthetic.unwrap_or(128), seed: r.seed(), reference_seed: r.seed() ^ 0x5EF5_EED, ..Default::default() };
                let out = super::ablate::run(&model, &opts, |_, _| {})?;
                out.write(&sub_dir(dir, &model.model.config.name)?)?;
                let name = &model.model.config.name;
                let ag = &out.ablation.agreement;
                for a in ag {
                    csv.push_str(&format!("{name},{},{},{},{},{}\n", a.metric, a.scope, a.heads, a.spearman, a.p_value));
                }
                for scope in ["shared slots", "unshared slots (null)"] {
                    let get = |metric: &str| ag.iter().find(|a| a.metric == metric && a.scope == scope);
                    if let (Some(c), Some(z)) = (get("matched_cosine"), get("zero_shot_top1")) {
                        md.push_str(&format!("| {name} | {scope} | {} | {:.3} | {:.4} | {:.3} | {:.4} |\n", c.heads, c.spearman, c.p_value, z.spearman, z.p_value));
                    }
                }
                header.push_str(&out.provenance.csv_header());
            }
            write_atomic(&dir.join("importance_agreement.csv"), (header + &csv).as_bytes())?;
            write_atomic(&dir.join("importance_agreement.md"), md.as_bytes())?;
        }
        "patching" => {
            for src in r.models()? {
                let model = src.load(0)?;
                let sub = sub_dir(dir, &model.model.config.name)?;
                for (tower, name) in [(super::patch::Tower::Text, "text_colour"), (super::patch::Tower::Vision, "vision_colour")] {
                    let opts = super::patch::PatchOptions { tower, attribute: crate::causal::patch::Attribute::Colour, pairs: r.synthetic.unwrap_or(32), seed: r.seed() };
                    super::patch::run(&model, &opts)?.write(&sub_dir(&sub, name)?)?;
                }
            }
        }
        "decomposition" | "shared-heads" => {
            let mut csv = String::from("model,shared_heads,mean_subspace_similarity_shared,mean_subspace_similarity_unshared,mean_span_overlap_shared,mean_span_overlap_unshared,mean_cosine_shared,mean_cosine_unshared,image_sum_error,text_sum_error\n");
            let mut md = String::from("| model | shared heads | subspace similarity (shared) | (unshared) | TextSpan overlap (shared) | (unshared) | cos of means (shared) | (unshared) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
            let mut header = String::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let opts = super::decompose::DecomposeOptions { items: r.synthetic.unwrap_or(128), seed: r.seed(), ..Default::default() };
                let out = super::decompose::run(&model, &opts)?;
                if r.analysis == "decomposition" {
                    out.write(&sub_dir(dir, &model.model.config.name)?)?;
                }
                let avg = |shared: bool, f: fn(&super::decompose::BothSides) -> f64| {
                    let v: Vec<f64> = out.both_sides.iter().filter(|s| s.shared == shared).map(f).collect();
                    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
                };
                let shared = out.both_sides.iter().filter(|s| s.shared).count();
                let row = [avg(true, |s| s.subspace_similarity), avg(false, |s| s.subspace_similarity), avg(true, |s| s.span_overlap), avg(false, |s| s.span_overlap), avg(true, |s| s.mean_cosine), avg(false, |s| s.mean_cosine)];
                let name = &model.model.config.name;
                csv.push_str(&format!("{name},{shared},{},{},{}\n", row.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","), out.image_sum_error, out.text_sum_error));
                let f = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.3}") };
                md.push_str(&format!("| {name} | {shared} | {} |\n", row.iter().map(|v| f(*v)).collect::<Vec<_>>().join(" | ")));
                header.push_str(&out.provenance.csv_header());
            }
            write_atomic(&dir.join("shared_heads.csv"), (header + &csv).as_bytes())?;
            write_atomic(&dir.join("shared_heads.md"), md.as_bytes())?;
        }
        "attention-gallery" => {
            for src in r.models()? {
                let model = src.load(r.seed())?;
                let out = attention::run(&model, &AttentionOptions { seed: r.seed(), ..Default::default() })?;
                out.write(&dir.join(&model.model.config.name))?;
            }
        }
        _ => unreachable!("checked above"),
    }
    Ok(listing(dir))
}

fn sub_dir(dir: &Path, name: &str) -> Result<PathBuf> {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
    Ok(sub)
}

fn layer_curves(r: &Recipe, dir: &Path) -> Result<()> {
    let by_gap = r.analysis == "gap-by-layer";
    let site = Site::parse(r.site.as_deref().unwrap_or(if by_gap { "resid" } else { "ln1" }))?;
    let mut series = vec![];
    let mut csv = String::from("model,slot,value\n");
    let mut provs = vec![];
    for src in r.models()? {
        let model = src.load(0)?;
        let name = model.model.config.name.clone();
        let values: Vec<(f64, f64)> = if by_gap {
            // B15: centroid gap of pooled tokens mapped through the frozen heads.
            let (s, _, n) = r.data().open(&model)?;
            let spec = LayerSpec { site, pooling: Pooling::Special, projected: true };
            let f = embed_pairs(&model.model, s.as_ref(), n, 64, &r.data().tokenizer(&model), Some(spec))?;
            let mut v: Vec<(f64, f64)> = f.layers.iter().map(|(s, (a, b))| (*s as f64, centroid_gap(a, b))).collect();
            v.push((model.model.config.text.layers as f64, centroid_gap(&f.image, &f.text)));
            v
        } else {
            let out = nmi::run(&model, &r.data(), &NmiOptions { site, ..Default::default() })?;
            out.layers.iter().map(|x| (x.slot as f64, x.nmi)).collect()
        };
        for (s, v) in &values {
            csv.push_str(&format!("{name},{s},{v}\n"));
        }
        let mut p = provenance(&model, format!("synthetic-heldout:n={}", r.synthetic()), r.seed());
        p.notes.push(format!("site {}{}", site.name(), if by_gap { ", pooled token through the frozen final LN + projection" } else { "" }));
        provs.push(p);
        series.push((name, values));
    }
    let header: String = provs.iter().map(|p| p.csv_header()).collect();
    let stem = if by_gap { "gap_by_layer" } else { "nmi_by_layer" };
    write_atomic(&dir.join(format!("{stem}.csv")), (header + &csv).as_bytes())?;
    let ymax = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(0.0f64, f64::max);
    line_chart_png_svg(&dir.join(stem), &LineChart {
        title: r.title.clone(),
        x_label: "slot (last = joint embedding space)".into(),
        y_label: if by_gap { "centroid gap ‖x̄ − ȳ‖".into() } else { format!("NMI ({})", site.name()) },
        series,
        y_range: (0.0, if by_gap { (ymax * 1.1).max(0.1) } else { 1.05 }),
    })
}

fn training_curves(r: &Recipe, dir: &Path) -> Result<()> {
    let mut gap_series = vec![];
    let mut zs_series = vec![];
    let mut csv = String::from("run,step,loss,zero_shot_top1,image_to_text_r1,modality_gap\n");
    for run in &r.runs {
        let path = run.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let name = run.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| run.display().to_string());
        let (mut g, mut z) = (vec![], vec![]);
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Parse { path: path.clone(), message: format!("line {}: {e}", i + 1) })?;
            if let Some(e) = v.get("eval") {
                let step = v["step"].as_f64().unwrap_or(0.0);
                g.push((step, e["modality_gap"].as_f64().unwrap_or(f64::NAN)));
                z.push((step, e["zero_shot_top1"].as_f64().unwrap_or(f64::NAN)));
                csv.push_str(&format!("{name},{step},{},{},{},{}\n", v["loss"], e["zero_shot_top1"], e["image_to_text_r1"], e["modality_gap"]));
            }
        }
        gap_series.push((name.clone(), g));
        zs_series.push((name, z));
    }
    let mut prov = Provenance::new("runs", "see each run's checkpoints".into(), "synthetic-heldout (training eval)".into(), crate::model::config::Preprocess { mean: [0.0; 3], std: [1.0; 3] }, 0);
    prov.notes.push("values are the eval blocks of each run's metrics.jsonl".into());
    write_atomic(&dir.join("training_curves.csv"), (prov.csv_header() + &csv).as_bytes())?;
    let gmax = gap_series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).fold(0.0f64, f64::max);
    line_chart_png_svg(&dir.join("modality_gap"), &LineChart { title: format!("{} — modality gap", r.title), x_label: "step".into(), y_label: "‖x̄ − ȳ‖".into(), series: gap_series, y_range: (0.0, (gmax * 1.1).max(0.1)) })?;
    line_chart_png_svg(&dir.join("zero_shot"), &LineChart { title: format!("{} — zero-shot top-1", r.title), x_label: "step".into(), y_label: "top-1".into(), series: zs_series, y_range: (0.0, 1.0) })
}

fn comparison(r: &Recipe, dir: &Path) -> Result<()> {
    let mut csv = String::from("model,params_total,params_shared,zero_shot_top1,zero_shot_top5,image_to_text_r1,text_to_image_r1,modality_gap,rmg,margin\n");
    let mut md = String::from("| model | params | shared | zero-shot top-1 | top-5 | R@1 i→t | R@1 t→i | gap | RMG |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut header = String::new();
    for src in r.models()? {
        let model = src.load(0)?;
        let c = MsClip::param_count(&model.vs);
        let e = evaluate(&model.model, r.seed(), r.synthetic())?;
        let (s, data_id, n) = r.data().open(&model)?;
        let f = embed_pairs(&model.model, s.as_ref(), n, 64, &r.data().tokenizer(&model), None)?;
        let g = gap_report(&f.image, &f.text, DEFAULT_UNIFORMITY_MAX)?;
        let name = &model.model.config.name;
        csv.push_str(&format!("{name},{},{},{},{},{},{},{},{},{}\n", c.total, c.shared, e.zero_shot_top1, e.zero_shot_top5, e.image_to_text_r1, e.text_to_image_r1, e.modality_gap, g.rmg, g.margin));
        md.push_str(&format!("| {name} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n", c.total, c.shared, e.zero_shot_top1, e.zero_shot_top5, e.image_to_text_r1, e.text_to_image_r1, e.modality_gap, g.rmg));
        header.push_str(&provenance(&model, data_id, r.seed()).csv_header());
    }
    write_atomic(&dir.join("comparison.csv"), (header + &csv).as_bytes())?;
    write_atomic(&dir.join("comparison.md"), md.as_bytes())
}

fn probe_table(r: &Recipe, dir: &Path) -> Result<()> {
    // Linear probe on the synthetic world's 48 classes, both feature choices.
    let splits = r.splits.unwrap_or([2000, 500, 1000]);
    let cs = r.c.clone().unwrap_or_else(|| vec![0.01, 0.1, 1.0, 10.0, 100.0]);
    let mut csv = String::from("model,feature,best_c,test_top1,test_mean_per_class,n_train,n_val,n_test\n");
    let mut md = String::from("| model | feature | best C | test top-1 | mean-per-class |\n|---|---|---:|---:|---:|\n");
    let mut header = String::new();
    for src in r.models()? {
        let model = src.load(0)?;
        let name = model.model.config.name.clone();
        for feature in [Feature::Pre, Feature::Post] {
            let out = probe::run(&model, &ProbeOptions { data: ProbeData::Synthetic, feature, splits, cs: cs.clone(), standardize: true })?;
            let sub = dir.join(&name).join(feature.name());
            out.write(&sub)?;
            let res = &out.result;
            csv.push_str(&format!("{name},{},{},{},{},{},{},{}\n", feature.name(), res.best_c, res.test_top1, res.test_mean_per_class, res.n_train, res.n_val, res.n_test));
            md.push_str(&format!("| {name} | {} | {} | {:.3} | {:.3} |\n", feature.name(), res.best_c, res.test_top1, res.test_mean_per_class));
            if feature == Feature::Pre {
                let mut prov = provenance(&model, "synthetic-zeroshot-splits:101/202/303".into(), 0);
                prov.notes.push(format!("probe: multinomial logistic regression (L-BFGS), features standardised with train statistics, C swept over {cs:?} on validation; splits {splits:?}"));
                header.push_str(&prov.csv_header());
            }
        }
    }
    write_atomic(&dir.join("probe_table.csv"), (header + &csv).as_bytes())?;
    write_atomic(&dir.join("probe_table.md"), md.as_bytes())
}

fn zeroshot_retrieval(r: &Recipe, dir: &Path) -> Result<()> {
    let mut csv = String::from("model,zero_shot_top1,zero_shot_top5,i2t_r1,i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10\n");
    let mut md = String::from("| model | zero-shot top-1 | top-5 | i→t R@1 | R@5 | R@10 | t→i R@1 | R@5 | R@10 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut header = String::new();
    for src in r.models()? {
        let model = src.load(0)?;
        let e = evaluate(&model.model, r.seed(), r.synthetic())?;
        let (s, data_id, n) = r.data().open(&model)?;
        let f = embed_pairs(&model.model, s.as_ref(), n, 64, &r.data().tokenizer(&model), None)?;
        let sim = f.image.matmul(&f.text.tr());
        let rk: Vec<f64> = [1, 5, 10].iter().map(|&k| recall_at_k(&sim, k)).chain([1, 5, 10].iter().map(|&k| recall_at_k(&sim.tr(), k))).collect();
        let name = &model.model.config.name;
        csv.push_str(&format!("{name},{},{},{}\n", e.zero_shot_top1, e.zero_shot_top5, rk.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")));
        md.push_str(&format!("| {name} | {:.3} | {:.3} | {} |\n", e.zero_shot_top1, e.zero_shot_top5, rk.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" | ")));
        header.push_str(&provenance(&model, data_id, r.seed()).csv_header());
    }
    write_atomic(&dir.join("zeroshot_retrieval.csv"), (header + &csv).as_bytes())?;
    write_atomic(&dir.join("zeroshot_retrieval.md"), md.as_bytes())
}
