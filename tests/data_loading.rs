//! Data: manifests, bad images, loader determinism across worker counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use msclip::data::loader::{Augment, Loader, ManifestSource, PairSource, Plan, SyntheticSource};
use msclip::data::manifest::{read, ManifestFormat};
use msclip::data::synth;
use msclip::tokenizer::Tokenizer;
use msclip::train::{train, TrainConfig, TrainOptions};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes n synthetic PNGs, one truncated PNG and a manifest that also names a missing file.
fn write_manifest(dir: &Path, n: usize) -> PathBuf {
    let mut m = String::from("filepath\ttitle\n");
    for i in 0..n {
        let sc = synth::scene(11, i as u64, 64);
        let img = image::RgbImage::from_raw(64, 64, sc.pixels).unwrap();
        img.save(dir.join(format!("{i}.png"))).unwrap();
        m.push_str(&format!("{i}.png\t{}\n", sc.caption));
    }
    let good = std::fs::read(dir.join("0.png")).unwrap();
    std::fs::write(dir.join("broken.png"), &good[..good.len() / 3]).unwrap();
    m.push_str("broken.png\ta broken image\nmissing.png\ta missing image\n");
    let path = dir.join("manifest.tsv");
    std::fs::write(&path, m).unwrap();
    path
}

fn plan(steps: i64, augment: Option<Augment>) -> Plan {
    Plan { seed: 5, batch_size: 6, start_step: 0, end_step: steps, image_size: 64, mean: [0.5; 3], std: [0.25; 3], augment, shard: (0, 1) }
}

/// Data-parallel shards: rank r of 2 (or 3) gets exactly its slice of the one-process batch.
#[test]
fn shards_partition_the_global_batch() {
    let src: Arc<dyn PairSource> = Arc::new(SyntheticSource { seed: 2, n: 20, size: 64, world: Default::default() });
    let tok = Arc::new(Tokenizer::new(24));
    let aug = Some(Augment { scale: (0.5, 1.0) });
    let mut full = Loader::new(src.clone(), tok.clone(), plan(4, aug), 1, 1);
    let full: Vec<_> = (0..4).map(|_| full.next_batch().unwrap().unwrap()).collect();
    for world in [2usize, 3] {
        let mut parts: Vec<Loader> =
            (0..world).map(|r| Loader::new(src.clone(), tok.clone(), Plan { shard: (r, world), ..plan(4, aug) }, 2, 1)).collect();
        for b in &full {
            let got: Vec<_> = parts.iter_mut().map(|l| l.next_batch().unwrap().unwrap()).collect();
            let idx: Vec<usize> = got.iter().flat_map(|g| g.indices.clone()).collect();
            assert_eq!(idx, b.indices, "world {world} step {}", b.step);
            let imgs = tch::Tensor::cat(&got.iter().map(|g| g.images.shallow_clone()).collect::<Vec<_>>(), 0);
            assert!(imgs.equal(&b.images), "world {world}: images differ");
            let toks = tch::Tensor::cat(&got.iter().map(|g| g.tokens.shallow_clone()).collect::<Vec<_>>(), 0);
            assert!(toks.equal(&b.tokens), "world {world}: tokens differ");
        }
    }
}

#[test]
fn loader_output_does_not_depend_on_worker_count() {
    let src: Arc<dyn PairSource> = Arc::new(SyntheticSource { seed: 2, n: 20, size: 64, world: Default::default() });
    let tok = Arc::new(Tokenizer::new(24));
    let aug = Some(Augment { scale: (0.5, 1.0) });
    let collect = |workers| {
        let mut l = Loader::new(src.clone(), tok.clone(), plan(7, aug), workers, 2);
        let mut out = vec![];
        while let Some(b) = l.next_batch() {
            out.push(b.unwrap());
        }
        out
    };
    let (a, b) = (collect(1), collect(3));
    assert_eq!(a.len(), 7);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.step, y.step);
        assert_eq!(x.indices, y.indices);
        assert!(x.images.equal(&y.images) && x.tokens.equal(&y.tokens));
    }
    // Steps 0..3 cover items 0..18 of epoch 0, all distinct; the crop actually changes pixels.
    let seen: std::collections::HashSet<usize> = a[..3].iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(seen.len(), 18);
    assert_eq!(a[4].epoch, 1);
    let mut plain = Loader::new(src.clone(), tok.clone(), plan(1, None), 1, 1);
    assert!(!plain.next_batch().unwrap().unwrap().images.equal(&a[0].images));
}

#[test]
fn unreadable_images_are_skipped_and_listed_or_stop_in_strict_mode() {
    let dir = tmp("bad");
    let manifest = write_manifest(&dir, 10);
    let pairs = read(&manifest, &ManifestFormat::for_path(&manifest)).unwrap();
    assert_eq!(pairs.len(), 12);
    let tc = TrainConfig {
        model: "tiny-clip".into(),
        data: Some(manifest.display().to_string()),
        steps: 2,
        batch_size: 6,
        warmup_steps: 1,
        save_every: 0,
        eval_every: 0,
        seed: 1,
        ..Default::default()
    };
    let run = dir.join("run");
    train(&tc, &run, &TrainOptions::fresh()).unwrap();
    let skipped = std::fs::read_to_string(run.join("skipped.tsv")).unwrap();
    assert!(skipped.starts_with("step\tindex\titem\treason\n"));
    assert!(skipped.contains("broken.png") && skipped.contains("missing.png"), "{skipped}");
    assert_eq!(skipped.lines().count(), 3);
    let err = train(&TrainConfig { strict: true, ..tc.clone() }, &dir.join("strict"), &TrainOptions::fresh()).err().unwrap().to_string();
    assert!(err.contains("strict") && (err.contains("broken.png") || err.contains("missing.png")), "{err}");
    // A manifest with a malformed row names file and line.
    let bad = dir.join("bad.tsv");
    std::fs::write(&bad, "filepath\ttitle\n0.png\tok\n1.png\n").unwrap();
    let err = train(&TrainConfig { data: Some(bad.display().to_string()), ..tc }, &dir.join("r2"), &TrainOptions::fresh())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bad.tsv") && err.contains("line 3"), "{err}");
    let src = ManifestSource { pairs };
    assert!(src.get(10).is_err() && src.get(11).is_err() && src.get(0).is_ok());
}

#[test]
fn tar_shards_are_indexed_and_read_in_any_order() {
    use msclip::data::shards::ShardSource;
    let dir = tmp("tar");
    for s in 0..2 {
        let f = std::fs::File::create(dir.join(format!("shard-{s:03}.tar"))).unwrap();
        let mut b = tar::Builder::new(f);
        for i in 0..3 {
            let key = s * 3 + i;
            let sc = synth::scene(4, key as u64, 64);
            let mut png = Vec::new();
            image::RgbImage::from_raw(64, 64, sc.pixels)
                .unwrap()
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            if key == 4 {
                png.truncate(40); // undecodable
            }
            for (name, data) in [(format!("{key:05}.png"), png), (format!("{key:05}.txt"), sc.caption.into_bytes())] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, data.as_slice()).unwrap();
            }
        }
        b.finish().unwrap();
    }
    let pattern = format!("{}/shard-{{000..001}}.tar", dir.display());
    let src = ShardSource::open(&pattern).unwrap();
    assert_eq!(src.len(), 6);
    let (img, cap) = src.get(5).unwrap();
    assert_eq!(img.dimensions(), (64, 64));
    assert_eq!(cap, synth::scene(4, 5, 64).caption);
    assert_eq!(img.as_raw(), &synth::scene(4, 5, 64).pixels);
    assert!(src.get(4).unwrap_err().contains("decode"));
    assert!(src.describe(4).contains("shard-001.tar"));
    let err = ShardSource::open(&format!("{}/none-{{0..1}}.tar", dir.display())).err().unwrap().to_string();
    assert!(err.contains("none-0.tar"), "{err}");
}
