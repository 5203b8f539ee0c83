//! Image loading and evaluation preprocessing: bicubic resize of the shorter side, centre
//! crop, `(x/255 − mean)/std`, CHW float32.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Decodes an image file to RGB (alpha composited on white).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::open(path).map_err(|e| Error::Invalid(format!("{}: cannot decode image: {e}", path.display())))?;
    Ok(composite_on_white(&img))
}

/// RGB with any alpha composited on white (transparent stamps become white-backed).
pub fn composite_on_white(img: &image::DynamicImage) -> RgbImage {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Bicubic resize so the shorter side is `size`, then centre crop `size × size`.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == size && h == size {
        return img.clone();
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(size), ((h as f64 * scale).round() as u32).max(size));
    let resized = image::imageops::resize(img, nw, nh, FilterType::CatmullRom);
    image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
}

/// RGB bytes (HWC) → normalised `[3, H, W]` float tensor.
pub fn to_tensor(pixels: &[u8], width: u32, height: u32, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let t = Tensor::from_slice(pixels).view([height as i64, width as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
    let m = Tensor::from_slice(&mean.map(|x| x as f32)).view([3, 1, 1]);
    let s = Tensor::from_slice(&std.map(|x| x as f32)).view([3, 1, 1]);
    (t - m) / s
}
