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
//! | `nmi-by-layer` | `synthetic` (300), `site` (`ln1`), `seed`, `seeds`, `bootstrap` (100) |
//! | `gap-by-layer` | `synthetic` (300), `site` (`resid`), `seed`, `seeds`, `bootstrap` (100) |
//! | `training-curves` | `seeds`, `contrasts` (paired t-tests of learning-curve summaries between groups) |
//! | `comparison`, `zeroshot-retrieval` | `synthetic` (300), `seed`, `seeds`, `bootstrap` (1000) |
//! | `probe-table` | `splits` ([2000, 500, 1000]), `c` ([0.01, 0.1, 1, 10, 100]) |
//! | `heads-transfer` | `synthetic` (300), `seed` |
//! | `attention-gallery` | `seed`, `explorer` (false: also write the `explore` page) |
//! | `ablation` | `synthetic` (128 items), `seed` |
//! | `patching` | `synthetic` (32 pairs), `seed` |
//! | `decomposition`, `shared-heads` | `synthetic` (128 items), `seed` |
//!
//! `seed` is the held-out data's seed; `seeds` are training seeds: every run then names
//! `{seed}` (`demo-out/runs/tiny-clip/seed-{seed}`, what `msclip-train --seeds 0,1,2` writes)
//! and stands for a group of runs. Tables and layer curves report each statistic with a 95 %
//! interval ([`crate::analysis::stats`]: bootstrap over held-out items, over seeds × items for
//! groups), and tables add the paired difference to the first group with its p-value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::attention::{self, AttentionOptions};
use super::heads::{self, HeadsOptions};
use super::nmi::NmiOptions;
use super::probe::{self, Feature, ProbeData, ProbeOptions};
use super::{provenance, DataOptions};
use crate::analysis::nmi::modality_nmi;
use tch::Tensor;

use crate::analysis::embedding::{centroid_gap, rank_hits, separation};
use crate::analysis::gap::gap_report;
use crate::analysis::stats::{mean_over, Resamples};
use crate::checkpoint::{LoadedModel, ModelSource};
use crate::data::pairs::PairData;
use crate::error::{Error, Result};
use crate::eval::{embed_pairs, evaluate_items, LayerSpec, Pooling};
use crate::io::{write_atomic, CsvOut, Provenance};
use crate::model::{MsClip, Site};
use crate::plot::{line_chart_png_svg, render, IntervalPanels, LineChart};

/// One recipe file. It is read through a private enum with one variant per analysis, so each
/// analysis takes only its own fields (serde refuses any other, naming it).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RecipeFile")]
pub struct Recipe {
    /// What the recipe renders.
    pub analysis: Analysis,
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
    /// Training seeds: every run names `{seed}` (e.g. `demo-out/runs/tiny-clip/seed-{seed}`,
    /// what `msclip-train --seeds` writes) and is expanded once per seed into a group.
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// Bootstrap replicates of the 95 % intervals (tables: 1,000; layer curves: 100).
    #[serde(default)]
    pub bootstrap: Option<usize>,
    /// Which synthetic world the held-out scenes come from (`shapes`, the default, or
    /// `relations`).
    #[serde(default)]
    pub world: Option<crate::data::synth::World>,
    /// attention-gallery: also write the interactive explorer page (`explore`) of each model
    /// next to its PNGs (`<model>/explorer/index.html`).
    #[serde(default)]
    pub explorer: Option<bool>,
    /// training-curves: paired comparisons `[["a", "b"], …]` between groups (named by their
    /// run directory's last component without `{seed}`): per seed, run a's learning-curve
    /// summaries minus run b's, a paired t-test over seeds, Holm over the table
    /// (`training_contrasts.csv/.md`).
    #[serde(default)]
    pub contrasts: Option<Vec<[String; 2]>>,
}

/// Most seeds a recipe may name.
pub const MAX_SEEDS: usize = 64;
/// Fewest bootstrap replicates (percentiles need some).
pub const MIN_BOOTSTRAP: usize = 20;
/// Most bootstrap replicates.
pub const MAX_BOOTSTRAP: usize = 100_000;

/// The analyses a recipe can name (`analysis = "nmi-by-layer"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Analysis {
    /// Head and site ablation.
    Ablation,
    /// Activation patching on minimal pairs.
    Patching,
    /// Direct-effect decomposition.
    Decomposition,
    /// Shared heads' direct effects on both towers.
    SharedHeads,
    /// Language-to-vision transfer of attention.
    Transfer,
    /// Layer-wise NMI and modality separation.
    NmiByLayer,
    /// Layer-wise modality gap.
    GapByLayer,
    /// Loss and held-out curves over training.
    TrainingCurves,
    /// The sharing-spectrum comparison table.
    Comparison,
    /// Linear probes.
    ProbeTable,
    /// Zero-shot and retrieval.
    ZeroshotRetrieval,
    /// Head statistics of both towers side by side.
    HeadsTransfer,
    /// Attention maps, attribution, and optionally the explorer page.
    AttentionGallery,
}

impl Analysis {
    /// The name recipes use.
    pub fn name(self) -> &'static str {
        match self {
            Analysis::Ablation => "ablation",
            Analysis::Patching => "patching",
            Analysis::Decomposition => "decomposition",
            Analysis::SharedHeads => "shared-heads",
            Analysis::Transfer => "transfer",
            Analysis::NmiByLayer => "nmi-by-layer",
            Analysis::GapByLayer => "gap-by-layer",
            Analysis::TrainingCurves => "training-curves",
            Analysis::Comparison => "comparison",
            Analysis::ProbeTable => "probe-table",
            Analysis::ZeroshotRetrieval => "zeroshot-retrieval",
            Analysis::HeadsTransfer => "heads-transfer",
            Analysis::AttentionGallery => "attention-gallery",
        }
    }
}

impl std::fmt::Display for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Recipe {
    fn empty(analysis: Analysis, title: String, runs: Vec<PathBuf>) -> Recipe {
        Recipe {
            analysis,
            title,
            runs,
            synthetic: None,
            site: None,
            seed: None,
            splits: None,
            c: None,
            seeds: None,
            bootstrap: None,
            world: None,
            explorer: None,
            contrasts: None,
        }
    }
}

/// Declares [`RecipeFile`]: one variant per analysis with `title`, `runs` and exactly the
/// optional fields that analysis uses, so serde itself refuses any other field, naming it and
/// the ones allowed.
macro_rules! recipe_file {
    ($($variant:ident { $($field:ident : $ty:ty),* }),* $(,)?) => {
        /// A recipe file as written; `analysis` picks the variant.
        #[derive(Deserialize)]
        #[serde(tag = "analysis", rename_all = "kebab-case", deny_unknown_fields)]
        enum RecipeFile {
            $($variant { title: String, runs: Vec<PathBuf>, $(#[serde(default)] $field: Option<$ty>),* }),*
        }

        impl From<RecipeFile> for Recipe {
            fn from(f: RecipeFile) -> Recipe {
                match f {
                    $(RecipeFile::$variant { title, runs, $($field),* } => Recipe { $($field,)* ..Recipe::empty(Analysis::$variant, title, runs) }),*
                }
            }
        }
    };
}

recipe_file! {
    Ablation { synthetic: usize, seed: u64 },
    Patching { synthetic: usize, seed: u64 },
    Decomposition { synthetic: usize, seed: u64 },
    SharedHeads { synthetic: usize, seed: u64 },
    Transfer { synthetic: usize, seed: u64, seeds: Vec<u64>, world: crate::data::synth::World },
    NmiByLayer { synthetic: usize, site: String, seed: u64, seeds: Vec<u64>, bootstrap: usize, world: crate::data::synth::World },
    GapByLayer { synthetic: usize, site: String, seed: u64, seeds: Vec<u64>, bootstrap: usize, world: crate::data::synth::World },
    TrainingCurves { seeds: Vec<u64>, contrasts: Vec<[String; 2]> },
    Comparison { synthetic: usize, seed: u64, seeds: Vec<u64>, bootstrap: usize },
    ProbeTable { splits: [usize; 3], c: Vec<f64> },
    ZeroshotRetrieval { synthetic: usize, seed: u64, seeds: Vec<u64>, bootstrap: usize },
    HeadsTransfer { synthetic: usize, seed: u64, world: crate::data::synth::World },
    AttentionGallery { seed: u64, explorer: bool },
}

impl Recipe {
    /// Reads a recipe; an unknown analysis, a field it does not use, or a value out of its
    /// domain is an error naming the file.
    pub fn read(path: &Path) -> Result<Recipe> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{}: not a regular file (a recipe is a TOML file)", path.display())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r: Recipe = toml::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        r.check().map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        if self.synthetic == Some(0) {
            return Err(Error::config("synthetic", 0, "need at least one item"));
        }
        if let Some(n) = self.synthetic {
            let cap = crate::limits::recipe_items(self.analysis.name());
            if n > cap {
                return Err(Error::config(
                    "synthetic",
                    n,
                    format!("analysis {} takes at most {cap} items (the same cap as its command's flag)", self.analysis),
                ));
            }
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
        if let Some(seeds) = &self.seeds {
            if seeds.is_empty() || seeds.len() > MAX_SEEDS {
                return Err(Error::config("seeds", format!("{seeds:?}"), format!("name 1 to {MAX_SEEDS} seeds")));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(s) = seeds.iter().find(|s| !seen.insert(**s)) {
                return Err(Error::config("seeds", s, "each seed once"));
            }
        }
        for run in &self.runs {
            let templated = run.to_string_lossy().contains("{seed}");
            if templated != self.seeds.is_some() {
                let why = if templated {
                    "names {seed} but the recipe has no seeds = [...]"
                } else {
                    "has no {seed} in it, but the recipe names seeds (every run of a multi-seed recipe is a group)"
                };
                return Err(Error::config("runs", run.display(), why));
            }
        }
        if let Some(contrasts) = &self.contrasts {
            let labels: Vec<String> = self.runs.iter().map(|r| group_label(r)).collect();
            if self.seeds.as_ref().is_none_or(|s| s.len() < 2) {
                return Err(Error::config(
                    "contrasts",
                    format!("{contrasts:?}"),
                    "a paired t-test over seeds needs seeds = [...] with at least 2 seeds",
                ));
            }
            if contrasts.is_empty() {
                return Err(Error::config("contrasts", "[]", "name at least one pair [\"a\", \"b\"] (or leave contrasts out)"));
            }
            for [a, b] in contrasts {
                for x in [a, b] {
                    if !labels.contains(x) {
                        return Err(Error::config(
                            "contrasts",
                            x,
                            format!("names no group of runs (the groups are {})", labels.join(", ")),
                        ));
                    }
                }
                if a == b {
                    return Err(Error::config("contrasts", a, "compares a group with itself"));
                }
            }
        }
        if let Some(b) = self.bootstrap {
            if !(MIN_BOOTSTRAP..=MAX_BOOTSTRAP).contains(&b) {
                return Err(Error::config("bootstrap", b, format!("expected {MIN_BOOTSTRAP}..={MAX_BOOTSTRAP} replicates")));
            }
        }
        Ok(())
    }

    /// The runs, one group per entry of `runs`: its expansion over `seeds` (or itself).
    pub fn groups(&self) -> Vec<Vec<PathBuf>> {
        self.runs
            .iter()
            .map(|run| match &self.seeds {
                Some(seeds) => seeds.iter().map(|s| PathBuf::from(run.to_string_lossy().replace("{seed}", &s.to_string()))).collect(),
                None => vec![run.clone()],
            })
            .collect()
    }

    /// Each group's models (their newest checkpoints); a group mixing models is an error.
    fn load_groups(&self) -> Result<Vec<Vec<LoadedModel>>> {
        let mut out = Vec::new();
        for group in self.groups() {
            let models: Vec<LoadedModel> = group.iter().map(|p| ModelSource::for_run(p)?.load(0)).collect::<Result<_>>()?;
            if let Some(m) = models.iter().find(|m| m.model.config.name != models[0].model.config.name) {
                return Err(Error::Invalid(format!(
                    "runs {:?}: one group holds {} and {}",
                    group, models[0].model.config.name, m.model.config.name
                )));
            }
            out.push(models);
        }
        Ok(out)
    }

    fn bootstrap(&self, default: usize) -> usize {
        self.bootstrap.unwrap_or(default)
    }

    fn synthetic(&self) -> usize {
        self.synthetic.unwrap_or(300)
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    fn data(&self) -> DataOptions {
        DataOptions::new(PairData::Synthetic { n: self.synthetic(), seed: self.seed(), world: self.world.unwrap_or_default() })
    }

    fn models(&self) -> Result<Vec<ModelSource>> {
        self.runs.iter().map(|p| ModelSource::for_run(p)).collect()
    }
}

/// Renders every `*.toml` recipe in `recipes` into `out/<name>/` and writes `out/README.md`.
/// Every recipe is read and checked before any is run. `recipes` may also be one recipe file:
/// it is rendered into `out/<name>/` and the index is left as it is.
pub fn run_all(recipes: &Path, out: &Path) -> Result<usize> {
    index(recipes, out, true)
}

/// Rewrites `out/README.md` for the recipes in the folder `recipes` from what their output
/// folders hold, rendering nothing (after one recipe file was re-rendered); a recipe whose
/// folder is missing is an error naming it.
pub fn write_index(recipes: &Path, out: &Path) -> Result<usize> {
    if recipes.is_file() {
        return Err(Error::Invalid(format!("--index-only: {} is a file; give the folder of recipes the index covers", recipes.display())));
    }
    index(recipes, out, false)
}

fn index(recipes: &Path, out: &Path, render: bool) -> Result<usize> {
    if recipes.is_file() {
        let stem = recipes.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let name = crate::io::path_component(&stem, &format!("recipe file {}: its name", recipes.display()))?;
        let r = Recipe::read(recipes)?;
        let dir = out.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        eprintln!("recipe {name}: {}", r.analysis);
        run_one(&r, &dir)?;
        return Ok(1);
    }
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
        .map(|f| {
            let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            let name = crate::io::path_component(&stem, &format!("recipe file {}: its name", f.display()))?;
            Ok((name, Recipe::read(f)?))
        })
        .collect::<Result<_>>()?;
    let shown = recipes.display().to_string();
    let shown = shown.trim_end_matches('/');
    let mut index = format!("# Figures\n\nRegenerated by `msclip-analyze figures --recipes {shown}` from the recipes in `{shown}/`; every CSV/JSON carries a provenance block.\n\n");
    for (name, r) in &parsed {
        let dir = out.join(name);
        let files = if render {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            eprintln!("recipe {name}: {}", r.analysis);
            run_one(r, &dir)?
        } else if dir.is_dir() {
            listing(&dir)
        } else {
            return Err(Error::Invalid(format!("recipe {name}: {} does not exist; render it first", dir.display())));
        };
        index.push_str(&format!("## {name}\n\n{} (`{shown}/{name}.toml`, analysis `{}`)\n\n", r.title, r.analysis));
        for file in files {
            let sub = dir.join(&file);
            if sub.is_dir() {
                index.push_str(&format!("### {file}\n\n"));
                for key in [
                    "attribution.png",
                    "vision_cls_attention.png",
                    "entropy_scatter.png",
                    "distance_scatter.png",
                    "distance_vision.png",
                    "distance_text.png",
                ] {
                    if sub.join(key).exists() {
                        index.push_str(&format!("![{file}/{key}]({name}/{file}/{key})\n\n{}", caption_line(&sub.join(key))));
                    }
                }
                if sub.join("explorer/index.html").exists() {
                    index.push_str(&format!(
                        "- interactive: [{name}/{file}/explorer/index.html]({name}/{file}/explorer/index.html) (open from disk)\n"
                    ));
                }
                index.push_str(&format!("- all files: [{name}/{file}/]({name}/{file}/)\n\n"));
            } else if file.ends_with(".png") {
                index.push_str(&format!("![{file}]({name}/{file})\n\n{}", caption_line(&sub)));
            } else {
                index.push_str(&format!("- [{file}]({name}/{file})\n"));
            }
        }
        index.push('\n');
    }
    write_atomic(&out.join("README.md"), index.as_bytes())?;
    Ok(parsed.len())
}

/// The caption a figure carries (from its SVG's `<desc>`), as an index line, or nothing.
fn caption_line(png: &Path) -> String {
    std::fs::read_to_string(png.with_extension("svg"))
        .ok()
        .and_then(|s| crate::plot::svg_caption(&s))
        .map(|c| format!("_{}_\n\n", c.replace('\n', " ")))
        .unwrap_or_default()
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
    // One folder per model, named after it (checked to be a plain name) and never shared.
    let mut subdirs = crate::io::SubDirs::new();
    let mut sub_dir = |name: &str| subdirs.claim(dir, name, "model name (from the checkpoint's meta.json)");
    match r.analysis {
        Analysis::NmiByLayer | Analysis::GapByLayer => layer_curves(r, dir)?,
        Analysis::TrainingCurves => training_curves(r, dir)?,
        Analysis::Transfer => transfer_recipe(r, dir)?,
        Analysis::Comparison => comparison(r, dir)?,
        Analysis::ProbeTable => probe_table(r, dir)?,
        Analysis::ZeroshotRetrieval => zeroshot_retrieval(r, dir)?,
        Analysis::HeadsTransfer => {
            let mut all = Vec::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let cfg = model.model.config.clone();
                // One gallery per model (the last attention slot) keeps figures/ small.
                let last = cfg.vision_attention_slots().last().copied();
                let out = heads::run(&model, &r.data(), &HeadsOptions { permutations: 2000, gallery_slots: last.into_iter().collect() })?;
                out.write(&sub_dir(&cfg.name)?)?;
                all.push((cfg, out.stats));
            }
            heads::write_side_by_side(dir, &all)?;
        }
        Analysis::Ablation => {
            let mut csv = CsvOut::new("", &["model", "metric", "scope", "heads", "spearman", "p_value"]);
            let mut md = String::from(
                "| model | scope | heads | ρ (−Δ matched cosine) | p | ρ (−Δ zero-shot) | p |\n|---|---|---:|---:|---:|---:|---:|\n",
            );
            let mut header = String::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let opts = crate::causal::ablate::AblateOptions {
                    items: r.synthetic.unwrap_or(128),
                    seed: r.seed(),
                    reference_seed: r.seed() ^ 0x05EF_5EED,
                    ..Default::default()
                };
                let out = super::ablate::run(&model, &opts, |_, _| {})?;
                out.write(&sub_dir(&model.model.config.name)?)?;
                let name = &model.model.config.name;
                let ag = &out.ablation.agreement;
                for a in ag {
                    csv.row(&crate::csv_row![name, a.metric, a.scope, a.heads, a.spearman, a.p_value]);
                }
                for scope in ["shared slots", "unshared slots (null)"] {
                    let get = |metric: &str| ag.iter().find(|a| a.metric == metric && a.scope == scope);
                    if let (Some(c), Some(z)) = (get("matched_cosine"), get("zero_shot_top1")) {
                        md.push_str(&format!(
                            "| {name} | {scope} | {} | {:.3} | {} | {:.3} | {} |\n",
                            c.heads,
                            c.spearman,
                            crate::analysis::stats::format_p(c.p_value),
                            z.spearman,
                            crate::analysis::stats::format_p(z.p_value)
                        ));
                    }
                }
                header.push_str(&out.provenance.csv_header());
            }
            csv.write_after(&header, &dir.join("importance_agreement.csv"))?;
            write_atomic(&dir.join("importance_agreement.md"), md.as_bytes())?;
        }
        Analysis::Patching => {
            for src in r.models()? {
                let model = src.load(0)?;
                let sub = sub_dir(&model.model.config.name)?;
                for (tower, name) in [(super::patch::Tower::Text, "text_colour"), (super::patch::Tower::Vision, "vision_colour")] {
                    let opts = super::patch::PatchOptions {
                        tower,
                        attribute: crate::causal::patch::Attribute::Colour,
                        pairs: r.synthetic.unwrap_or(32),
                        seed: r.seed(),
                    };
                    super::patch::run(&model, &opts)?.write(&sub.join(name))?;
                }
            }
        }
        Analysis::Decomposition | Analysis::SharedHeads => {
            let mut csv = CsvOut::new(
                "",
                &[
                    "model",
                    "shared_heads",
                    "mean_subspace_similarity_shared",
                    "mean_subspace_similarity_unshared",
                    "mean_span_overlap_shared",
                    "mean_span_overlap_unshared",
                    "mean_cosine_shared",
                    "mean_cosine_unshared",
                    "image_sum_error",
                    "text_sum_error",
                ],
            );
            let mut md = String::from("| model | shared heads | subspace similarity (shared) | (unshared) | TextSpan overlap (shared) | (unshared) | cos of means (shared) | (unshared) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
            let mut header = String::new();
            for src in r.models()? {
                let model = src.load(0)?;
                let opts = super::decompose::DecomposeOptions { items: r.synthetic.unwrap_or(128), seed: r.seed(), ..Default::default() };
                let out = super::decompose::run(&model, &opts)?;
                if r.analysis == Analysis::Decomposition {
                    out.write(&sub_dir(&model.model.config.name)?)?;
                }
                let avg = |shared: bool, f: fn(&super::decompose::BothSides) -> f64| {
                    let v: Vec<f64> = out.both_sides.iter().filter(|s| s.shared == shared).map(f).collect();
                    if v.is_empty() {
                        f64::NAN
                    } else {
                        v.iter().sum::<f64>() / v.len() as f64
                    }
                };
                let shared = out.both_sides.iter().filter(|s| s.shared).count();
                let row = [
                    avg(true, |s| s.subspace_similarity),
                    avg(false, |s| s.subspace_similarity),
                    avg(true, |s| s.span_overlap),
                    avg(false, |s| s.span_overlap),
                    avg(true, |s| s.mean_cosine),
                    avg(false, |s| s.mean_cosine),
                ];
                let name = &model.model.config.name;
                let mut fields = crate::csv_row![name, shared].to_vec();
                fields.extend(row.iter().map(|v| v.to_string()));
                fields.extend(crate::csv_row![out.image_sum_error, out.text_sum_error]);
                csv.row(&fields);
                let f = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.3}") };
                md.push_str(&format!("| {name} | {shared} | {} |\n", row.iter().map(|v| f(*v)).collect::<Vec<_>>().join(" | ")));
                header.push_str(&out.provenance.csv_header());
            }
            csv.write_after(&header, &dir.join("shared_heads.csv"))?;
            write_atomic(&dir.join("shared_heads.md"), md.as_bytes())?;
        }
        Analysis::AttentionGallery => {
            for src in r.models()? {
                let model = src.load(r.seed())?;
                let out = attention::run(&model, &AttentionOptions { seed: r.seed(), ..Default::default() })?;
                let sub = sub_dir(&model.model.config.name)?;
                out.write(&sub)?;
                if r.explorer == Some(true) {
                    let page = super::explore::run(&model, &super::explore::ExploreOptions { seed: r.seed(), ..Default::default() })?;
                    page.write(&sub.join("explorer"))?;
                }
            }
        }
    }
    Ok(listing(dir))
}

/// One curve's points with their intervals: `(slot, mean, lo, hi)`.
type Curve = Vec<(f64, f64, f64, f64)>;

/// `nmi-by-layer` (NMI with its companion, the modality separation) and `gap-by-layer`:
/// per slot and model group, the statistic on the held-out pairs with a 95 % bootstrap band
/// (over items, or seeds × items), recomputed on every resample.
fn layer_curves(r: &Recipe, dir: &Path) -> Result<()> {
    let by_gap = r.analysis == Analysis::GapByLayer;
    let site = Site::parse(r.site.as_deref().unwrap_or(if by_gap { "resid" } else { "ln1" }))?;
    let b = r.bootstrap(100);
    let nmi_opts = NmiOptions { site, ..Default::default() };
    // (file stem, column) per statistic.
    let stats: &[&str] = if by_gap { &["gap"] } else { &["nmi", "separation"] };
    let mut curves: Vec<Vec<(String, Curve)>> = vec![Vec::new(); stats.len()];
    // Per statistic, per model: (slot, value) of every seed, drawn as dots when seeds > 1.
    let mut seed_dots: Vec<Vec<Vec<(f64, f64)>>> = vec![Vec::new(); stats.len()];
    let mut csv = CsvOut::new("", &["model", "slot", "metric", "seeds", "items", "per_seed", "mean", "lo", "hi"]);
    let mut header = String::new();
    let mut seeds = 1;
    let mut items = 0;
    for models in r.load_groups()? {
        let name = models[0].model.config.name.clone();
        // Per seed: (slot, image features, text features), the joint space last.
        let mut feats: Vec<Vec<(usize, Tensor, Tensor)>> = Vec::new();
        for model in &models {
            let (src, data_id, n) = r.data().open(model)?;
            // B15 (gap): pooled tokens mapped through the frozen final LN + projection.
            let spec = LayerSpec { site, pooling: Pooling::Special, projected: by_gap };
            let f = embed_pairs(&model.model, src.as_ref(), n, 64, &r.data().tokenizer(model), Some(spec))?;
            let mut v: Vec<(usize, Tensor, Tensor)> =
                f.layers.iter().map(|(s, (a, b))| (*s, a.shallow_clone(), b.shallow_clone())).collect();
            v.push((model.model.config.text.layers, f.image.shallow_clone(), f.text.shallow_clone()));
            let mut p = provenance(model, data_id, r.seed());
            p.notes.push(format!(
                "site {}{}",
                site.name(),
                if by_gap { ", pooled token through the frozen final LN + projection" } else { "" }
            ));
            if let Some(meta) = &model.meta {
                p.notes.push(format!("training seed {}, step {}", meta.seed, meta.step));
            }
            header.push_str(&p.csv_header());
            feats.push(v);
        }
        seeds = feats.len();
        items = feats[0][0].1.size()[0] as usize;
        if feats.iter().any(|f| f.len() != feats[0].len() || f[0].1.size()[0] as usize != items) {
            return Err(Error::Invalid(format!("{name}: the runs of a group disagree on slots or items")));
        }
        let res = Resamples::new(seeds, items, b, r.seed());
        for (k, stat_name) in stats.iter().enumerate() {
            let mut curve = Vec::new();
            let mut dots = Vec::new();
            for (j, first) in feats[0].iter().enumerate() {
                let slot = first.0;
                let stat = |s: usize, it: &[usize]| {
                    let (_, x, y) = &feats[s][j];
                    let idx = Tensor::from_slice(&it.iter().map(|&i| i as i64).collect::<Vec<_>>());
                    let (x, y) = (x.index_select(0, &idx), y.index_select(0, &idx));
                    match *stat_name {
                        "gap" => centroid_gap(&x, &y),
                        "separation" => separation(&x, &y),
                        _ => modality_nmi(&x, &y, nmi_opts.k, nmi_opts.restarts, nmi_opts.seed).map(|v| v.0).unwrap_or(f64::NAN),
                    }
                };
                let all: Vec<usize> = (0..items).collect();
                let per_seed: Vec<f64> = (0..seeds).map(|s| stat(s, &all)).collect();
                // Several seeds: t-interval over the per-seed values (each on all items);
                // one run: the item bootstrap.
                let (mean, lo, hi) = if seeds > 1 {
                    let iv = crate::analysis::stats::seed_interval(&per_seed);
                    (iv.mean, iv.lo, iv.hi)
                } else {
                    let iv = res.interval(&stat);
                    (iv.mean, iv.lo, iv.hi)
                };
                let per: Vec<String> = per_seed.iter().map(|v| format!("{v:.6}")).collect();
                csv.row(&crate::csv_row![name, slot, stat_name, seeds, items, per.join(" "), mean, lo, hi]);
                curve.push((slot as f64, mean, lo, hi));
                dots.extend(per_seed.iter().map(|v| (slot as f64, *v)));
            }
            curves[k].push((name.clone(), curve));
            seed_dots[k].push(dots);
        }
    }
    // Models whose curve starts later (MS-CLIP-S: its vision slot 0 is the conv stem, so no
    // slot-0 feature exists for both towers).
    let first_slot = curves[0].iter().filter_map(|(_, c)| c.first().map(|p| p.0)).fold(f64::MAX, f64::min);
    let late: Vec<String> = curves[0].iter().filter(|(_, c)| c.first().is_some_and(|p| p.0 > first_slot)).map(|(n, _)| n.clone()).collect();
    let late_note = if late.is_empty() {
        String::new()
    } else {
        format!(
            " {} start after slot {first_slot}: a conv stem takes the vision tower's first slot, so no feature exists there for both towers.",
            late.join(", ")
        )
    };
    let method = if seeds > 1 {
        format!(
            "Line: mean over {seeds} training seeds (each on the same {items} held-out pairs); bars: Student-t 95 % interval over seeds; dots: the seeds.{late_note}"
        )
    } else {
        format!("Bars: 95 % bootstrap over {items} held-out pairs ({b} replicates).{late_note}")
    };
    let stem = if by_gap { "gap_by_layer" } else { "nmi_by_layer" };
    csv.write_after(&(header + &format!("# {method}\n")), &dir.join(format!("{stem}.csv")))?;
    let chart = |k: usize, y_label: String, y_max: f64, caption: String| LineChart {
        title: r.title.clone(),
        x_label: "slot (last = joint embedding space)".into(),
        y_label,
        series: curves[k].iter().map(|(n, c)| (n.clone(), c.iter().map(|p| (p.0, p.1)).collect())).collect(),
        bands: curves[k].iter().map(|(_, c)| Some(c.iter().map(|p| (p.2, p.3)).collect())).collect(),
        y_range: (0.0, y_max),
        y_log: false,
        x_integer: true,
        caption: Some(caption),
        hlines: vec![],
        dots: seed_dots[k].iter().map(|d| (seeds > 1).then(|| d.clone())).collect(),
    };
    // The axis holds the means, their intervals and every seed's value.
    let top = |k: usize| {
        curves[k]
            .iter()
            .flat_map(|(_, c)| c.iter().map(|p| p.3.max(p.1)))
            .chain(seed_dots[k].iter().flatten().map(|d| d.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
    };
    if by_gap {
        let caption = format!(
            "Centroid gap ‖x̄ − ȳ‖ of the pooled tokens at {} mapped through the frozen final LayerNorm and projection into the joint space; {method}",
            site.name()
        );
        return line_chart_png_svg(&dir.join(stem), &chart(0, "centroid gap ‖x̄ − ȳ‖".into(), (top(0) * 1.1).max(0.1), caption));
    }
    // How many slots have NMI ≈ 1 for every model: then NMI cannot rank them.
    let n_slots = curves[0].iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let saturated = (0..n_slots).filter(|&j| curves[0].iter().all(|(_, c)| c.get(j).is_some_and(|p| p.1 >= 0.99))).count();
    // NMI lives in [0, 1]; a t-interval over seeds can cross either end (one seed far from
    // the rest). The drawn bar stops at the range; the CSV keeps the interval as computed.
    let clipped = curves[0].iter().flat_map(|(_, c)| c.iter()).any(|p| p.2 < 0.0 || p.3 > 1.0);
    let clip_note =
        if clipped { " Bars that cross NMI's range are drawn up to 0 or 1 (the CSV keeps the interval as computed)." } else { "" };
    let nmi_caption = format!(
        "NMI of 2-means clusters vs modality ({}): 1 = the modalities form separate clusters. {saturated} of {n_slots} slots are saturated (NMI ≥ 0.99 for every model), where NMI cannot tell models apart; separation_by_layer.png, beside it, measures how far apart the clusters are. {method}{clip_note}",
        site.name()
    );
    // The recipe's title names the model set; each figure names its measure.
    let base = chart(0, format!("NMI ({})", site.name()), 1.05, nmi_caption);
    let nmi = LineChart {
        title: format!("{}: NMI of 2-means clusters vs modality", r.title),
        bands: base.bands.iter().map(|b| b.as_ref().map(|b| b.iter().map(|&(lo, hi)| (lo.max(0.0), hi.min(1.0))).collect())).collect(),
        ..base
    };
    line_chart_png_svg(&dir.join(stem), &nmi)?;
    let sep_caption = format!(
        "Companion of NMI, which saturates once the modalities are separable: the centroid gap in units of the within-modality spread, ‖x̄ − ȳ‖ / √(½(E‖x − x̄‖² + E‖y − ȳ‖²)) at {}; it keeps growing with the distance, so it ranks models where NMI is 1. {method}",
        site.name()
    );
    // Log scale: the embedding layer's separation is tens of spreads, the joint space's a
    // fraction of one; a linear axis flattens every slot in between.
    let bottom = curves[1]
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.2.min(p.1)))
        .chain(seed_dots[1].iter().flatten().map(|d| d.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(f64::MAX, f64::min);
    let bottom = if bottom < f64::MAX { bottom * 0.7 } else { 0.01 };
    let sep = LineChart {
        title: format!("{}: separation (gap / within-modality spread)", r.title),
        y_log: true,
        y_range: (bottom, (top(1) * 1.4).max(bottom * 10.0)),
        ..chart(1, "gap / within-modality spread (log scale)".into(), 1.0, sep_caption)
    };
    line_chart_png_svg(&dir.join("separation_by_layer"), &sep)
}

/// A group's label: the last component of its run template that is not the seed
/// (`demo-out/runs/tiny-clip/seed-{seed}` → `tiny-clip`).
fn group_label(run: &Path) -> String {
    run.components()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .find(|c| !c.contains("{seed}") && !c.is_empty() && c != "." && c != "..")
        .unwrap_or_else(|| run.display().to_string())
}

/// One run's held-out evaluations: step → [zero-shot top-1, relation test].
struct EvalCurve {
    run: PathBuf,
    evals: std::collections::BTreeMap<i64, [Option<f64>; 2]>,
}

/// The learning-curve summaries a contrast compares: (key, label, value of one run).
const CURVE_SUMMARIES: [(&str, &str); 4] = [
    ("zero_shot_mean", "zero-shot top-1, mean over the evaluations"),
    ("zero_shot_final", "zero-shot top-1 at the last evaluation"),
    ("relation_mean", "relation test, mean over the evaluations"),
    ("relation_final", "relation test at the last evaluation"),
];

fn curve_summary(c: &EvalCurve, key: &str) -> Option<f64> {
    let col = |i: usize| c.evals.values().map(move |v| v[i]).collect::<Option<Vec<f64>>>();
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    match key {
        "zero_shot_mean" => col(0).and_then(mean),
        "zero_shot_final" => c.evals.values().last().and_then(|v| v[0]),
        "relation_mean" => col(1).and_then(mean),
        "relation_final" => c.evals.values().last().and_then(|v| v[1]),
        _ => None,
    }
}

/// `training_contrasts.csv/.md`: for each contrast `[a, b]` and learning-curve summary, the
/// per-seed difference a − b (seed s of a against seed s of b: the same fresh seed, so the
/// pair differs only in what a changes), its mean with a Student-t 95 % interval over seeds,
/// a two-sided paired t-test of "no difference", and Holm-adjusted p-values over the table.
/// The two runs of a pair must have evaluated at the same steps.
fn training_contrasts(contrasts: &[[String; 2]], curves: &[(String, Vec<EvalCurve>)], header: &str, dir: &Path) -> Result<()> {
    use crate::analysis::stats::{format_p, holm, paired_t};
    let group = |l: &str| curves.iter().find(|(g, _)| g == l).map(|(_, c)| c);
    let mut rows = Vec::new();
    for [a, b] in contrasts {
        let (Some(ra), Some(rb)) = (group(a), group(b)) else {
            return Err(Error::config("contrasts", format!("{a} vs {b}"), "names no group of runs"));
        };
        for (x, y) in ra.iter().zip(rb) {
            if x.evals.keys().ne(y.evals.keys()) {
                return Err(Error::Invalid(format!(
                    "contrast {a} vs {b}: {} and {} evaluated at different steps (train both with the same steps and eval_every)",
                    x.run.display(),
                    y.run.display()
                )));
            }
        }
        for (key, what) in CURVE_SUMMARIES {
            let va: Option<Vec<f64>> = ra.iter().map(|c| curve_summary(c, key)).collect();
            let vb: Option<Vec<f64>> = rb.iter().map(|c| curve_summary(c, key)).collect();
            let (Some(va), Some(vb)) = (va, vb) else { continue };
            let t = paired_t(&va, &vb);
            rows.push((a.clone(), b.clone(), key, what, va, vb, t));
        }
    }
    let adj = holm(&rows.iter().map(|r| if r.6.p_value.is_finite() { r.6.p_value } else { 1.0 }).collect::<Vec<_>>());
    let mut w = csv::WriterBuilder::new().from_writer(header.as_bytes().to_vec());
    let e = |e: csv::Error| Error::Invalid(format!("training_contrasts.csv: {e}"));
    w.write_record([
        "a",
        "b",
        "summary",
        "seeds",
        "per_seed_a",
        "per_seed_b",
        "mean_a",
        "mean_b",
        "mean_delta",
        "t_lo",
        "t_hi",
        "p_paired_t",
        "p_holm",
    ])
    .map_err(e)?;
    let mut md = format!(
        "Family: the {} rows of this table (Holm). Δ = a − b per seed (seed s of a against seed s of b: the same training seed, so the same data order, and the same initialisation where the models share a layout, apart from what a transplants); interval: mean ± t₀.₉₇₅,n−1·s/√n over seeds; p: two-sided paired t-test of Δ = 0 over seeds.\n\n| a | b | summary | seeds | mean a | mean b | Δ [95 % t-interval] | p | p (Holm) |\n|---|---|---|---:|---:|---:|---|---:|---:|\n",
        rows.len()
    );
    let join = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(" ");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for ((a, b, key, what, va, vb, t), h) in rows.iter().zip(&adj) {
        let d = &t.delta;
        w.write_record([
            a.clone(),
            b.clone(),
            key.to_string(),
            va.len().to_string(),
            join(va),
            join(vb),
            mean(va).to_string(),
            mean(vb).to_string(),
            d.mean.to_string(),
            d.lo.to_string(),
            d.hi.to_string(),
            t.p_value.to_string(),
            h.to_string(),
        ])
        .map_err(e)?;
        let ci = if d.lo.is_finite() { format!("{:+.3} [{:+.3}, {:+.3}]", d.mean, d.lo, d.hi) } else { format!("{:+.3}", d.mean) };
        md.push_str(&format!(
            "| {a} | {b} | {what} | {} | {:.3} | {:.3} | {ci} | {} | {} |\n",
            va.len(),
            mean(va),
            mean(vb),
            format_p(t.p_value),
            format_p(*h)
        ));
    }
    let bytes = w.into_inner().map_err(|e| Error::Invalid(format!("training_contrasts.csv: {e}")))?;
    write_atomic(&dir.join("training_contrasts.csv"), &bytes)?;
    write_atomic(&dir.join("training_contrasts.md"), md.as_bytes())
}

/// `training-curves`: modality gap and zero-shot top-1 over steps from each run's
/// `metrics.jsonl`; a group of seeds is drawn as its mean with the min–max range over seeds.
fn training_curves(r: &Recipe, dir: &Path) -> Result<()> {
    // [metric][group] = (label, step → values over seeds)
    type SeedCurves = Vec<(String, std::collections::BTreeMap<i64, Vec<f64>>)>;
    let mut per: [SeedCurves; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut csv = CsvOut::new("", &["run", "seed", "step", "loss", "zero_shot_top1", "image_to_text_r1", "modality_gap", "relation_acc"]);
    let mut seeds = 1;
    // [group] = (label, per seed: (run, step → [zero-shot top-1, relation test]))
    let mut curves: Vec<(String, Vec<EvalCurve>)> = Vec::new();
    for (template, group) in r.runs.iter().zip(r.groups()) {
        let label = group_label(template);
        seeds = group.len();
        let mut maps = [std::collections::BTreeMap::new(), std::collections::BTreeMap::new(), std::collections::BTreeMap::new()];
        let mut runs_of_group = Vec::new();
        for (si, run) in group.iter().enumerate() {
            let mut curve = EvalCurve { run: run.clone(), evals: std::collections::BTreeMap::new() };
            let seed = r.seeds.as_ref().map(|s| s[si].to_string()).unwrap_or_default();
            let path = run.join("metrics.jsonl");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            for (i, line) in text.lines().enumerate() {
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|e| Error::Parse { path: path.clone(), message: format!("line {}: {e}", i + 1) })?;
                let Some(e) = v.get("eval") else { continue };
                let step = v["step"].as_i64().ok_or_else(|| Error::Parse {
                    path: path.clone(),
                    message: format!("line {}: an eval record without an integer step", i + 1),
                })?;
                let relation = e.get("relation_acc").and_then(|x| x.as_f64()).map_or(String::new(), |x| x.to_string());
                csv.row(&crate::csv_row![
                    label,
                    seed,
                    step,
                    v["loss"],
                    e["zero_shot_top1"],
                    e["image_to_text_r1"],
                    e["modality_gap"],
                    relation
                ]);
                for (k, key) in ["modality_gap", "zero_shot_top1", "relation_acc"].iter().enumerate() {
                    if let Some(x) = e.get(*key).and_then(|x| x.as_f64()) {
                        maps[k].entry(step).or_insert_with(Vec::new).push(x);
                    }
                }
                let get = |key: &str| e.get(key).and_then(|x| x.as_f64());
                curve.evals.insert(step, [get("zero_shot_top1"), get("relation_acc")]);
            }
            runs_of_group.push(curve);
        }
        curves.push((label.clone(), runs_of_group));
        if maps[0].is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no evaluation records in metrics.jsonl (train with eval_every > 0)",
                group.first().map_or(String::new(), |p| p.display().to_string())
            )));
        }
        let [g, z, rel] = maps;
        per[0].push((label.clone(), g));
        per[1].push((label.clone(), z));
        per[2].push((label, rel));
    }
    let mut prov = Provenance::new(
        "runs",
        "see each run's checkpoints".into(),
        "synthetic-heldout (training eval)".into(),
        crate::model::config::Preprocess { mean: [0.0; 3], std: [1.0; 3] },
        0,
    );
    prov.notes.push("values are the eval blocks of each run's metrics.jsonl".into());
    if seeds > 1 {
        prov.notes.push(format!("groups of {seeds} seeds: the figures draw the mean and its Student-t 95 % interval over seeds"));
    }
    csv.write_after(&prov.csv_header(), &dir.join("training_curves.csv"))?;
    if let Some(contrasts) = &r.contrasts {
        training_contrasts(contrasts, &curves, &prov.csv_header(), dir)?;
    }
    let caption = Some(if seeds > 1 {
        format!("Line: mean over {seeds} training seeds; bars: Student-t 95 % interval over the seeds at each evaluation; dots: the seeds (held-out synthetic data).")
    } else {
        "One training run per model, evaluated on held-out synthetic data at each evaluation step of its metrics.jsonl; one seed, so no seed-to-seed spread is shown (make study trains 8).".to_string()
    });
    // (file stem, y label, what, chance level and its label)
    for (k, (stem, y_label, what, chance_line)) in [
        ("modality_gap", "‖x̄ − ȳ‖", "modality gap", None),
        ("zero_shot", "top-1", "zero-shot top-1", Some((1.0 / 48.0, "chance (48 classes)"))),
        ("relation_acc", "share of scenes (chance 0.5)", "relation test", Some((0.5, "chance"))),
    ]
    .iter()
    .enumerate()
    {
        if per[k].iter().all(|(_, m)| m.is_empty()) {
            continue;
        }
        let series: Vec<(String, Vec<(f64, f64)>)> = per[k]
            .iter()
            .map(|(n, m)| (n.clone(), m.iter().map(|(s, v)| (*s as f64, v.iter().sum::<f64>() / v.len() as f64)).collect()))
            .collect();
        let bands: Vec<Option<Vec<(f64, f64)>>> = per[k]
            .iter()
            .map(|(_, m)| {
                (seeds > 1).then(|| {
                    m.values()
                        .map(|v| {
                            let iv = crate::analysis::stats::seed_interval(v);
                            (iv.lo, iv.hi)
                        })
                        .collect()
                })
            })
            .collect();
        let dots: Vec<Option<Vec<(f64, f64)>>> = per[k]
            .iter()
            .map(|(_, m)| (seeds > 1).then(|| m.iter().flat_map(|(s, v)| v.iter().map(move |y| (*s as f64, *y))).collect()))
            .collect();
        // The axis fits the data (means, intervals, seeds) and the chance line, within the
        // metric's domain: a 0–1 axis flattened early zero-shot curves into its bottom fifth.
        let chance = chance_line.map(|c| c.0);
        let drawn: Vec<f64> = per[k]
            .iter()
            .flat_map(|(_, m)| m.values().flatten().copied())
            .chain(bands.iter().flatten().flatten().flat_map(|(lo, hi)| [*lo, *hi]))
            .chain(chance)
            .filter(|v| v.is_finite())
            .collect();
        let (lo, hi) = drawn.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        let pad = 0.06 * (hi - lo).max(0.02);
        let y_range = match *stem {
            "modality_gap" => (0.0, (hi + pad).max(0.1)),
            "zero_shot" => (0.0, (hi + pad).min(1.0)),
            // The relation test spans at least chance ± 0.15: scores that only wander around
            // chance (a model that has not learned it) must not be magnified into a pattern.
            _ => ((lo - pad).clamp(0.0, 0.35), (hi + pad).clamp(0.65, 1.0)),
        };
        line_chart_png_svg(
            &dir.join(stem),
            &LineChart {
                title: format!("{} — {what}", r.title),
                x_label: "step".into(),
                y_label: y_label.to_string(),
                series,
                bands,
                y_range,
                y_log: false,
                x_integer: true,
                caption: caption.clone(),
                dots,
                hlines: chance_line.iter().map(|(v, l)| (*v, l.to_string())).collect(),
            },
        )?;
    }
    Ok(())
}

/// One metric of an interval table.
#[derive(Clone, Copy)]
enum Metric {
    /// The mean of a per-item 0/1 vector (index into [`SeedItems::hits`]).
    Hits(usize),
    /// Centroid modality gap of the joint embeddings, recomputed per resample.
    Gap,
    /// Relative modality gap (Schrodi et al. 2025), recomputed per resample.
    Rmg,
}

/// What one run contributes to a table: per-item hits and the joint embeddings.
struct SeedItems {
    hits: Vec<Vec<f64>>,
    image: Tensor,
    text: Tensor,
}

impl SeedItems {
    fn stat(&self, m: Metric, items: &[usize]) -> f64 {
        let sel = || {
            let idx = Tensor::from_slice(&items.iter().map(|&i| i as i64).collect::<Vec<_>>());
            (self.image.index_select(0, &idx), self.text.index_select(0, &idx))
        };
        match m {
            Metric::Hits(k) => mean_over(&self.hits[k], items),
            Metric::Gap => {
                let (a, b) = sel();
                centroid_gap(&a, &b)
            }
            // Uniformity is not read: 3 items keep its O(n²) part out of every resample.
            Metric::Rmg => {
                let (a, b) = sel();
                gap_report(&a, &b, 3).map(|g| g.rmg).unwrap_or(f64::NAN)
            }
        }
    }
}

/// The comparison tables (`comparison`, `zeroshot-retrieval`), seed-level inference first.
///
/// Several seeds per model: each metric's per-seed values (each on all held-out items), their
/// mean with a Student-t 95 % interval over seeds, and for per-item metrics (accuracies,
/// recalls) the crossed seeds × items interval as well (the same items score every seed);
/// Δ against the first group is a paired t-test over seeds (seed s against seed s), with
/// Holm-adjusted p-values over the table's family (every Δ test of the table). One run per
/// model: the item bootstrap interval and a paired bootstrap test on the same items (no
/// seed-level inference is possible, and the table says so). Writes `<stem>.csv`,
/// `<stem>.md`, the interval figure `<stem>.png/.svg` (per-seed dots) and the Δ figure
/// `<stem>_delta.png/.svg` (zero line).
fn interval_table(r: &Recipe, dir: &Path, stem: &str, retrieval_ks: &[i64], metrics: &[(&str, Metric)]) -> Result<()> {
    use crate::analysis::stats::{crossed, format_p as fmt_p, holm, p_stated, paired_t, seed_interval};
    let n = r.synthetic();
    let b = r.bootstrap(1000);
    let groups = r.load_groups()?;
    let mut names = Vec::new();
    let mut params = Vec::new();
    let mut runs: Vec<Vec<SeedItems>> = Vec::new();
    let mut header = String::new();
    for models in &groups {
        let mut per_seed = Vec::new();
        for model in models {
            let e = evaluate_items(&model.model, r.seed(), n)?;
            let sim = e.image.matmul(&e.text.tr());
            let mut hits = vec![e.zero_shot_hit.clone(), e.zero_shot_top5_hit.clone()];
            for &k in retrieval_ks {
                hits.push(rank_hits(&sim, k));
            }
            for &k in retrieval_ks {
                hits.push(rank_hits(&sim.tr(), k));
            }
            per_seed.push(SeedItems { hits, image: e.image, text: e.text });
            let mut p = provenance(model, format!("synthetic-heldout:n={n},seed={}", r.seed()), r.seed());
            if let Some(meta) = &model.meta {
                p.notes.push(format!("training seed {}, step {}", meta.seed, meta.step));
            }
            header.push_str(&p.csv_header());
        }
        let c = MsClip::param_count(&models[0].vs);
        names.push(models[0].model.config.name.clone());
        params.push((c.total, c.shared));
        runs.push(per_seed);
    }
    let seeds = runs[0].len();
    let all: Vec<usize> = (0..n).collect();
    let res = Resamples::new(seeds, n, b, r.seed());
    let method = if seeds > 1 {
        format!("{seeds} training seeds per model, each scored on the same {n} held-out items: mean over seeds with its Student-t 95 % interval (per-seed values in the CSV); Δ: paired t-test over seeds against {}, Holm-adjusted over the table's Δ tests", names[0])
    } else {
        format!("One run per model (no seed-level inference): intervals from a bootstrap over {n} held-out items ({b} replicates); Δ: paired bootstrap against {} on the same items, Holm-adjusted over the table's Δ tests", names[0])
    };
    struct Cell {
        values: Vec<f64>,
        mean: f64,
        lo: f64,
        hi: f64,
        crossed: Option<(f64, f64)>,
        delta: Option<(f64, f64, f64, f64, Vec<f64>)>,
    }
    let mut cells: Vec<Vec<Cell>> = Vec::new();
    for g in 0..names.len() {
        let mut row = Vec::new();
        for (_, metric) in metrics {
            let values: Vec<f64> = runs[g].iter().map(|s| s.stat(*metric, &all)).collect();
            let hits_of = |grp: usize| -> Option<Vec<Vec<f64>>> {
                match metric {
                    Metric::Hits(k) => Some(runs[grp].iter().map(|s| s.hits[*k].clone()).collect()),
                    _ => None,
                }
            };
            let (mean, lo, hi, crossed_iv, delta);
            if seeds > 1 {
                let iv = seed_interval(&values);
                (mean, lo, hi) = (iv.mean, iv.lo, iv.hi);
                crossed_iv = hits_of(g).map(|y| {
                    let c = crossed(&y);
                    (c.lo, c.hi)
                });
                delta = (g > 0).then(|| {
                    let base: Vec<f64> = runs[0].iter().map(|s| s.stat(*metric, &all)).collect();
                    let t = paired_t(&values, &base);
                    (t.delta.mean, t.delta.lo, t.delta.hi, t.p_value, t.delta.values.clone())
                });
            } else {
                let stat = |s: usize, it: &[usize]| runs[g][s].stat(*metric, it);
                let iv = res.interval(&stat);
                (mean, lo, hi) = (iv.mean, iv.lo, iv.hi);
                crossed_iv = None;
                delta = (g > 0).then(|| {
                    let p = res.paired(&stat, &|s, it| runs[0][s].stat(*metric, it));
                    (p.delta.mean, p.delta.lo, p.delta.hi, p.p_value, vec![p.delta.mean])
                });
            }
            row.push(Cell { values, mean, lo, hi, crossed: crossed_iv, delta });
        }
        cells.push(row);
    }
    // Holm over every Δ test of the table.
    let raw: Vec<f64> = cells.iter().flatten().filter_map(|c| c.delta.as_ref().map(|d| if d.3.is_finite() { d.3 } else { 1.0 })).collect();
    let mut adj = holm(&raw).into_iter();
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    let ce = |e: csv::Error| Error::Invalid(format!("{stem}.csv: {e}"));
    w.write_record([
        "model",
        "params_total",
        "params_shared",
        "metric",
        "seeds",
        "items",
        "per_seed",
        "mean",
        "lo",
        "hi",
        "crossed_lo",
        "crossed_hi",
        "delta_vs_first",
        "delta_lo",
        "delta_hi",
        "p_value",
        "p_holm",
    ])
    .map_err(ce)?;
    let mut md = format!("{method}. Family for Holm: the {} Δ tests of this table.\n\n| model | params | shared |", raw.len());
    for (m, _) in metrics {
        md.push_str(&format!(" {m} |"));
    }
    md.push_str(&format!("\n|---|---:|---:|{}\n", "---:|".repeat(metrics.len())));
    let mut delta_md = format!(
        "\n| Δ vs {} |{}\n|---|{}\n",
        names[0],
        metrics.iter().map(|(m, _)| format!(" {m} |")).collect::<String>(),
        "---:|".repeat(metrics.len())
    );
    let mut panels: Vec<crate::plot::IntervalPanel> = metrics.iter().map(|(m, _)| (m.to_string(), Vec::new())).collect();
    let mut dots: Vec<Vec<Vec<f64>>> = vec![Vec::new(); metrics.len()];
    let mut delta_panels: Vec<crate::plot::IntervalPanel> = metrics.iter().map(|(m, _)| (format!("Δ {m}"), Vec::new())).collect();
    let mut delta_dots: Vec<Vec<Vec<f64>>> = vec![Vec::new(); metrics.len()];
    for (g, name) in names.iter().enumerate() {
        md.push_str(&format!("| {name} | {} | {} |", params[g].0, params[g].1));
        if g > 0 {
            delta_md.push_str(&format!("| {name} |"));
        }
        for (j, ((label, _), c)) in metrics.iter().zip(&cells[g]).enumerate() {
            let per: Vec<String> = c.values.iter().map(|v| format!("{v:.6}")).collect();
            let (d, dlo, dhi, p) = c.delta.as_ref().map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN), |d| (d.0, d.1, d.2, d.3));
            let ph = if c.delta.is_some() { adj.next().unwrap_or(f64::NAN) } else { f64::NAN };
            let (clo, chi) = c.crossed.unwrap_or((f64::NAN, f64::NAN));
            w.write_record([
                name.clone(),
                params[g].0.to_string(),
                params[g].1.to_string(),
                label.to_string(),
                seeds.to_string(),
                n.to_string(),
                per.join(" "),
                c.mean.to_string(),
                c.lo.to_string(),
                c.hi.to_string(),
                clo.to_string(),
                chi.to_string(),
                d.to_string(),
                dlo.to_string(),
                dhi.to_string(),
                p.to_string(),
                ph.to_string(),
            ])
            .map_err(ce)?;
            md.push_str(&format!(" {:.3} [{:.3}, {:.3}] |", c.mean, c.lo, c.hi));
            if g > 0 {
                delta_md.push_str(&format!(" {d:+.3} [{dlo:+.3}, {dhi:+.3}] {} (Holm {}) |", p_stated(p), fmt_p(ph)));
                delta_panels[j].1.push((d, dlo, dhi));
                delta_dots[j].push(c.delta.as_ref().map(|d| d.4.clone()).unwrap_or_default());
            }
            panels[j].1.push((c.mean, c.lo, c.hi));
            dots[j].push(if seeds > 1 { c.values.clone() } else { vec![] });
        }
        md.push('\n');
        if g > 0 {
            delta_md.push('\n');
        }
    }
    if names.len() > 1 {
        md.push_str(&delta_md);
    }
    let body = w.into_inner().map_err(|e| Error::Invalid(format!("{stem}.csv: {e}")))?;
    let mut csv_bytes = header.into_bytes();
    csv_bytes.extend_from_slice(format!("# {method}\n").as_bytes());
    csv_bytes.extend_from_slice(&body);
    write_atomic(&dir.join(format!("{stem}.csv")), &csv_bytes)?;
    write_atomic(&dir.join(format!("{stem}.md")), md.as_bytes())?;
    let first = names[0].clone();
    let seeds_note = if seeds > 1 { format!(" Small circles: the {seeds} seeds.") } else { String::new() };
    // Chance per panel: zero-shot top-k guesses k of the C classes; retrieval R@k ranks the
    // true partner among the n held-out items.
    let n_classes = crate::data::synthetic_set::zero_shot_classes().len() as f64;
    let panel_refs: Vec<Option<(f64, String)>> = metrics
        .iter()
        .map(|(_, m)| match *m {
            Metric::Hits(0) => Some((1.0 / n_classes, "chance".to_string())),
            Metric::Hits(1) => Some((5.0 / n_classes, "chance".to_string())),
            Metric::Hits(k) => {
                retrieval_ks.get((k - 2) % retrieval_ks.len().max(1)).map(|&kk| (kk as f64 / n as f64, "chance".to_string()))
            }
            _ => None,
        })
        .collect();
    let chance_note = format!(
        " Chance (zero-shot top-k: k/{n_classes}; retrieval R@k: k/{n} items): a dotted line, or named with its value at the panel's edge where it lies far off the data."
    );
    render(
        &dir.join(stem),
        &IntervalPanels {
            title: r.title.clone(),
            models: names.clone(),
            panels,
            dots,
            panel_refs,
            caption: Some(format!("Dot: the mean; bar: its 95 % interval.{seeds_note}{chance_note} {method}.")),
            ..Default::default()
        },
    )?;
    if names.len() > 1 {
        render(
            &dir.join(format!("{stem}_delta")),
            &IntervalPanels {
                title: format!("{}: difference to {first}", r.title),
                models: names[1..].to_vec(),
                panels: delta_panels,
                dots: if seeds > 1 { delta_dots } else { vec![] },
                reference: Some(0.0),
                panel_refs: vec![],
                caption: Some(format!(
                    "Dot: the mean difference to {first}; bar: its 95 % interval; line: no difference.{} p-values (raw and Holm) in {stem}.md.",
                    if seeds > 1 { " Small circles: per-seed differences (seed s against seed s)." } else { "" }
                )),
            },
        )?;
    }
    Ok(())
}

fn comparison(r: &Recipe, dir: &Path) -> Result<()> {
    let metrics = [
        ("zero-shot top-1", Metric::Hits(0)),
        ("top-5", Metric::Hits(1)),
        ("R@1 i→t", Metric::Hits(2)),
        ("R@1 t→i", Metric::Hits(3)),
        ("gap", Metric::Gap),
        ("RMG", Metric::Rmg),
    ];
    interval_table(r, dir, "comparison", &[1], &metrics)
}

fn zeroshot_retrieval(r: &Recipe, dir: &Path) -> Result<()> {
    let metrics = [
        ("zero-shot top-1", Metric::Hits(0)),
        ("top-5", Metric::Hits(1)),
        ("i→t R@1", Metric::Hits(2)),
        ("i→t R@5", Metric::Hits(3)),
        ("i→t R@10", Metric::Hits(4)),
        ("t→i R@1", Metric::Hits(5)),
        ("t→i R@5", Metric::Hits(6)),
        ("t→i R@10", Metric::Hits(7)),
    ];
    interval_table(r, dir, "zeroshot_retrieval", &[1, 5, 10], &metrics)
}

fn probe_table(r: &Recipe, dir: &Path) -> Result<()> {
    // Linear probe on the synthetic world's 48 classes, both feature choices.
    let splits = r.splits.unwrap_or([2000, 500, 1000]);
    let cs = r.c.clone().unwrap_or_else(|| vec![0.01, 0.1, 1.0, 10.0, 100.0]);
    let mut csv = CsvOut::new("", &["model", "feature", "best_c", "test_top1", "test_mean_per_class", "n_train", "n_val", "n_test"]);
    let mut md = String::from("| model | feature | best C | test top-1 | mean-per-class |\n|---|---|---:|---:|---:|\n");
    let mut header = String::new();
    let mut subdirs = crate::io::SubDirs::new();
    for src in r.models()? {
        let model = src.load(0)?;
        let name = model.model.config.name.clone();
        let model_dir = subdirs.claim(dir, &name, "model name (from the checkpoint's meta.json)")?;
        for feature in [Feature::Pre, Feature::Post] {
            let out = probe::run(&model, &ProbeOptions { data: ProbeData::Synthetic, feature, splits, cs: cs.clone(), standardize: true })?;
            let sub = model_dir.join(feature.name());
            out.write(&sub)?;
            let res = &out.result;
            csv.row(&crate::csv_row![
                name,
                feature.name(),
                res.best_c,
                res.test_top1,
                res.test_mean_per_class,
                res.n_train,
                res.n_val,
                res.n_test
            ]);
            md.push_str(&format!(
                "| {name} | {} | {} | {:.3} | {:.3} |\n",
                feature.name(),
                res.best_c,
                res.test_top1,
                res.test_mean_per_class
            ));
            if feature == Feature::Pre {
                let mut prov = provenance(&model, "synthetic-zeroshot-splits:101/202/303".into(), 0);
                prov.notes.push(format!("probe: multinomial logistic regression (L-BFGS), features standardised with train statistics, C swept over {cs:?} on validation; splits {splits:?}"));
                header.push_str(&prov.csv_header());
            }
        }
    }
    csv.write_after(&header, &dir.join("probe_table.csv"))?;
    write_atomic(&dir.join("probe_table.md"), md.as_bytes())
}

/// `transfer`: the transfer analysis of every run (each seed of each group), over training
/// where the run kept several checkpoints, into `<model>/seed-<s>/`; and the seed-level
/// summary `transfer_summary.csv/.md`: per model, statistic and scope, each seed's excess of
/// the observed agreement over the mean of its within-slot null, their mean with a t-interval
/// over seeds, a one-sample t-test of "excess = 0" and Holm-adjusted p-values over the table.
fn transfer_recipe(r: &Recipe, dir: &Path) -> Result<()> {
    use super::transfer::{self, TransferOptions};
    use crate::analysis::stats::{format_p, holm, seed_interval, t_cdf};
    let data = r.data();
    let seeds: Vec<Option<u64>> = match &r.seeds {
        Some(s) => s.iter().map(|s| Some(*s)).collect(),
        None => vec![None],
    };
    let mut subdirs = crate::io::SubDirs::new();
    // (model, statistic, scope) → per-seed excess over the null.
    let mut excess: Vec<((String, String, String), Vec<f64>)> = Vec::new();
    // (model, statistic) → per seed, the mean over shared heads of (vision − text) settling
    // step: positive = the text side settles first.
    let mut lead: Vec<((String, String), Vec<f64>)> = Vec::new();
    let mut header = String::new();
    for group in r.groups() {
        let mut model_dir: Option<PathBuf> = None;
        for (run, seed) in group.iter().zip(&seeds) {
            let model = ModelSource::for_run(run)?.load(0)?;
            let name = model.model.config.name.clone();
            let md = match &model_dir {
                Some(d) => d.clone(),
                None => {
                    let d = subdirs.claim(dir, &name, "model name (from the checkpoint's meta.json)")?;
                    model_dir = Some(d.clone());
                    d
                }
            };
            let several = crate::checkpoint::list(&run.join("checkpoints")).len() >= 2;
            let opts = TransferOptions { run: several.then(|| run.clone()), ..Default::default() };
            let out = transfer::run(&model, &data, &opts)?;
            let sub = match seed {
                Some(s) => md.join(format!("seed-{s}")),
                None => md.clone(),
            };
            out.write(&sub)?;
            if header.is_empty() {
                header = out.provenance.csv_header();
            }
            for a in &out.agreement {
                let key = (name.clone(), a.statistic.clone(), a.scope.clone());
                match excess.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(a.value - a.null_mean),
                    None => excess.push((key, vec![a.value - a.null_mean])),
                }
            }
            let mut stats: Vec<&str> = out.settle.iter().map(|x| x.statistic.as_str()).collect();
            stats.dedup();
            for st in stats {
                let d: Vec<f64> = out.settle.iter().filter(|x| x.statistic == st).map(|x| (x.vision_step - x.text_step) as f64).collect();
                let m = d.iter().sum::<f64>() / d.len().max(1) as f64;
                let key = (name.clone(), st.to_string());
                match lead.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(m),
                    None => lead.push((key, vec![m])),
                }
            }
        }
    }
    // One-sample t-test over seeds (two-sided; NaN without spread), Holm over each table.
    let t_test = |v: &[f64]| {
        let iv = seed_interval(v);
        let n = v.len() as f64;
        let p = if v.len() < 2 || iv.sd == 0.0 { f64::NAN } else { 2.0 * (1.0 - t_cdf((iv.mean / (iv.sd / n.sqrt())).abs(), n - 1.0)) };
        (iv, p)
    };
    let rows: Vec<(&(String, String, String), crate::analysis::stats::SeedInterval, f64)> = excess
        .iter()
        .map(|(k, v)| {
            let (iv, p) = t_test(v);
            (k, iv, p)
        })
        .collect();
    let ps: Vec<f64> = rows.iter().map(|r| if r.2.is_finite() { r.2 } else { 1.0 }).collect();
    let adj = holm(&ps);
    let mut w = csv::WriterBuilder::new().from_writer(header.clone().into_bytes());
    let e = |e: csv::Error| Error::Invalid(format!("transfer_summary.csv: {e}"));
    w.write_record(["model", "statistic", "scope", "seeds", "per_seed_excess", "mean_excess", "t_lo", "t_hi", "p_t", "p_holm"])
        .map_err(e)?;
    let mut md = format!(
        "Family: the {} rows of this table (Holm). Excess = observed text–vision agreement − mean of its within-slot permutation null, one value per seed; interval: mean ± t₀.₉₇₅,n−1·s/√n; p: two-sided one-sample t-test of excess = 0 over seeds.\n\n| model | statistic | scope | seeds | mean excess [95 % t-interval] | p | p (Holm) |\n|---|---|---|---:|---|---:|---:|\n",
        rows.len()
    );
    for ((k, iv, p), h) in rows.iter().zip(&adj) {
        let per: Vec<String> = iv.values.iter().map(|v| format!("{v:.4}")).collect();
        w.write_record([
            k.0.clone(),
            k.1.clone(),
            k.2.clone(),
            iv.values.len().to_string(),
            per.join(" "),
            iv.mean.to_string(),
            iv.lo.to_string(),
            iv.hi.to_string(),
            p.to_string(),
            h.to_string(),
        ])
        .map_err(e)?;
        let ci = if iv.lo.is_finite() { format!("{:.3} [{:.3}, {:.3}]", iv.mean, iv.lo, iv.hi) } else { format!("{:.3}", iv.mean) };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {ci} | {} | {} |\n",
            k.0,
            super::transfer::label(&k.1),
            k.2,
            iv.values.len(),
            format_p(*p),
            format_p(*h)
        ));
    }
    let bytes = w.into_inner().map_err(|e| Error::Invalid(format!("transfer_summary.csv: {e}")))?;
    write_atomic(&dir.join("transfer_summary.csv"), &bytes)?;
    // Over training: does the text side of a shared head settle before its vision side?
    if !lead.is_empty() {
        let tested: Vec<_> = lead.iter().map(|(k, v)| (k, t_test(v))).collect();
        let adj = holm(&tested.iter().map(|(_, (_, p))| if p.is_finite() { *p } else { 1.0 }).collect::<Vec<_>>());
        let mut w = csv::WriterBuilder::new().from_writer(header.clone().into_bytes());
        let e = |e: csv::Error| Error::Invalid(format!("transfer_settle.csv: {e}"));
        w.write_record(["model", "statistic", "seeds", "per_seed_lead_steps", "mean_lead", "t_lo", "t_hi", "p_t", "p_holm"]).map_err(e)?;
        md.push_str(&format!(
            "\nOver training (every kept checkpoint): lead = vision settling step − text settling step of a shared head (the first step from which the value stays within {:.0} % of its total change of the final value), averaged over the shared heads, one value per seed; positive = the text side settles first. Interval: t over seeds; p: two-sided one-sample t-test of lead = 0; Holm over the {} rows of this table.\n\n| model | statistic | seeds | mean lead in steps [95 % t-interval] | p | p (Holm) |\n|---|---|---:|---|---:|---:|\n",
            (1.0 - TransferOptions::default().settle) * 100.0,
            tested.len()
        ));
        for (((model, st), (iv, p)), h) in tested.iter().zip(&adj) {
            let per: Vec<String> = iv.values.iter().map(|v| format!("{v:.1}")).collect();
            w.write_record([
                model.clone(),
                st.clone(),
                iv.values.len().to_string(),
                per.join(" "),
                iv.mean.to_string(),
                iv.lo.to_string(),
                iv.hi.to_string(),
                p.to_string(),
                h.to_string(),
            ])
            .map_err(e)?;
            let ci = if iv.lo.is_finite() { format!("{:.0} [{:.0}, {:.0}]", iv.mean, iv.lo, iv.hi) } else { format!("{:.0}", iv.mean) };
            md.push_str(&format!(
                "| {model} | {} | {} | {ci} | {} | {} |\n",
                super::transfer::label(st),
                iv.values.len(),
                format_p(*p),
                format_p(*h)
            ));
        }
        let bytes = w.into_inner().map_err(|e| Error::Invalid(format!("transfer_settle.csv: {e}")))?;
        write_atomic(&dir.join("transfer_settle.csv"), &bytes)?;
    }
    write_atomic(&dir.join("transfer_summary.md"), md.as_bytes())
}
