//! Raw attention read-outs (docs/analysis-methods.md C1): per-head maps from captured
//! post-softmax attention `A[b, h, q, k]` (rows are queries).

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// One head's (or the head-mean's) map for one item.
#[derive(Debug, Clone, Serialize)]
pub struct HeadMap {
    /// The layer slot.
    pub slot: usize,
    /// `None` for the mean over heads.
    pub head: Option<usize>,
    /// Row-major values (`grid × grid` for images, `n × n` for text).
    pub values: Vec<f32>,
    /// Side of the square map.
    pub side: usize,
}

fn check4(probs: &Tensor, item: i64) -> Result<(i64, i64, i64)> {
    let s = probs.size();
    if s.len() != 4 || s[2] != s[3] {
        return Err(Error::Invalid(format!("attention tensor has shape {s:?}; expected [B, H, L, L]")));
    }
    if item < 0 || item >= s[0] {
        return Err(Error::Invalid(format!("item {item} out of range: batch has {}", s[0])));
    }
    Ok((s[0], s[1], s[2]))
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view([-1])).expect("float tensor to vec")
}

/// Image maps: attention of `query` (0 = CLS) to the `grid × grid` patch keys (CLS key
/// dropped), for every head followed by the head mean.
pub fn image_query_maps(probs: &Tensor, slot: usize, item: i64, query: i64, grid: i64) -> Result<Vec<HeadMap>> {
    let (_, h, l) = check4(probs, item)?;
    if l != grid * grid + 1 {
        return Err(Error::Invalid(format!("attention has {l} tokens; a {grid}×{grid} grid needs {}", grid * grid + 1)));
    }
    if query < 0 || query >= l {
        return Err(Error::Invalid(format!("query token {query} out of range 0..{l}")));
    }
    let rows = probs.get(item).select(1, query).narrow(1, 1, grid * grid); // [H, g²]
    let mut out: Vec<HeadMap> =
        (0..h).map(|hh| HeadMap { slot, head: Some(hh as usize), values: to_vec(&rows.get(hh)), side: grid as usize }).collect();
    out.push(HeadMap { slot, head: None, values: to_vec(&rows.mean_dim(0, false, Kind::Float)), side: grid as usize });
    Ok(out)
}

/// Text matrices restricted to positions `0..=eot` (SOT … EOT), per head then head mean.
pub fn text_maps(probs: &Tensor, slot: usize, item: i64, eot: i64) -> Result<Vec<HeadMap>> {
    let (_, h, l) = check4(probs, item)?;
    if eot < 0 || eot >= l {
        return Err(Error::Invalid(format!("EOT position {eot} out of range 0..{l}")));
    }
    let n = eot + 1;
    let m = probs.get(item).narrow(1, 0, n).narrow(2, 0, n); // [H, n, n]
    let mut out: Vec<HeadMap> =
        (0..h).map(|hh| HeadMap { slot, head: Some(hh as usize), values: to_vec(&m.get(hh)), side: n as usize }).collect();
    out.push(HeadMap { slot, head: None, values: to_vec(&m.mean_dim(0, false, Kind::Float)), side: n as usize });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cls_row_and_text_block_are_read_out() {
        // B=1, H=2, grid 2 → L=5. Head 0 puts all CLS mass on patch 3 (token 4).
        let mut a = vec![0f32; 2 * 5 * 5];
        for h in 0..2 {
            for q in 0..5 {
                a[h * 25 + q * 5 + q] = 1.0;
            }
        }
        a[0] = 0.0;
        a[4] = 1.0; // head 0, query 0 → key 4
        let t = Tensor::from_slice(&a).view([1, 2, 5, 5]);
        let maps = image_query_maps(&t, 3, 0, 0, 2).unwrap();
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].values, vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(maps[1].values, vec![0.0, 0.0, 0.0, 0.0]); // head 1 attends CLS→CLS
        assert_eq!(maps[2].values, vec![0.0, 0.0, 0.0, 0.5]);
        let tm = text_maps(&t, 3, 0, 2).unwrap();
        assert_eq!(tm[1].side, 3);
        assert_eq!(tm[1].values, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(image_query_maps(&t, 3, 1, 0, 2).is_err());
        assert!(image_query_maps(&t, 3, 0, 0, 3).is_err());
    }
}
