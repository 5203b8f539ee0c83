//! `explore` without a browser: what the page holds, against `attention`'s own outputs, and
//! the page-size budget of a B/32 pair (the browser test is tests/explorer_browser.rs).

use std::path::Path;

use msclip::checkpoint::ModelSource;
use msclip::commands::attention::{self, AttentionOptions};
use msclip::commands::explore::{self, ExploreOptions};

const CKPT: &str = "fixtures/check/ckpt";
const MANIFEST: &str = "fixtures/check/data/manifest.tsv";

/// The EOT token's score is the pair's logit, so its map is `attention`'s relevancy map; every
/// head's attention equals `attention`'s maps; shared slots are marked from the config.
#[test]
fn page_data_matches_attention_and_marks_shared_slots() {
    let model = ModelSource::Checkpoint(CKPT.into()).load(0).unwrap();
    let opts = ExploreOptions::from_manifest(Path::new(MANIFEST), 2).unwrap();
    let out = explore::run(&model, &opts).unwrap();
    assert_eq!(out.pairs.len(), 2);
    assert_eq!((out.grid, out.heads), (4, (2, 2)));
    let shared: Vec<usize> = out.slots.iter().filter(|s| s.shared_attention).map(|s| s.slot).collect();
    let want: Vec<usize> = model
        .model
        .config
        .shared_slots()
        .into_iter()
        .filter(|&s| model.model.config.is_shared(s, msclip::model::config::SharedSite::AttnIn))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(shared, want);
    assert_eq!(out.slots.iter().filter(|s| s.vision).map(|s| s.slot).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5], "slot 0 is the conv stem");

    for (i, p) in out.pairs.iter().enumerate() {
        let a = attention::run(
            &model,
            &AttentionOptions { image: opts.pairs[i].0.clone(), caption: opts.pairs[i].1.clone(), ..Default::default() },
        )
        .unwrap();
        let eot = a.eot_position;
        assert_eq!(p.token_maps.len(), eot + 1);
        let rel = &a.image_attribution.iter().find(|(n, _)| n == "relevancy").unwrap().1;
        for (x, y) in p.token_maps[eot].iter().zip(rel) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1e-3), "EOT map {x} vs relevancy {y}");
        }
        // Not every token draws the same map.
        assert!(p.token_maps[1..eot].iter().any(|m| m != &p.token_maps[eot]));
        for (vi, s) in p.vision.iter().enumerate() {
            assert_eq!((s.slot, s.heads, s.side), (a.vision_slots[vi], 2, 17));
            for (h, m) in a.vision_maps[vi].iter().enumerate() {
                // Row 0 (CLS) of head h (h = 2 is the mean), patch keys 1..17.
                let row = &s.values[h * 17 * 17 + 1..h * 17 * 17 + 17];
                for (x, y) in row.iter().zip(&m.values) {
                    assert!((x - y).abs() < 1e-6, "slot {} head {h}", s.slot);
                }
            }
        }
        for (ti, s) in p.text.iter().enumerate() {
            assert_eq!(s.side, eot + 1);
            let n = s.side * s.side;
            for (h, m) in a.text_maps[ti].iter().enumerate() {
                assert_eq!(&s.values[h * n..(h + 1) * n], &m.values[..], "text slot {} head {h}", s.slot);
            }
        }
    }
    // The manifest's sha256 is the data identity.
    assert_eq!(out.provenance.data_sha256, msclip::data::manifest::manifest_hash(Path::new(MANIFEST)).unwrap());
}

/// A B/32 pair (imported layout, random weights: 12 layers × 12 heads, 7×7 patches) fits in
/// the 5 MB budget; the measured size is in `explore.json`.
#[test]
fn b32_page_fits_the_size_budget() {
    let model = ModelSource::Preset("clip-b32".into()).load(0).unwrap();
    let out = explore::run(&model, &ExploreOptions { faith_steps: 2, ..Default::default() }).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer-b32");
    let report = out.write(&dir).unwrap();
    let bytes = std::fs::metadata(dir.join("index.html")).unwrap().len() as usize;
    assert_eq!(report.page_bytes, bytes);
    assert!(bytes < 5_000_000, "B/32 page is {bytes} bytes");
    // 12 slots × 13 (12 heads + mean) × 50 × 50 bytes of vision attention alone, as base64.
    assert!(bytes > 12 * 13 * 50 * 50 * 4 / 3, "page suspiciously small: {bytes}");
    assert_eq!(report.clamped_values, 0);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("explore.json")).unwrap()).unwrap();
    assert_eq!(json["page_bytes"].as_u64(), Some(bytes as u64));
}

/// Bad input is refused before any work, naming what is wrong.
#[test]
fn bad_input_is_refused() {
    let model = ModelSource::Checkpoint(CKPT.into()).load(0).unwrap();
    let err = |o: ExploreOptions| explore::run(&model, &o).err().expect("refused").to_string();
    assert!(err(ExploreOptions { pairs: vec![], ..Default::default() }).contains("1..=64 pairs"));
    assert!(
        err(ExploreOptions { pairs: vec![(Some("no/such.png".into()), Some("x".into()))], ..Default::default() }).contains("no/such.png")
    );
    assert!(err(ExploreOptions { start_layer: Some(0), ..Default::default() }).contains("not a vision attention slot"));
    let e = ExploreOptions::from_manifest(Path::new(MANIFEST), 0).err().unwrap().to_string();
    assert!(e.contains("--limit"), "{e}");
    let e = ExploreOptions::from_manifest(Path::new("fixtures/nope.tsv"), 2).err().unwrap().to_string();
    assert!(e.contains("fixtures/nope.tsv"), "{e}");
}
