//! Output helpers: atomic writes and the provenance block every JSON/CSV output carries.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::config::Preprocess;

/// Writes `bytes` to `path` through `path.tmp`, fsync and rename: readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where an output came from.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// Always `msclip`.
    pub tool: String,
    /// The crate version.
    pub tool_version: String,
    /// The model's name.
    pub model: String,
    /// sha256 of the checkpoint's tensors, or `"init:seed=S"` for a freshly initialised model.
    pub checkpoint_sha256: String,
    /// sha256 of the data manifest (or of the single input and caption).
    pub data_sha256: String,
    /// The image normalisation constants used.
    pub preprocess: Preprocess,
    /// The seed of the data or analysis.
    pub seed: u64,
    /// Choices made where the official code is silent.
    pub notes: Vec<String>,
}

impl Provenance {
    /// A block with no notes.
    pub fn new(model: &str, checkpoint_sha256: String, data_sha256: String, preprocess: Preprocess, seed: u64) -> Provenance {
        Provenance {
            tool: "msclip".into(),
            tool_version: crate::VERSION.into(),
            model: model.into(),
            checkpoint_sha256,
            data_sha256,
            preprocess,
            seed,
            notes: vec![],
        }
    }
    /// The block as `# key: value` comment lines for the top of a CSV file.
    pub fn csv_header(&self) -> String {
        let json = serde_json::to_string(self).expect("provenance serialises");
        format!("# provenance: {json}\n")
    }
}
