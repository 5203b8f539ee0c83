//! WebDataset-style tar shards (`KEY.jpg|jpeg|png` + `KEY.txt`) and ImageFolder trees.
//!
//! Shards are indexed once (member offsets, captions read eagerly), then images are read by
//! seeking into the tar file, so any item can be fetched in any order by any worker.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use image::RgbImage;

use super::loader::PairSource;
use crate::error::{Error, Result};

/// Most shard files one pattern may name.
pub const MAX_SHARDS: u64 = 100_000;
/// Longest caption member read (bytes); longer `.txt` members are refused.
pub const MAX_CAPTION_BYTES: u64 = 1 << 20;

/// Expands one brace range `{000..009}` (zero padding kept) in a shard pattern; at most
/// [`MAX_SHARDS`] names.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(a) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(Error::config("shards", pattern, "`}` without a `{`"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let b = pattern[a..].find('}').map(|i| a + i).ok_or_else(|| Error::config("shards", pattern, "`{` without a closing `}`"))?;
    if pattern[b + 1..].contains(['{', '}']) || pattern[..a].contains('}') {
        return Err(Error::config("shards", pattern, "only one brace range {lo..hi} per pattern is supported"));
    }
    let inner = &pattern[a + 1..b];
    let (lo, hi) = inner.split_once("..").ok_or_else(|| Error::config("shards", pattern, "brace range must look like {000..009}"))?;
    let (l, h): (u64, u64) = (
        lo.parse().map_err(|_| Error::config("shards", pattern, "range start is not a number"))?,
        hi.parse().map_err(|_| Error::config("shards", pattern, "range end is not a number"))?,
    );
    if h < l {
        return Err(Error::config("shards", pattern, "range end is below its start"));
    }
    if h - l >= MAX_SHARDS {
        return Err(Error::config(
            "shards",
            pattern,
            format!("names {} files; at most {MAX_SHARDS} per pattern", (h - l).saturating_add(1)),
        ));
    }
    let width = lo.len();
    Ok((l..=h).map(|i| format!("{}{:0width$}{}", &pattern[..a], i, &pattern[b + 1..])).collect())
}

#[derive(Debug, Clone)]
struct Member {
    shard: usize,
    offset: u64,
    len: u64,
}

/// Image–caption pairs stored in tar shards.
pub struct ShardSource {
    shards: Vec<PathBuf>,
    items: Vec<(String, Member, String)>,
}

const IMAGE_EXT: [&str; 3] = ["jpg", "jpeg", "png"];

impl ShardSource {
    /// Indexes the shards named by `patterns` (comma-separated list, each with an optional
    /// brace range). Keys with an image but no caption (or the reverse) are left out.
    pub fn open(patterns: &str) -> Result<ShardSource> {
        let mut shards = Vec::new();
        for p in patterns.split(',').filter(|p| !p.trim().is_empty()) {
            shards.extend(expand_braces(p.trim())?.into_iter().map(PathBuf::from));
        }
        if shards.is_empty() {
            return Err(Error::config("shards", patterns, "names no tar file"));
        }
        let mut items = Vec::new();
        for (si, path) in shards.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
            let mut ar = tar::Archive::new(file);
            let mut images: BTreeMap<String, Member> = BTreeMap::new();
            let mut captions: BTreeMap<String, String> = BTreeMap::new();
            let entries = ar.entries().map_err(|e| Error::Data(format!("{}: not a tar file: {e}", path.display())))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| Error::Data(format!("{}: corrupt tar: {e}", path.display())))?;
                let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let base = name.rsplit('/').next().unwrap_or(&name).to_string();
                let Some((key, ext)) = base.split_once('.') else { continue };
                let key = format!("{}/{key}", name.rsplit_once('/').map(|(d, _)| d).unwrap_or(""));
                let ext = ext.to_ascii_lowercase();
                let (offset, len) = (entry.raw_file_position(), entry.size());
                if offset.checked_add(len).is_none_or(|end| end > file_len) {
                    return Err(Error::Data(format!(
                        "{}: member {name} claims {len} bytes at offset {offset}, past the end of the file ({file_len} bytes)",
                        path.display()
                    )));
                }
                if IMAGE_EXT.contains(&ext.as_str()) {
                    if len > super::image::MAX_IMAGE_FILE_BYTES {
                        return Err(Error::Data(format!("{}: member {name} is {len} bytes, larger than an image may be", path.display())));
                    }
                    images.insert(key, Member { shard: si, offset, len });
                } else if ext == "txt" {
                    if len > MAX_CAPTION_BYTES {
                        return Err(Error::Data(format!("{}: caption {name} is {len} bytes; at most {MAX_CAPTION_BYTES}", path.display())));
                    }
                    let mut raw = Vec::new();
                    (&mut entry)
                        .take(MAX_CAPTION_BYTES)
                        .read_to_end(&mut raw)
                        .map_err(|e| Error::Data(format!("{}: {name}: {e}", path.display())))?;
                    let s = String::from_utf8_lossy(&raw);
                    captions.insert(key, s.lines().next().unwrap_or("").trim().to_string());
                }
            }
            for (key, m) in images {
                if let Some(c) = captions.remove(&key) {
                    items.push((format!("{}:{key}", path.display()), m, c));
                }
            }
        }
        Ok(ShardSource { shards, items })
    }
}

impl PairSource for ShardSource {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn get(&self, i: usize) -> std::result::Result<(RgbImage, String), String> {
        let (_, m, caption) = &self.items[i];
        let mut f = std::fs::File::open(&self.shards[m.shard]).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(m.offset)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; m.len as usize];
        f.read_exact(&mut buf).map_err(|e| format!("truncated member: {e}"))?;
        Ok((super::image::decode_rgb(&buf)?, caption.clone()))
    }
    fn describe(&self, i: usize) -> String {
        self.items[i].0.clone()
    }
}

/// An ImageFolder tree (`root/CLASS/*.png|jpg`): paths, labels and sorted class names.
pub fn image_folder(root: &Path) -> Result<(Vec<PathBuf>, Vec<i64>, Vec<String>)> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut classes: Vec<String> =
        rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::Data(format!("{}: no class folders", root.display())));
    }
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (ci, c) in classes.iter().enumerate() {
        let dir = root.join(c);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| IMAGE_EXT.contains(&x.to_ascii_lowercase().as_str())))
            .collect();
        files.sort();
        labels.extend(std::iter::repeat_n(ci as i64, files.len()));
        paths.extend(files);
    }
    Ok((paths, labels, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_ranges_expand_with_padding() {
        assert_eq!(expand_braces("a/s-{008..011}.tar").unwrap(), ["a/s-008.tar", "a/s-009.tar", "a/s-010.tar", "a/s-011.tar"]);
        assert_eq!(expand_braces("x.tar").unwrap(), ["x.tar"]);
        assert!(expand_braces("s-{5..2}.tar").is_err());
        // Hostile patterns: a huge range, a closing brace first, two ranges.
        assert!(expand_braces("s-{0..99999999999}.tar").unwrap_err().to_string().contains("at most 100000"));
        assert!(expand_braces("x}y{0..2}").is_err());
        assert!(expand_braces("a{0..1}b{0..1}").is_err());
        assert!(expand_braces("a{0..1").is_err());
    }
}
