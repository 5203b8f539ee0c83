//! `msclip-data`: data sets on disk. `synth` writes the built-in synthetic world as PNG
//! images, one sidecar JSON per image (boxes, attributes, caption words per object) and a
//! manifest CSV in OpenCLIP's convention (`filepath`, `title`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::int_in;
use crate::data::{fetch, synthetic_set};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "msclip-data", version, about = "Prepare data sets for msclip")]
pub(super) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render N scenes of the synthetic world (deterministic from the seed).
    Synth {
        #[arg(long, value_parser = int_in(1usize..=100_000_000))]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 64, value_parser = int_in(16u32..=1024))]
        size: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fetch a real data set from the Debian archive into the cache (never into the repo).
    Fetch {
        /// `tuxpaint`: the 785 captioned stamps of `tuxpaint-stamps-default` (GPL-2).
        dataset: String,
        /// Cache folder (default: $MSCLIP_CACHE or ~/.cache/msclip).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

/// The `msclip-data` binary: parses the arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    crate::cli::guard_panics(real_main)
}

fn real_main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Synth { n, seed, size, out } => {
            synthetic_set::write_dataset(n, seed, size, &out).map(|m| format!("wrote {n} scenes and {}", m.display()))
        }
        Command::Fetch { dataset, cache } => fetch::fetch(&dataset, &fetch::cache_dir(cache)),
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
