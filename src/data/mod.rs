//! Data: the built-in synthetic world and image preprocessing.

pub mod fetch;
pub mod idx;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod pairs;
pub mod shards;
pub mod synth;
pub mod synthetic_set;
pub mod tensors;

/// What a training `data` spec names, decided by the file extension of each comma-separated
/// part (not by a substring: a manifest under `x.tar.d/` is still a manifest).
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    /// A manifest (`.csv` comma-separated; anything else tab-separated).
    Manifest(std::path::PathBuf),
    /// WebDataset tar shards (`dir/shard-{000..009}.tar`, comma-separated lists allowed).
    Shards(String),
    /// Pre-processed tensors (`.safetensors`, see [`tensors`]).
    Tensors(std::path::PathBuf),
}

impl DataSpec {
    /// Parses `spec`; an empty spec, or a list mixing shards with other files, is an error
    /// naming it.
    pub fn parse(spec: &str) -> crate::Result<DataSpec> {
        let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(crate::Error::config("data", format!("{spec:?}"), "an empty path"));
        }
        let tar = |p: &str| p.ends_with(".tar");
        if parts.iter().all(|p| tar(p)) {
            return Ok(DataSpec::Shards(spec.to_string()));
        }
        if parts.len() > 1 || parts.iter().any(|p| tar(p)) {
            return Err(crate::Error::config("data", spec, "a list must name only .tar shards; a manifest or tensor file stands alone"));
        }
        if spec.ends_with(".safetensors") {
            return Ok(DataSpec::Tensors(spec.into()));
        }
        Ok(DataSpec::Manifest(spec.into()))
    }
}

#[cfg(test)]
mod spec_tests {
    use super::DataSpec;

    #[test]
    fn specs_are_told_apart_by_extension() {
        assert_eq!(DataSpec::parse("d/shard-{000..009}.tar").unwrap(), DataSpec::Shards("d/shard-{000..009}.tar".into()));
        assert!(matches!(DataSpec::parse("a.tar,b.tar").unwrap(), DataSpec::Shards(_)));
        assert_eq!(DataSpec::parse("x.tar.d/m.tsv").unwrap(), DataSpec::Manifest("x.tar.d/m.tsv".into()));
        assert_eq!(DataSpec::parse("b.safetensors").unwrap(), DataSpec::Tensors("b.safetensors".into()));
        assert!(DataSpec::parse("a.tar,m.tsv").is_err());
        assert!(DataSpec::parse("a.tar,").is_err());
    }
}
