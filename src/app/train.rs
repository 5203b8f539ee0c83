//! `msclip-train`: contrastive training with checkpoints, exact resume and telemetry.
//! Exit status: 0 ok, 1 training stopped (e.g. non-finite loss), 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{int_in, positive_float};
use crate::train::{train, Resume, TrainConfig, TrainOptions};
use crate::{Error, Result};
use clap::Parser;
use tch::Device;

#[derive(Parser)]
#[command(name = "msclip-train", version, about = "Train CLIP / MS-CLIP models", args_conflicts_with_subcommands = true)]
pub(super) struct Cli {
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
    /// Keep the optimizer state only in the newest N checkpoints (older ones keep their
    /// weights but cannot be resumed from).
    #[arg(long, value_parser = int_in(1usize..=1_000_000))]
    keep_optimizer: Option<usize>,
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
    /// fp32 | amp-fp16 (alias amp: CUDA autocast, dynamic loss scale) | amp-bf16 (autocast in
    /// bf16, CUDA or CPU)
    #[arg(long, value_enum)]
    precision: Option<crate::train::amp::Precision>,
    /// Micro-batches per batch (gradient accumulation with cached features).
    #[arg(long, value_parser = int_in(1usize..=1 << 20))]
    accum_freq: Option<usize>,
    /// Image–caption data: a manifest (.tsv/.csv) or tar shards (dir/shard-{000..009}.tar).
    #[arg(long)]
    data: Option<String>,
    /// Stop at the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// auto (CUDA when available) | cpu | cuda
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Resume from the newest checkpoint in OUT that verifies (an error if there is none), or
    /// from the given checkpoint directory.
    #[arg(long, num_args = 0..=1, default_missing_value = "", conflicts_with = "resume_or_fresh")]
    resume: Option<String>,
    /// Resume from the newest valid checkpoint in OUT, or start fresh if there is none (for
    /// job scripts that are re-submitted until the run is done). A run stopped before its first
    /// checkpoint restarts; its metrics are kept as metrics.jsonl.interrupted-N.
    #[arg(long)]
    resume_or_fresh: bool,
    /// Start fresh even if OUT holds an earlier run: its metrics.jsonl and checkpoints are
    /// deleted first.
    #[arg(long, conflicts_with_all = ["resume", "resume_or_fresh"])]
    force: bool,
    /// Print a progress line every 10 steps on stderr.
    #[arg(long)]
    progress: bool,
    /// Data-parallel training: spawn N local worker processes (torchrun's standalone mode;
    /// under torchrun, srun or by hand, the RANK/WORLD_SIZE/MASTER_* or SLURM_* variables say
    /// who each process is instead). batch_size is per rank.
    #[arg(long, value_parser = int_in(1usize..=256))]
    nproc_per_node: Option<usize>,
    /// gloo (CPU tensors; the default on CPU) | nccl (CUDA tensors; needs a --features cuda build)
    #[arg(long, value_enum)]
    dist_backend: Option<Backend>,
    /// Seconds a rank waits for the others (rendezvous and every collective) before failing.
    #[arg(long, default_value_t = 300, value_parser = int_in(1u64..=86_400))]
    dist_timeout: u64,
    /// Each rank computes only its own rows of the contrastive loss (same gradient, less memory).
    #[arg(long)]
    local_loss: bool,
    /// Start a fresh run from the weights of this checkpoint (trained, or imported with
    /// `msclip-train import`) or run directory; step 0, fresh optimizer. Overrides [init] from.
    #[arg(long)]
    init: Option<std::path::PathBuf>,
    /// Which tensors --init loads (repeatable; default: all, by name): `text`, `vision`,
    /// `[vision.|text.|shared.]SITE[:SLOTS]` (SITE: attn, mlp, ln, block, attn_in, attn_out,
    /// fc1, fc2, ln1, ln2; SLOTS: 3, 2-5, 0,2-4), `logit_scale`, a name glob (`text.*`), or a
    /// mapping TARGET=SOURCE across layouts (`shared.attn:1-11=text.attn:1-11`).
    #[arg(long, requires = "init")]
    init_select: Vec<String>,
    /// Keep these parameters fixed (repeatable; same selectors as --init-select, no
    /// mappings): no gradient, no optimizer state, bit-identical through the run. A shared
    /// tensor is one tensor: freezing it through one tower (`--freeze vision`) freezes it for
    /// the text tower too. Adds to the config's `freeze`.
    #[arg(long)]
    freeze: Vec<String>,
    /// Decay the token and positional embeddings too (OpenCLIP's weight-decay groups; the
    /// default follows the official MS-CLIP code, which never decays them).
    #[arg(long)]
    weight_decay_embeddings: bool,
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
        /// The checkpoint to export.
        #[arg(long, required_unless_present = "model", conflicts_with = "model")]
        checkpoint: Option<PathBuf>,
        /// Instead of a checkpoint: a preset, freshly initialised with --seed (random weights
        /// in the published layout, e.g. to try the import path at full size).
        #[arg(long)]
        model: Option<String>,
        /// Seed of --model's initialisation.
        #[arg(long, default_value_t = 0, requires = "model")]
        seed: i64,
        /// openclip (the only format so far).
        #[arg(long, value_enum, default_value_t = ExportFormat::Openclip)]
        format: ExportFormat,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file at OUT.
        #[arg(long)]
        force: bool,
    },
}

/// Where training runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

/// The process-group backend.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Gloo,
    Nccl,
}

/// Export formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    Openclip,
}

fn export(source: (Option<&std::path::Path>, Option<&str>, i64), format: ExportFormat, out: &std::path::Path, force: bool) -> Result<()> {
    let ExportFormat::Openclip = format;
    let (n, vanilla) = match source {
        (Some(checkpoint), _, _) => crate::checkpoint::import::export_file(checkpoint, out, force)?,
        (None, Some(preset), seed) => {
            crate::checkpoint::import::export_init(&crate::model::ModelConfig::preset(preset)?, seed, out, force)?
        }
        (None, None, _) => return Err(Error::Invalid("export: give --checkpoint DIR or --model PRESET".into())),
    };
    if !vanilla {
        eprintln!("note: the model is not a vanilla CLIP; the file uses the official MS-CLIP key names, which OpenCLIP cannot load");
    }
    println!("wrote {n} tensors to {}", out.display());
    Ok(())
}

fn import(from: &std::path::Path, model: &str, model_config: Option<&std::path::Path>, out: &std::path::Path, force: bool) -> Result<()> {
    let cfg = match (model_config, model) {
        (Some(p), _) => Some(crate::model::ModelConfig::from_toml_file(p)?),
        (None, "auto") => None,
        (None, name) => Some(crate::model::ModelConfig::preset(name)?),
    };
    let r = crate::checkpoint::import::import_file(from, cfg, out, force)?;
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
        Some(Sub::Export { checkpoint, model, seed, format, out, force }) => {
            return export((checkpoint.as_deref(), model.as_deref(), *seed), *format, out, *force)
        }
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
    if cli.keep_optimizer.is_some() {
        tc.keep_optimizer = cli.keep_optimizer;
    }
    if cli.data.is_some() {
        tc.data = cli.data.clone();
    }
    tc.strict |= cli.strict;
    tc.local_loss |= cli.local_loss;
    if let Some(from) = &cli.init {
        let select =
            if cli.init_select.is_empty() { tc.init.take().map(|i| i.select).unwrap_or_default() } else { cli.init_select.clone() };
        tc.init = Some(crate::train::InitConfig { from: from.clone(), select });
    }
    tc.freeze.extend(cli.freeze.iter().cloned());
    tc.optimizer.weight_decay_embeddings |= cli.weight_decay_embeddings;
    let mut device = match cli.device {
        DeviceArg::Auto => Device::cuda_if_available(),
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceArg::Cuda => {
            return Err(Error::Invalid("--device cuda: no CUDA device (build with --features cuda on a GPU machine)".into()))
        }
    };
    let resume = match cli.resume.as_deref() {
        _ if cli.resume_or_fresh => Resume::LatestOrFresh,
        None => Resume::No,
        Some("") => Resume::Latest,
        Some(p) => Resume::Path(PathBuf::from(p)),
    };
    let progress = cli.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let backend = cli.dist_backend.unwrap_or(if device.is_cuda() { Backend::Nccl } else { Backend::Gloo });
    if cli.dist_backend == Some(Backend::Nccl) && (!cfg!(feature = "cuda") || !device.is_cuda()) {
        return Err(Error::config(
            "--dist-backend",
            "nccl",
            if cfg!(feature = "cuda") {
                "NCCL takes CUDA tensors; use --device cuda (or gloo on CPU)"
            } else {
                "NCCL needs a --features cuda build and a GPU"
            },
        ));
    }
    let worker = std::env::var_os(crate::distributed::local::LOCAL_WORKER).is_some();
    let spawn = cli.nproc_per_node.filter(|&n| n > 1 && !worker);
    if spawn.is_some() && std::env::var_os("WORLD_SIZE").is_some() {
        return Err(Error::Invalid(
            "--nproc-per-node with WORLD_SIZE already set (torchrun/srun launch the workers; drop one of the two)".into(),
        ));
    }
    let launch = crate::distributed::Launch::from_env()?;
    if spawn.is_some() || launch.as_ref().is_some_and(|l| l.world > 1) {
        match backend {
            Backend::Gloo if device.is_cuda() => {
                return Err(Error::config("--dist-backend", "gloo", "this build's Gloo group takes CPU tensors; use --device cpu"))
            }
            Backend::Nccl if !cfg!(feature = "cuda") => {
                return Err(Error::config(
                    "--dist-backend",
                    "nccl",
                    "NCCL needs a --features cuda build; this build trains data-parallel on CPU with gloo",
                ))
            }
            Backend::Nccl if !device.is_cuda() => {
                return Err(Error::config("--dist-backend", "nccl", "NCCL takes CUDA tensors; use --device cuda (or gloo on CPU)"))
            }
            _ => {}
        }
    }
    if let Some(n) = spawn {
        return {
            let exe = std::env::current_exe().map_err(|e| Error::Invalid(format!("cannot find this program to spawn workers: {e}")))?;
            let args: Vec<String> = std::env::args().skip(1).collect();
            let port = std::env::var("MASTER_PORT").ok().and_then(|p| p.parse().ok());
            // Grace for the other ranks after a failure: they fail at their next collective.
            crate::distributed::local::supervise(&exe, &args, n, port, &out, std::time::Duration::from_secs(30))
        };
    }
    let group = match launch {
        // A one-rank group only when a backend is asked for (e.g. to test NCCL at world size 1).
        Some(l) if l.world > 1 || cli.dist_backend.is_some() => {
            if l.rank != 0 {
                crate::distributed::local::log_to_file(&out.join(format!("rank-{}.log", l.rank)))?;
            }
            if backend == Backend::Nccl {
                let (g, d) = nccl_group(&l, cli.dist_timeout)?;
                device = d;
                Some(std::rc::Rc::new(g))
            } else {
                Some(std::rc::Rc::new(crate::distributed::ProcessGroup::new(&l, cli.dist_timeout)?))
            }
        }
        _ => None,
    };
    let opts = TrainOptions { resume, force: cli.force, device, progress, group };
    if cli.seeds.is_empty() {
        let outcome = train(&tc, &out, &opts)?;
        if let Some(e) = &outcome.last_eval {
            println!("{}", serde_json::to_string(e).expect("an evaluation record serialises"));
        }
        return Ok(());
    }
    crate::train::train_seeds(&tc, &cli.seeds, &out, &opts, |seed, e| {
        println!("{{\"seed\":{seed},\"eval\":{}}}", serde_json::to_string(e).unwrap_or_default());
    })?;
    Ok(())
}

/// An NCCL group on GPU `LOCAL_RANK` (modulo the GPUs present): one GPU per local rank.
#[cfg(feature = "cuda")]
fn nccl_group(l: &crate::distributed::Launch, timeout: u64) -> Result<(crate::distributed::ProcessGroup, Device)> {
    let n = tch::Cuda::device_count().max(1) as usize;
    let device = Device::Cuda(l.local_rank % n);
    Ok((crate::distributed::ProcessGroup::new_nccl(l, timeout, device)?, device))
}

#[cfg(not(feature = "cuda"))]
fn nccl_group(_: &crate::distributed::Launch, _: u64) -> Result<(crate::distributed::ProcessGroup, Device)> {
    Err(Error::config("--dist-backend", "nccl", "NCCL needs a --features cuda build"))
}

/// The `msclip-train` binary: parses the arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    crate::cli::guard_panics(real_main)
}

fn real_main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            crate::distributed::local::console_line(&format!("error: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}
