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
    /// Fetch a real data set from the Debian archive into the cache (never into the repo).
    Fetch {
        /// `tuxpaint`: the 785 captioned stamps of `tuxpaint-stamps-default` (GPL-2).
        dataset: String,
        /// Cache folder (default: $MSCLIP_CACHE or ~/.cache/msclip).
        #[arg(long)]
        cache: Option<PathBuf>,
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

fn cache_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("MSCLIP_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/msclip"))
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Invalid(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Downloads a Debian package with the ordinary client (`apt-get download`, running
/// `apt-get update` once if the package is unknown) and unpacks it with `dpkg-deb -x`.
fn debian_package(pkg: &str, dir: &std::path::Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
    };
    if find_deb().is_none() {
        let dl = || run_tool(std::process::Command::new("apt-get").arg("download").arg(pkg).current_dir(dir), &format!("apt-get download {pkg}"));
        if dl().is_err() {
            run_tool(std::process::Command::new("apt-get").arg("update").arg("-qq"), "apt-get update")?;
            dl()?;
        }
    }
    let deb = find_deb().ok_or_else(|| Error::Invalid(format!("{}: no {pkg}_*.deb after download", dir.display())))?;
    let root = dir.join("root");
    if !root.exists() {
        let tmp = dir.join("root.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        run_tool(std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp), &format!("dpkg-deb -x {}", deb.display()))?;
        std::fs::rename(&tmp, &root).map_err(|e| Error::io(&root, e))?;
    }
    Ok(root)
}

fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        v.sort();
        for p in v {
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// Tux Paint stamps: each transparent PNG composited on white, paired with line 1 of the
/// `.txt` beside it (the English description).
fn fetch_tuxpaint(cache: &std::path::Path) -> Result<()> {
    let base = cache.join("tuxpaint");
    let root = debian_package("tuxpaint-stamps-default", &base.join("deb"))?;
    let mut files = Vec::new();
    walk(&root, &mut files);
    let images = base.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut manifest = String::from("filepath\ttitle\n");
    let mut n = 0;
    for png in files.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let stem = png.file_stem().unwrap().to_string_lossy().to_string();
        let txt = png.with_file_name(format!("{stem}.txt"));
        let Ok(text) = std::fs::read_to_string(&txt) else { continue };
        let caption = text.lines().next().unwrap_or("").trim().to_string();
        if caption.is_empty() {
            continue;
        }
        let rgb = match msclip::data::image::load_rgb(png) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        let name = format!("{n:04}-{stem}.png");
        let mut bytes = Vec::new();
        rgb.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Invalid(format!("{}: {e}", png.display())))?;
        write_atomic(&images.join(&name), &bytes)?;
        manifest.push_str(&format!("images/{name}\t{}\n", caption.replace(['\t', '\n'], " ")));
        n += 1;
    }
    if n == 0 {
        return Err(Error::Invalid(format!("{}: no captioned stamps found", root.display())));
    }
    write_atomic(&base.join("manifest.tsv"), manifest.as_bytes())?;
    println!("wrote {n} captioned stamps and {} (GPL-2 data: keep it out of git)", base.join("manifest.tsv").display());
    Ok(())
}

/// Fashion-MNIST (MIT) from the Debian package `dataset-fashion-mnist`: the four IDX files.
fn fetch_fashion_mnist(cache: &std::path::Path) -> Result<()> {
    let base = cache.join("fashion-mnist");
    let root = debian_package("dataset-fashion-mnist", &base.join("deb"))?;
    let src = root.join("usr/share/datasets/fashion-mnist");
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        let (dims, _) = msclip::data::idx::read(&src.join(f))?;
        let dst = base.join(f);
        std::fs::copy(src.join(f), &dst).map_err(|e| Error::io(&dst, e))?;
        println!("{} {:?}", dst.display(), dims);
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Synth { n, seed, size, out } => synth_cmd(n, seed, size, &out),
        Command::Fetch { dataset, cache } => match dataset.as_str() {
            "tuxpaint" => fetch_tuxpaint(&cache_dir(cache)),
            "fashion-mnist" => fetch_fashion_mnist(&cache_dir(cache)),
            other => Err(Error::config("dataset", other, "known: tuxpaint, fashion-mnist")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
