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

thread_local! {
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `body`, a stretch of tch calls on user-sized input (loading, a forward on user data,
/// allocating what a flag sized), and turns a libtorch failure that tch's panicking API raised
/// inside it into an error a caller can match: a failed allocation becomes
/// [`Error::Resource`] ("out of memory: …; use a smaller count or batch size"), any other
/// libtorch error [`Error::Torch`] with libtorch's first line (no C++ backtrace). Nothing is
/// printed for a panic caught here: the process's panic hook is chained once so that it stays
/// silent inside a guard and behaves as before everywhere else.
pub fn torch_guard<T>(body: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) == 0 {
                previous(info);
            }
        }));
    });
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    GUARDED.with(|g| g.set(g.get() - 1));
    match r {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown libtorch failure".into());
            Err(torch_panic_error(&msg))
        }
    }
}

/// A panic message's first line: libtorch's messages carry a C++ backtrace (escaped or not)
/// after it.
pub(crate) fn first_line(msg: &str) -> &str {
    let cut = ["\\nframe #", "\nframe #", "\n"].iter().filter_map(|m| msg.find(m)).min().unwrap_or(msg.len());
    msg[..cut].trim()
}

/// The error for a libtorch panic message: [`Error::Resource`] for a failed allocation, else
/// [`Error::Torch`] with the first line.
pub(crate) fn torch_panic_error(msg: &str) -> Error {
    let first = first_line(msg);
    if let Some(i) = first.find("can't allocate memory") {
        let what = first[i..].split(" Error code").next().unwrap_or("").trim_end_matches(['.', '"', ')']);
        return Error::Resource(format!("out of memory: libtorch {what}; use a smaller count or batch size"));
    }
    Error::Torch(tch::TchError::Torch(first.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libtorch_failure_inside_a_guard_is_an_error_not_a_panic() {
        // A matmul of mismatched shapes: tch's panicking API raises it.
        let r: Result<()> = torch_guard(|| {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            let _ = a.matmul(&a);
            Ok(())
        });
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Torch(_)), "{e}");
        let text = e.to_string();
        assert!(text.contains("mat1 and mat2 shapes cannot be multiplied") && !text.contains("frame #"), "{text}");
        assert_eq!(e.exit_code(), 2);
        // An allocation failure's message becomes a resource error.
        let oom = torch_panic_error(
            "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:119] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 400000000000 bytes. Error code 12 (Cannot allocate memory)\\nframe #0: ...\")",
        );
        assert!(
            matches!(&oom, Error::Resource(m) if m.starts_with("out of memory: libtorch can't allocate memory: you tried to allocate 400000000000 bytes")),
            "{oom}"
        );
        assert_eq!(oom.exit_code(), 1);
        // Results pass through, and guards nest.
        assert_eq!(torch_guard(|| torch_guard(|| Ok(7))).unwrap(), 7);
    }
}
