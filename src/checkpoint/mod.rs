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
use crate::model::{ModelConfig, MsClip};

pub mod import;
pub mod torch_zip;

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The msclip version that wrote the checkpoint.
    pub tool_version: String,
    /// The model's config (validated on load like a TOML config).
    pub model: ModelConfig,
    /// Optimizer steps completed.
    pub step: i64,
    /// Epochs completed (`samples_seen / data_items`).
    pub epoch: u64,
    /// Training pairs seen.
    pub samples_seen: u64,
    /// Position in the epoch order where the next batch starts.
    pub data_cursor: u64,
    /// The run's seed.
    pub seed: u64,
    /// The training config (TOML text) that produced the run.
    pub train_config: String,
    /// sha256 of `model.safetensors` and `optim.safetensors`.
    pub sha256: BTreeMap<String, String>,
    /// Where the run's initial weights came from, when it started from another checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitRecord>,
}

impl Meta {
    /// The metadata of an untrained (step 0) checkpoint of `model` from `seed`: for imported
    /// weights and for checkpoints written outside a training run (`train_config` says where
    /// the weights came from).
    pub fn initial(model: ModelConfig, seed: u64, train_config: String) -> Meta {
        Meta {
            tool_version: crate::VERSION.into(),
            model,
            step: 0,
            epoch: 0,
            samples_seen: 0,
            data_cursor: 0,
            seed,
            train_config,
            sha256: Default::default(),
            init: None,
        }
    }
}

/// What a training run's `init` loaded (see `train::TrainConfig::init`), recorded in every
/// checkpoint's `meta.json` and in `RUN/init.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    /// The source checkpoint directory.
    pub from: PathBuf,
    /// sha256 of its `model.safetensors`.
    pub source_sha256: String,
    /// The source's model name.
    pub source_model: String,
    /// The selection as given (empty: everything).
    pub select: Vec<String>,
    /// `(target, source)` names of the tensors loaded.
    pub tensors: Vec<(String, String)>,
}

/// The directory name of the checkpoint at `step` (`step-00000200`).
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

/// Writes a checkpoint into `final_dir` atomically: a temporary directory is written and
/// fsynced, then renamed into place; an existing checkpoint there is swapped out in one
/// `renameat2(RENAME_EXCHANGE)` and removed only afterwards, so a crash at any moment leaves
/// either the old or the new checkpoint under the name. Nothing non-finite is written: every
/// parameter, buffer and optimizer tensor is checked first (the error names the tensor). An
/// existing `final_dir` that is not a checkpoint (no `meta.json`) is never replaced.
pub fn save_dir(final_dir: &Path, vs: &nn::VarStore, optim: &[(String, Tensor)], mut meta: Meta) -> Result<()> {
    let model = named_tensors(vs);
    let what = format!("checkpoint for step {}", meta.step);
    check_finite(&what, model.iter().map(|(n, t)| (n.as_str(), t)))?;
    check_finite(&what, optim.iter().map(|(n, t)| (n.as_str(), t)))?;
    let root = final_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    if final_dir.exists() && !final_dir.join("meta.json").is_file() {
        return Err(Error::Checkpoint(format!(
            "{}: exists and is not a checkpoint directory; refusing to replace it",
            final_dir.display()
        )));
    }
    let name = final_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "checkpoint".into());
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let model_path = tmp.join("model.safetensors");
    Tensor::write_safetensors(&model, &model_path)?;
    fsync_file(&model_path)?;
    meta.sha256.insert("model.safetensors".into(), sha256_file(&model_path)?);
    if !optim.is_empty() {
        let optim_path = tmp.join("optim.safetensors");
        Tensor::write_safetensors(optim, &optim_path)?;
        fsync_file(&optim_path)?;
        meta.sha256.insert("optim.safetensors".into(), sha256_file(&optim_path)?);
    }
    write_atomic(&tmp.join("meta.json"), serde_json::to_string_pretty(&meta).expect("checkpoint metadata serialises").as_bytes())?;
    fsync_dir(&tmp);
    if final_dir.exists() {
        // Same step saved again (e.g. after a resume): swap atomically, then drop the old one.
        exchange(&tmp, final_dir)?;
        fsync_dir(root);
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    } else {
        std::fs::rename(&tmp, final_dir).map_err(|e| Error::io(final_dir, e))?;
    }
    fsync_dir(root);
    Ok(())
}

/// Atomically swaps two directory entries (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Checkpoint(format!("{}: path holds a NUL byte", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        return Err(Error::io(b, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads and verifies `dir/meta.json` (its model config is validated like a TOML config) and
/// the hashes of its tensor files.
pub fn verify(dir: &Path) -> Result<Meta> {
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: Meta = serde_json::from_str(&text).map_err(|e| Error::Parse { path: meta_path.clone(), message: e.to_string() })?;
    meta.model.validate().map_err(|e| Error::Parse { path: meta_path.clone(), message: format!("model config: {e}") })?;
    if meta.step < 0 {
        return Err(Error::Parse { path: meta_path.clone(), message: format!("step = {} is negative", meta.step) });
    }
    for (file, want) in &meta.sha256 {
        if !matches!(file.as_str(), "model.safetensors" | "optim.safetensors") {
            return Err(Error::Parse { path: meta_path.clone(), message: format!("sha256 names an unknown file {file:?}") });
        }
        let got = sha256_file(&dir.join(file))?;
        if &got != want {
            return Err(Error::Checkpoint(format!("{}: sha256 mismatch (file is corrupted or truncated)", dir.join(file).display())));
        }
    }
    if !meta.sha256.contains_key("model.safetensors") {
        return Err(Error::Parse { path: meta_path, message: "no sha256 of model.safetensors".into() });
    }
    Ok(meta)
}

/// [`verify`], then every tensor of `model.safetensors` and `optim.safetensors` is read and
/// checked finite: what `--resume` requires of a checkpoint before it picks it.
pub fn verify_deep(dir: &Path) -> Result<Meta> {
    let meta = verify(dir)?;
    for file in meta.sha256.keys() {
        let path = dir.join(file);
        let tensors = Tensor::read_safetensors(&path)
            .map_err(|e| Error::Checkpoint(format!("{}: not a readable safetensors file: {e}", path.display())))?;
        check_finite(&path.display().to_string(), tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    }
    Ok(meta)
}

/// Errors naming the first tensor (in the given order) holding a NaN or infinity.
pub fn check_finite<'a>(origin: &str, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
    for (name, t) in tensors {
        if t.is_floating_point() && t.numel() > 0 && t.isfinite().all().int64_value(&[]) == 0 {
            let bad = t.isfinite().logical_not().sum(tch::Kind::Int64).int64_value(&[]);
            return Err(Error::Checkpoint(format!("{origin}: tensor {name} has {bad} non-finite values")));
        }
    }
    Ok(())
}

/// The step of a checkpoint directory name: exactly `step-` and the zero-padded step as
/// [`step_dir_name`] writes it (`step-00000200`); anything else (`step-backup`, `step-12`,
/// `step-00000200.old`) is not a checkpoint of the run.
pub fn parse_step_dir(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: i64 = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

/// Checkpoint directories under `root` (well-formed names with a `meta.json`), newest step
/// first. Nothing is verified here.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<(i64, PathBuf)> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let step = parse_step_dir(e.file_name().to_str()?)?;
                    let p = e.path();
                    (p.is_dir() && p.join("meta.json").is_file()).then_some((step, p))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, p)| p).collect()
}

/// The newest checkpoint under `root` that verifies ([`verify_deep`]: hashes, config, finite
/// tensors); corrupt ones are reported and skipped.
pub fn latest_valid(root: &Path) -> Option<(PathBuf, Meta)> {
    for dir in list(root) {
        match verify_deep(&dir) {
            Ok(meta) => return Some((dir, meta)),
            Err(e) => eprintln!("warning: skipping checkpoint {}: {e}", dir.display()),
        }
    }
    None
}

/// Whether `name` is a temporary directory of an interrupted [`save_dir`] into this root.
fn is_temp_checkpoint(name: &str) -> bool {
    name.starts_with(".tmp-step-")
}

/// Removes `.tmp-step-*` directories left by saves that were killed. Only call it while
/// holding the run's lock ([`RunLock`]): then no save is in flight.
pub fn remove_stale_temps(root: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(rd) = std::fs::read_dir(root) else { return Ok(0) };
    for e in rd.filter_map(|e| e.ok()) {
        if e.file_name().to_str().is_some_and(is_temp_checkpoint) {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(|err| Error::io(&p, err))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Keeps the newest `keep` checkpoints that verify and deletes older verified ones; a
/// checkpoint that does not verify is never counted towards `keep` and never deleted (it is
/// reported once), so valid checkpoints are never removed in favour of corrupt ones. Stale
/// temporary directories are removed. `verified` caches the directories already found valid
/// by this process (a fresh save is valid by construction), so each is hashed once.
pub fn prune(root: &Path, keep: usize, verified: &mut std::collections::HashSet<PathBuf>) -> Result<()> {
    remove_stale_temps(root)?;
    let mut kept = 0;
    for dir in list(root) {
        let ok = verified.contains(&dir)
            || match verify_deep(&dir) {
                Ok(_) => {
                    verified.insert(dir.clone());
                    true
                }
                Err(e) => {
                    eprintln!("warning: keeping unverifiable checkpoint {} untouched: {e}", dir.display());
                    false
                }
            };
        if !ok {
            continue;
        }
        kept += 1;
        if kept > keep.max(1) {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            verified.remove(&dir);
        }
    }
    Ok(())
}

/// Removes the optimizer state of every verified checkpoint under `root` but the newest
/// `keep_optimizer` ones (what `keep_optimizer` in a training config asks for). Each is
/// stripped by [`drop_optimizer_state`]; checkpoints not in `verified` are left alone.
pub fn drop_old_optimizer_state(root: &Path, keep_optimizer: usize, verified: &std::collections::HashSet<PathBuf>) -> Result<()> {
    for dir in list(root).into_iter().filter(|d| verified.contains(d)).skip(keep_optimizer.max(1)) {
        drop_optimizer_state(&dir)?;
    }
    Ok(())
}

/// Makes `dir` a weights-only checkpoint: `meta.json` without the hash of
/// `optim.safetensors` is written first (atomically), then the file is removed.
/// Stopped in between, the checkpoint still verifies (an untracked file is ignored) and the
/// next call removes the file. Returns whether anything was removed.
pub fn drop_optimizer_state(dir: &Path) -> Result<bool> {
    let meta_path = dir.join("meta.json");
    let optim = dir.join("optim.safetensors");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let mut meta: Meta = serde_json::from_str(&text).map_err(|e| Error::Parse { path: meta_path.clone(), message: e.to_string() })?;
    if meta.sha256.remove("optim.safetensors").is_some() {
        write_atomic(&meta_path, serde_json::to_string_pretty(&meta).expect("checkpoint metadata serialises").as_bytes())?;
        fsync_dir(dir);
    }
    if optim.exists() {
        std::fs::remove_file(&optim).map_err(|e| Error::io(&optim, e))?;
        fsync_dir(dir);
        return Ok(true);
    }
    Ok(false)
}

/// An exclusive lock on a run directory (`RUN/.lock`, an advisory `flock` that the kernel
/// releases when the process exits, however it exits). The file names the holder.
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock or errors naming the process that holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let path = run_dir.join(".lock");
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
        // A lock can be held for a moment by a copy of another thread's descriptor: a program
        // spawned elsewhere in this process holds duplicates of every descriptor between fork
        // and exec (close-on-exec drops them only at exec). Such a hold lasts microseconds; a
        // training holds the lock for its whole run. So a busy lock is retried for a second
        // before it counts as taken.
        let mut tries = 0;
        let taken = loop {
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        };
        match taken {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Checkpoint(format!(
                    "{}: the run directory is in use by another training ({}); wait for it or use another --out",
                    run_dir.display(),
                    if holder.is_empty() { "holder unknown" } else { holder }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let who = format!("pid {} on {} since unix time {stamp}\n", std::process::id(), host.trim());
        let res = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(who.as_bytes()));
        res.map_err(|e| Error::io(&path, e))?;
        Ok(RunLock { _file: file })
    }
}

/// Loads `model.safetensors` of a checkpoint into `vs`. Every missing, unexpected or
/// mis-shaped tensor is listed in the error.
pub fn load_model(dir: &Path, vs: &nn::VarStore) -> Result<()> {
    let path = dir.join("model.safetensors");
    if !path.exists() {
        return Err(Error::Checkpoint(format!("{}: no such file", path.display())));
    }
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(|e| Error::Checkpoint(format!("{}: not a readable safetensors file: {e}", path.display())))?
        .into_iter()
        .collect();
    check_finite(&path.display().to_string(), tensors.iter().map(|(n, t)| (n.as_str(), t)))?;
    load_named(&path, &tensors, vs)
}

/// Copies `tensors` into `vs` after checking names and shapes.
pub fn load_named(origin: &Path, tensors: &BTreeMap<String, Tensor>, vs: &nn::VarStore) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let (mut missing, mut unexpected, mut shapes) = (Vec::new(), Vec::new(), Vec::new());
    for (name, var) in &vars {
        match tensors.get(name) {
            None => missing.push(format!("{name} {:?}", var.size())),
            Some(t) if t.size() != var.size() => shapes.push(format!("{name}: expected {:?}, found {:?}", var.size(), t.size())),
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
        return Err(Error::Checkpoint(format!("{}: checkpoint does not fit the model: {}", origin.display(), parts.join("; "))));
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            var.shallow_clone().copy_(&tensors[name]);
        }
    });
    Ok(())
}

/// Loads a model from a checkpoint directory (config from its validated `meta.json`, hashes
/// verified, every tensor checked finite).
pub fn load(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, MsClip, Meta)> {
    let meta = verify(dir)?;
    let (vs, model) = MsClip::build_for_loading(&meta.model, device);
    load_model(dir, &vs)?;
    Ok((vs, model, meta))
}

/// Where a model's weights come from: a checkpoint, or a fresh initialisation of a preset or
/// a config file (for plumbing and tests).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A built-in preset by name (`tiny-msclip-s`, `clip-b32`, …), initialised from a seed.
    Preset(String),
    /// A model config TOML, initialised from a seed.
    Config(PathBuf),
    /// A checkpoint directory (`RUN/checkpoints/step-NNNNNNNN`, or an imported one).
    Checkpoint(PathBuf),
}

/// A model ready to run, with the identity of its weights for provenance.
pub struct LoadedModel {
    /// The model.
    pub model: MsClip,
    /// The VarStore holding its tensors.
    pub vs: nn::VarStore,
    /// sha256 of `model.safetensors`, or `init:seed=S` for a fresh initialisation.
    pub weights_id: String,
    /// The checkpoint's metadata, when loaded from one.
    pub meta: Option<Meta>,
}

impl ModelSource {
    /// The model config alone (no weights are built).
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            ModelSource::Preset(name) => ModelConfig::preset(name),
            ModelSource::Config(path) => ModelConfig::from_toml_file(path),
            ModelSource::Checkpoint(dir) => Ok(verify(dir)?.model),
        }
    }

    /// The model with its weights on the CPU: a checkpoint's, or a fresh initialisation from
    /// `seed`. A libtorch failure (a model too large for memory, …) is an error, not a panic.
    pub fn load(&self, seed: u64) -> Result<LoadedModel> {
        crate::error::torch_guard(|| self.load_unguarded(seed))
    }

    fn load_unguarded(&self, seed: u64) -> Result<LoadedModel> {
        if let ModelSource::Checkpoint(dir) = self {
            let (vs, model, meta) = load(dir, tch::Device::Cpu)?;
            let weights_id = meta.sha256.get("model.safetensors").cloned().unwrap_or_default();
            return Ok(LoadedModel { model, vs, weights_id, meta: Some(meta) });
        }
        let cfg = self.config()?;
        let (vs, model) = MsClip::build(&cfg, tch::Device::Cpu, seed as i64);
        Ok(LoadedModel { model, vs, weights_id: format!("init:seed={seed}"), meta: None })
    }

    /// A run directory's newest checkpoint, or the directory itself when it is a checkpoint
    /// (how recipes name their models).
    pub fn for_run(path: &Path) -> Result<ModelSource> {
        if path.join("meta.json").exists() {
            return Ok(ModelSource::Checkpoint(path.to_path_buf()));
        }
        list(&path.join("checkpoints"))
            .into_iter()
            .next()
            .map(ModelSource::Checkpoint)
            .ok_or_else(|| Error::Checkpoint(format!("{}: no checkpoint (run `make demo` first)", path.display())))
    }
}
