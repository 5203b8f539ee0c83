//! Image loading and evaluation preprocessing, equal to the official MS-CLIP evaluation
//! transform (torchvision `Resize(size, BICUBIC)` + `CenterCrop(size)` on PIL images, then
//! `(x/255 − mean)/std`, CHW float32).
//!
//! - Decoding goes by content, not by file extension, and an image whose header declares more
//!   than [`MAX_IMAGE_PIXELS`] pixels (PIL's decompression-bomb limit) or a side over
//!   [`MAX_IMAGE_SIDE`] is refused before anything is allocated.
//! - Sizes follow torchvision exactly: the shorter side becomes `size`, the longer
//!   `int(size · long / short)` (truncated); the crop offset is `int(round((H − size) / 2))`
//!   with Python's round-half-to-even.
//! - Resampling is Pillow's `ImagingResample` (Resample.c, Pillow 13) for 8-bit images:
//!   separable Keys cubic (a = −0.5, support 2 scaled by the reduction factor), coefficients
//!   normalised then converted to 22-bit fixed point, the first pass rounded and clipped to 8
//!   bits before the second (horizontal first, unless the height shrinks by more than twice as
//!   many pixels as the width; Pillow ≤ 12 always went horizontal first, which differs by a few
//!   levels on such tall images). Only the output pixels inside the crop are computed, so an
//!   extreme aspect ratio (a 65000×1 strip) costs the crop, not the resize.

use std::io::Cursor;
use std::path::Path;

use image::RgbImage;
use tch::Tensor;

use crate::error::{Error, Result};

/// Largest decoded image, in pixels (Pillow's `MAX_IMAGE_PIXELS`).
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;
/// Largest image side, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 65_535;
/// Largest image file read, in bytes.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Decodes an image file to RGB (alpha composited on white).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(Error::Data(format!("{}: image file larger than {MAX_IMAGE_FILE_BYTES} bytes", path.display())));
    }
    decode_rgb(&bytes).map_err(|why| Error::Data(format!("{}: {why}", path.display())))
}

/// Whether a JPEG stream has an end-of-image marker (FF D9) after its first start-of-scan
/// (FF DA) — what a file cut short lacks. Trailing bytes after EOI are allowed, as Pillow does.
pub fn jpeg_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else { return false };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes image bytes by their content (PNG, JPEG) to RGB with alpha composited on white,
/// after checking the header's dimensions against [`MAX_IMAGE_PIXELS`] and [`MAX_IMAGE_SIDE`].
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read image: {e}"))?;
    if reader.format().is_none() {
        return Err("cannot decode image: not a PNG or JPEG file".into());
    }
    let jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let (w, h) = reader.into_dimensions().map_err(|e| format!("cannot decode image: {e}"))?;
    check_dimensions(w, h)?;
    if jpeg && !jpeg_complete(bytes) {
        // The decoder fills the missing rows in grey without complaint; Pillow refuses.
        return Err("image file is truncated (no JPEG end-of-image marker after the scan data)".into());
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read image: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    match reader.decode().map_err(|e| format!("cannot decode image: {e}"))? {
        image::DynamicImage::ImageRgb8(rgb) => Ok(rgb),
        other => Ok(composite_on_white(&other)),
    }
}

fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image is {w}×{h}"));
    }
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(format!("image is {w}×{h}; at most {MAX_IMAGE_PIXELS} pixels and {MAX_IMAGE_SIDE} per side are decoded"));
    }
    Ok(())
}

/// RGB with any alpha composited on white (transparent stamps become white-backed).
pub fn composite_on_white(img: &image::DynamicImage) -> RgbImage {
    if let image::DynamicImage::ImageRgb8(rgb) = img {
        return rgb.clone();
    }
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

/// torchvision's `Resize(size)` output size for a `w × h` image: the shorter side becomes
/// `size`, the longer `int(size · long / short)`.
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size as u64 * long as u64) as f64 / short as f64) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((total − crop) / 2))`, round half to even.
pub fn center_offset(total: u32, crop: u32) -> u32 {
    let d = total.saturating_sub(crop);
    // d/2 is k + ½ exactly when d is odd; Python rounds that to the even neighbour.
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// `Resize(size, bicubic)` then `CenterCrop(size)`, as the official evaluation transform on a
/// PIL image (see the module docs); only the cropped output is computed.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_size(w, h, size);
    let (nw, nh) = (nw.max(size), nh.max(size));
    let (left, top) = (center_offset(nw, size), center_offset(nh, size));
    resize_window(img, (0.0, 0.0, w as f64, h as f64), nw, nh, left, top, size, size)
}

/// Pillow's `Image.resize((out_w, out_h), BICUBIC)` of the whole image.
pub fn resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    resize_window(img, (0.0, 0.0, w as f64, h as f64), out_w, out_h, 0, 0, out_w, out_h)
}

/// `img.crop(box).resize((out_w, out_h), BICUBIC)` without materialising the crop (Pillow's
/// `resize(size, box=box)`, as torchvision's `resized_crop` on PIL images).
pub fn resized_crop(img: &RgbImage, x: u32, y: u32, cw: u32, ch: u32, out_w: u32, out_h: u32) -> RgbImage {
    let crop = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    resize_bicubic(&crop, out_w, out_h)
}

/// Bits of Pillow's fixed-point coefficients for 8-bit images (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Keys' cubic convolution with a = −0.5 (Pillow's `bicubic_filter`, support 2).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output indices `first..first+n`
/// of an axis of `in_size` pixels resampled from the box `[in0, in1)` to `out_size`: for each
/// output index, the first input index and the fixed-point weights.
fn coefficients(in_size: u32, in0: f64, in1: f64, out_size: u32, first: u32, n: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (first..first + n)
        .map(|xx| {
            let center = in0 + (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; negative values are clamped to 0 below.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize;
            let w: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: a fixed-point accumulator to a byte.
#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1i32 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// The accumulator's start, `1 << (PRECISION_BITS − 1)` (rounds the final shift to nearest).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A pixel buffer (RGB, row-major) of `w` columns.
struct Plane<'a> {
    px: &'a [u8],
    w: usize,
}

/// Horizontal pass: rows `rows` of `src`, one output column per coefficient set (whose input
/// indices are shifted by `−shift` into `src`). Pillow's `ImagingResampleHorizontal_8bpc`:
/// C `int` accumulators, so 32-bit wrapping arithmetic (255 · Σ|k| stays below 2³¹ except for
/// pathological up-scales of 2–3 pixel images, where this wraps as Pillow does), the three
/// channels of a pixel accumulated together.
fn hpass(src: &Plane, rows: std::ops::Range<usize>, coeffs: &[(usize, Vec<i32>)], shift: usize) -> Vec<u8> {
    let ow = coeffs.len();
    let mut out = vec![0u8; rows.len() * ow * 3];
    for (r, y) in rows.enumerate() {
        let line = &src.px[y * src.w * 3..(y + 1) * src.w * 3];
        let o = &mut out[r * ow * 3..(r + 1) * ow * 3];
        for ((xmin, k), px_out) in coeffs.iter().zip(o.chunks_exact_mut(3)) {
            let start = (xmin - shift) * 3;
            let taps = &line[start..start + k.len() * 3];
            let (mut a0, mut a1, mut a2) = (HALF, HALF, HALF);
            for (p, &kj) in taps.chunks_exact(3).zip(k) {
                a0 = a0.wrapping_add((p[0] as i32).wrapping_mul(kj));
                a1 = a1.wrapping_add((p[1] as i32).wrapping_mul(kj));
                a2 = a2.wrapping_add((p[2] as i32).wrapping_mul(kj));
            }
            px_out.copy_from_slice(&[clip8(a0), clip8(a1), clip8(a2)]);
        }
    }
    out
}

/// Vertical pass: columns `cols` of `src`, one output row per coefficient set (input rows
/// shifted by `−shift`). Pillow's `ImagingResampleVertical_8bpc`, accumulated a whole input
/// row at a time (contiguous, vectorised) instead of one output byte at a time: wrapping
/// integer sums are associative, so the same bytes in any order.
fn vpass(src: &Plane, cols: std::ops::Range<usize>, coeffs: &[(usize, Vec<i32>)], shift: usize) -> Vec<u8> {
    let ow = cols.len();
    let mut out = vec![0u8; coeffs.len() * ow * 3];
    let mut acc = vec![0i32; ow * 3];
    for ((ymin, k), o) in coeffs.iter().zip(out.chunks_exact_mut(ow * 3)) {
        acc.fill(HALF);
        for (j, &kj) in k.iter().enumerate() {
            let y = ymin - shift + j;
            let row = &src.px[(y * src.w + cols.start) * 3..(y * src.w + cols.end) * 3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add((p as i32).wrapping_mul(kj));
            }
        }
        for (b, &a) in o.iter_mut().zip(&acc) {
            *b = clip8(a);
        }
    }
    out
}

/// The input index range the coefficient sets read.
fn span(coeffs: &[(usize, Vec<i32>)]) -> std::ops::Range<usize> {
    let lo = coeffs.iter().map(|(s, _)| *s).min().unwrap_or(0);
    let hi = coeffs.iter().map(|(s, k)| s + k.len()).max().unwrap_or(lo);
    lo..hi.max(lo)
}

/// Rows `rows`, columns `cols` of a plane, copied.
fn window(src: &Plane, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Vec<u8> {
    rows.flat_map(|y| src.px[(y * src.w + cols.start) * 3..(y * src.w + cols.end) * 3].iter().copied()).collect()
}

/// The window `[left, left+cw) × [top, top+ch)` of the image that Pillow's bicubic resize of
/// the source box `bx` to `out_w × out_h` would produce. Pillow (13) runs the horizontal pass
/// first, its result rounded to 8 bits, then the vertical one, unless the height shrinks by
/// more than twice as many pixels as the width: then vertical first. Either way only the
/// input rows/columns the window reads are resampled.
#[allow(clippy::too_many_arguments)]
fn resize_window(img: &RgbImage, bx: (f64, f64, f64, f64), out_w: u32, out_h: u32, left: u32, top: u32, cw: u32, ch: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let need_h = out_w != w || bx.0 != 0.0 || bx.2 != out_w as f64;
    let need_v = out_h != h || bx.1 != 0.0 || bx.3 != out_h as f64;
    let horizontal_first = !(h > out_h && (h - out_h) as i64 > (w as i64 - out_w as i64) * 2);
    let hc = need_h.then(|| coefficients(w, bx.0, bx.2, out_w, left, cw));
    let vc = need_v.then(|| coefficients(h, bx.1, bx.3, out_h, top, ch));
    let src = Plane { px: img.as_raw(), w: w as usize };
    let (cols, rows) = (left as usize..(left + cw) as usize, top as usize..(top + ch) as usize);
    let out = if horizontal_first {
        let rin = vc.as_deref().map_or(rows.clone(), span);
        let tmp = match &hc {
            Some(hc) => hpass(&src, rin.clone(), hc, 0),
            None => window(&src, rin.clone(), cols.clone()),
        };
        let tmp = Plane { px: &tmp, w: cw as usize };
        match &vc {
            Some(vc) => vpass(&tmp, 0..cw as usize, vc, rin.start),
            None => tmp.px.to_vec(),
        }
    } else {
        let cin = hc.as_deref().map_or(cols.clone(), span);
        let tmp = match &vc {
            Some(vc) => vpass(&src, cin.clone(), vc, 0),
            None => window(&src, rows.clone(), cin.clone()),
        };
        let tmp = Plane { px: &tmp, w: cin.len() };
        match &hc {
            Some(hc) => hpass(&tmp, 0..ch as usize, hc, cin.start),
            None => tmp.px.to_vec(),
        }
    };
    RgbImage::from_raw(cw, ch, out).expect("window buffer")
}

/// RGB bytes (HWC) → normalised `[3, H, W]` float tensor: torchvision's `ToTensor` then
/// `Normalize`, `((p / 255) − mean_c) / std_c` in f32, each operation rounded as libtorch's
/// element-wise kernels round it (tested bit-equal to the tensor-op form), in one pass over
/// the pixels instead of five over the tensor.
pub fn to_tensor(pixels: &[u8], width: u32, height: u32, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let plane = width as usize * height as usize;
    assert_eq!(pixels.len(), plane * 3, "RGB buffer of {width}×{height}");
    let (m, s) = (mean.map(|x| x as f32), std.map(|x| x as f32));
    let mut out = vec![0f32; plane * 3];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in pixels.chunks_exact(3).enumerate() {
        r[i] = (px[0] as f32 / 255.0 - m[0]) / s[0];
        g[i] = (px[1] as f32 / 255.0 - m[1]) / s[1];
        b[i] = (px[2] as f32 / 255.0 - m[2]) / s[2];
    }
    Tensor::from_slice(&out).view([3, height as i64, width as i64])
}

#[cfg(test)]
mod tests {

    /// A JPEG cut short is refused (Pillow: "image file is truncated"); the whole file, and
    /// one with bytes after its end marker, decode.
    #[test]
    fn truncated_jpegs_are_refused() {
        let img = image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([(x * 8) as u8, (y * 10) as u8, 128]));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
        assert!(decode_rgb(&bytes).is_ok());
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing");
        assert!(decode_rgb(&trailing).is_ok());
        for cut in [bytes.len() - 2, bytes.len() * 3 / 4, bytes.len() / 2] {
            let err = decode_rgb(&bytes[..cut]).unwrap_err();
            assert!(err.contains("truncated") || err.contains("cannot decode"), "{cut}: {err}");
        }
        assert!(decode_rgb(&bytes[..bytes.len() - 2]).unwrap_err().contains("truncated"));
    }

    use super::*;
    use tch::Kind;

    /// The one-pass normalisation is bit-equal to the tensor-op form (`ToTensor` + `Normalize`)
    /// for every byte value in every channel, with OpenAI's constants and with odd ones.
    #[test]
    fn to_tensor_is_bit_equal_to_the_tensor_ops() {
        let (w, h) = (64u32, 60u32);
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7 + i / 3) % 256) as u8).collect();
        for (mean, std) in
            [([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]), ([0.5, 0.25, 1.0 / 3.0], [0.1, 0.7, 3.0])]
        {
            let t = Tensor::from_slice(&pixels).view([h as i64, w as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
            let mt = Tensor::from_slice(&mean.map(|x| x as f32)).view([3, 1, 1]);
            let st = Tensor::from_slice(&std.map(|x| x as f32)).view([3, 1, 1]);
            let reference = (t - mt) / st;
            let ours = to_tensor(&pixels, w, h, mean, std);
            assert_eq!(ours.size(), [3, h as i64, w as i64]);
            assert!(ours.equal(&reference), "max diff {}", (&ours - &reference).abs().max().double_value(&[]));
        }
    }

    #[test]
    fn torchvision_size_and_offset_rules() {
        // 337×225 → shorter side 224: long = int(224·337/225) = int(335.49…) = 335.
        assert_eq!(resized_size(337, 225, 224), (335, 224));
        assert_eq!(resized_size(225, 337, 224), (224, 335));
        // Offsets: round((335 − 224)/2) = round(55.5) = 56 (even); round(0.5) = 0; round(1.5) = 2.
        assert_eq!(center_offset(335, 224), 56);
        assert_eq!(center_offset(225, 224), 0);
        assert_eq!(center_offset(227, 224), 2);
        assert_eq!(center_offset(228, 224), 2);
    }

    #[test]
    fn identity_and_constant_images() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_bicubic(&img, 5, 4), img);
        // A constant image stays constant at every scale (weights are normalised).
        let flat = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99]));
        for (w, h) in [(10, 6), (80, 50), (37, 1)] {
            assert!(resize_bicubic(&flat, w, h).pixels().all(|p| p.0 == [200, 10, 99]));
        }
        // An extreme strip is cropped without materialising the resize.
        let strip = RgbImage::from_pixel(65000, 1, image::Rgb([1, 2, 3]));
        let out = resize_center_crop(&strip, 224);
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [1, 2, 3]));
    }
}
