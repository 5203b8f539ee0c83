//! `msclip-analyze`: a table of commands over `crate::commands`. Each command parses its
//! arguments, calls the library, prints or writes the report and maps errors to exit codes:
//! 0 ok, 1 `check` found drift, 2 bad input (unknown preset, bad config, unreadable file, …).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::checkpoint::{LoadedModel, ModelSource};
use crate::cli::{int_in, positive_float};
use crate::commands::{
    self, attention, check, embed, eval, figures, gap, heads, nmi, probe, retrieval, zeroshot, DataOptions, SkippedItem,
};
use crate::data::pairs::PairData;
use crate::eval::Pooling;
use crate::model::{MsClip, Site};
use crate::tokenizer::{Tokenizer, Truncation};
use crate::{Error, Result};
use clap::{Args, Parser, Subcommand};

use crate::limits::{ABLATE_ITEMS, BATCH as MAX_BATCH, DECOMPOSE_ITEMS, ITEMS as MAX_ITEMS, PATCH_PAIRS};

#[derive(Parser)]
#[command(name = "msclip-analyze", version, about = "Inspect and explain CLIP / MS-CLIP models")]
pub(super) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArg {
    /// Built-in preset (clip-b32, clip-b16, msclip-b32, msclip-s-b32, msclip-s-b16, tiny-clip, tiny-msclip, tiny-msclip-s, …).
    #[arg(long, conflicts_with_all = ["config", "checkpoint"])]
    model: Option<String>,
    /// A model config TOML file (any point of the sharing spectrum).
    #[arg(long, conflicts_with = "checkpoint")]
    config: Option<PathBuf>,
    /// A checkpoint directory (RUN/checkpoints/step-NNNNNNNN, or an imported one), or a run
    /// directory (its newest checkpoint).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

impl ModelArg {
    fn source(&self) -> Result<ModelSource> {
        match (&self.model, &self.config, &self.checkpoint) {
            (Some(name), _, _) => Ok(ModelSource::Preset(name.clone())),
            (None, Some(path), _) => Ok(ModelSource::Config(path.clone())),
            (None, None, Some(dir)) if !dir.join("meta.json").exists() && dir.join("checkpoints").is_dir() => ModelSource::for_run(dir),
            (None, None, Some(dir)) => Ok(ModelSource::Checkpoint(dir.clone())),
            (None, None, None) => Err(Error::Invalid("give --model PRESET, --config FILE or --checkpoint DIR".into())),
        }
    }
    fn load(&self, seed: u64) -> Result<LoadedModel> {
        self.source()?.load(seed)
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
    /// Which synthetic world: shapes (1–3 objects of 48 kinds) or relations (two objects
    /// whose arrangement the caption names).
    #[arg(long, value_enum, default_value_t = crate::data::synth::World::Shapes)]
    world: crate::data::synth::World,
    /// Use only the first N pairs (fixed order).
    #[arg(long, value_parser = int_in(1usize..=MAX_ITEMS))]
    limit: Option<usize>,
    /// Batch size of the forward passes (fixed, for reproducible numbers).
    #[arg(long, default_value_t = 64, value_parser = int_in(1usize..=MAX_BATCH))]
    batch: usize,
    /// Captions longer than the context: keep-eot (OpenAI's truncate=True, the default) or
    /// official (the MS-CLIP tokenizer: cut without EOT, pooled at SOT).
    #[arg(long, value_enum, default_value_t = Truncation::KeepEot)]
    truncation: Truncation,
}

impl DataArg {
    fn options(&self) -> Result<DataOptions> {
        let data = match (&self.manifest, self.synthetic) {
            (Some(m), _) => PairData::Manifest(m.clone()),
            (None, Some(n)) => PairData::Synthetic { n, seed: self.data_seed, world: self.world },
            (None, None) => return Err(Error::Invalid("give --manifest FILE or --synthetic N".into())),
        };
        Ok(DataOptions { data, limit: self.limit, batch: self.batch, truncation: self.truncation })
    }
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
    fn options(&self) -> Result<nmi::NmiOptions> {
        let site = match Site::parse(&self.site) {
            Ok(s @ (Site::Ln1 | Site::AttnOut | Site::Ln2 | Site::Resid)) => s,
            _ => return Err(Error::config("--site", &self.site, "expected ln1, attn_out, ln2 or resid")),
        };
        Ok(nmi::NmiOptions { site, pooling: self.pooling, projected: self.projected, k: self.k, restarts: self.restarts, seed: self.seed })
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
        #[arg(long, value_enum, default_value_t = Truncation::KeepEot)]
        truncation: Truncation,
        #[arg(long)]
        json: bool,
    },
    /// Per-head attention maps of both towers for one image and caption, rollout, relevancy
    /// and their deletion/insertion faithfulness.
    Attention(AttentionArgs),
    /// An interactive explorer: one self-contained HTML page (DIR/index.html, no network) with
    /// every layer's and head's attention in both towers, per-token relevancy over the image,
    /// rollout/relevancy with faithfulness AUCs, for one pair or a small gallery (--manifest).
    Explore(ExploreArgs),
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
        #[arg(long, default_value_t = gap::DEFAULT_UNIFORMITY_MAX, value_parser = int_in(2i64..=100_000))]
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
    /// Rewrite the include blocks of README.md and docs/*.md (`<!-- include: PATH -->` …
    /// `<!-- end include -->`) from the generated files they name, so no result is typed.
    SyncDocs {
        /// The repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// Language-to-vision transfer of attention: per-head statistics comparable across the
    /// towers (normalised entropy, CLS/SOT lift, offset shape and locality, object-relation
    /// lift), text–vision agreement over the shared slots' heads against a within-slot
    /// permutation null (unshared slots as reference), and with --run the same statistics at
    /// every checkpoint with a sign test of "text settles before vision".
    Transfer {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        out: PathBuf,
        /// Permutations of the within-slot null.
        #[arg(long, default_value_t = 2000, value_parser = int_in(1usize..=1_000_000))]
        permutations: usize,
        /// A run directory: also compute the statistics at each of its checkpoints.
        #[arg(long)]
        run: Option<PathBuf>,
        /// First text query position counted (SOT = 0): every offset up to --max-distance is
        /// then open to each query, so the causal mask does not decide the profile.
        #[arg(long, default_value_t = 4, value_parser = int_in(3i64..=70))]
        text_min_query: i64,
        /// Largest offset of the profiles (< --text-min-query).
        #[arg(long, default_value_t = 3, value_parser = int_in(2i64..=69))]
        max_distance: i64,
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
        #[arg(long, value_enum, default_value_t = probe::Feature::Pre)]
        feature: probe::Feature,
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
        /// Render nothing: rewrite OUT/README.md from what the recipes' folders hold (after
        /// re-rendering one recipe file, which leaves the index as it is).
        #[arg(long)]
        index_only: bool,
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
    /// Head importance: every (slot, head) ablated in the vision tower, the text tower and
    /// both (mean over a reference set, zero or resample), whole sites too; Δ zero-shot,
    /// Δ R@1 both ways, Δ matched cosine; vision–text agreement of importance.
    Ablate {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        out: PathBuf,
        /// Held-out zero-shot images and captioned pairs (at most 4,096: the cost grows with
        /// items², about 12 s for 4,000 on tiny-msclip-s, 2 cores).
        #[arg(long, default_value_t = 256, value_parser = int_in(2usize..=ABLATE_ITEMS))]
        synthetic: usize,
        #[arg(long, value_enum, default_value_t = crate::causal::ablate::AblationKind::Mean)]
        kind: crate::causal::ablate::AblationKind,
        /// Reference items of the mean ablation (at most 4,096).
        #[arg(long, default_value_t = 256, value_parser = int_in(2usize..=ABLATE_ITEMS))]
        reference: usize,
        /// Seed of the held-out evaluation world.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skip the whole-site ablations.
        #[arg(long)]
        no_sites: bool,
        #[arg(long, default_value_t = 2000, value_parser = int_in(1usize..=10_000_000))]
        permutations: usize,
        #[arg(long, default_value_t = 128, value_parser = int_in(1i64..=65_536))]
        batch: i64,
    },
    /// Activation patching on synthetic minimal pairs: the share of the clean − corrupted
    /// logit difference recovered per (slot, token position) and per (slot, head).
    Patch {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        out: PathBuf,
        /// text: captions differing in one attribute; vision: one object recoloured.
        #[arg(long, value_enum, default_value_t = commands::patch::Tower::Text)]
        tower: commands::patch::Tower,
        #[arg(long, value_enum, default_value_t = crate::causal::patch::Attribute::Colour)]
        attribute: crate::causal::patch::Attribute,
        /// Minimal pairs (at most 10,000; one patched run per slot and position, and per head).
        #[arg(long, default_value_t = 32, value_parser = int_in(1usize..=PATCH_PAIRS))]
        pairs: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Direct-effect decomposition of both embeddings into heads, FFNs and biases (sum
    /// checked), the mean-ablation curve, TextSpan per head, each head from both sides.
    Decompose {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        out: PathBuf,
        /// Held-out items (at most 8,192: every head's contribution per item is kept).
        #[arg(long, default_value_t = 128, value_parser = int_in(2usize..=DECOMPOSE_ITEMS))]
        synthetic: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Descriptions per head (TextSpan's m).
        #[arg(long, default_value_t = 5, value_parser = int_in(1usize..=1000))]
        span: usize,
        /// More descriptions for the TextSpan pool, one per line.
        #[arg(long)]
        texts: Option<PathBuf>,
        /// Principal components compared per head.
        #[arg(long, default_value_t = 3, value_parser = int_in(1i64..=4096))]
        subspace_k: i64,
        /// TextSpan pre-projection: texts are projected onto the top K right singular vectors
        /// of each head's contributions before the greedy search, as the reference
        /// (Gandelsman et al.'s w_ov_rank, 80); 0 = no projection.
        #[arg(long, default_value_t = 80, value_parser = int_in(0usize..=4096))]
        span_rank: usize,
        /// How the biases and the final LayerNorm's centring are attributed: `separate` (each
        /// term centred by its own mean, biases as terms of their own: a head's term is what
        /// its output alone adds) or `reference` (Gandelsman et al.'s prs_hook: biases and the
        /// LayerNorm mean split evenly over heads and layers, terms divided by the embedding's
        /// norm; matched term by term in tests/decompose_reference.rs).
        #[arg(long, value_enum, default_value_t = crate::causal::decompose::Convention::Separate)]
        convention: crate::causal::decompose::Convention,
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
    /// First vision slot of rollout/relevancy (default: all attention layers for rollout, the
    /// last layer for relevancy, as Transformer-MM-Explainability's CLIP default).
    #[arg(long)]
    start_layer: Option<usize>,
    /// First text slot of relevancy (default: the last layer, as the reference CLIP code).
    #[arg(long)]
    text_start_layer: Option<usize>,
    /// Deletion/insertion curve resolution (fractions k/steps of the patches; at most the
    /// number of patches is meaningful, and at most 1,000 are run).
    #[arg(long, default_value_t = 10, value_parser = int_in(1usize..=1000))]
    faith_steps: usize,
    #[arg(long, value_enum, default_value_t = Truncation::KeepEot)]
    truncation: Truncation,
}

#[derive(Args)]
struct ExploreArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Image file; without it (and without --manifest) a scene of the synthetic world.
    #[arg(long, conflicts_with = "manifest")]
    image: Option<PathBuf>,
    /// Caption; defaults to the synthetic scene's caption.
    #[arg(long, conflicts_with = "manifest")]
    caption: Option<String>,
    /// A gallery: image–caption manifest (TSV/CSV with `filepath` and `title` columns).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The gallery's first N pairs.
    #[arg(long, default_value_t = 8, requires = "manifest", value_parser = int_in(1usize..=commands::explore::MAX_PAIRS))]
    limit: usize,
    /// Output folder: index.html, attribution.csv, explore.json.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the model initialisation and of the synthetic scene.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First vision slot of relevancy (default: the last layer).
    #[arg(long)]
    start_layer: Option<usize>,
    /// Deletion/insertion curve resolution.
    #[arg(long, default_value_t = 10, value_parser = int_in(1usize..=1000))]
    faith_steps: usize,
    #[arg(long, value_enum, default_value_t = Truncation::KeepEot)]
    truncation: Truncation,
}

/// The `msclip-analyze` binary: parses the arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    crate::cli::guard_panics(real_main)
}

fn real_main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params { model, json } => params(&model, json),
        Command::Tokenize { text, context, truncation, json } => tokenize(&text, context, truncation, json),
        Command::Attention(a) => attention_cmd(&a),
        Command::Explore(a) => explore_cmd(&a),
        Command::Eval { model, items, seed, json } => eval_cmd(&model, items, seed, json),
        Command::Embed { model, data, out } => embed_cmd(&model, &data, &out),
        Command::Gap { model, data, image_npy, text_npy, uniformity_max, out, json } => {
            gap_cmd(&model, &data, image_npy.as_deref().zip(text_npy.as_deref()), uniformity_max, out.as_deref(), json)
        }
        Command::Zeroshot { model, folder, synthetic, templates, batch, out } => {
            zeroshot_cmd(&model, folder, synthetic, templates.as_deref(), batch, out.as_deref())
        }
        Command::Probe { model, fashion_mnist, synthetic, feature, train, val, test, c, no_standardize, save_features, out } => {
            let data = match (fashion_mnist, synthetic) {
                (Some(d), _) => Ok(probe::ProbeData::FashionMnist(d)),
                (None, true) => Ok(probe::ProbeData::Synthetic),
                (None, false) => Err(Error::Invalid("give --fashion-mnist DIR or --synthetic".into())),
            };
            data.and_then(|data| {
                probe_cmd(
                    &model,
                    &probe::ProbeOptions { data, feature, splits: [train, val, test], cs: c, standardize: !no_standardize },
                    save_features.as_deref(),
                    out.as_deref(),
                )
            })
        }
        Command::Retrieval { model, data, out } => retrieval_cmd(&model, &data, out.as_deref()),
        Command::Figures { recipes, out, index_only: false } => {
            figures::run_all(&recipes, &out).map(|n| println!("wrote {n} recipes into {}", out.display()))
        }
        Command::Figures { recipes, out, index_only: true } => {
            figures::write_index(&recipes, &out).map(|n| println!("indexed {n} recipes in {}", out.join("README.md").display()))
        }
        Command::SyncDocs { root } => sync_docs_cmd(&root),
        Command::Transfer { model, data, out, permutations, run, text_min_query, max_distance } => {
            let opts = crate::commands::transfer::TransferOptions {
                profile: crate::commands::transfer::ProfileOptions { text_min_query, max_distance },
                permutations,
                run,
                ..Default::default()
            };
            transfer_cmd(&model, &data, &out, &opts)
        }
        Command::Heads { model, data, out, permutations, gallery_slots } => {
            heads_cmd(&model, &data, &out, &heads::HeadsOptions { permutations, gallery_slots })
        }
        Command::Nmi { nmi, image_npy: Some(a), text_npy: Some(b), out, json, .. } => nmi_npy_cmd(&a, &b, &nmi, out.as_deref(), json),
        Command::Nmi { model, data, nmi, out, json, .. } => nmi_cmd(&model, &data, &nmi, out.as_deref(), json),
        Command::Ablate { model, out, synthetic, kind, reference, seed, no_sites, permutations, batch } => {
            let opts = crate::causal::ablate::AblateOptions {
                kind,
                items: synthetic,
                seed,
                reference_items: reference,
                reference_seed: seed ^ 0x05EF_5EED,
                sites: !no_sites,
                permutations,
                batch,
            };
            ablate_cmd(&model, &opts, &out)
        }
        Command::Patch { model, out, tower, attribute, pairs, seed } => {
            patch_cmd(&model, &commands::patch::PatchOptions { tower, attribute, pairs, seed }, &out)
        }
        Command::Decompose { model, out, synthetic, seed, span, texts, subspace_k, span_rank, convention } => {
            let span_rank = (span_rank > 0).then_some(span_rank);
            let opts = commands::decompose::DecomposeOptions { items: synthetic, seed, span, texts, subspace_k, span_rank, convention };
            decompose_cmd(&model, &opts, &out)
        }
        Command::Check { model, data, nmi, baseline, update } => {
            return match check_cmd(&model, &data, &nmi, &baseline, update) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn report_skipped(skipped: &[SkippedItem]) {
    for s in skipped.iter().take(5) {
        eprintln!("warning: skipped {}: {}", s.item, s.reason);
    }
    if skipped.len() > 5 {
        eprintln!("warning: … {} more skipped", skipped.len() - 5);
    }
}

fn params(model: &ModelArg, json: bool) -> Result<()> {
    let cfg = model.source()?.config()?;
    let (vs, _m) = MsClip::build_for_loading(&cfg, tch::Device::Cpu);
    let c = MsClip::param_count(&vs);
    if json {
        println!("{}", serde_json::to_string(&c).expect("counts serialise"));
    } else {
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", "model", "total", "shared", "vision_only", "text_only");
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", cfg.name, c.total, c.shared, c.vision_only, c.text_only);
    }
    Ok(())
}

fn tokenize(text: &str, context: usize, truncation: Truncation, json: bool) -> Result<()> {
    let enc = Tokenizer::new(context).with_truncation(truncation).tokenize(text);
    if enc.truncated {
        eprintln!("note: caption longer than {context} tokens; truncated ({truncation:?})");
    }
    if json {
        println!("{}", serde_json::to_string(&enc.ids).expect("ids serialise"));
    } else {
        println!("{}", enc.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn eval_cmd(model: &ModelArg, items: usize, seed: u64, json: bool) -> Result<()> {
    let r = eval::run(&model.load(seed)?, items, seed)?;
    if json {
        println!("{}", commands::to_json(&r));
    } else {
        let e = &r.eval;
        println!(
            "{:<14} zero-shot top1 {:.3} top5 {:.3} | R@1 i→t {:.3} t→i {:.3} | gap {:.3} | relation test {:.3}",
            r.model, e.zero_shot_top1, e.zero_shot_top5, e.image_to_text_r1, e.text_to_image_r1, e.modality_gap, e.relation_acc
        );
    }
    Ok(())
}

fn embed_cmd(model: &ModelArg, data: &DataArg, out: &Path) -> Result<()> {
    let r = embed::run(&model.load(0)?, &data.options()?)?;
    report_skipped(&r.report.skipped);
    r.write(out)?;
    println!("wrote {} pairs to {}", r.report.n, out.display());
    Ok(())
}

fn gap_cmd(model: &ModelArg, data: &DataArg, npy: Option<(&Path, &Path)>, umax: i64, out: Option<&Path>, json: bool) -> Result<()> {
    let r = match npy {
        Some((a, b)) => gap::run_npy(a, b, umax)?,
        None => gap::run(&model.load(0)?, &data.options()?, umax)?,
    };
    report_skipped(&r.skipped);
    if json {
        println!("{}", commands::to_json(&r));
    } else {
        for (k, x) in r.rows() {
            println!("{k:<26} {x}");
        }
    }
    if let Some(dir) = out {
        r.write(dir)?;
    }
    Ok(())
}

fn nmi_npy_cmd(a: &Path, b: &Path, args: &NmiArgs, out: Option<&Path>, json: bool) -> Result<()> {
    let r = nmi::run_npy(a, b, &args.options()?)?;
    if json {
        println!("{}", commands::to_json(&r));
    } else {
        println!("nmi {:.6} inertia {:.6} ({} + {} points, {:.2}s)", r.nmi, r.inertia, r.counts.0, r.counts.1, r.seconds);
    }
    if let Some(dir) = out {
        r.write(dir)?;
    }
    Ok(())
}

fn nmi_cmd(model: &ModelArg, data: &DataArg, args: &NmiArgs, out: Option<&Path>, json: bool) -> Result<()> {
    let opts = args.options()?;
    let r = nmi::run(&model.load(0)?, &data.options()?, &opts)?;
    report_skipped(&r.skipped);
    if json {
        println!("{}", commands::to_json(&r));
    } else {
        println!("{:>5} {:>8}", "slot", "nmi");
        for l in &r.layers {
            println!("{:>5} {:>8.4}", l.slot, l.nmi);
        }
    }
    if let Some(dir) = out {
        r.write(dir, opts.site)?;
    }
    Ok(())
}

fn check_cmd(model: &ModelArg, data: &DataArg, args: &NmiArgs, baseline: &Path, update: bool) -> Result<bool> {
    match check::run(&model.load(0)?, &data.options()?, &args.options()?, baseline, update)? {
        check::CheckOutcome::Updated => {
            println!("baseline written to {}", baseline.display());
            Ok(true)
        }
        check::CheckOutcome::Compared(report) => {
            print!("{}", report.table());
            Ok(report.passed)
        }
    }
}

fn heads_cmd(model: &ModelArg, data: &DataArg, out: &Path, opts: &heads::HeadsOptions) -> Result<()> {
    let r = heads::run(&model.load(0)?, &data.options()?, opts)?;
    report_skipped(&r.skipped);
    r.write(out)?;
    if !r.grounding.is_empty() {
        println!("{:<16} {:>9} {:>9} {:>9} {:>8}", "grounding", "box_share", "pointing", "uniform", "objects");
        for g in &r.relevancy_grounding {
            println!("{:<16} {:>9.3} {:>9.3} {:>9.3} {:>8}", g.method, g.box_share, g.pointing_acc, g.uniform_share, g.objects);
        }
        let best = r.best_head();
        println!("{:<16} {:>9.3} {:>9.3}", "best head (CLS)", best.0, best.1);
    }
    println!("{:<10} {:>6} {:>9} {:>9}", "statistic", "heads", "spearman", "p");
    for a in &r.agreement {
        println!("{:<10} {:>6} {:>9.4} {:>9.4}", a.statistic, a.heads, a.spearman, a.p_value);
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn sync_docs_cmd(root: &Path) -> Result<()> {
    let docs = crate::commands::docs::doc_files(root)?;
    let refs: Vec<&Path> = docs.iter().map(|p| p.as_path()).collect();
    let n = crate::commands::docs::sync(root, &refs)?;
    println!("{n} include block(s) rewritten in {} file(s)", docs.len());
    Ok(())
}

fn transfer_cmd(model: &ModelArg, data: &DataArg, out: &Path, opts: &crate::commands::transfer::TransferOptions) -> Result<()> {
    let r = crate::commands::transfer::run(&model.load(0)?, &data.options()?, opts)?;
    report_skipped(&r.skipped);
    r.write(out)?;
    print!("{}", r.table());
    println!("wrote {}", out.display());
    Ok(())
}

fn zeroshot_cmd(
    model: &ModelArg,
    folder: Option<PathBuf>,
    synthetic: Option<usize>,
    templates: Option<&Path>,
    batch: usize,
    out: Option<&Path>,
) -> Result<()> {
    let data = match (folder, synthetic) {
        (Some(root), _) => zeroshot::ZeroshotData::Folder(root),
        (None, Some(n)) => zeroshot::ZeroshotData::Synthetic(n),
        _ => return Err(Error::Invalid("give --folder DIR or --synthetic N".into())),
    };
    let templates = match templates {
        Some(p) => zeroshot::read_templates(p)?,
        None => zeroshot::default_templates(),
    };
    let r = zeroshot::run(&model.load(0)?, &data, &templates, batch)?;
    println!(
        "{:<14} n {} classes {} templates {} | top1 {:.4} top5 {:.4} mean-per-class {:.4}",
        r.model_name,
        r.n,
        r.classes.len(),
        r.templates.len(),
        r.top1,
        r.top5,
        r.mean_per_class
    );
    if let Some(dir) = out {
        r.write(dir)?;
    }
    Ok(())
}

fn probe_cmd(model: &ModelArg, opts: &probe::ProbeOptions, save: Option<&Path>, out: Option<&Path>) -> Result<()> {
    opts.validate()?;
    let loaded = model.load(0)?;
    let r = probe::run(&loaded, opts)?;
    println!(
        "{:<14} {} features {} | best C {} | test top1 {:.4} mean-per-class {:.4} | features {:.1}s, sweep+refit {:.2}s",
        loaded.model.config.name,
        r.feature,
        r.dim,
        r.result.best_c,
        r.result.test_top1,
        r.result.test_mean_per_class,
        r.feature_seconds,
        r.fit_seconds
    );
    if let Some(dir) = save {
        r.write_features(dir)?;
    }
    if let Some(dir) = out {
        r.write(dir)?;
    }
    Ok(())
}

fn retrieval_cmd(model: &ModelArg, data: &DataArg, out: Option<&Path>) -> Result<()> {
    let r = retrieval::run(&model.load(0)?, &data.options()?)?;
    report_skipped(&r.skipped);
    let v = |k: &str| r.retrieval[k];
    println!(
        "{:<14} n {} | i→t R@1 {:.4} R@5 {:.4} R@10 {:.4} | t→i R@1 {:.4} R@5 {:.4} R@10 {:.4}",
        r.model_name,
        r.n,
        v("image_to_text_r1"),
        v("image_to_text_r5"),
        v("image_to_text_r10"),
        v("text_to_image_r1"),
        v("text_to_image_r5"),
        v("text_to_image_r10")
    );
    if let Some(dir) = out {
        r.write(dir)?;
    }
    Ok(())
}

fn attention_cmd(a: &AttentionArgs) -> Result<()> {
    let opts = attention::AttentionOptions {
        image: a.image.clone(),
        caption: a.caption.clone(),
        seed: a.seed,
        layers: a.layers.clone(),
        heads: a.heads.clone(),
        query: a.query,
        methods: attention::Method::parse(&a.method)?,
        start_layer: a.start_layer,
        text_start_layer: a.text_start_layer,
        faith_steps: a.faith_steps,
        truncation: a.truncation,
    };
    let r = attention::run(&a.model.load(a.seed)?, &opts)?;
    if r.truncated {
        eprintln!("note: caption longer than the context; truncated");
    }
    r.write(&a.out)?;
    println!("wrote {} (image–caption cosine {:.4})", a.out.display(), r.similarity);
    Ok(())
}

fn explore_cmd(a: &ExploreArgs) -> Result<()> {
    let base = match &a.manifest {
        Some(m) => commands::explore::ExploreOptions::from_manifest(m, a.limit)?,
        None => commands::explore::ExploreOptions { pairs: vec![(a.image.clone(), a.caption.clone())], ..Default::default() },
    };
    let opts = commands::explore::ExploreOptions {
        seed: a.seed,
        start_layer: a.start_layer,
        faith_steps: a.faith_steps,
        truncation: a.truncation,
        ..base
    };
    let r = commands::explore::run(&a.model.load(a.seed)?, &opts)?;
    let report = r.write(&a.out)?;
    println!(
        "wrote {} ({} pair(s), {:.2} MB, self-contained)",
        a.out.join("index.html").display(),
        report.pairs,
        report.page_bytes as f64 / 1e6
    );
    Ok(())
}

fn ablate_cmd(model: &ModelArg, opts: &crate::causal::ablate::AblateOptions, out: &Path) -> Result<()> {
    let loaded = model.load(0)?;
    let mut bar = crate::cli::Progress::new("ablate");
    let r = commands::ablate::run(&loaded, opts, |d, t| bar.tick(d, t))?;
    r.write(out)?;
    let c = &r.ablation.clean;
    println!(
        "{:<14} clean: zero-shot {:.3} R@1 i→t {:.3} t→i {:.3} matched cosine {:.4} ({} ablation, {:.1}s)",
        loaded.model.config.name,
        c.zero_shot_top1,
        c.image_to_text_r1,
        c.text_to_image_r1,
        c.matched_cosine,
        opts.kind.name(),
        r.seconds
    );
    println!("{:<16} {:<22} {:>6} {:>9} {:>9}", "importance", "scope", "heads", "spearman", "p");
    for a in r.ablation.agreement.iter().filter(|a| !a.scope.starts_with("slot")) {
        println!("{:<16} {:<22} {:>6} {:>9.4} {:>9.4}", a.metric, a.scope, a.heads, a.spearman, a.p_value);
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn patch_cmd(model: &ModelArg, opts: &commands::patch::PatchOptions, out: &Path) -> Result<()> {
    let r = commands::patch::run(&model.load(0)?, opts)?;
    r.write(out)?;
    let p = &r.patching;
    println!(
        "{} pairs ({} {}): clean logit {:.3}, corrupted {:.3}{}",
        p.pairs.len(),
        p.tower,
        p.attribute,
        p.clean_logit,
        p.corrupt_logit,
        if p.excluded_pairs > 0 { format!(" ({} ill-conditioned pairs left out)", p.excluded_pairs) } else { String::new() }
    );
    for (i, slot) in p.slots.iter().enumerate() {
        let (best, v) = p.resid[i].iter().enumerate().fold((0, f64::MIN), |a, (t, &v)| if v > a.1 { (t, v) } else { a });
        println!("slot {slot:>2}: most recovered at {} ({v:.3})", p.positions[best]);
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn decompose_cmd(model: &ModelArg, opts: &commands::decompose::DecomposeOptions, out: &Path) -> Result<()> {
    let r = commands::decompose::run(&model.load(0)?, opts)?;
    r.write(out)?;
    println!(
        "sum check: image {:.2e}, text {:.2e} (max relative error; {} + {} terms)",
        r.image_sum_error, r.text_sum_error, r.terms.0, r.terms.1
    );
    println!(
        "shared heads' subspace similarity (image vs text contributions): {:.3}; unshared pairs: {:.3}",
        r.subspace_similarity_shared, r.subspace_similarity_unshared
    );
    for c in &r.mean_ablation {
        println!("K {:>2}: zero-shot image side {:.3}, text side {:.3}", c.k, c.image.zero_shot_top1, c.text.zero_shot_top1);
    }
    println!("wrote {}", out.display());
    Ok(())
}
