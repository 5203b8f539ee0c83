//! IDX files (MNIST / Fashion-MNIST), optionally gzip-compressed.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Reads an IDX file: (dimensions, u8 data).
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
        out
    } else {
        raw
    };
    let bad = |why: &str| Error::Invalid(format!("{}: not an IDX file: {why}", path.display()));
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("magic must be 0x0000 08 NN (unsigned bytes)"));
    }
    let nd = bytes[3] as usize;
    if bytes.len() < 4 + 4 * nd {
        return Err(bad("truncated header"));
    }
    let dims: Vec<usize> = (0..nd).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let n: usize = dims.iter().product();
    let data = bytes[4 + 4 * nd..].to_vec();
    if data.len() < n {
        return Err(bad(&format!("truncated data ({} of {n} bytes)", data.len())));
    }
    Ok((dims, data[..n].to_vec()))
}
