//! Minimal NPY (v1.0) reader/writer for 2-D float32 arrays, so embeddings can be used with
//! numpy/scikit-learn (`np.load`).

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Writes a 2-D tensor as little-endian float32 `.npy` (atomically).
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let size = t.size();
    if size.len() != 2 {
        return Err(Error::Invalid(format!("{}: npy writer takes 2-D tensors, got {size:?}", path.display())));
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", size[0], size[1]);
    // magic(6) + version(2) + len(2) + header + '\n' padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + (size[0] * size[1] * 4) as usize);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let values = Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).map_err(Error::Torch)?;
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::io::write_atomic(path, &bytes)
}

/// Largest `.npy` header accepted (numpy writes 64–128 bytes).
const MAX_HEADER: usize = 1 << 16;

/// A 2-D `.npy` file read by row ranges (memory bounded by the range).
pub struct Reader {
    file: std::fs::File,
    path: std::path::PathBuf,
    data_offset: u64,
    kind: Kind,
    /// Rows.
    pub rows: i64,
    /// Columns.
    pub cols: i64,
}

impl Reader {
    /// Opens a 2-D `<f4`/`<f8` C-order file, checking its header against its size.
    pub fn open(path: &Path) -> Result<Reader> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut head = vec![0u8; 12];
        let got = file.read(&mut head).map_err(|e| Error::io(path, e))?;
        head.truncate(got);
        let hlen = match head.get(6) {
            Some(1) if got >= 10 => u16::from_le_bytes([head[8], head[9]]) as usize + 10,
            Some(2 | 3) if got >= 12 => u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize + 12,
            _ => 12,
        };
        if hlen > MAX_HEADER {
            return Err(Error::Invalid(format!("{}: not a supported .npy file: header of {hlen} bytes", path.display())));
        }
        let mut bytes = head;
        bytes.resize(hlen.max(bytes.len()), 0);
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
        let n = file.read(&mut bytes).map_err(|e| Error::io(path, e))?;
        bytes.truncate(n);
        let (kind, dims, start) = parse_header(path, &bytes)?;
        let elt = if kind == Kind::Float { 4 } else { 8 };
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let need = start as u64 + (dims[0] * dims[1]) as u64 * elt;
        if len < need {
            return Err(Error::Invalid(format!(
                "{}: not a supported .npy file: truncated data ({} of {} bytes)",
                path.display(),
                len - start as u64,
                need - start as u64
            )));
        }
        Ok(Reader { file, path: path.to_path_buf(), data_offset: start as u64, kind, rows: dims[0], cols: dims[1] })
    }

    /// Rows `start..start+count` as a `[count, cols]` tensor (float32 or float64).
    pub fn read_rows(&mut self, start: i64, count: i64) -> Result<Tensor> {
        use std::io::{Read, Seek, SeekFrom};
        let elt = if self.kind == Kind::Float { 4 } else { 8 };
        let count = count.min(self.rows - start).max(0);
        let mut buf = vec![0u8; (count * self.cols) as usize * elt];
        let p = &self.path;
        self.file.seek(SeekFrom::Start(self.data_offset + (start * self.cols) as u64 * elt as u64)).map_err(|e| Error::io(p, e))?;
        self.file.read_exact(&mut buf).map_err(|e| Error::io(p, e))?;
        Ok(decode(&buf, self.kind).view([count, self.cols]))
    }
}

fn decode(data: &[u8], kind: Kind) -> Tensor {
    if kind == Kind::Float {
        let v: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Tensor::from_slice(&v)
    } else {
        let v: Vec<f64> = data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact(8) gives 8 bytes"))).collect();
        Tensor::from_slice(&v)
    }
}

/// (dtype, [rows, cols], offset of the data) of a `.npy` header at the start of `bytes`.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Kind, Vec<i64>, usize)> {
    let bad = |why: &str| Error::Invalid(format!("{}: not a supported .npy file: {why}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(bad("unknown version")),
    };
    let header = std::str::from_utf8(bytes.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?)
        .map_err(|_| bad("header is not text"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order"));
    }
    let kind = if header.contains("'<f4'") {
        Kind::Float
    } else if header.contains("'<f8'") {
        Kind::Double
    } else {
        return Err(bad("dtype must be <f4 or <f8"));
    };
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<i64> = shape_txt
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("bad shape"))?;
    if dims.len() != 2 {
        return Err(bad("array must be 2-D"));
    }
    if dims[1] == 0 {
        return Err(bad("array has 0 columns"));
    }
    if dims.iter().any(|&d| d < 0) || dims[0].checked_mul(dims[1]).and_then(|n| n.checked_mul(8)).is_none() {
        return Err(bad("shape is too large"));
    }
    Ok((kind, dims, start + hlen))
}

/// Reads a 2-D little-endian float32 (or float64) C-order `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let mut r = Reader::open(path)?;
    let rows = r.rows;
    r.read_rows(0, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let p = std::env::temp_dir().join(format!("msclip-npy-{}.npy", std::process::id()));
        let t = Tensor::from_slice(&[1.0f32, -2.5, 3.25, 4.0, 5.0, 6.0]).view([3, 2]);
        write_f32(&p, &t).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        assert!(read(&p).unwrap().equal(&t));
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("truncated"));
        write_f32(&p, &t).unwrap();
        let mut r = Reader::open(&p).unwrap();
        assert_eq!((r.rows, r.cols), (3, 2));
        assert!(r.read_rows(1, 2).unwrap().equal(&t.narrow(0, 1, 2)));
        assert!(r.read_rows(2, 5).unwrap().equal(&t.narrow(0, 2, 1)));
        std::fs::write(&p, b"\x93NUMPX").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("missing magic"));
    }
}
