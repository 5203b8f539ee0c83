//! Image–caption manifests in OpenCLIP's convention: a CSV/TSV file with a header, an image
//! column (`--csv-img-key`, default `filepath`) and a caption column (`--csv-caption-key`,
//! default `title`); image paths are relative to the manifest's folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One image–caption pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The image's path (relative paths are resolved against the manifest's folder).
    pub image: PathBuf,
    /// The caption.
    pub caption: String,
}

/// How to read a manifest.
#[derive(Debug, Clone)]
pub struct ManifestFormat {
    /// The image column's header.
    pub img_key: String,
    /// The caption column's header.
    pub caption_key: String,
    /// The field separator.
    pub separator: u8,
}

impl Default for ManifestFormat {
    fn default() -> Self {
        ManifestFormat { img_key: "filepath".into(), caption_key: "title".into(), separator: b'\t' }
    }
}

impl ManifestFormat {
    /// Tab for `.tsv`, comma for `.csv` (OpenCLIP's `--csv-separator` default is tab).
    pub fn for_path(path: &Path) -> ManifestFormat {
        let sep = if path.extension().is_some_and(|e| e == "csv") { b',' } else { b'\t' };
        ManifestFormat { separator: sep, ..Default::default() }
    }
}

/// Reads a manifest; errors name the file, the line and the missing key. A tab-separated
/// manifest is plain text (no quoting: a caption that starts with `"` is just a caption); in a
/// comma-separated one a quoted field may not span lines (a stray quote would otherwise
/// swallow the rows after it silently).
pub fn read(path: &Path, fmt: &ManifestFormat) -> Result<Vec<Pair>> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut rdr =
        csv::ReaderBuilder::new().delimiter(fmt.separator).quoting(fmt.separator != b'\t').flexible(false).from_reader(text.as_slice());
    let headers = rdr.headers().map_err(|e| Error::Parse { path: path.to_path_buf(), message: format!("line 1: {e}") })?.clone();
    let col = |key: &str| {
        headers.iter().position(|h| h == key).ok_or_else(|| Error::Parse {
            path: path.to_path_buf(),
            message: format!("line 1: no column `{key}` (columns: {})", headers.iter().collect::<Vec<_>>().join(", ")),
        })
    };
    let (ci, cc) = (col(&fmt.img_key)?, col(&fmt.caption_key)?);
    let mut pairs = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            Error::Parse { path: path.to_path_buf(), message: format!("line {line}: {e}") }
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().any(|f| f.contains('\n')) {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: format!(
                    "line {line}: a quoted field spans several lines (a caption with an unmatched `\"`?); quote it on one line"
                ),
            });
        }
        let img = rec.get(ci).unwrap_or("").trim();
        if img.is_empty() {
            return Err(Error::Parse { path: path.to_path_buf(), message: format!("line {line}: empty `{}`", fmt.img_key) });
        }
        pairs.push(Pair { image: base.join(img), caption: rec.get(cc).unwrap_or("").to_string() });
    }
    Ok(pairs)
}

/// sha256 of the manifest file (the data identity recorded in provenance).
pub fn manifest_hash(path: &Path) -> Result<String> {
    crate::io::sha256_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tsv_and_names_errors() {
        let dir = std::env::temp_dir().join(format!("msclip-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.tsv");
        std::fs::write(&p, "filepath\ttitle\nimg/a.png\ta red circle\nb.jpg\ta dog, running\n").unwrap();
        let pairs = read(&p, &ManifestFormat::for_path(&p)).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].image, dir.join("img/a.png"));
        assert_eq!(pairs[1].caption, "a dog, running");
        std::fs::write(&p, "path\ttitle\na.png\tx\n").unwrap();
        let e = read(&p, &ManifestFormat::for_path(&p)).unwrap_err().to_string();
        assert!(e.contains("m.tsv") && e.contains("filepath"), "{e}");
        std::fs::write(&p, "filepath\ttitle\na.png\tx\nb.png\ty\textra\n").unwrap();
        let e = read(&p, &ManifestFormat::for_path(&p)).unwrap_err().to_string();
        assert!(e.contains("m.tsv") && e.contains("line 3"), "{e}");
        // A caption opening with a double quote is a caption: all 12 rows are read.
        let mut rows = String::from("filepath\ttitle\n");
        for i in 0..12 {
            rows.push_str(&format!("{i}.png\t{}caption {i}\n", if i == 2 { "\"" } else { "" }));
        }
        std::fs::write(&p, &rows).unwrap();
        let pairs = read(&p, &ManifestFormat::for_path(&p)).unwrap();
        assert_eq!(pairs.len(), 12);
        assert_eq!(pairs[2].caption, "\"caption 2");
        // In a CSV, the same stray quote would swallow rows: an error naming the line.
        let c = dir.join("m.csv");
        std::fs::write(&c, rows.replace('\t', ",")).unwrap();
        let e = read(&c, &ManifestFormat::for_path(&c)).unwrap_err().to_string();
        assert!(e.contains("m.csv") && e.contains("spans several lines"), "{e}");
    }
}
