//! IDX files (MNIST / Fashion-MNIST), optionally gzip-compressed.
//!
//! The header is read first; the data size it claims is computed with checked arithmetic and
//! bounded by [`MAX_IDX_BYTES`] before anything is allocated, and exactly that many bytes are
//! decoded (a gzip bomb cannot inflate past it).

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest IDX payload read (Fashion-MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an IDX file of unsigned bytes: (dimensions, data).
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 2];
    let mut peek = std::io::BufReader::new(file);
    let got = {
        use std::io::BufRead;
        let buf = peek.fill_buf().map_err(|e| Error::io(path, e))?;
        let n = buf.len().min(2);
        head[..n].copy_from_slice(&buf[..n]);
        n
    };
    let mut reader: Box<dyn Read> =
        if got == 2 && head == [0x1f, 0x8b] { Box::new(flate2::read::GzDecoder::new(peek)) } else { Box::new(peek) };
    let bad = |why: &str| Error::Data(format!("{}: not an IDX file: {why}", path.display()));
    let mut magic = [0u8; 4];
    reader.read_exact(&mut magic).map_err(|_| bad("truncated header"))?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 {
        return Err(bad("magic must be 0x0000 08 NN (unsigned bytes)"));
    }
    let nd = magic[3] as usize;
    if nd == 0 {
        return Err(bad("no dimensions"));
    }
    let mut dims = Vec::with_capacity(nd);
    for _ in 0..nd {
        let mut d = [0u8; 4];
        reader.read_exact(&mut d).map_err(|_| bad("truncated header"))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| bad(&format!("dimensions {dims:?} exceed {MAX_IDX_BYTES} bytes")))?;
    let mut data = Vec::new();
    reader.take(n).read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
    if (data.len() as u64) < n {
        return Err(bad(&format!("truncated data ({} of {n} bytes)", data.len())));
    }
    Ok((dims, data))
}
