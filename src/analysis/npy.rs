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

/// Reads a 2-D little-endian float32 (or float64) C-order `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |why: &str| Error::Invalid(format!("{}: not a supported .npy file: {why}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
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
    let shape_txt = header.split("'shape':").nth(1).and_then(|s| s.split('(').nth(1)).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let dims: Vec<i64> = shape_txt.split(',').map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| s.parse::<i64>()).collect::<std::result::Result<_, _>>().map_err(|_| bad("bad shape"))?;
    if dims.len() != 2 {
        return Err(bad("array must be 2-D"));
    }
    let data = &bytes[start + hlen..];
    let elt = if kind == Kind::Float { 4 } else { 8 };
    let need = (dims[0] * dims[1]) as usize * elt;
    if data.len() < need {
        return Err(bad(&format!("truncated data ({} of {need} bytes)", data.len())));
    }
    let t = if kind == Kind::Float {
        let v: Vec<f32> = data[..need].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Tensor::from_slice(&v)
    } else {
        let v: Vec<f64> = data[..need].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_slice(&v)
    };
    Ok(t.view([dims[0], dims[1]]))
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
    }
}
