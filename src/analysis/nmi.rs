//! Layer-wise NMI between k-means clusters and modality (the analysis the official MS-CLIP
//! code's `OUTPUT_*` feature hooks were built for; docs/spec-msclip.md §7.1, analysis-methods B10).
//!
//! k-means: k-means++ seeding from a SplitMix64 stream of the seed, Lloyd iterations until
//! the assignment stops changing (≤ `max_iter`), `restarts` runs, lowest inertia wins. It runs
//! on tch tensors (one matmul per iteration), so 200k × 512 points take seconds.
//! NMI(U, V) = I(U; V) / ((H(U) + H(V)) / 2) — scikit-learn's `normalized_mutual_info_score`
//! (arithmetic mean), natural logarithms; 1.0 when both labelings are constant.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng::SplitMix64 as Rng;

/// Result of [`kmeans`].
#[derive(Debug, Clone)]
pub struct KMeans {
    /// Cluster index of every point.
    pub labels: Vec<i64>,
    /// Sum of squared distances to the assigned centres.
    pub inertia: f64,
    /// Lloyd iterations of the best restart.
    pub iterations: usize,
}

fn sq_dists(x: &Tensor, c: &Tensor) -> Tensor {
    // ‖x‖² − 2x·c + ‖c‖², clamped at 0.
    let xx = (x * x).sum_dim_intlist(&[1i64][..], true, Kind::Double);
    let cc = (c * c).sum_dim_intlist(&[1i64][..], false, Kind::Double).unsqueeze(0);
    (xx - x.matmul(&c.tr()) * 2.0 + cc).clamp_min(0.0)
}

/// Points read chunk by chunk, so k-means can run over data that is not held in memory
/// (`msclip-analyze nmi --image-npy --text-npy`). Chunks are visited in index order and
/// partition `0..len()`.
pub trait Rows {
    /// Number of rows.
    fn len(&self) -> i64;
    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of chunks.
    fn chunks(&self) -> usize;
    /// Chunk `i` as `[rows, d]` (any float kind; used in f64).
    fn chunk(&mut self, i: usize) -> Result<Tensor>;
    /// One row `[1, d]` by global index.
    fn row(&mut self, index: i64) -> Result<Tensor>;
}

/// An in-memory tensor as one chunk.
pub struct TensorRows<'a>(pub &'a Tensor);

impl Rows for TensorRows<'_> {
    fn len(&self) -> i64 {
        self.0.size()[0]
    }
    fn chunks(&self) -> usize {
        1
    }
    fn chunk(&mut self, _: usize) -> Result<Tensor> {
        Ok(self.0.to_kind(Kind::Double))
    }
    fn row(&mut self, index: i64) -> Result<Tensor> {
        Ok(self.0.narrow(0, index, 1).to_kind(Kind::Double))
    }
}

/// Two `.npy` files of paired embeddings stacked (image rows, then text rows), read in
/// chunks of `chunk` rows.
pub struct NpyPairRows {
    files: [crate::analysis::npy::Reader; 2],
    chunk: i64,
}

impl NpyPairRows {
    /// Opens both files; their column counts must agree.
    pub fn open(image: &std::path::Path, text: &std::path::Path, chunk: i64) -> Result<NpyPairRows> {
        let (a, b) = (crate::analysis::npy::Reader::open(image)?, crate::analysis::npy::Reader::open(text)?);
        if a.cols != b.cols {
            return Err(Error::Invalid(format!("{} has {} columns but {} has {}", image.display(), a.cols, text.display(), b.cols)));
        }
        Ok(NpyPairRows { files: [a, b], chunk: chunk.max(1) })
    }
    /// Rows per modality: (image, text).
    pub fn counts(&self) -> (i64, i64) {
        (self.files[0].rows, self.files[1].rows)
    }
    fn per_file(&self, f: usize) -> usize {
        ((self.files[f].rows + self.chunk - 1) / self.chunk) as usize
    }
}

impl Rows for NpyPairRows {
    fn len(&self) -> i64 {
        self.files[0].rows + self.files[1].rows
    }
    fn chunks(&self) -> usize {
        self.per_file(0) + self.per_file(1)
    }
    fn chunk(&mut self, i: usize) -> Result<Tensor> {
        let (f, j) = if i < self.per_file(0) { (0, i) } else { (1, i - self.per_file(0)) };
        let chunk = self.chunk;
        self.files[f].read_rows(j as i64 * chunk, chunk)
    }
    fn row(&mut self, index: i64) -> Result<Tensor> {
        let n0 = self.files[0].rows;
        if index < n0 {
            self.files[0].read_rows(index, 1)
        } else {
            self.files[1].read_rows(index - n0, 1)
        }
    }
}

/// k-means on the rows of `x: [n, d]` (computed in f64).
pub fn kmeans(x: &Tensor, k: i64, restarts: usize, max_iter: usize, seed: u64) -> Result<KMeans> {
    let x = x.to_kind(Kind::Double); // once, not on every pass
    kmeans_rows(&mut TensorRows(&x), k, restarts, max_iter, seed)
}

/// k-means over [`Rows`]: memory is one chunk plus the `n` labels. k-means++ seeding takes two
/// passes per centre (the total of the squared distances, then the point where their running
/// sum crosses the drawn target); each Lloyd iteration takes one pass.
pub fn kmeans_rows(rows: &mut dyn Rows, k: i64, restarts: usize, max_iter: usize, seed: u64) -> Result<KMeans> {
    let n = rows.len();
    if k < 1 || k > n {
        return Err(Error::Invalid(format!("k-means: k = {k} with {n} points")));
    }
    let chunks = rows.chunks();
    let mut best: Option<KMeans> = None;
    for r in 0..restarts.max(1) {
        let mut rng = Rng::new(seed.wrapping_add(r as u64 * 0x9E37_79B9));
        // k-means++ seeding.
        let mut centers = rows.row(rng.below(n as u64) as i64)?.to_kind(Kind::Double);
        while centers.size()[0] < k {
            let mut total = 0.0;
            for i in 0..chunks {
                let x = rows.chunk(i)?.to_kind(Kind::Double);
                total += sq_dists(&x, &centers).min_dim(1, false).0.sum(Kind::Double).double_value(&[]);
            }
            let pick = if total <= 0.0 {
                rng.below(n as u64) as i64
            } else {
                let target = rng.unit() * total;
                let (mut acc, mut start, mut found) = (0.0, 0i64, None);
                for i in 0..chunks {
                    let x = rows.chunk(i)?.to_kind(Kind::Double);
                    let len = x.size()[0];
                    let d = sq_dists(&x, &centers).min_dim(1, false).0;
                    let cum = Vec::<f64>::try_from(d.cumsum(0, Kind::Double)).expect("a double tensor converts to Vec<f64>");
                    if let Some(p) = cum.iter().position(|&v| acc + v >= target) {
                        found = Some(start + p as i64);
                        break;
                    }
                    acc += cum.last().copied().unwrap_or(0.0);
                    start += len;
                }
                found.unwrap_or(n - 1)
            };
            centers = Tensor::cat(&[centers, rows.row(pick)?.to_kind(Kind::Double)], 0);
        }
        let mut labels: Vec<i64> = vec![-1; n as usize];
        let mut iterations = 0;
        for it in 0..max_iter.max(1) {
            iterations = it + 1;
            let mut changed = it == 0;
            let d = centers.size()[1];
            let (mut sums, mut counts) =
                (Tensor::zeros([k, d], (Kind::Double, centers.device())), Tensor::zeros([k], (Kind::Double, centers.device())));
            let mut start = 0usize;
            for i in 0..chunks {
                let x = rows.chunk(i)?.to_kind(Kind::Double);
                let new = sq_dists(&x, &centers).argmin(1, false);
                let v = Vec::<i64>::try_from(&new).expect("an int64 tensor converts to Vec<i64>");
                if labels[start..start + v.len()] != v[..] {
                    changed = true;
                    labels[start..start + v.len()].copy_from_slice(&v);
                }
                start += v.len();
                let onehot = new.one_hot(k).to_kind(Kind::Double); // [rows, k]
                counts += onehot.sum_dim_intlist(&[0i64][..], false, Kind::Double);
                sums += onehot.tr().matmul(&x);
            }
            // Recompute centres; an empty cluster keeps its centre.
            let nonempty = counts.gt(0.0).unsqueeze(1);
            centers = (sums / counts.clamp_min(1.0).unsqueeze(1)).where_self(&nonempty, &centers);
            if !changed {
                break;
            }
        }
        let mut inertia = 0.0;
        let mut start = 0i64;
        for i in 0..chunks {
            let x = rows.chunk(i)?.to_kind(Kind::Double);
            let len = x.size()[0];
            let lab = Tensor::from_slice(&labels[start as usize..(start + len) as usize]).to_device(x.device());
            inertia += sq_dists(&x, &centers).gather(1, &lab.unsqueeze(1), false).sum(Kind::Double).double_value(&[]);
            start += len;
        }
        let res = KMeans { labels, inertia, iterations };
        if best.as_ref().is_none_or(|b| res.inertia < b.inertia - 1e-12) {
            best = Some(res);
        }
    }
    Ok(best.expect("at least one restart"))
}

/// scikit-learn's `normalized_mutual_info_score(a, b)` (arithmetic normalisation).
pub fn nmi(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len(), "label vectors differ in length");
    let n = a.len() as f64;
    let mut ua: Vec<i64> = a.to_vec();
    ua.sort();
    ua.dedup();
    let mut ub: Vec<i64> = b.to_vec();
    ub.sort();
    ub.dedup();
    if (ua.len() == 1 && ub.len() == 1) || a.is_empty() {
        return 1.0;
    }
    let mut joint = vec![vec![0f64; ub.len()]; ua.len()];
    for (x, y) in a.iter().zip(b) {
        let i = ua.binary_search(x).expect("ua holds every label of a");
        let j = ub.binary_search(y).expect("ub holds every label of b");
        joint[i][j] += 1.0;
    }
    let pa: Vec<f64> = joint.iter().map(|r| r.iter().sum::<f64>() / n).collect();
    let pb: Vec<f64> = (0..ub.len()).map(|j| joint.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let h = |p: &[f64]| -p.iter().filter(|&&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>();
    let mut mi = 0.0;
    for (i, row) in joint.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0.0 {
                let p = c / n;
                mi += p * (p / (pa[i] * pb[j])).ln();
            }
        }
    }
    let (ha, hb) = (h(&pa), h(&pb));
    if ha == 0.0 || hb == 0.0 {
        return 0.0;
    }
    (mi / ((ha + hb) / 2.0)).clamp(0.0, 1.0)
}

/// NMI at one layer: features of both modalities stacked, k-means (k = 2 by default),
/// NMI against the modality label (0 = image, 1 = text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerNmi {
    /// The slot (the joint space's row uses the number of text slots).
    pub slot: usize,
    /// NMI(k-means clusters, modality).
    pub nmi: f64,
    /// k-means inertia.
    pub inertia: f64,
}

/// (NMI, inertia) of k-means on the stacked rows of both modalities against the modality label.
pub fn modality_nmi(image: &Tensor, text: &Tensor, k: i64, restarts: usize, seed: u64) -> Result<(f64, f64)> {
    let (ni, nt) = (image.size()[0], text.size()[0]);
    let feats = Tensor::cat(&[image.to_kind(Kind::Double), text.to_kind(Kind::Double)], 0);
    let km = kmeans(&feats, k, restarts, 100, seed)?;
    let truth: Vec<i64> = std::iter::repeat_n(0, ni as usize).chain(std::iter::repeat_n(1, nt as usize)).collect();
    Ok((nmi(&km.labels, &truth), km.inertia))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a tensor in uneven chunks.
    struct Chunked(Tensor, Vec<i64>);
    impl Rows for Chunked {
        fn len(&self) -> i64 {
            self.0.size()[0]
        }
        fn chunks(&self) -> usize {
            self.1.len() - 1
        }
        fn chunk(&mut self, i: usize) -> Result<Tensor> {
            Ok(self.0.narrow(0, self.1[i], self.1[i + 1] - self.1[i]))
        }
        fn row(&mut self, index: i64) -> Result<Tensor> {
            Ok(self.0.narrow(0, index, 1))
        }
    }

    /// Chunked k-means (what the streaming `nmi` runs) finds the in-memory labels and inertia,
    /// and so does the `.npy` pair reader.
    #[test]
    fn chunked_kmeans_equals_in_memory() {
        tch::manual_seed(4);
        let a = Tensor::randn([70, 5], (Kind::Double, tch::Device::Cpu)) + 0.7;
        let b = Tensor::randn([50, 5], (Kind::Double, tch::Device::Cpu)) - 0.7;
        let x = Tensor::cat(&[&a, &b], 0);
        let whole = kmeans(&x, 3, 3, 100, 9).unwrap();
        let parts = kmeans_rows(&mut Chunked(x.shallow_clone(), vec![0, 13, 14, 61, 120]), 3, 3, 100, 9).unwrap();
        assert_eq!(whole.labels, parts.labels);
        assert!((whole.inertia - parts.inertia).abs() < 1e-9 * whole.inertia);
        let dir = std::env::temp_dir().join(format!("msclip-nmi-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::analysis::npy::write_f32(&dir.join("a.npy"), &a).unwrap();
        crate::analysis::npy::write_f32(&dir.join("b.npy"), &b).unwrap();
        let mut rows = NpyPairRows::open(&dir.join("a.npy"), &dir.join("b.npy"), 16).unwrap();
        assert_eq!((rows.len(), rows.chunks(), rows.counts()), (120, 5 + 4, (70, 50)));
        let xf = x.to_kind(Kind::Float).to_kind(Kind::Double);
        let want = kmeans(&xf, 3, 3, 100, 9).unwrap();
        let got = kmeans_rows(&mut rows, 3, 3, 100, 9).unwrap();
        assert_eq!(want.labels, got.labels);
    }

    #[test]
    fn nmi_matches_scikit_learn_values() {
        // sklearn: normalized_mutual_info_score([0,0,1,1],[1,1,0,0]) = 1.0
        assert!((nmi(&[0, 0, 1, 1], &[1, 1, 0, 0]) - 1.0).abs() < 1e-12);
        // normalized_mutual_info_score([0,0,1,1],[0,1,0,1]) = 0.0
        assert!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).abs() < 1e-12);
        // normalized_mutual_info_score([0,0,0,1,1,1],[0,0,1,1,2,2]) = 0.5158037429793888
        assert!((nmi(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]) - 0.5158037429793888).abs() < 1e-12);
        assert_eq!(nmi(&[3, 3], &[1, 1]), 1.0);
    }

    #[test]
    fn kmeans_separates_two_blobs() {
        let a = Tensor::from_slice(&[0.0f64, 0.0, 0.1, 0.0, 0.0, 0.1, 5.0, 5.0, 5.1, 5.0, 5.0, 5.1]).view([6, 2]);
        let km = kmeans(&a, 2, 3, 50, 7).unwrap();
        assert_eq!(km.labels[0], km.labels[1]);
        assert_eq!(km.labels[0], km.labels[2]);
        assert_ne!(km.labels[0], km.labels[3]);
        assert!((km.inertia - 4.0 * 0.01 * 2.0 / 3.0).abs() < 1e-9, "{}", km.inertia);
        let (v, _) = modality_nmi(&a.narrow(0, 0, 3), &a.narrow(0, 3, 3), 2, 3, 1).unwrap();
        assert!((v - 1.0).abs() < 1e-12);
    }
}
