//! Evaluation preprocessing equals the official MS-CLIP transform (torchvision `Resize(size,
//! BICUBIC)` + `CenterCrop(size)` on PIL images): pixels from `fixtures/gen_pil_preprocess.py`
//! (Pillow 13, torchvision 0.26) at several aspect ratios, down- and up-scaling.

use std::path::Path;

use msclip::data::image::{load_rgb, resize_center_crop, resized_size};

#[test]
fn resize_and_crop_match_pillow_and_torchvision() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/preprocess");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let size = c["size"].as_u64().unwrap() as u32;
        let input = load_rgb(&dir.join(format!("{name}.png"))).unwrap();
        let (w, h) = input.dimensions();
        assert_eq!([w as u64, h as u64], [c["input_size"][0].as_u64().unwrap(), c["input_size"][1].as_u64().unwrap()]);
        // torchvision's resized size (long side truncated).
        let (rw, rh) = resized_size(w, h, size);
        assert_eq!([rw as u64, rh as u64], [c["resized_size"][0].as_u64().unwrap(), c["resized_size"][1].as_u64().unwrap()], "{name}");
        let want = image::open(dir.join(format!("{name}.expected.png"))).unwrap().to_rgb8();
        let got = resize_center_crop(&input, size);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}");
        let diffs: Vec<i32> = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
        let max = *diffs.iter().max().unwrap();
        let off = diffs.iter().filter(|&&d| d > 0).count();
        // Pillow's fixed-point arithmetic and pass order are reproduced: every byte is equal
        // (the bar was at most 1 level in 255).
        assert_eq!((max, off), (0, 0), "{name}: max |Δ| = {max} levels, {off} values differ");
    }
}
