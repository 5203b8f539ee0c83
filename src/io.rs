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

/// A CSV table written through `csv::Writer` (fields with commas, quotes or newlines are
/// quoted, never altered) after the provenance comment line, atomically.
pub struct CsvOut {
    w: csv::Writer<Vec<u8>>,
    error: Option<String>,
}

impl CsvOut {
    /// A table whose first line is `provenance` (a `# provenance: …` line, or empty) and whose
    /// header row is `columns`.
    pub fn new(provenance: &str, columns: &[&str]) -> CsvOut {
        let mut out = CsvOut { w: csv::WriterBuilder::new().from_writer(provenance.as_bytes().to_vec()), error: None };
        out.row(columns);
        out
    }

    /// A table with `provenance` and no header row yet (the first [`CsvOut::row`] is the
    /// header).
    pub fn preamble_only(provenance: &str) -> CsvOut {
        CsvOut { w: csv::WriterBuilder::new().from_writer(provenance.as_bytes().to_vec()), error: None }
    }

    /// Appends a row.
    pub fn row<S: AsRef<str>>(&mut self, fields: &[S]) {
        if let Err(e) = self.w.write_record(fields.iter().map(|f| f.as_ref())) {
            self.error.get_or_insert(e.to_string());
        }
    }

    /// The bytes written so far (for tests and in-memory use).
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        if let Some(e) = self.error {
            return Err(Error::Invalid(format!("CSV: {e}")));
        }
        self.w.into_inner().map_err(|e| Error::Invalid(format!("CSV: {e}")))
    }

    /// Writes `preamble` (comment lines, e.g. several provenance blocks) and then the table
    /// to `path`.
    pub fn write_after(self, preamble: &str, path: &Path) -> Result<()> {
        let body = self.into_bytes().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut bytes = preamble.as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        write_atomic(path, &bytes)
    }

    /// Writes the table to `path` (temp file + rename).
    pub fn write(self, path: &Path) -> Result<()> {
        let bytes = self.into_bytes().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        write_atomic(path, &bytes)
    }
}

/// A row of display values (numbers, names) as strings, for [`CsvOut::row`].
#[macro_export]
macro_rules! csv_row {
    ($($v:expr),* $(,)?) => { [$($v.to_string()),*] };
}

/// The longest name [`path_component`] accepts, in bytes: room for the suffixes the toolkit
/// appends (`-2`, `.tmp`, `_side_by_side.svg`) within the usual 255-byte file-name limit.
pub const MAX_COMPONENT_BYTES: usize = 200;

/// `name`, checked to be one safe path component: every folder or file name the toolkit
/// builds from data (model names from `meta.json`, recipe stems, run names) goes through
/// here, so no data can make a write land outside the output folder. Refused, with an error
/// naming `what` and the name: empty, `.`/`..` and other names starting with a dot, `/` or
/// `\`, NUL or other control characters, more than [`MAX_COMPONENT_BYTES`] bytes.
pub fn path_component(name: &str, what: &str) -> Result<String> {
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.starts_with('.') {
        Some("it starts with a dot (`.`, `..` and hidden names are refused)".to_string())
    } else if name.contains(['/', '\\']) {
        Some("it holds a path separator".to_string())
    } else if name.chars().any(|c| c.is_control()) {
        Some("it holds a control character (NUL, newline, …)".to_string())
    } else if name.len() > MAX_COMPONENT_BYTES {
        Some(format!("it is {} bytes long (at most {MAX_COMPONENT_BYTES})", name.len()))
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Invalid(format!("{what} {:?} cannot name an output folder: {why}", truncate_for_display(name)))),
        None => Ok(name.to_string()),
    }
}

fn truncate_for_display(name: &str) -> String {
    match name.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

/// Sub-folders of one output folder, one per name, never shared: a name claimed twice gets
/// `-2`, `-3`, … (and a note on stderr), so two runs of one model in a recipe do not
/// overwrite each other.
#[derive(Debug, Default)]
pub struct SubDirs {
    used: std::collections::BTreeSet<String>,
}

impl SubDirs {
    /// No names claimed yet.
    pub fn new() -> SubDirs {
        SubDirs::default()
    }

    /// Creates and returns `parent/<name>` (or `parent/<name>-k` when `name` was claimed
    /// before); `name` must pass [`path_component`].
    pub fn claim(&mut self, parent: &Path, name: &str, what: &str) -> Result<std::path::PathBuf> {
        let base = path_component(name, what)?;
        let mut chosen = base.clone();
        let mut k = 2;
        while !self.used.insert(chosen.clone()) {
            chosen = format!("{base}-{k}");
            k += 1;
        }
        if chosen != base {
            eprintln!("note: {what} {base:?} appears more than once; this one is written to {chosen}/");
        }
        let dir = parent.join(&chosen);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    /// Free text with commas, quotes and newlines survives a round trip through the csv crate.
    #[test]
    fn csv_fields_are_quoted_not_altered() {
        let caption = "a red, \"shiny\" circle\nleft of a square";
        let mut t = CsvOut::new("# provenance: {}\n", &["label", "value"]);
        t.row(&csv_row![caption, 0.5]);
        let bytes = t.into_bytes().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let mut r = csv::Reader::from_reader(body.as_bytes());
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(&rec[0], caption);
        assert_eq!(&rec[1], "0.5");
    }

    #[test]
    fn path_component_refuses_everything_that_is_not_one_plain_name() {
        let long = "a".repeat(300);
        for bad in ["", ".", "..", "...", ".hidden", "/abs", "a/../../b", "a\\b", "nul\0byte", "new\nline", long.as_str()] {
            let err = path_component(bad, "model name").unwrap_err().to_string();
            assert!(err.starts_with("model name "), "{bad:?}: {err}");
        }
        for good in ["tiny-msclip-s", "clip b32", "ü-model", "a.b", &"x".repeat(MAX_COMPONENT_BYTES)] {
            assert_eq!(path_component(good, "model name").unwrap(), good);
        }
    }

    #[test]
    fn a_name_claimed_twice_gets_its_own_folder() {
        let root = std::env::temp_dir().join(format!("msclip-subdirs-{}", std::process::id()));
        let mut dirs = SubDirs::new();
        let a = dirs.claim(&root, "m", "model name").unwrap();
        let b = dirs.claim(&root, "m", "model name").unwrap();
        let c = dirs.claim(&root, "m", "model name").unwrap();
        assert_eq!([a.file_name().unwrap(), b.file_name().unwrap(), c.file_name().unwrap()], ["m", "m-2", "m-3"]);
        assert!(a.is_dir() && b.is_dir() && c.is_dir());
        assert!(dirs.claim(&root, "../escape", "model name").is_err());
        assert!(!root.join("../escape").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
