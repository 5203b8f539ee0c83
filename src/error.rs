//! The crate's error type. Every variant names what was wrong (file, key, tensor) so the
//! command-line front-ends can print it and exit instead of panicking. A caller matches the
//! kind: input (`Config`, `Parse`, `Invalid`), data (`Data`, `Io`), checkpoint
//! (`Checkpoint`), numeric (`Numeric`, `Stopped`), resource, distributed, libtorch (`Torch`).
//! Input, data and checkpoint errors exit 2; the others exit 1 ([`Error::exit_code`]).

use std::path::PathBuf;

/// What went wrong; every variant names the file, key, value or tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is impossible or unknown.
    #[error("config: `{key}` = {value}: {reason}")]
    Config {
        /// The key (`vision.heads`, `--batch`, …).
        key: String,
        /// The offending value.
        value: String,
        /// Why it is impossible.
        reason: String,
    },
    /// A TOML/JSON file could not be parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line where it knows it.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// Input: a request outside what the model or data offers (layer/head out of range, a
    /// flag combination that cannot work, …): exit 2.
    #[error("{0}")]
    Invalid(String),
    /// Data: an image, manifest, shard or tensor file that cannot be read as data (named):
    /// exit 2.
    #[error("{0}")]
    Data(String),
    /// Checkpoint: a checkpoint or published weight file that does not verify, does not fit
    /// the model, or cannot be written (named): exit 2.
    #[error("{0}")]
    Checkpoint(String),
    /// Distributed: a process group that cannot form, or a rank that failed or disagrees:
    /// exit 1.
    #[error("{0}")]
    Distributed(String),
    /// Resource: memory or disk ran out: exit 1.
    #[error("{0}")]
    Resource(String),
    /// A run stopped on its own data (non-finite loss or weights, a failed save): exit 1,
    /// not "bad input".
    #[error("{0}")]
    Stopped(String),
    /// A model or computation produced values that are not finite, or a degenerate model
    /// (all-zero embeddings) where a metric would be undefined: exit 1.
    #[error("{0}")]
    Numeric(String),
    /// An error raised inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The command-line exit status: 1 for a stopped run, 2 for everything else (bad input).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Stopped(_) | Error::Numeric(_) | Error::Distributed(_) | Error::Resource(_) => 1,
            _ => 2,
        }
    }
    /// A [`Error::Config`] naming `key` and `value`.
    pub fn config(key: impl Into<String>, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::Config { key: key.into(), value: value.to_string(), reason: reason.into() }
    }
    /// A [`Error::Io`] naming `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
