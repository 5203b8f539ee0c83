//! `msclip-train`: contrastive training with checkpoints, exact resume and telemetry.
//! Exit status: 0 ok, 1 training stopped (e.g. non-finite loss), 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use msclip::cli::{int_in, positive_float};
use msclip::train::{train, Resume, TrainConfig, TrainOptions};
use msclip::{Error, Result};
use tch::Device;

#[derive(Parser)]
#[command(name = "msclip-train", version, about = "Train CLIP / MS-CLIP models", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Training config TOML (see configs/train/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run directory (checkpoints/, metrics.jsonl, train.toml).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override `model` (preset name or model TOML).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_parser = int_in(1i64..=1 << 40))]
    steps: Option<i64>,
    #[arg(long, value_parser = int_in(2usize..=1 << 20))]
    batch_size: Option<usize>,
    #[arg(long, value_parser = positive_float)]
    lr: Option<f64>,
    #[arg(long, value_parser = int_in(0i64..=1 << 40))]
    warmup_steps: Option<i64>,
    /// Save every N steps (0 = only at the end).
    #[arg(long, value_parser = int_in(0i64..=1 << 40))]
    save_every: Option<i64>,
    #[arg(long, value_parser = int_in(1usize..=1_000_000))]
    keep: Option<usize>,
    /// Evaluate every N steps (0 = never).
    #[arg(long, value_parser = int_in(0i64..=1 << 40))]
    eval_every: Option<i64>,
    #[arg(long, value_parser = int_in(2usize..=1_000_000))]
    eval_items: Option<usize>,
    #[arg(long, value_parser = int_in(2usize..=1 << 40))]
    data_items: Option<usize>,
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Train one run per seed into OUT/seed-<s> (a group, as recipes name it with
    /// `runs = ["OUT/seed-{seed}"]` and `seeds = [...]`), e.g. `--seeds 0,1,2`.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    seeds: Vec<u64>,
    /// Stop after N steps (the schedule still spans --steps); resume later with --resume.
    #[arg(long, value_parser = int_in(1i64..=1 << 40))]
    stop_after: Option<i64>,
    /// fp32 | amp (= amp-fp16: CUDA autocast, dynamic loss scale) | amp-bf16 (CUDA autocast in bf16)
    #[arg(long)]
    precision: Option<String>,
    /// Micro-batches per batch (gradient accumulation with cached features).
    #[arg(long, value_parser = int_in(1usize..=1 << 20))]
    accum_freq: Option<usize>,
    /// Image–caption data: a manifest (.tsv/.csv) or tar shards (dir/shard-{000..009}.tar).
    #[arg(long)]
    data: Option<String>,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// auto | cpu | cuda
    #[arg(long, default_value = "auto")]
    device: String,
    /// Resume from the newest checkpoint in OUT that verifies (an error if there is none), or
    /// from the given checkpoint directory.
    #[arg(long, num_args = 0..=1, default_missing_value = "", conflicts_with = "resume_or_fresh")]
    resume: Option<String>,
    /// Resume from the newest valid checkpoint in OUT, or start fresh if there is none (for
    /// job scripts that are re-submitted until the run is done).
    #[arg(long)]
    resume_or_fresh: bool,
    /// Start fresh even if OUT holds an earlier run: its metrics.jsonl and checkpoints are
    /// deleted first.
    #[arg(long, conflicts_with_all = ["resume", "resume_or_fresh"])]
    force: bool,
    /// Print a progress line every 10 steps on stderr.
    #[arg(long)]
    progress: bool,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Import published weights (torch.save zip: OpenAI/OpenCLIP CLIP state dicts, the official
    /// MS-CLIP-S layout; or safetensors) as an msclip checkpoint directory.
    Import {
        #[arg(long)]
        from: PathBuf,
        /// A preset name, `auto` (inferred from keys and shapes), or use --model-config.
        #[arg(long, default_value = "auto")]
        model: String,
        /// A model config TOML instead of a preset.
        #[arg(long)]
        model_config: Option<PathBuf>,
        /// Checkpoint directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing checkpoint at OUT.
        #[arg(long)]
        force: bool,
    },
    /// Export a checkpoint as an OpenAI/OpenCLIP-named state dict (safetensors), loadable by
    /// OpenCLIP for vanilla CLIP models (`load_state_dict` after `safetensors.torch.load_file`).
    Export {
        #[arg(long)]
        checkpoint: PathBuf,
        /// openclip (the only format so far).
        #[arg(long, default_value = "openclip")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file at OUT.
        #[arg(long)]
        force: bool,
    },
}

fn export(checkpoint: &std::path::Path, format: &str, out: &std::path::Path, force: bool) -> Result<()> {
    if format != "openclip" {
        return Err(Error::config("--format", format, "expected openclip"));
    }
    let (n, vanilla) = msclip::checkpoint::import::export_file(checkpoint, out, force)?;
    if !vanilla {
        eprintln!("note: the model is not a vanilla CLIP; the file uses the official MS-CLIP key names, which OpenCLIP cannot load");
    }
    println!("wrote {n} tensors to {}", out.display());
    Ok(())
}

fn import(from: &std::path::Path, model: &str, model_config: Option<&std::path::Path>, out: &std::path::Path, force: bool) -> Result<()> {
    let cfg = match (model_config, model) {
        (Some(p), _) => Some(msclip::model::ModelConfig::from_toml_file(p)?),
        (None, "auto") => None,
        (None, name) => Some(msclip::model::ModelConfig::preset(name)?),
    };
    let r = msclip::checkpoint::import::import_file(from, cfg, out, force)?;
    println!(
        "imported {} as {} into {} (read {:.2}s, map {:.2}s, write checkpoint {:.2}s)",
        from.display(),
        r.model,
        out.display(),
        r.read_s,
        r.map_s,
        r.write_s
    );
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Sub::Import { from, model, model_config, out, force }) => return import(from, model, model_config.as_deref(), out, *force),
        Some(Sub::Export { checkpoint, format, out, force }) => return export(checkpoint, format, out, *force),
        None => {}
    }
    let (Some(config), Some(out)) = (cli.config.clone(), cli.out.clone()) else {
        return Err(Error::Invalid("give --config FILE and --out RUN_DIR (or a subcommand: import)".into()));
    };
    let mut tc = TrainConfig::from_toml_file(&config)?;
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = cli.$f.clone() { tc.$f = v; } )* };
    }
    set!(model, steps, batch_size, lr, warmup_steps, save_every, keep, eval_every, eval_items, data_items, seed, precision, accum_freq);
    if cli.stop_after.is_some() {
        tc.stop_after = cli.stop_after;
    }
    if cli.data.is_some() {
        tc.data = cli.data.clone();
    }
    tc.strict |= cli.strict;
    let device = match cli.device.as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => return Err(Error::Invalid("--device cuda: no CUDA device (build with --features cuda on a GPU machine)".into())),
        other => return Err(Error::config("--device", other, "expected auto, cpu or cuda")),
    };
    let resume = match cli.resume.as_deref() {
        _ if cli.resume_or_fresh => Resume::LatestOrFresh,
        None => Resume::No,
        Some("") => Resume::Latest,
        Some(p) => Resume::Path(PathBuf::from(p)),
    };
    let progress = cli.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let opts = TrainOptions { resume, force: cli.force, device, progress };
    if cli.seeds.is_empty() {
        let outcome = train(&tc, &out, &opts)?;
        if let Some(e) = &outcome.last_eval {
            println!("{}", serde_json::to_string(e).unwrap());
        }
        return Ok(());
    }
    if matches!(opts.resume, Resume::Path(_)) {
        return Err(Error::Invalid("--seeds with --resume PATH: resume a group with --resume (latest of each seed) or --resume-or-fresh".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(s) = cli.seeds.iter().find(|s| !seen.insert(**s)) {
        return Err(Error::config("--seeds", s, "each seed once"));
    }
    for &seed in &cli.seeds {
        tc.seed = seed;
        let dir = out.join(format!("seed-{seed}"));
        eprintln!("seed {seed} → {}", dir.display());
        let outcome = train(&tc, &dir, &opts)?;
        if let Some(e) = &outcome.last_eval {
            println!("{{\"seed\":{seed},\"eval\":{}}}", serde_json::to_string(e).unwrap());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
