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

/// Expands one brace range `{000..009}` (zero padding kept) in a shard pattern.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let (Some(a), Some(b)) = (pattern.find('{'), pattern.find('}')) else {
        return Ok(vec![pattern.to_string()]);
    };
    let inner = &pattern[a + 1..b];
    let (lo, hi) = inner
        .split_once("..")
        .ok_or_else(|| Error::config("shards", pattern, "brace range must look like {000..009}"))?;
    let (l, h): (u64, u64) = (
        lo.parse().map_err(|_| Error::config("shards", pattern, "range start is not a number"))?,
        hi.parse().map_err(|_| Error::config("shards", pattern, "range end is not a number"))?,
    );
    if h < l {
        return Err(Error::config("shards", pattern, "range end is below its start"));
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
            let mut ar = tar::Archive::new(file);
            let mut images: BTreeMap<String, Member> = BTreeMap::new();
            let mut captions: BTreeMap<String, String> = BTreeMap::new();
            let entries = ar.entries().map_err(|e| Error::Invalid(format!("{}: not a tar file: {e}", path.display())))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| Error::Invalid(format!("{}: corrupt tar: {e}", path.display())))?;
                let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let base = name.rsplit('/').next().unwrap_or(&name).to_string();
                let Some((key, ext)) = base.split_once('.') else { continue };
                let key = format!("{}/{key}", name.rsplit_once('/').map(|(d, _)| d).unwrap_or(""));
                let ext = ext.to_ascii_lowercase();
                if IMAGE_EXT.contains(&ext.as_str()) {
                    images.insert(key, Member { shard: si, offset: entry.raw_file_position(), len: entry.size() });
                } else if ext == "txt" {
                    let mut s = String::new();
                    entry.read_to_string(&mut s).map_err(|e| Error::Invalid(format!("{}: {name}: {e}", path.display())))?;
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
        let img = image::load_from_memory(&buf).map_err(|e| format!("cannot decode image: {e}"))?;
        Ok((super::image::composite_on_white(&img), caption.clone()))
    }
    fn describe(&self, i: usize) -> String {
        self.items[i].0.clone()
    }
}

/// An ImageFolder tree (`root/CLASS/*.png|jpg`): paths, labels and sorted class names.
pub fn image_folder(root: &Path) -> Result<(Vec<PathBuf>, Vec<i64>, Vec<String>)> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut classes: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::Invalid(format!("{}: no class folders", root.display())));
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
    }
}
