//! The synthetic world as a data set: item `i` of a world with seed `s` is `synth::scene(s, i)`;
//! the epoch order is a permutation drawn from `(seed, epoch)` alone (independent of threads).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::image::to_tensor;
use super::synth::{self, Rng, COLORS, SHAPES};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::tokenizer::Tokenizer;

/// Seed offset of the held-out evaluation worlds (never used for training items).
pub const EVAL_SEED_OFFSET: u64 = 0x00E0_A100_0000;

/// The order of items in `epoch` (Fisher–Yates with a stream from `(seed, epoch)`).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Renders items into `[B,3,S,S]` images (normalised) and `[B, ctx]` tokens.
pub fn batch(seed: u64, indices: &[usize], size: u32, mean: [f64; 3], std: [f64; 3], tok: &Tokenizer) -> (Tensor, Tensor, Vec<String>) {
    let mut imgs = Vec::with_capacity(indices.len());
    let mut caps = Vec::with_capacity(indices.len());
    for &i in indices {
        let sc = synth::scene(seed, i as u64, size);
        imgs.push(to_tensor(&sc.pixels, size, size, mean, std));
        caps.push(sc.caption);
    }
    (Tensor::stack(&imgs, 0), tok.tokenize_batch(&caps), caps)
}

/// Held-out scenes of the relations world (`seed ^ EVAL_SEED_OFFSET`): images, their captions'
/// tokens, and the tokens of the same captions with the relation reversed.
pub fn relation_set(seed: u64, n: usize, size: u32, mean: [f64; 3], std: [f64; 3], tok: &Tokenizer) -> (Tensor, Tensor, Tensor) {
    let (mut imgs, mut caps, mut swapped) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    // Scenes whose two objects could not both be placed name no relation: skipped.
    let mut i = 0u64;
    while caps.len() < n && i < 4 * n as u64 + 16 {
        let sc = synth::scene_in(synth::World::Relations, seed ^ EVAL_SEED_OFFSET, i, size);
        i += 1;
        let Some(sw) = synth::swap_relation(&sc.caption) else { continue };
        imgs.push(to_tensor(&sc.pixels, size, size, mean, std));
        swapped.push(sw);
        caps.push(sc.caption);
    }
    (Tensor::stack(&imgs, 0), tok.tokenize_batch(&caps), tok.tokenize_batch(&swapped))
}

/// Zero-shot classes of the synthetic world: every colour × shape, named "COLOR SHAPE".
pub fn zero_shot_classes() -> Vec<String> {
    COLORS.iter().flat_map(|(c, _)| SHAPES.iter().map(move |s| format!("{c} {s}"))).collect()
}

/// Prompt templates of the synthetic zero-shot task (`{}` is the class name).
pub const TEMPLATES: [&str; 3] = ["a {}", "a small {}", "a large {}"];

/// `n` held-out single-object images with their class index (into [`zero_shot_classes`]).
pub fn zero_shot_set(seed: u64, n: usize, size: u32, mean: [f64; 3], std: [f64; 3]) -> (Tensor, Vec<i64>) {
    let mut imgs = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = Rng::new((seed ^ EVAL_SEED_OFFSET).wrapping_add(i as u64 * 7919));
        let sc = synth::render(size, 1, &mut rng);
        let o = &sc.objects[0];
        let c = COLORS.iter().position(|(name, _)| *name == o.color).expect("scenes draw colours from COLORS");
        let s = SHAPES.iter().position(|name| *name == o.shape).expect("scenes draw shapes from SHAPES");
        labels.push((c * SHAPES.len() + s) as i64);
        imgs.push(to_tensor(&sc.pixels, size, size, mean, std));
    }
    (Tensor::stack(&imgs, 0).to_kind(Kind::Float), labels)
}

/// Writes `n` scenes of the world `seed` at `size` pixels into `out`: `images/NNNNNNN.png`,
/// a sidecar `images/NNNNNNN.json` per image (boxes, attributes, the caption words naming
/// each object) and `manifest.tsv` (OpenCLIP's `filepath`/`title` columns). Returns the
/// manifest's path.
pub fn write_dataset(n: usize, seed: u64, size: u32, out: &Path) -> Result<PathBuf> {
    if !(16..=1024).contains(&size) {
        return Err(Error::config("size", size, "must be in 16..=1024"));
    }
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| Error::io(&images, e))?;
    let mut manifest = String::from("filepath\ttitle\n");
    for i in 0..n {
        let scene = super::synth::scene(seed, i as u64, size);
        let name = format!("{i:07}");
        let png = images.join(format!("{name}.png"));
        let img = image::RgbImage::from_raw(size, size, scene.pixels.clone()).expect("scene buffer");
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Data(format!("{}: {e}", png.display())))?;
        write_atomic(&png, &bytes)?;
        let side = serde_json::json!({"index": i, "seed": seed, "caption": scene.caption, "size": size, "objects": scene.objects});
        write_atomic(&images.join(format!("{name}.json")), serde_json::to_string_pretty(&side).expect("a sidecar serialises").as_bytes())?;
        manifest.push_str(&format!("images/{name}.png\t{}\n", scene.caption));
    }
    let path = out.join("manifest.tsv");
    write_atomic(&path, manifest.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_deterministic_permutation() {
        let a = epoch_order(100, 5, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 5, 0));
        assert_ne!(a, epoch_order(100, 5, 1));
        assert_eq!(zero_shot_classes().len(), 48);
    }
}
