//! `msclip-data`: data sets on disk. `synth` writes the built-in synthetic world as PNG
//! images, one sidecar JSON per image (boxes, attributes, caption words per object) and a
//! manifest CSV in OpenCLIP's convention (`filepath`, `title`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use msclip::data::synth;
use msclip::io::write_atomic;
use msclip::{Error, Result};

#[derive(Parser)]
#[command(name = "msclip-data", version, about = "Prepare data sets for msclip")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render N scenes of the synthetic world (deterministic from the seed).
    Synth {
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

fn synth_cmd(n: usize, seed: u64, size: u32, out: &PathBuf) -> Result<()> {
    if !(16..=1024).contains(&size) {
        return Err(Error::config("--size", size, "must be in 16..=1024"));
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut manifest = String::from("filepath\ttitle\n");
    for i in 0..n {
        let scene = synth::scene(seed, i as u64, size);
        let name = format!("{i:07}");
        let png = images.join(format!("{name}.png"));
        let img = image::RgbImage::from_raw(size, size, scene.pixels.clone()).expect("scene buffer");
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Invalid(format!("{}: {e}", png.display())))?;
        write_atomic(&png, &bytes)?;
        let side = serde_json::json!({"index": i, "seed": seed, "caption": scene.caption, "size": size, "objects": scene.objects});
        write_atomic(&images.join(format!("{name}.json")), serde_json::to_string_pretty(&side).unwrap().as_bytes())?;
        manifest.push_str(&format!("images/{name}.png\t{}\n", scene.caption));
    }
    write_atomic(&out.join("manifest.tsv"), manifest.as_bytes())?;
    println!("wrote {n} scenes and {}", out.join("manifest.tsv").display());
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Synth { n, seed, size, out } => synth_cmd(n, seed, size, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
