//! `msclip-train`: contrastive training with checkpoints, exact resume and telemetry.
//! Exit status: 0 ok, 1 training stopped (e.g. non-finite loss), 2 bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use msclip::train::{train, Resume, TrainConfig};
use msclip::{Error, Result};
use tch::Device;

#[derive(Parser)]
#[command(name = "msclip-train", version, about = "Train CLIP / MS-CLIP models")]
struct Cli {
    /// Training config TOML (see configs/train/).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (checkpoints/, metrics.jsonl, train.toml).
    #[arg(long)]
    out: PathBuf,
    /// Override `model` (preset name or model TOML).
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    steps: Option<i64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<i64>,
    #[arg(long)]
    save_every: Option<i64>,
    #[arg(long)]
    keep: Option<usize>,
    #[arg(long)]
    eval_every: Option<i64>,
    #[arg(long)]
    eval_items: Option<usize>,
    #[arg(long)]
    data_items: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after N steps (the schedule still spans --steps); resume later with --resume.
    #[arg(long)]
    stop_after: Option<i64>,
    /// fp32 | amp (CUDA autocast with dynamic loss scaling)
    #[arg(long)]
    precision: Option<String>,
    /// Micro-batches per batch (gradient accumulation with cached features).
    #[arg(long)]
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
    /// Resume from the newest complete checkpoint in OUT, or from the given checkpoint.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    resume: Option<String>,
    /// Print a progress line every 10 steps on stderr.
    #[arg(long)]
    progress: bool,
}

fn run(cli: Cli) -> Result<()> {
    let mut tc = TrainConfig::from_toml_file(&cli.config)?;
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
        None => Resume::No,
        Some("") => Resume::Latest,
        Some(p) => Resume::Path(PathBuf::from(p)),
    };
    let progress = cli.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = train(&tc, &cli.out, resume, device, progress)?;
    if let Some(e) = &outcome.last_eval {
        println!("{}", serde_json::to_string(e).unwrap());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let stopped = matches!(&e, Error::Invalid(m) if m.contains("stopping") || m.contains("not saving"));
            ExitCode::from(if stopped { 1 } else { 2 })
        }
    }
}
