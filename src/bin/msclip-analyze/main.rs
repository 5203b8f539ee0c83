//! `msclip-analyze`: thin front-end over the library's analyses.
//! Exit status: 0 ok, 2 bad input (unknown preset, bad config, unreadable file, …).

use std::path::PathBuf;
use std::process::ExitCode;

mod figures;

use clap::{Args, Parser, Subcommand};
use msclip::cli::{int_in, positive_float};
use msclip::analysis::attention::{image_query_maps, text_maps, HeadMap};
use msclip::analysis::gap::{gap_report, GapReport};
use msclip::analysis::heads::Statistic;
use msclip::analysis::nmi::{modality_nmi, LayerNmi};
use msclip::analysis::npy;
use msclip::data::loader::{ManifestSource, PairSource, SyntheticSource};
use msclip::data::manifest;
use msclip::data::synthetic_set::EVAL_SEED_OFFSET;
use msclip::eval::{embed_pairs, LayerSpec, Pooling};
use msclip::plot::{line_chart_png_svg, LineChart};
use msclip::data::{image as img, synth};
use msclip::io::{sha256_hex, write_atomic, Provenance};
use msclip::model::{ActivationCache, Capture, Modality, ModelConfig, MsClip, Site};
use msclip::plot::{matrix_png_svg, overlay_grid_png, Matrix, OverlayGrid};
use msclip::tokenizer::Tokenizer;
use msclip::{Error, Result};
use tch::{Device, Tensor};

/// Largest item count a flag accepts (synthetic scenes, limits, probe splits).
const MAX_ITEMS: usize = 10_000_000;
/// Largest forward batch.
const MAX_BATCH: usize = 65_536;

#[derive(Parser)]
#[command(name = "msclip-analyze", version, about = "Inspect and explain CLIP / MS-CLIP models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArg {
    /// Built-in preset (clip-b32, clip-b16, msclip-b32, msclip-s-b32, msclip-s-b16, tiny-clip, tiny-msclip, tiny-msclip-s).
    #[arg(long, conflicts_with_all = ["config", "checkpoint"])]
    model: Option<String>,
    /// A model config TOML file (any point of the sharing spectrum).
    #[arg(long, conflicts_with = "checkpoint")]
    config: Option<PathBuf>,
    /// A checkpoint directory (RUN/checkpoints/step-NNNNNNNN) with trained weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

/// A model ready to run and the identity of its weights for provenance.
struct Loaded {
    model: MsClip,
    vs: tch::nn::VarStore,
    weights_id: String,
}

impl ModelArg {
    fn load(&self) -> Result<ModelConfig> {
        match (&self.model, &self.config, &self.checkpoint) {
            (Some(name), _, _) => ModelConfig::preset(name),
            (None, Some(path), _) => ModelConfig::from_toml_file(path),
            (None, None, Some(dir)) => Ok(msclip::checkpoint::verify(dir)?.model),
            (None, None, None) => Err(Error::Invalid("give --model PRESET, --config FILE or --checkpoint DIR".into())),
        }
    }

    /// The model with its weights: a checkpoint's, or a fresh initialisation from `seed`.
    fn build(&self, seed: u64) -> Result<Loaded> {
        if let Some(dir) = &self.checkpoint {
            let (vs, model, meta) = msclip::train::load_checkpoint(dir, Device::Cpu)?;
            let sha = meta.sha256.get("model.safetensors").cloned().unwrap_or_default();
            return Ok(Loaded { model, vs, weights_id: sha });
        }
        let cfg = self.load()?;
        let (vs, model) = MsClip::build(&cfg, Device::Cpu, seed as i64);
        Ok(Loaded { model, vs, weights_id: format!("init:seed={seed}") })
    }
}

/// Where the image–caption pairs come from.
#[derive(Args, Clone)]
struct DataArg {
    /// Image–caption manifest (TSV/CSV with `filepath` and `title` columns).
    #[arg(long, conflicts_with = "synthetic")]
    manifest: Option<PathBuf>,
    /// Use N held-out scenes of the synthetic world instead.
    #[arg(long, value_parser = int_in(1usize..=MAX_ITEMS))]
    synthetic: Option<usize>,
    /// Seed of the synthetic world (held out from training worlds of the same seed).
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Use only the first N pairs (fixed order).
    #[arg(long, value_parser = int_in(1usize..=MAX_ITEMS))]
    limit: Option<usize>,
    /// Batch size of the forward passes (fixed, for reproducible numbers).
    #[arg(long, default_value_t = 64, value_parser = int_in(1usize..=MAX_BATCH))]
    batch: usize,
}

impl DataArg {
    fn source(&self, image_size: u32) -> Result<(std::sync::Arc<dyn PairSource>, String)> {
        match (&self.manifest, self.synthetic) {
            (Some(m), _) => {
                let pairs = manifest::read(m, &manifest::ManifestFormat::for_path(m))?;
                Ok((std::sync::Arc::new(ManifestSource { pairs }), manifest::manifest_hash(m)?))
            }
            (None, Some(n)) => {
                let seed = self.data_seed ^ EVAL_SEED_OFFSET;
                Ok((std::sync::Arc::new(SyntheticSource { seed, n, size: image_size }), format!("synthetic:seed={seed}:n={n}")))
            }
            (None, None) => Err(Error::Invalid("give --manifest FILE or --synthetic N".into())),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Unique parameter counts: total, shared, vision-only, text-only.
    Params {
        #[command(flatten)]
        model: ModelArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a caption (CLIP BPE, SOT/EOT, padded to the context).
    Tokenize {
        text: String,
        #[arg(long, default_value_t = 77, value_parser = int_in(2usize..=65_536))]
        context: usize,
        #[arg(long)]
        json: bool,
    },
    /// Per-head attention maps of both towers for one image and caption.
    Attention(AttentionArgs),
    /// Write L2-normalised image.npy and text.npy (float32, data order) for use elsewhere.
    Embed {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        out: PathBuf,
    },
    /// Modality-gap metrics (centroid gap, RMG, alignment/uniformity, margins, CKA, …).
    Gap {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        /// Use saved embeddings instead of a model (both needed).
        #[arg(long, requires = "text_npy")]
        image_npy: Option<PathBuf>,
        #[arg(long)]
        text_npy: Option<PathBuf>,
        /// Items for the O(n²) uniformity estimate.
        #[arg(long, default_value_t = msclip::analysis::gap::DEFAULT_UNIFORMITY_MAX, value_parser = int_in(2i64..=100_000))]
        uniformity_max: i64,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Layer-wise NMI between k-means (k = 2) clusters and modality.
    Nmi {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[command(flatten)]
        nmi: NmiArgs,
        /// NMI of saved paired embeddings (e.g. from `embed`) instead of a model's layers.
        /// Up to 1 GiB of data is loaded; above that k-means streams over both files in
        /// 4,096-row chunks (memory: one chunk + the labels).
        #[arg(long, requires = "text_npy")]
        image_npy: Option<PathBuf>,
        #[arg(long, requires = "image_npy")]
        text_npy: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Per-head attention statistics of both towers, their cross-modal agreement (Spearman ρ
    /// with a permutation p-value) and, on the synthetic world, grounding in object boxes.
    Heads {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        out: PathBuf,
        /// Permutations of the Spearman test.
        #[arg(long, default_value_t = 10000, value_parser = int_in(1usize..=10_000_000))]
        permutations: usize,
        /// Slots of the caption/image head gallery (gallery_slot{S}.png/.svg; synthetic data
        /// only). Default: every attention slot both towers have.
        #[arg(long, value_delimiter = ',')]
        gallery_slots: Vec<usize>,
    },
    /// Zero-shot classification with a prompt ensemble (mean of normalised prompt embeddings,
    /// renormalised; ×100 logits): top-1, top-5, mean-per-class. An ImageFolder tree, or the
    /// synthetic world's 48 colour × shape classes.
    Zeroshot {
        #[command(flatten)]
        model: ModelArg,
        /// ImageFolder root (one sub-folder per class; folder names are the class names).
        #[arg(long, conflicts_with = "synthetic")]
        folder: Option<PathBuf>,
        /// N held-out single-object synthetic images instead.
        #[arg(long, value_parser = int_in(1usize..=MAX_ITEMS))]
        synthetic: Option<usize>,
        /// Templates file: one template per line with `{}` for the class name.
        #[arg(long)]
        templates: Option<PathBuf>,
        #[arg(long, default_value_t = 64, value_parser = int_in(1usize..=MAX_BATCH))]
        batch: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Linear probe on frozen image features: multinomial logistic regression (L-BFGS on
    /// tch), C swept on a validation split, refit on train+val, test top-1 / mean-per-class.
    Probe {
        #[command(flatten)]
        model: ModelArg,
        /// Fashion-MNIST folder with the IDX files (`msclip-data fetch fashion-mnist`).
        #[arg(long, conflicts_with = "synthetic")]
        fashion_mnist: Option<PathBuf>,
        /// The synthetic world's 48 colour × shape classes (single objects).
        #[arg(long)]
        synthetic: bool,
        /// Features: `pre` = pre-projection CLS after ln_post (OpenAI's probe choice), `post` =
        /// projected, L2-normalised embedding (CLIP_benchmark's).
        #[arg(long, default_value = "pre")]
        feature: String,
        #[arg(long, default_value_t = 5000, value_parser = int_in(2usize..=MAX_ITEMS))]
        train: usize,
        #[arg(long, default_value_t = 1000, value_parser = int_in(1usize..=MAX_ITEMS))]
        val: usize,
        #[arg(long, default_value_t = 2000, value_parser = int_in(1usize..=MAX_ITEMS))]
        test: usize,
        /// Values of C (scikit-learn's inverse regularisation) to sweep.
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,1,10,100", value_parser = positive_float)]
        c: Vec<f64>,
        /// Fit on raw features instead of standardised ones (by default each feature is
        /// centred and scaled with the train split's mean and standard deviation, which lets
        /// L-BFGS converge at large C).
        #[arg(long)]
        no_standardize: bool,
        /// Also write the features and labels (NPY/JSON) for side-by-side benchmarks (after
        /// standardisation: what is fitted).
        #[arg(long)]
        save_features: Option<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Image↔text retrieval R@1/5/10 in both directions on paired data.
    Retrieval {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Regenerate every figure from the recipes in analyses/ into figures/<recipe>/.
    Figures {
        #[arg(long, default_value = "analyses")]
        recipes: PathBuf,
        #[arg(long, default_value = "figures")]
        out: PathBuf,
    },
    /// CI regression check of gap metrics and NMI against a baseline; exit 1 on drift.
    Check {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[command(flatten)]
        nmi: NmiArgs,
        #[arg(long)]
        baseline: PathBuf,
        /// Write the current values as the new baseline (keeps existing tolerances).
        #[arg(long)]
        update: bool,
    },
    /// Held-out synthetic evaluation: zero-shot (48 colour × shape classes), retrieval R@1,
    /// modality gap; one table row (or JSON).
    Eval {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long, default_value_t = 1000, value_parser = int_in(2usize..=MAX_ITEMS))]
        items: usize,
        /// Seed of the held-out world (the training seed keeps it disjoint from training items).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct NmiArgs {
    /// Site pooled per slot: ln1 (official OUTPUT_BEFORE_ATTN), attn_out, ln2, resid.
    #[arg(long, default_value = "ln1")]
    site: String,
    #[arg(long, value_enum, default_value_t = Pooling::Special)]
    pooling: Pooling,
    /// Map pooled tokens through the final LN + projection (needed for unequal widths).
    #[arg(long)]
    projected: bool,
    #[arg(long, default_value_t = 2, value_parser = int_in(2i64..=1000))]
    k: i64,
    #[arg(long, default_value_t = 5, value_parser = int_in(1usize..=1000))]
    restarts: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl NmiArgs {
    fn spec(&self) -> Result<LayerSpec> {
        let site = match self.site.as_str() {
            "ln1" => Site::Ln1,
            "attn_out" => Site::AttnOut,
            "ln2" => Site::Ln2,
            "resid" => Site::Resid,
            other => return Err(Error::config("--site", other, "expected ln1, attn_out, ln2 or resid")),
        };
        Ok(LayerSpec { site, pooling: self.pooling, projected: self.projected })
    }
}

#[derive(Args)]
struct AttentionArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Image file; without it a scene of the synthetic world is drawn.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Caption; defaults to the synthetic scene's caption.
    #[arg(long)]
    caption: Option<String>,
    #[arg(long)]
    out: PathBuf,
    /// Seed of the model initialisation and of the synthetic scene.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Slots to draw (default: all attention layers).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Heads to draw (default: all).
    #[arg(long, value_delimiter = ',')]
    heads: Option<Vec<usize>>,
    /// Query token of the image maps: 0 = CLS, 1 + r·grid + c = the patch at row r, column c.
    #[arg(long, default_value_t = 0, value_parser = int_in(0i64..=1 << 20))]
    query: i64,
    /// Attribution maps: raw (last layer, head mean), rollout, relevancy (Chefer et al. 2021), or all.
    #[arg(long, default_value = "all")]
    method: String,
    /// First slot of rollout/relevancy (default: all attention layers for rollout, the last
    /// layer for relevancy, as Transformer-MM-Explainability's CLIP default).
    #[arg(long)]
    start_layer: Option<usize>,
    /// Deletion/insertion curve resolution (fractions k/steps of the patches; at most the
    /// number of patches is meaningful, and at most 1,000 are run).
    #[arg(long, default_value_t = 10, value_parser = int_in(1usize..=1000))]
    faith_steps: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params { model, json } => params(&model, json),
        Command::Tokenize { text, context, json } => tokenize(&text, context, json),
        Command::Attention(a) => attention(&a),
        Command::Eval { model, items, seed, json } => eval(&model, items, seed, json),
        Command::Embed { model, data, out } => embed(&model, &data, &out),
        Command::Gap { model, data, image_npy, text_npy, uniformity_max, out, json } => {
            gap(&model, &data, image_npy.as_deref(), text_npy.as_deref(), uniformity_max, out.as_deref(), json)
        }
        Command::Zeroshot { model, folder, synthetic, templates, batch, out } => zeroshot(&model, folder.as_deref(), synthetic, templates.as_deref(), batch, out.as_deref()),
        Command::Probe { model, fashion_mnist, synthetic, feature, train, val, test, c, no_standardize, save_features, out } => {
            probe(&model, fashion_mnist.as_deref(), synthetic, &feature, [train, val, test], &c, !no_standardize, save_features.as_deref(), out.as_deref())
        }
        Command::Retrieval { model, data, out } => retrieval(&model, &data, out.as_deref()),
        Command::Figures { recipes, out } => figures::run_all(&recipes, &out),
        Command::Heads { model, data, out, permutations, gallery_slots } => heads(&model, &data, &out, permutations, &gallery_slots).map(|_| ()),
        Command::Nmi { nmi, image_npy: Some(a), text_npy: Some(b), out, json, .. } => nmi_npy(&a, &b, &nmi, out.as_deref(), json),
        Command::Nmi { model, data, nmi, out, json, .. } => nmi_cmd(&model, &data, &nmi, out.as_deref(), json),
        Command::Check { model, data, nmi, baseline, update } => {
            return match check(&model, &data, &nmi, &baseline, update) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn params(model: &ModelArg, json: bool) -> Result<()> {
    let cfg = model.load()?;
    let (vs, _m) = MsClip::build_for_loading(&cfg, Device::Cpu);
    let c = MsClip::param_count(&vs);
    if json {
        println!("{}", serde_json::to_string(&c).unwrap());
    } else {
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", "model", "total", "shared", "vision_only", "text_only");
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", cfg.name, c.total, c.shared, c.vision_only, c.text_only);
    }
    Ok(())
}

fn eval(model: &ModelArg, items: usize, seed: u64, json: bool) -> Result<()> {
    if items < 2 {
        return Err(Error::config("--items", items, "need at least 2"));
    }
    let loaded = model.build(seed)?;
    let r = msclip::train::evaluate(&loaded.model, seed, items)?;
    if json {
        let out = serde_json::json!({"model": loaded.model.config.name, "weights": loaded.weights_id, "eval": r});
        println!("{out}");
    } else {
        println!(
            "{:<14} zero-shot top1 {:.3} top5 {:.3} | R@1 i→t {:.3} t→i {:.3} | gap {:.3}",
            loaded.model.config.name, r.zero_shot_top1, r.zero_shot_top5, r.image_to_text_r1, r.text_to_image_r1, r.modality_gap
        );
    }
    Ok(())
}

fn provenance(loaded: &Loaded, data_id: String, seed: u64) -> Provenance {
    let cfg = &loaded.model.config;
    let mut p = Provenance::new(&cfg.name, loaded.weights_id.clone(), data_id, cfg.preprocess.clone(), seed);
    p.notes.push("eval preprocessing: bicubic resize of the shorter side, centre crop, normalise; fp32".into());
    p
}

fn report_skipped(skipped: &[(usize, String, String)]) {
    for (_, what, why) in skipped.iter().take(5) {
        eprintln!("warning: skipped {what}: {why}");
    }
    if skipped.len() > 5 {
        eprintln!("warning: … {} more skipped", skipped.len() - 5);
    }
}

fn embed(model: &ModelArg, data: &DataArg, out: &std::path::Path) -> Result<()> {
    let loaded = model.build(0)?;
    let (src, data_id) = data.source(loaded.model.config.vision.image_size as u32)?;
    let n = data.limit.unwrap_or(src.len());
    let f = embed_pairs(&loaded.model, src.as_ref(), n, data.batch, None)?;
    report_skipped(&f.skipped);
    npy::write_f32(&out.join("image.npy"), &f.image)?;
    npy::write_f32(&out.join("text.npy"), &f.text)?;
    let meta = serde_json::json!({
        "provenance": provenance(&loaded, data_id, 0),
        "n": f.image.size()[0],
        "dim": f.image.size()[1],
        "skipped": f.skipped.iter().map(|(i, w, y)| serde_json::json!({"index": i, "item": w, "reason": y})).collect::<Vec<_>>(),
    });
    write_atomic(&out.join("embed.json"), serde_json::to_string_pretty(&meta).unwrap().as_bytes())?;
    println!("wrote {} pairs to {}", f.image.size()[0], out.display());
    Ok(())
}

fn print_gap(r: &GapReport) {
    let v = serde_json::to_value(r).unwrap();
    for (k, x) in v.as_object().unwrap() {
        println!("{k:<26} {x}");
    }
}

/// Provenance of results computed from two saved embedding files (hashes of both).
fn npy_provenance(a: &std::path::Path, b: &std::path::Path, seed: u64) -> Result<Provenance> {
    let id = format!("{}+{}", msclip::io::sha256_file(a)?, msclip::io::sha256_file(b)?);
    let mut p = Provenance::new("embeddings", "n/a".into(), id, msclip::model::config::Preprocess { mean: [0.0; 3], std: [1.0; 3] }, seed);
    p.notes.push(format!("embeddings read from {} and {}", a.display(), b.display()));
    Ok(p)
}

/// Rows per chunk when `gap` streams `.npy` files.
const GAP_CHUNK: i64 = 4096;

/// Gap metrics of two `.npy` files, read chunk by chunk (memory independent of n).
fn gap_from_npy(a: &std::path::Path, b: &std::path::Path, umax: i64) -> Result<GapReport> {
    let (mut ra, mut rb) = (npy::Reader::open(a)?, npy::Reader::open(b)?);
    if (ra.rows, ra.cols) != (rb.rows, rb.cols) {
        return Err(Error::Invalid(format!("{} is [{}, {}] but {} is [{}, {}]: paired embeddings must have equal shapes", a.display(), ra.rows, ra.cols, b.display(), rb.rows, rb.cols)));
    }
    if ra.rows < 3 {
        return Err(Error::Invalid(format!("{}: need at least 3 pairs, got {}", a.display(), ra.rows)));
    }
    let mut acc = msclip::analysis::gap::GapAccumulator::new(ra.cols, umax);
    for pass in 0..2 {
        let mut start = 0;
        while start < ra.rows {
            let (x, y) = (ra.read_rows(start, GAP_CHUNK)?, rb.read_rows(start, GAP_CHUNK)?);
            if pass == 0 { acc.add(&x, &y)? } else { acc.add_centred(&x, &y)? }
            start += GAP_CHUNK;
        }
    }
    acc.finish()
}

fn gap(model: &ModelArg, data: &DataArg, image_npy: Option<&std::path::Path>, text_npy: Option<&std::path::Path>, umax: i64, out: Option<&std::path::Path>, json: bool) -> Result<()> {
    let (r, prov) = match (image_npy, text_npy) {
        (Some(a), Some(b)) => {
            let mut p = npy_provenance(a, b, 0)?;
            p.notes.push(format!("streamed: two passes over chunks of {GAP_CHUNK} rows"));
            (gap_from_npy(a, b, umax)?, p)
        }
        _ => {
            let loaded = model.build(0)?;
            let (src, data_id) = data.source(loaded.model.config.vision.image_size as u32)?;
            let f = embed_pairs(&loaded.model, src.as_ref(), data.limit.unwrap_or(src.len()), data.batch, None)?;
            report_skipped(&f.skipped);
            (gap_report(&f.image, &f.text, umax)?, provenance(&loaded, data_id, 0))
        }
    };
    if json {
        println!("{}", serde_json::json!({"provenance": prov, "gap": r}));
    } else {
        print_gap(&r);
    }
    if let Some(dir) = out {
        write_atomic(&dir.join("gap.json"), serde_json::to_string_pretty(&serde_json::json!({"provenance": prov, "gap": r})).unwrap().as_bytes())?;
        let mut csv = prov.csv_header() + "metric,value\n";
        for (k, v) in serde_json::to_value(&r).unwrap().as_object().unwrap() {
            csv.push_str(&format!("{k},{v}\n"));
        }
        write_atomic(&dir.join("gap.csv"), csv.as_bytes())?;
    }
    Ok(())
}

fn layer_nmi(loaded: &Loaded, data: &DataArg, a: &NmiArgs) -> Result<(Vec<LayerNmi>, GapReport, String)> {
    let (src, data_id) = data.source(loaded.model.config.vision.image_size as u32)?;
    let f = embed_pairs(&loaded.model, src.as_ref(), data.limit.unwrap_or(src.len()), data.batch, Some(a.spec()?))?;
    report_skipped(&f.skipped);
    let mut rows = Vec::new();
    for (slot, (img, txt)) in &f.layers {
        let (v, inertia) = modality_nmi(img, txt, a.k, a.restarts, a.seed)?;
        rows.push(LayerNmi { slot: *slot, nmi: v, inertia });
    }
    // The joint embedding space as the last row (slot = number of slots).
    let (v, inertia) = modality_nmi(&f.image, &f.text, a.k, a.restarts, a.seed)?;
    rows.push(LayerNmi { slot: loaded.model.config.text.layers, nmi: v, inertia });
    Ok((rows, gap_report(&f.image, &f.text, msclip::analysis::gap::DEFAULT_UNIFORMITY_MAX)?, data_id))
}

/// Above this much embedding data `nmi --image-npy/--text-npy` streams instead of loading.
const NMI_IN_MEMORY_BYTES: u64 = 1 << 30;

/// NMI (k-means vs modality) of two `.npy` embedding files; streamed above 1 GiB.
fn nmi_npy(a: &std::path::Path, b: &std::path::Path, args: &NmiArgs, out: Option<&std::path::Path>, json: bool) -> Result<()> {
    use msclip::analysis::nmi::{kmeans_rows, nmi, NpyPairRows};
    let mut rows = NpyPairRows::open(a, b, GAP_CHUNK)?;
    let (ni, nt) = rows.counts();
    let t = std::time::Instant::now();
    // Up to NMI_IN_MEMORY_BYTES of f32 data k-means runs in memory (one matmul per
    // iteration); above it, it streams, re-reading the files on every pass. Same labels.
    let file_len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error::io(p, e));
    let in_memory = file_len(a)? + file_len(b)? <= NMI_IN_MEMORY_BYTES;
    let km = if in_memory {
        let x = Tensor::cat(&[npy::read(a)?, npy::read(b)?], 0);
        msclip::analysis::nmi::kmeans(&x, args.k, args.restarts, 100, args.seed)?
    } else {
        kmeans_rows(&mut rows, args.k, args.restarts, 100, args.seed)?
    };
    let truth: Vec<i64> = std::iter::repeat_n(0, ni as usize).chain(std::iter::repeat_n(1, nt as usize)).collect();
    let v = nmi(&km.labels, &truth);
    let mut prov = npy_provenance(a, b, args.seed)?;
    prov.notes.push(format!("{ni} + {nt} rows, {}", if in_memory { "held in memory".to_string() } else { format!("streamed in chunks of {GAP_CHUNK} rows") }));
    prov.notes.push(format!("NMI: k-means k {}, restarts {}, seed {}; arithmetic normalisation (scikit-learn's default)", args.k, args.restarts, args.seed));
    let j = serde_json::json!({"provenance": prov, "nmi": v, "inertia": km.inertia, "iterations": km.iterations, "seconds": t.elapsed().as_secs_f64()});
    if json {
        println!("{j}");
    } else {
        println!("nmi {v:.6} inertia {:.6} ({} + {} points, {:.2}s)", km.inertia, ni, nt, t.elapsed().as_secs_f64());
    }
    if let Some(dir) = out {
        write_atomic(&dir.join("nmi.json"), serde_json::to_string_pretty(&j).unwrap().as_bytes())?;
    }
    Ok(())
}

fn nmi_cmd(model: &ModelArg, data: &DataArg, a: &NmiArgs, out: Option<&std::path::Path>, json: bool) -> Result<()> {
    let loaded = model.build(0)?;
    let (rows, _, data_id) = layer_nmi(&loaded, data, a)?;
    let mut prov = provenance(&loaded, data_id, a.seed);
    prov.notes.push(format!("NMI: site {}, pooling {:?}, projected {}, k {}, restarts {}; last row = joint embedding space", a.site, a.pooling, a.projected, a.k, a.restarts));
    if json {
        println!("{}", serde_json::json!({"provenance": prov, "layers": rows}));
    } else {
        println!("{:>5} {:>8}", "slot", "nmi");
        for r in &rows {
            println!("{:>5} {:>8.4}", r.slot, r.nmi);
        }
    }
    if let Some(dir) = out {
        let mut csv = prov.csv_header() + "slot,nmi,inertia\n";
        for r in &rows {
            csv.push_str(&format!("{},{},{}\n", r.slot, r.nmi, r.inertia));
        }
        write_atomic(&dir.join("nmi.csv"), csv.as_bytes())?;
        write_atomic(&dir.join("nmi.json"), serde_json::to_string_pretty(&serde_json::json!({"provenance": prov, "layers": rows})).unwrap().as_bytes())?;
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.slot as f64, r.nmi)).collect();
        line_chart_png_svg(&dir.join("nmi"), &LineChart {
            title: format!("{} — NMI(k-means, modality) by layer ({})", loaded.model.config.name, a.site),
            x_label: "slot (last = joint space)".into(),
            y_label: "NMI".into(),
            series: vec![(loaded.model.config.name.clone(), pts)],
            y_range: (0.0, 1.0),
        })?;
    }
    Ok(())
}

/// Baseline file of `check`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Baseline {
    /// Default absolute tolerance.
    tolerance: f64,
    /// Per-metric tolerances overriding the default.
    #[serde(default)]
    tolerances: std::collections::BTreeMap<String, f64>,
    values: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    provenance: Option<serde_json::Value>,
}

fn check(model: &ModelArg, data: &DataArg, a: &NmiArgs, baseline: &std::path::Path, update: bool) -> Result<bool> {
    let loaded = model.build(0)?;
    let (rows, gap, data_id) = layer_nmi(&loaded, data, a)?;
    let mut values = std::collections::BTreeMap::new();
    for (k, v) in serde_json::to_value(&gap).unwrap().as_object().unwrap() {
        if let Some(x) = v.as_f64() {
            if !matches!(k.as_str(), "n" | "dim" | "uniformity_n") {
                values.insert(format!("gap.{k}"), x);
            }
        }
    }
    for r in &rows {
        values.insert(format!("nmi.slot{:02}", r.slot), r.nmi);
    }
    let prov = serde_json::to_value(provenance(&loaded, data_id, a.seed)).unwrap();
    let existing: Option<Baseline> = match std::fs::read_to_string(baseline) {
        Ok(t) => Some(serde_json::from_str(&t).map_err(|e| Error::Parse { path: baseline.to_path_buf(), message: e.to_string() })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && update => None,
        Err(e) => return Err(Error::io(baseline, e)),
    };
    if update {
        let (tolerance, tolerances) = existing.map(|b| (b.tolerance, b.tolerances)).unwrap_or((1e-4, Default::default()));
        let b = Baseline { tolerance, tolerances, values, provenance: Some(prov) };
        write_atomic(baseline, serde_json::to_string_pretty(&b).unwrap().as_bytes())?;
        println!("baseline written to {}", baseline.display());
        return Ok(true);
    }
    let b = existing.expect("read above");
    if b.values.is_empty() {
        return Err(Error::Parse { path: baseline.to_path_buf(), message: "the baseline holds no values; write one with --update".into() });
    }
    let mut ok = true;
    println!("{:<28} {:>14} {:>14} {:>10} {:>10}  status", "metric", "baseline", "current", "|Δ|", "tol");
    for (k, want) in &b.values {
        let tol = *b.tolerances.get(k).unwrap_or(&b.tolerance);
        match values.get(k) {
            Some(got) => {
                let d = (got - want).abs();
                let pass = d <= tol;
                ok &= pass;
                println!("{k:<28} {want:>14.6} {got:>14.6} {d:>10.2e} {tol:>10.1e}  {}", if pass { "ok" } else { "DRIFT" });
            }
            None => {
                ok = false;
                println!("{k:<28} {want:>14.6} {:>14} {:>10} {tol:>10.1e}  MISSING", "-", "-");
            }
        }
    }
    println!("{}", if ok { "check passed" } else { "check FAILED: metrics drifted beyond tolerance" });
    Ok(ok)
}

fn heads(model: &ModelArg, data: &DataArg, out: &std::path::Path, permutations: usize, gallery_slots: &[usize]) -> Result<Vec<msclip::analysis::heads::HeadStat>> {
    use msclip::analysis::heads::{agreement, box_grounding, HeadAccumulator};
    let loaded = model.build(0)?;
    let m = &loaded.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let (src, data_id) = data.source(size)?;
    let n = data.limit.unwrap_or(src.len()).min(src.len());
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let grid = cfg.grid();
    let mut acc = HeadAccumulator::default();
    // (slot, head) → (Σ share, Σ hits, count) over named objects.
    let mut ground: std::collections::BTreeMap<(usize, usize), (f64, f64, f64)> = Default::default();
    let vslots = cfg.vision_attention_slots();
    if let Some(bad) = gallery_slots.iter().find(|s| !vslots.contains(s) || !cfg.text_attention_slots().contains(s)) {
        return Err(Error::Invalid(format!("--gallery-slots: slot {bad} has no attention in both towers (vision {vslots:?})")));
    }
    let gallery_slots: Vec<usize> = if gallery_slots.is_empty() { vslots.clone() } else { gallery_slots.to_vec() };
    // method → (Σ share, Σ hits, Σ uniform share, count) of caption-conditioned maps.
    let mut rel_ground: std::collections::BTreeMap<&'static str, [f64; 4]> = Default::default();
    let mut gallery: Option<GalleryItem> = None;
    let mut start = 0;
    while start < n {
        let end = (start + data.batch).min(n);
        let (mut imgs, mut caps, mut ids) = (vec![], vec![], vec![]);
        let mut first_rgb = None;
        for i in start..end {
            match src.get(i) {
                Ok((im, cap)) => {
                    let im = img::resize_center_crop(&im, size);
                    imgs.push(img::to_tensor(im.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std));
                    if gallery.is_none() && first_rgb.is_none() {
                        first_rgb = Some(im);
                    }
                    caps.push(cap);
                    ids.push(i);
                }
                Err(why) => eprintln!("warning: skipped {}: {why}", src.describe(i)),
            }
        }
        start = end;
        if imgs.is_empty() {
            continue;
        }
        let images = Tensor::stack(&imgs, 0);
        let tokens = tok.tokenize_batch(&caps);
        let eot: Vec<i64> = Vec::<i64>::try_from(&msclip::model::towers::TextTower::pooled_positions(&tokens)).unwrap();
        let mut cache = ActivationCache::new();
        tch::no_grad(|| -> Result<()> {
            let _ = m.encode_image_with(&images, &Capture::attention(), &mut cache, false)?;
            let _ = m.encode_text_with(&tokens, &Capture::attention(), &mut cache)?;
            Ok(())
        })?;
        // Ground-truth boxes of the batch's synthetic scenes (rendered once, not per slot).
        let objects: Vec<Vec<synth::Object>> = match data.synthetic {
            Some(_) => ids.iter().map(|&i| synth::scene(data.data_seed ^ EVAL_SEED_OFFSET, i as u64, size).objects).collect(),
            None => vec![],
        };
        for &slot in &vslots {
            let probs = cache.require(Modality::Vision, slot, Site::AttnProbs)?;
            acc.add_vision(slot, probs, grid);
            for (b, scene_objects) in objects.iter().enumerate() {
                let maps = image_query_maps(probs, slot, b as i64, 0, grid)?;
                for mp in maps.iter().filter(|mp| mp.head.is_some()) {
                    for o in scene_objects {
                        let (share, hit) = box_grounding(&mp.values, grid as usize, cfg.vision.patch_size as f64, o.bbox);
                        let e = ground.entry((slot, mp.head.unwrap())).or_default();
                        e.0 += share;
                        e.1 += hit as u8 as f64;
                        e.2 += 1.0;
                    }
                }
            }
        }
        for slot in cfg.text_attention_slots() {
            acc.add_text(slot, cache.require(Modality::Text, slot, Site::AttnProbs)?, &eot);
        }
        if !objects.is_empty() {
            msclip::eval::relevancy_grounding(m, &images, &objects, &tok, &mut rel_ground)?;
        }
        if gallery.is_none() && !objects.is_empty() {
            if let Some(rgb) = first_rgb.take() {
                gallery = Some(GalleryItem::take(&cache, rgb, &tokens, eot[0], &tok, &gallery_slots, cfg));
            }
        }
    }
    let stats = acc.finish();
    if stats.is_empty() {
        return Err(Error::Invalid(format!("heads: none of the {n} items could be read")));
    }
    let agree = agreement(&stats, permutations, 0);
    let mut prov = provenance(&loaded, data_id, 0);
    prov.notes.push("head statistics: means over items and valid queries (text: 0..=EOT); vision distance in patch-grid units; 'neighbour' = previous-token mass (text) / 4-neighbour mass (vision)".into());
    prov.notes.push(format!("agreement: Spearman ρ over (slot, head) pairs both towers have; two-sided permutation p-value, {permutations} permutations"));
    let mut csv = prov.csv_header() + "modality,slot,head,entropy,distance,special,self_mass,neighbour,n\n";
    for s in &stats {
        csv.push_str(&format!("{},{},{},{},{},{},{},{},{}\n", s.modality.name(), s.slot, s.head, s.entropy, s.distance, s.special, s.self_mass, s.neighbour, s.n));
    }
    write_atomic(&out.join("head_stats.csv"), csv.as_bytes())?;
    let mut gcsv = prov.csv_header() + "slot,head,box_share,pointing_acc,objects\n";
    for ((slot, head), (sh, hit, c)) in &ground {
        gcsv.push_str(&format!("{slot},{head},{},{},{c}\n", sh / c, hit / c));
    }
    if !ground.is_empty() {
        write_atomic(&out.join("grounding.csv"), gcsv.as_bytes())?;
        let mut rcsv = prov.csv_header() + "method,box_share,pointing_acc,uniform_share,objects\n";
        println!("{:<16} {:>9} {:>9} {:>9} {:>8}", "grounding", "box_share", "pointing", "uniform", "objects");
        let best = ground.values().map(|(sh, hit, c)| (sh / c, hit / c)).fold((0.0f64, 0.0f64), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        for (method, [sh, hit, uni, c]) in &rel_ground {
            rcsv.push_str(&format!("{method},{},{},{},{c}\n", sh / c, hit / c, uni / c));
            println!("{method:<16} {:>9.3} {:>9.3} {:>9.3} {c:>8}", sh / c, hit / c, uni / c);
        }
        println!("{:<16} {:>9.3} {:>9.3}", "best head (CLS)", best.0, best.1);
        write_atomic(&out.join("grounding_relevancy.csv"), rcsv.as_bytes())?;
    }
    if let Some(g) = &gallery {
        g.render(out, cfg)?;
    }
    write_atomic(&out.join("agreement.json"), serde_json::to_string_pretty(&serde_json::json!({"provenance": prov, "agreement": agree})).unwrap().as_bytes())?;
    // Figures: slot × head heatmaps per statistic and modality; text-vs-vision scatter.
    for stat in Statistic::ALL {
        let name = stat.name();
        let mut pts = vec![];
        for modality in [Modality::Vision, Modality::Text] {
            let mut hm = stat_heatmap(cfg, &stats, modality, stat);
            hm.title = format!("{} — {name}, {} (slot × head)", cfg.name, modality.name());
            msclip::plot::heatmap_png_svg(&out.join(format!("{name}_{}", modality.name())), &hm)?;
        }
        for s in stats.iter().filter(|s| s.modality == Modality::Text) {
            if let Some(v) = stats.iter().find(|v| v.modality == Modality::Vision && v.slot == s.slot && v.head == s.head) {
                pts.push((s.get(stat), v.get(stat)));
            }
        }
        if !pts.is_empty() {
            let a = agree.iter().find(|a| a.statistic == name).unwrap();
            msclip::plot::scatter_png_svg(&out.join(format!("{name}_scatter")), &msclip::plot::Scatter {
                title: format!("{} — {name}: ρ = {:.3} (p = {:.4})", cfg.name, a.spearman, a.p_value),
                x_label: format!("text {name}"),
                y_label: format!("vision {name}"),
                points: pts,
            })?;
        }
    }
    println!("{:<10} {:>6} {:>9} {:>9}", "statistic", "heads", "spearman", "p");
    for a in &agree {
        println!("{:<10} {:>6} {:>9.4} {:>9.4}", a.statistic, a.heads, a.spearman, a.p_value);
    }
    println!("wrote {}", out.display());
    Ok(stats)
}

/// The slot × head heatmap of one statistic for one modality (NaN where a slot has no head).
fn stat_heatmap(cfg: &ModelConfig, stats: &[msclip::analysis::heads::HeadStat], modality: Modality, stat: Statistic) -> msclip::plot::Heatmap {
    let heads_n = cfg.vision.heads.max(cfg.text.heads) as usize;
    let slots: Vec<usize> = if modality == Modality::Vision { cfg.vision_attention_slots() } else { cfg.text_attention_slots() };
    let values = slots
        .iter()
        .map(|&sl| (0..heads_n).map(|h| stats.iter().find(|s| s.modality == modality && s.slot == sl && s.head == h).map_or(f64::NAN, |s| s.get(stat))).collect())
        .collect();
    msclip::plot::Heatmap {
        title: format!("{} — {}", cfg.name, modality.name()),
        values,
        row_labels: slots.iter().map(|s| format!("slot {s}")).collect(),
        col_labels: (0..heads_n).map(|h| format!("h{h}")).collect(),
    }
}

/// Per statistic, every model's text and vision heatmaps side by side (`{stat}_side_by_side`
/// .png/.svg; rows = models, columns = text, vision; one colour scale per column).
fn heads_side_by_side(out: &std::path::Path, models: &[(ModelConfig, Vec<msclip::analysis::heads::HeadStat>)]) -> Result<()> {
    for stat in Statistic::ALL {
        let name = stat.name();
        let panels = models.iter().map(|(cfg, stats)| vec![stat_heatmap(cfg, stats, Modality::Text, stat), stat_heatmap(cfg, stats, Modality::Vision, stat)]).collect();
        msclip::plot::render(&out.join(format!("{name}_side_by_side")), &msclip::plot::HeatmapPanels { title: format!("Head {name} (slot × head): text | vision, one row per model"), panels })?;
    }
    Ok(())
}

/// One item's attention for the "same head on a caption and on its image" gallery.
struct GalleryItem {
    rgb: image::RgbImage,
    /// (slot, text probs `[H, L, L]` cut to SOT..=EOT, vision CLS maps `[H, g²]`).
    slots: Vec<(usize, Tensor, Tensor)>,
    labels: Vec<String>,
}

impl GalleryItem {
    /// Item 0 of a batch: its (resized) image, tokens and EOT position.
    fn take(cache: &ActivationCache, rgb: image::RgbImage, tokens: &Tensor, eot: i64, tok: &Tokenizer, vslots: &[usize], cfg: &ModelConfig) -> GalleryItem {
        let g = cfg.grid();
        let mut slots = Vec::new();
        for &slot in vslots {
            let (Some(t), Some(v)) = (cache.get(Modality::Text, slot, Site::AttnProbs), cache.get(Modality::Vision, slot, Site::AttnProbs)) else { continue };
            let t = t.get(0).narrow(1, 0, eot + 1).narrow(2, 0, eot + 1).to_kind(tch::Kind::Float);
            let v = v.get(0).select(1, 0).narrow(1, 1, g * g).to_kind(tch::Kind::Float);
            slots.push((slot, t, v));
        }
        let ids: Vec<i64> = Vec::<i64>::try_from(tokens.get(0).narrow(0, 0, eot + 1)).unwrap();
        let labels = ids.iter().map(|&i| tok.token_label(i)).collect();
        GalleryItem { rgb, slots, labels }
    }

    /// `gallery_slot{S}.png/.svg` per slot: one row per head, the caption's token × token
    /// matrix next to the CLS → patch map on the image, from the same weights (shared slots)
    /// or the same position (CLIP).
    fn render(&self, out: &std::path::Path, cfg: &ModelConfig) -> Result<()> {
        for (slot, t, v) in &self.slots {
            let heads = t.size()[0].min(v.size()[0]);
            let rows = (0..heads)
                .map(|h| msclip::plot::HeadPairRow {
                    label: format!("h{h}"),
                    text: Vec::<f32>::try_from(t.get(h).contiguous().view([-1])).unwrap(),
                    image_map: Vec::<f32>::try_from(v.get(h).contiguous()).unwrap(),
                })
                .collect();
            let shared = cfg.is_shared(*slot, msclip::model::config::SharedSite::AttnIn);
            msclip::plot::render(&out.join(format!("gallery_slot{slot}")), &msclip::plot::HeadPairs {
                title: format!("{} slot {slot} ({}): each head on the caption and on its image", cfg.name, if shared { "shared attention" } else { "separate weights" }),
                base: &self.rgb,
                grid: cfg.grid() as usize,
                labels: self.labels.clone(),
                rows,
            })?;
        }
        Ok(())
    }
}

fn zeroshot(model: &ModelArg, folder: Option<&std::path::Path>, synthetic: Option<usize>, templates: Option<&std::path::Path>, batch: usize, out: Option<&std::path::Path>) -> Result<()> {
    use msclip::analysis::embedding::{prompt_ensemble, topk_accuracy};
    let loaded = model.build(0)?;
    let m = &loaded.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let templates: Vec<String> = match templates {
        Some(p) => {
            let t: Vec<String> = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
            if let Some((i, bad)) = t.iter().enumerate().find(|(_, l)| !l.contains("{}")) {
                return Err(Error::Parse { path: p.to_path_buf(), message: format!("line {}: template {bad:?} has no {{}}", i + 1) });
            }
            if t.is_empty() {
                return Err(Error::Parse { path: p.to_path_buf(), message: "no templates (every line is empty)".into() });
            }
            t
        }
        None => msclip::data::synthetic_set::TEMPLATES.iter().map(|s| s.to_string()).collect(),
    };
    let (images, labels, classes, data_id) = match (folder, synthetic) {
        (Some(root), _) => {
            let (paths, labels, classes) = msclip::data::shards::image_folder(root)?;
            let mut ts = Vec::new();
            for p in &paths {
                let im = img::resize_center_crop(&img::load_rgb(p)?, size);
                ts.push(img::to_tensor(im.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std));
            }
            if ts.is_empty() {
                return Err(Error::Invalid(format!("{}: no images", root.display())));
            }
            (Tensor::stack(&ts, 0), labels, classes.iter().map(|c| c.replace('_', " ")).collect::<Vec<_>>(), format!("folder:{}", root.display()))
        }
        (None, Some(n)) => {
            let (im, l) = msclip::data::synthetic_set::zero_shot_set(0, n, size, cfg.preprocess.mean, cfg.preprocess.std);
            (im, l, msclip::data::synthetic_set::zero_shot_classes(), format!("synthetic-zeroshot:seed=0:n={n}"))
        }
        _ => return Err(Error::Invalid("give --folder DIR or --synthetic N".into())),
    };
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let prompts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replace("{}", c))).collect();
    let (logits, n) = tch::no_grad(|| -> Result<(Tensor, i64)> {
        let mut pe = Vec::new();
        for chunk in prompts.chunks(256) {
            pe.push(m.encode_text(&tok.tokenize_batch(chunk))?);
        }
        let w = prompt_ensemble(&Tensor::cat(&pe, 0).view([classes.len() as i64, templates.len() as i64, -1]));
        let mut ie = Vec::new();
        for chunk in images.split(batch as i64, 0) {
            ie.push(m.encode_image(&chunk)?);
        }
        Ok((MsClip::zero_shot_logits(&Tensor::cat(&ie, 0), &w), images.size()[0]))
    })?;
    let top1 = topk_accuracy(&logits, &labels, 1);
    let top5 = topk_accuracy(&logits, &labels, 5.min(classes.len() as i64));
    let pred = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap();
    let mut per_class = vec![(0.0, 0.0); classes.len()];
    for (p, l) in pred.iter().zip(&labels) {
        per_class[*l as usize].1 += 1.0;
        if p == l {
            per_class[*l as usize].0 += 1.0;
        }
    }
    let present: Vec<f64> = per_class.iter().filter(|(_, c)| *c > 0.0).map(|(h, c)| h / c).collect();
    let mpc = present.iter().sum::<f64>() / present.len().max(1) as f64;
    println!("{:<14} n {n} classes {} templates {} | top1 {top1:.4} top5 {top5:.4} mean-per-class {mpc:.4}", cfg.name, classes.len(), templates.len());
    if let Some(dir) = out {
        let mut prov = provenance(&loaded, data_id, 0);
        prov.notes.push("classifier: mean of L2-normalised prompt embeddings per class, renormalised; logits = 100 · image · W".into());
        let j = serde_json::json!({"provenance": prov, "n": n, "classes": classes, "templates": templates, "top1": top1, "top5": top5, "mean_per_class": mpc});
        write_atomic(&dir.join("zeroshot.json"), serde_json::to_string_pretty(&j).unwrap().as_bytes())?;
    }
    Ok(())
}

/// Images (normalised tensors) and labels of one split.
fn probe_split(fashion: Option<&std::path::Path>, which: &str, start: usize, n: usize, size: u32, mean: [f64; 3], std: [f64; 3]) -> Result<(Tensor, Vec<i64>)> {
    match fashion {
        Some(dir) => {
            let prefix = if which == "test" { "t10k" } else { "train" };
            let (dims, pixels) = msclip::data::idx::read(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
            let (_, labels) = msclip::data::idx::read(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
            let (h, w) = (dims[1], dims[2]);
            if start + n > dims[0] {
                return Err(Error::Invalid(format!("{}: {which} split asks for items {start}..{} of {}", dir.display(), start + n, dims[0])));
            }
            let mut ts = Vec::with_capacity(n);
            for i in start..start + n {
                let g = &pixels[i * h * w..(i + 1) * h * w];
                let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    let v = g[y as usize * w + x as usize];
                    image::Rgb([v, v, v])
                });
                let im = img::resize_center_crop(&rgb, size);
                ts.push(img::to_tensor(im.as_raw(), size, size, mean, std));
            }
            Ok((Tensor::stack(&ts, 0), labels[start..start + n].iter().map(|&l| l as i64).collect()))
        }
        None => {
            let seed = match which { "train" => 101, "val" => 202, _ => 303 };
            Ok(msclip::data::synthetic_set::zero_shot_set(seed, n, size, mean, std))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn probe(model: &ModelArg, fashion: Option<&std::path::Path>, synthetic: bool, feature: &str, sizes: [usize; 3], cs: &[f64], standardize: bool, save: Option<&std::path::Path>, out: Option<&std::path::Path>) -> Result<()> {
    use msclip::analysis::probe::sweep_and_fit;
    if fashion.is_none() && !synthetic {
        return Err(Error::Invalid("give --fashion-mnist DIR or --synthetic".into()));
    }
    if !matches!(feature, "pre" | "post") {
        return Err(Error::config("--feature", feature, "expected pre or post"));
    }
    if cs.is_empty() || cs.iter().any(|c| !(*c > 0.0)) {
        return Err(Error::config("--c", format!("{cs:?}"), "values must be positive"));
    }
    let loaded = model.build(0)?;
    let m = &loaded.model;
    let cfg = &m.config;
    let size = cfg.vision.image_size as u32;
    let (classes, data_id) = match fashion {
        Some(d) => (10, format!("fashion-mnist:{}", msclip::io::sha256_file(&d.join("train-labels-idx1-ubyte.gz"))?)),
        None => (48, "synthetic-zeroshot-splits:101/202/303".to_string()),
    };
    let t0 = std::time::Instant::now();
    let featurize = |images: &Tensor| -> Result<Tensor> {
        tch::no_grad(|| {
            let mut parts = vec![];
            for chunk in images.split(256, 0) {
                parts.push(if feature == "post" {
                    m.encode_image(&chunk)?
                } else {
                    m.vision.forward_features(&chunk, &Capture::none(), &mut ActivationCache::new(), false)
                });
            }
            Ok(Tensor::cat(&parts, 0))
        })
    };
    let (xtr, ytr) = probe_split(fashion, "train", 0, sizes[0], size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (xva, yva) = probe_split(fashion, "val", if fashion.is_some() { sizes[0] } else { 0 }, sizes[1], size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (xte, yte) = probe_split(fashion, "test", 0, sizes[2], size, cfg.preprocess.mean, cfg.preprocess.std)?;
    let (mut ftr, mut fva, mut fte) = (featurize(&xtr)?, featurize(&xva)?, featurize(&xte)?);
    if standardize {
        // z = (x − μ_train) / σ_train per feature (σ floored at 1e-6 for constant features).
        let mu = ftr.mean_dim(0, true, tch::Kind::Float);
        let sd = ftr.std_dim(0, false, true).clamp_min(1e-6);
        let z = |t: &Tensor| (t - &mu) / &sd;
        (ftr, fva, fte) = (z(&ftr), z(&fva), z(&fte));
    }
    let feat_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let r = sweep_and_fit((&ftr, &ytr), (&fva, &yva), (&fte, &yte), classes, cs)?;
    let fit_s = t1.elapsed().as_secs_f64();
    println!("{:<14} {feature} features {} | best C {} | test top1 {:.4} mean-per-class {:.4} | features {feat_s:.1}s, sweep+refit {fit_s:.2}s",
        cfg.name, ftr.size()[1], r.best_c, r.test_top1, r.test_mean_per_class);
    if let Some(dir) = save {
        npy::write_f32(&dir.join("train.npy"), &ftr)?;
        npy::write_f32(&dir.join("val.npy"), &fva)?;
        npy::write_f32(&dir.join("test.npy"), &fte)?;
        let j = serde_json::json!({"train": ytr, "val": yva, "test": yte, "classes": classes, "c": cs});
        write_atomic(&dir.join("labels.json"), j.to_string().as_bytes())?;
    }
    if let Some(dir) = out {
        let mut prov = provenance(&loaded, data_id, 0);
        prov.notes.push(format!("probe features: {feature}; multinomial logistic regression, L-BFGS, λ = 1/(C·n), bias unpenalised"));
        prov.notes.push(if standardize { "features standardised with the train split's per-feature mean and standard deviation".into() } else { "raw features (--no-standardize)".to_string() });
        let j = serde_json::json!({"provenance": prov, "feature": feature, "standardized": standardize, "result": r, "fit_seconds": fit_s});
        write_atomic(&dir.join("probe.json"), serde_json::to_string_pretty(&j).unwrap().as_bytes())?;
    }
    Ok(())
}

fn retrieval(model: &ModelArg, data: &DataArg, out: Option<&std::path::Path>) -> Result<()> {
    use msclip::analysis::embedding::recall_at_k;
    let loaded = model.build(0)?;
    let (src, data_id) = data.source(loaded.model.config.vision.image_size as u32)?;
    let f = embed_pairs(&loaded.model, src.as_ref(), data.limit.unwrap_or(src.len()), data.batch, None)?;
    report_skipped(&f.skipped);
    let sim = f.image.matmul(&f.text.tr());
    let mut r = serde_json::Map::new();
    for k in [1, 5, 10] {
        r.insert(format!("image_to_text_r{k}"), serde_json::json!(recall_at_k(&sim, k)));
        r.insert(format!("text_to_image_r{k}"), serde_json::json!(recall_at_k(&sim.tr(), k)));
    }
    println!("{:<14} n {} | i→t R@1 {:.4} R@5 {:.4} R@10 {:.4} | t→i R@1 {:.4} R@5 {:.4} R@10 {:.4}", loaded.model.config.name, f.image.size()[0],
        r["image_to_text_r1"].as_f64().unwrap(), r["image_to_text_r5"].as_f64().unwrap(), r["image_to_text_r10"].as_f64().unwrap(),
        r["text_to_image_r1"].as_f64().unwrap(), r["text_to_image_r5"].as_f64().unwrap(), r["text_to_image_r10"].as_f64().unwrap());
    if let Some(dir) = out {
        let j = serde_json::json!({"provenance": provenance(&loaded, data_id, 0), "n": f.image.size()[0], "retrieval": r});
        write_atomic(&dir.join("retrieval.json"), serde_json::to_string_pretty(&j).unwrap().as_bytes())?;
    }
    Ok(())
}

fn tokenize(text: &str, context: usize, json: bool) -> Result<()> {
    if context < 2 {
        return Err(Error::config("--context", context, "must be at least 2 (SOT and EOT)"));
    }
    let enc = Tokenizer::new(context).tokenize(text);
    if enc.truncated {
        eprintln!("note: caption longer than {context} tokens; truncated with EOT in the last slot");
    }
    if json {
        println!("{}", serde_json::to_string(&enc.ids).unwrap());
    } else {
        println!("{}", enc.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn select<T: Copy + PartialEq + std::fmt::Display>(wanted: &Option<Vec<T>>, all: &[T], what: &str) -> Result<Vec<T>> {
    match wanted {
        None => Ok(all.to_vec()),
        Some(w) => {
            for x in w {
                if !all.contains(x) {
                    let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
                    return Err(Error::Invalid(format!("{what} {x} out of range; available: {}", list.join(","))));
                }
            }
            Ok(w.clone())
        }
    }
}

fn attention(a: &AttentionArgs) -> Result<()> {
    let loaded = a.model.build(a.seed)?;
    let model = &loaded.model;
    let cfg = model.config.clone();
    let size = cfg.vision.image_size as u32;
    let (rgb, default_caption, data_id) = match &a.image {
        Some(path) => {
            let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let im = img::resize_center_crop(&img::load_rgb(path)?, size);
            (im, None, sha256_hex(&raw))
        }
        None => {
            let scene = synth::scene(a.seed, 0, size);
            let im = image::RgbImage::from_raw(size, size, scene.pixels.clone()).expect("scene size");
            (im, Some(scene.caption.clone()), format!("synthetic:seed={}:index=0", a.seed))
        }
    };
    let caption = a.caption.clone().or(default_caption).ok_or_else(|| Error::Invalid("--caption is required with --image".into()))?;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let enc = tok.tokenize(&caption);
    if enc.truncated {
        eprintln!("note: caption longer than {} tokens; truncated", cfg.text.context_length);
    }
    let pixels = img::to_tensor(rgb.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std).unsqueeze(0);
    let tokens = Tensor::from_slice(&enc.ids).view([1, -1]);
    let vslots = select(&a.layers.as_ref().map(|l| l.iter().copied().filter(|s| cfg.vision_has_block(*s)).collect()), &cfg.vision_attention_slots(), "layer")?;
    let tslots = select(&a.layers, &cfg.text_attention_slots(), "layer")?;
    let heads_all: Vec<usize> = (0..cfg.vision.heads.max(cfg.text.heads) as usize).collect();
    let heads = select(&a.heads, &heads_all, "head")?;

    let mut cache = ActivationCache::new();
    let capture = Capture::attention();
    let (ie, te) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        Ok((model.encode_image_with(&pixels, &capture, &mut cache, false)?, model.encode_text_with(&tokens, &capture, &mut cache)?))
    })?;
    let similarity = ie.matmul(&te.tr()).double_value(&[0, 0]);

    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut prov = Provenance::new(&cfg.name, loaded.weights_id.clone(), data_id, cfg.preprocess.clone(), a.seed);
    if a.model.checkpoint.is_none() {
        prov.notes.push("model weights are a fresh initialisation (no checkpoint given)".into());
    }
    prov.notes.push("attention = post-softmax probabilities per head; image maps are CLS→patch rows".into());

    // Image: CLS → patches, layer × head grid (+ mean column).
    let grid = cfg.grid();
    let mut cells = Vec::new();
    let mut csv = prov.csv_header() + "modality,slot,head,query,key,value\n";
    for &slot in &vslots {
        let probs = cache.require(Modality::Vision, slot, Site::AttnProbs)?;
        let maps = image_query_maps(probs, slot, 0, a.query, grid)?;
        let mut row = Vec::new();
        for m in maps.iter().filter(|m| m.head.is_none_or(|h| heads.contains(&h) && h < cfg.vision.heads as usize)) {
            push_csv(&mut csv, "vision", m, a.query);
            row.push((m.values.clone(), m.side));
        }
        cells.push(row);
    }
    let mut col_labels: Vec<String> = heads.iter().filter(|&&h| h < cfg.vision.heads as usize).map(|h| format!("head {h}")).collect();
    col_labels.push("mean".into());
    overlay_grid_png(
        &a.out.join("vision_cls_attention.png"),
        &OverlayGrid {
            title: format!("{} — {}→patch attention, \"{}\"", cfg.name, if a.query == 0 { "CLS".to_string() } else { format!("patch {}", a.query - 1) }, short(&caption)),
            base: &rgb,
            cells,
            row_labels: vslots.iter().map(|s| format!("slot {s}")).collect(),
            col_labels,
            cell: 96,
            alpha: 0.55,
        },
    )?;

    // Text: token × token per slot (head mean), words from SOT..EOT.
    let labels: Vec<String> = enc.ids[..=enc.eot_position].iter().map(|&i| tok.token_label(i)).collect();
    for &slot in &tslots {
        let probs = cache.require(Modality::Text, slot, Site::AttnProbs)?;
        let maps = text_maps(probs, slot, 0, enc.eot_position as i64)?;
        for m in maps.iter().filter(|m| m.head.is_none_or(|h| heads.contains(&h) && h < cfg.text.heads as usize)) {
            push_csv(&mut csv, "text", m, -1);
        }
        let mean = maps.last().expect("head mean");
        matrix_png_svg(
            &a.out.join(format!("text_attention_slot{slot}")),
            &Matrix { title: format!("{} — text attention, slot {slot} (head mean)", cfg.name), values: &mean.values, side: mean.side, labels: labels.clone() },
        )?;
    }
    write_atomic(&a.out.join("attention.csv"), csv.as_bytes())?;
    let methods: Vec<&str> = match a.method.as_str() {
        "all" => vec!["raw", "rollout", "relevancy"],
        m @ ("raw" | "rollout" | "relevancy") => vec![m],
        other => return Err(Error::config("--method", other, "expected raw, rollout, relevancy or all")),
    };
    let faith = attribution_maps(model, &pixels, &tokens, enc.eot_position as i64, &methods, a.start_layer, a.faith_steps, &rgb, &a.out, &prov, &labels)?;
    let summary = serde_json::json!({
        "provenance": prov,
        "caption": caption,
        "token_ids": enc.ids,
        "eot_position": enc.eot_position,
        "words": enc.words,
        "similarity": similarity,
        "vision_slots": vslots,
        "text_slots": tslots,
        "grid": grid,
        "faithfulness": faith,
    });
    write_atomic(&a.out.join("attention.json"), serde_json::to_string_pretty(&summary).unwrap().as_bytes())?;
    println!("wrote {} (image–caption cosine {similarity:.4})", a.out.display());
    Ok(())
}

/// Raw / rollout / relevancy maps for one image–caption pair, their overlays, text
/// relevancy, and deletion/insertion AUCs of the image–caption cosine.
#[allow(clippy::too_many_arguments)]
fn attribution_maps(
    m: &MsClip,
    pixels: &Tensor,
    tokens: &Tensor,
    eot: i64,
    methods: &[&str],
    start: Option<usize>,
    steps: usize,
    rgb: &image::RgbImage,
    out: &std::path::Path,
    prov: &Provenance,
    labels: &[String],
) -> Result<serde_json::Value> {
    use msclip::analysis::attribution::{auc, order_by_relevance, perturbation_masks, relevancy, rollout};
    let cfg = &m.config;
    let grid = cfg.grid();
    let vslots = cfg.vision_attention_slots();
    let tslots = cfg.text_attention_slots();
    if let Some(s0) = start {
        if !vslots.contains(&s0) {
            return Err(Error::Invalid(format!("--start-layer {s0} is not a vision attention slot ({vslots:?})")));
        }
    }
    // One forward with the graph kept, so ∂s/∂A can be taken for relevancy.
    let mut cache = ActivationCache::new();
    let cap = Capture::attention().keep_graph();
    let ie = m.encode_image_with(pixels, &cap, &mut cache, false)?;
    let te = m.encode_text_with(tokens, &cap, &mut cache)?;
    let score = (&ie * &te).sum(tch::Kind::Float) * m.logit_scale.exp();
    let pv: Vec<Tensor> = vslots.iter().map(|&s| cache.require(Modality::Vision, s, Site::AttnProbs).map(|t| t.shallow_clone())).collect::<Result<_>>()?;
    let pt: Vec<Tensor> = tslots.iter().map(|&s| cache.require(Modality::Text, s, Site::AttnProbs).map(|t| t.shallow_clone())).collect::<Result<_>>()?;
    let mut maps: Vec<(String, Vec<f32>)> = Vec::new();
    let mut text_rel: Vec<(String, Vec<f64>)> = Vec::new();
    let to_f32 = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().view([-1])).unwrap();
    let e = eot;
    for &method in methods {
        match method {
            "raw" => {
                let last = pv.last().unwrap().get(0).detach().mean_dim(0, false, tch::Kind::Float);
                maps.push(("raw".into(), to_f32(&last.get(0).narrow(0, 1, grid * grid))));
            }
            "rollout" => {
                let from = vslots.iter().position(|&s| Some(s) == start).unwrap_or(0);
                let r = rollout(&pv[from..].iter().map(|t| t.get(0).detach()).collect::<Vec<_>>());
                maps.push(("rollout".into(), to_f32(&r.get(0).narrow(0, 1, grid * grid))));
                let rt = rollout(&pt.iter().map(|t| t.get(0).detach()).collect::<Vec<_>>());
                text_rel.push(("rollout".into(), Vec::<f64>::try_from(rt.get(e).narrow(0, 0, e + 1)).unwrap()));
            }
            "relevancy" => {
                let from = vslots.iter().position(|&s| Some(s) == start).unwrap_or(vslots.len() - 1);
                let inputs: Vec<&Tensor> = pv[from..].iter().chain(pt.iter()).collect();
                let grads = Tensor::run_backward(&[&score], &inputs, true, false);
                let nv = pv.len() - from;
                let rv = relevancy(&pv[from..].iter().map(|t| t.get(0).detach()).collect::<Vec<_>>(), &grads[..nv].iter().map(|g| g.get(0)).collect::<Vec<_>>());
                maps.push(("relevancy".into(), to_f32(&rv.get(0).narrow(0, 1, grid * grid))));
                let rt = relevancy(&pt.iter().map(|t| t.get(0).detach()).collect::<Vec<_>>(), &grads[nv..].iter().map(|g| g.get(0)).collect::<Vec<_>>());
                let row = Vec::<f64>::try_from(rt.get(e).narrow(0, 0, e + 1)).unwrap();
                // Words only (1..e), normalised to sum 1.
                let words: f64 = row[1..e as usize].iter().sum();
                let norm: Vec<f64> = row.iter().enumerate().map(|(i, v)| if i >= 1 && i < e as usize && words > 0.0 { v / words } else { 0.0 }).collect();
                text_rel.push(("relevancy".into(), norm));
            }
            _ => unreachable!(),
        }
    }
    // Faithfulness: mask patches (normalised value 0 = the mean colour) in relevance order.
    let p = cfg.vision.patch_size;
    let mut report = serde_json::Map::new();
    for (name, map) in &maps {
        let order = order_by_relevance(map);
        let mut entry = serde_json::Map::new();
        for (kind, insertion) in [("deletion", false), ("insertion", true)] {
            let masks = perturbation_masks(&order, steps, insertion);
            let mk = Tensor::from_slice(&masks.concat()).view([masks.len() as i64, 1, grid, grid]);
            let up = mk.repeat_interleave_self_int(p, Some(2), None).repeat_interleave_self_int(p, Some(3), None);
            let batch = pixels * up;
            let curve: Vec<f64> = tch::no_grad(|| -> Result<Vec<f64>> {
                let emb = m.encode_image(&batch)?;
                Ok(Vec::<f64>::try_from(emb.matmul(&te.detach().tr()).squeeze_dim(1).to_kind(tch::Kind::Double)).unwrap())
            })?;
            entry.insert(format!("{kind}_auc"), serde_json::json!(auc(&curve)));
            entry.insert(format!("{kind}_curve"), serde_json::json!(curve));
        }
        report.insert(name.clone(), serde_json::Value::Object(entry));
    }
    // Figures and numbers.
    overlay_grid_png(
        &out.join("attribution.png"),
        &OverlayGrid {
            title: format!("{} — image attribution for the caption", cfg.name),
            base: rgb,
            cells: vec![maps.iter().map(|(_, v)| (v.clone(), grid as usize)).collect()],
            row_labels: vec!["image".into()],
            col_labels: maps.iter().map(|(n, _)| n.clone()).collect(),
            cell: 128,
            alpha: 0.55,
        },
    )?;
    let mut csv = prov.csv_header() + "method,kind,index,label,value\n";
    for (name, v) in &maps {
        for (i, x) in v.iter().enumerate() {
            csv.push_str(&format!("{name},image_patch,{i},,{x:.6e}\n"));
        }
    }
    for (name, v) in &text_rel {
        for (i, x) in v.iter().enumerate() {
            csv.push_str(&format!("{name},text_token,{i},{},{x:.6e}\n", labels.get(i).map(|s| s.replace(',', " ")).unwrap_or_default()));
        }
    }
    write_atomic(&out.join("attribution.csv"), csv.as_bytes())?;
    Ok(serde_json::Value::Object(report))
}

fn push_csv(csv: &mut String, modality: &str, m: &HeadMap, query: i64) {
    let head = m.head.map(|h| h.to_string()).unwrap_or_else(|| "mean".into());
    for (i, v) in m.values.iter().enumerate() {
        // Image rows: key = patch index (row-major); text rows: query,key inside SOT..EOT.
        let (q, k) = if query >= 0 { (query as usize, i) } else { (i / m.side, i % m.side) };
        csv.push_str(&format!("{modality},{},{head},{q},{k},{v:.6e}\n", m.slot));
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 48 { format!("{}…", s.chars().take(47).collect::<String>()) } else { s.to_string() }
}
