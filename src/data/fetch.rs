//! Real data sets fetched from the Debian archive into a cache (never into the repository):
//! the client is the ordinary `apt-get download` + `dpkg-deb -x`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// The data sets `fetch` knows.
pub const DATASETS: [&str; 2] = ["tuxpaint", "fashion-mnist"];

/// Fetches `name` into `cache` (see [`DATASETS`]); returns what was written, for printing.
pub fn fetch(name: &str, cache: &Path) -> Result<String> {
    match name {
        "tuxpaint" => fetch_tuxpaint(cache),
        "fashion-mnist" => fetch_fashion_mnist(cache),
        other => Err(Error::config("dataset", other, "known: tuxpaint, fashion-mnist")),
    }
}

/// The cache folder: `given`, else `$MSCLIP_CACHE`, else `~/.cache/msclip`.
pub fn cache_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("MSCLIP_CACHE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/msclip"))
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Data(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(Error::Data(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Downloads a Debian package with the ordinary client (`apt-get download`, running
/// `apt-get update` once if the package is unknown) and unpacks it with `dpkg-deb -x`.
fn debian_package(pkg: &str, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")))
    };
    if find_deb().is_none() {
        let dl = || {
            run_tool(std::process::Command::new("apt-get").arg("download").arg(pkg).current_dir(dir), &format!("apt-get download {pkg}"))
        };
        if dl().is_err() {
            run_tool(std::process::Command::new("apt-get").arg("update").arg("-qq"), "apt-get update")?;
            dl()?;
        }
    }
    let deb = find_deb().ok_or_else(|| Error::Data(format!("{}: no {pkg}_*.deb after download", dir.display())))?;
    let root = dir.join("root");
    if !root.exists() {
        let tmp = dir.join("root.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        run_tool(std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp), &format!("dpkg-deb -x {}", deb.display()))?;
        std::fs::rename(&tmp, &root).map_err(|e| Error::io(&root, e))?;
    }
    Ok(root)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
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
fn fetch_tuxpaint(cache: &Path) -> Result<String> {
    let base = cache.join("tuxpaint");
    let root = debian_package("tuxpaint-stamps-default", &base.join("deb"))?;
    let mut files = Vec::new();
    walk(&root, &mut files);
    let images = base.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut manifest = String::from("filepath\ttitle\n");
    let mut n = 0;
    for png in files.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let stem = png.file_stem().expect("a file name").to_string_lossy().to_string();
        let txt = png.with_file_name(format!("{stem}.txt"));
        let Ok(text) = std::fs::read_to_string(&txt) else { continue };
        let caption = text.lines().next().unwrap_or("").trim().to_string();
        if caption.is_empty() {
            continue;
        }
        let rgb = match super::image::load_rgb(png) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("warning: {e}");
                continue;
            }
        };
        let name = format!("{n:04}-{stem}.png");
        let mut bytes = Vec::new();
        rgb.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Data(format!("{}: {e}", png.display())))?;
        write_atomic(&images.join(&name), &bytes)?;
        manifest.push_str(&format!("images/{name}\t{}\n", caption.replace(['\t', '\n'], " ")));
        n += 1;
    }
    if n == 0 {
        return Err(Error::Data(format!("{}: no captioned stamps found", root.display())));
    }
    write_atomic(&base.join("manifest.tsv"), manifest.as_bytes())?;
    Ok(format!("wrote {n} captioned stamps and {} (GPL-2 data: keep it out of git)", base.join("manifest.tsv").display()))
}

/// Fashion-MNIST (MIT) from the Debian package `dataset-fashion-mnist`: the four IDX files.
fn fetch_fashion_mnist(cache: &Path) -> Result<String> {
    let base = cache.join("fashion-mnist");
    let root = debian_package("dataset-fashion-mnist", &base.join("deb"))?;
    let src = root.join("usr/share/datasets/fashion-mnist");
    let mut report = vec![];
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        let (dims, _) = super::idx::read(&src.join(f))?;
        let dst = base.join(f);
        std::fs::copy(src.join(f), &dst).map_err(|e| Error::io(&dst, e))?;
        report.push(format!("{} {:?}", dst.display(), dims));
    }
    Ok(report.join("\n"))
}
