//! Checkpoints: a directory `step-NNNNNNNN/` with `model.safetensors` (shared tensors stored
//! once under `shared.*`, the rest under `visual.*` / `text.*`), `optim.safetensors` and
//! `meta.json` (config, step, RNG/data cursor, sha256 of the tensor files, tool version).
//!
//! A checkpoint is written into a hidden temporary directory, every file fsynced, then
//! renamed into place: a crash never leaves a half checkpoint under a `step-*` name, and a
//! directory whose hashes do not match is skipped when resuming.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::error::{Error, Result};
use crate::io::{sha256_file, write_atomic};
use crate::model::ModelConfig;

pub mod import;
pub mod torch_zip;

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub tool_version: String,
    pub model: ModelConfig,
    /// Optimizer steps completed.
    pub step: i64,
    pub epoch: u64,
    pub samples_seen: u64,
    /// Position in the epoch order where the next batch starts.
    pub data_cursor: u64,
    pub seed: u64,
    /// The training config (TOML text) that produced the run.
    pub train_config: String,
    /// sha256 of `model.safetensors` and `optim.safetensors`.
    pub sha256: BTreeMap<String, String>,
}

pub fn step_dir_name(step: i64) -> String {
    format!("step-{step:08}")
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn fsync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Named trainable + buffer tensors of a VarStore, sorted by name.
pub fn named_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes a checkpoint under `root/step-NNNNNNNN` atomically; returns its path.
pub fn save(root: &Path, vs: &nn::VarStore, optim: &[(String, Tensor)], meta: Meta) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let final_dir = root.join(step_dir_name(meta.step));
    save_dir(&final_dir, vs, optim, meta)?;
    Ok(final_dir)
}

/// Writes a checkpoint into `final_dir` atomically (temp dir + fsync + rename; an existing
/// checkpoint there is replaced only after the new one is complete).
pub fn save_dir(final_dir: &Path, vs: &nn::VarStore, optim: &[(String, Tensor)], mut meta: Meta) -> Result<()> {
    let root = final_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = final_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "checkpoint".into());
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let model_path = tmp.join("model.safetensors");
    Tensor::write_safetensors(&named_tensors(vs), &model_path)?;
    fsync_file(&model_path)?;
    meta.sha256.insert("model.safetensors".into(), sha256_file(&model_path)?);
    if !optim.is_empty() {
        let optim_path = tmp.join("optim.safetensors");
        Tensor::write_safetensors(optim, &optim_path)?;
        fsync_file(&optim_path)?;
        meta.sha256.insert("optim.safetensors".into(), sha256_file(&optim_path)?);
    }
    write_atomic(&tmp.join("meta.json"), serde_json::to_string_pretty(&meta).unwrap().as_bytes())?;
    fsync_dir(&tmp);
    if final_dir.exists() {
        // Same step saved again (e.g. after a resume): replace it.
        std::fs::remove_dir_all(final_dir).map_err(|e| Error::io(final_dir, e))?;
    }
    std::fs::rename(&tmp, final_dir).map_err(|e| Error::io(final_dir, e))?;
    fsync_dir(root);
    Ok(())
}

/// Reads and verifies `dir/meta.json` and the hashes of its tensor files.
pub fn verify(dir: &Path) -> Result<Meta> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: Meta =
        serde_json::from_str(&text).map_err(|e| Error::Parse { path: meta_path.clone(), message: e.to_string() })?;
    for (file, want) in &meta.sha256 {
        let got = sha256_file(&dir.join(file))?;
        if &got != want {
            return Err(Error::Invalid(format!("{}: sha256 mismatch (file is corrupted or truncated)", dir.join(file).display())));
        }
    }
    Ok(meta)
}

/// Complete checkpoints under `root`, newest first.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
                .filter(|p| p.join("meta.json").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// The newest checkpoint under `root` that verifies; corrupt ones are reported and skipped.
pub fn latest_valid(root: &Path) -> Option<(PathBuf, Meta)> {
    for dir in list(root) {
        match verify(&dir) {
            Ok(meta) => return Some((dir, meta)),
            Err(e) => eprintln!("warning: skipping checkpoint {}: {e}", dir.display()),
        }
    }
    None
}

/// Removes all but the newest `keep` checkpoints and stale temporary directories.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    for dir in list(root).into_iter().skip(keep.max(1)) {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(())
}

/// Loads `model.safetensors` of a checkpoint into `vs`. Every missing, unexpected or
/// mis-shaped tensor is listed in the error.
pub fn load_model(dir: &Path, vs: &nn::VarStore) -> Result<()> {
    let path = dir.join("model.safetensors");
    if !path.exists() {
        return Err(Error::Invalid(format!("{}: no such file", path.display())));
    }
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(|e| Error::Invalid(format!("{}: not a readable safetensors file: {e}", path.display())))?
        .into_iter()
        .collect();
    load_named(&path, &tensors, vs)
}

/// Copies `tensors` into `vs` after checking names and shapes.
pub fn load_named(origin: &Path, tensors: &BTreeMap<String, Tensor>, vs: &nn::VarStore) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let (mut missing, mut unexpected, mut shapes) = (Vec::new(), Vec::new(), Vec::new());
    for (name, var) in &vars {
        match tensors.get(name) {
            None => missing.push(format!("{name} {:?}", var.size())),
            Some(t) if t.size() != var.size() => {
                shapes.push(format!("{name}: expected {:?}, found {:?}", var.size(), t.size()))
            }
            Some(_) => {}
        }
    }
    for name in tensors.keys() {
        if !vars.contains_key(name) {
            unexpected.push(name.clone());
        }
    }
    if !(missing.is_empty() && unexpected.is_empty() && shapes.is_empty()) {
        let list = |what: &str, v: &[String]| -> Option<String> {
            if v.is_empty() {
                return None;
            }
            let shown: Vec<&str> = v.iter().take(30).map(|s| s.as_str()).collect();
            let more = if v.len() > 30 { format!(" … and {} more", v.len() - 30) } else { String::new() };
            Some(format!("{} {what}: {}{more}", v.len(), shown.join(", ")))
        };
        let parts: Vec<String> =
            [list("missing", &missing), list("unexpected", &unexpected), list("shape mismatches", &shapes)].into_iter().flatten().collect();
        return Err(Error::Invalid(format!("{}: checkpoint does not fit the model: {}", origin.display(), parts.join("; "))));
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            var.shallow_clone().copy_(&tensors[name]);
        }
    });
    Ok(())
}
