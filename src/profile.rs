//! libtorch's operator profiler (the legacy `torch.autograd.profiler` behind `RecordProfile`,
//! through the C++ shim `csrc/ops.cpp`): every ATen operator run while an [`OpProfile`] is
//! alive, forward and backward, with its wall time, written as a Chrome trace (open it in
//! `chrome://tracing` or Perfetto; `scripts/bench/profile_step.py` tabulates self times side
//! by side with PyTorch's profiler on OpenCLIP).

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

extern "C" {
    fn msd_profile_start(path: *const c_char, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_profile_stop(err: *mut c_char, errlen: usize) -> c_int;
}

/// An operator profile being recorded; the trace is written when it is dropped (or
/// [`OpProfile::finish`]ed). One at a time per process.
#[derive(Debug)]
pub struct OpProfile {
    path: PathBuf,
    live: bool,
}

impl OpProfile {
    /// Starts recording; the trace will be written to `path` (created now, so an unwritable
    /// path is an error naming it before anything runs).
    pub fn start(path: &Path) -> Result<OpProfile> {
        std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let c = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::Invalid(format!("profile path {} contains a NUL byte", path.display())))?;
        // SAFETY: a NUL-terminated path and an error buffer of the stated length.
        crate::shim::call(|err, len| unsafe { msd_profile_start(c.as_ptr(), err, len) })
            .map_err(|why| Error::Invalid(format!("cannot profile into {}: {why}", path.display())))?;
        Ok(OpProfile { path: path.to_path_buf(), live: true })
    }

    /// Stops recording and writes the trace; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.stop();
        // `start` created the file; the profiler fills it when it stops.
        if std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0) {
            return Err(Error::Invalid(format!("the profiler wrote no trace to {}", self.path.display())));
        }
        Ok(self.path.clone())
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.live) {
            // SAFETY: stops the one profile this value started (guarded in the shim); a failure
            // to write the trace shows as an empty file, which `finish` reports.
            if let Err(e) = crate::shim::call(|err, len| unsafe { msd_profile_stop(err, len) }) {
                eprintln!("warning: the profiler failed to stop: {e}");
            }
        }
    }
}

impl Drop for OpProfile {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile of a matrix product holds an `aten::mm` event; a second concurrent profile
    /// is refused with a reason.
    #[test]
    fn records_operators_into_a_chrome_trace() {
        let dir = std::env::temp_dir().join(format!("msclip-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.json");
        let p = OpProfile::start(&path).unwrap();
        let err = OpProfile::start(&dir.join("other.json")).unwrap_err().to_string();
        assert!(err.contains("already"), "{err}");
        let bad = dir.join("no-such-dir").join("t.json");
        let err = OpProfile::start(&bad).unwrap_err().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
        let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
        let _ = a.mm(&a);
        let written = p.finish().unwrap();
        let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(written).unwrap()).unwrap();
        let names: Vec<&str> = trace.as_array().unwrap().iter().filter_map(|e| e["name"].as_str()).collect();
        assert!(names.contains(&"aten::mm"), "{names:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
