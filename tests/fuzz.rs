//! Fuzz targets for every reader of untrusted input (issue 9 §4): generated and mutated inputs,
//! each required to end in `Ok` or a clean `Err` — no panic, no crash — within a time and
//! memory limit. Each target runs for `MSCLIP_FUZZ_SECONDS` (default 3) seconds from a fixed
//! seed (`MSCLIP_FUZZ_SEED` to explore others). A failing input is written to
//! `target/fuzz-failures/` and named in the panic message. The nasty cases of the issue are
//! kept as files in `fixtures/fuzz/` (made by `fixtures/fuzz/gen_corpus.py`).
//!
//! Memory: this test binary counts the Rust heap; one allocation over [`MAX_ALLOC`] aborts the
//! process ("memory allocation failed"), and the peak is checked after each target.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msclip::data::synth::Rng;

/// Largest single allocation allowed while fuzzing.
const MAX_ALLOC: usize = 1 << 30;
/// Largest time one input may take.
const MAX_INPUT_TIME: Duration = Duration::from_secs(5);

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        let p = System.alloc(l);
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("MSCLIP_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0))
}

fn seed() -> u64 {
    std::env::var("MSCLIP_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One random edit of a byte string: bit flips, interesting bytes and integers, insertions,
/// deletions, duplications, truncation.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let pos = if len == 0 { 0 } else { rng.below(len as u64) as usize };
        match rng.below(8) {
            0 if len > 0 => data[pos] ^= 1 << rng.below(8),
            1 if len > 0 => data[pos] = [0u8, 1, 0x7f, 0x80, 0xff][rng.below(5) as usize],
            2 if len >= 4 => {
                let v = [0u32, 1, u32::MAX, 0x7fff_ffff, 0x8000_0000, 65000][rng.below(6) as usize];
                let p = pos.min(len - 4);
                data[p..p + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 8 => {
                let v = [0u64, u64::MAX, 1 << 40, 1 << 62, i64::MIN as u64][rng.below(5) as usize];
                let p = pos.min(len - 8);
                data[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => {
                let n = 1 + rng.below(16) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                data.splice(pos..pos, bytes);
            }
            5 if len > 0 => {
                let n = (1 + rng.below(32) as usize).min(len - pos);
                data.drain(pos..pos + n);
            }
            6 if len > 0 => {
                let n = (1 + rng.below(64) as usize).min(len - pos);
                let chunk: Vec<u8> = data[pos..pos + n].to_vec();
                let at = rng.below(len as u64 + 1) as usize;
                data.splice(at..at, chunk);
            }
            7 => data.truncate(pos),
            _ => {}
        }
    }
}

/// Runs `target` on mutations of the seeds for the time budget. Every call must return
/// (Ok or Err) without panicking, within [`MAX_INPUT_TIME`].
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8])) -> usize {
    assert!(!seeds.is_empty());
    let mut rng = Rng::new(seed() ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let t0 = Instant::now();
    let mut runs = 0;
    // Every seed as it is first, then mutations.
    let mut queue: Vec<Vec<u8>> = seeds.clone();
    while t0.elapsed() < budget() || !queue.is_empty() {
        let input = queue.pop().unwrap_or_else(|| {
            let mut d = seeds[rng.below(seeds.len() as u64) as usize].clone();
            mutate(&mut rng, &mut d);
            d
        });
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t.elapsed();
        if r.is_err() || took > MAX_INPUT_TIME {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("{name}-{runs}.bin"));
            std::fs::write(&p, &input).unwrap();
            panic!("{name}: input {} {} (saved to {})", runs, if r.is_err() { "panicked" } else { "took too long" }, p.display());
        }
        runs += 1;
    }
    let peak = PEAK.load(Ordering::Relaxed);
    assert!(peak < 4 << 30, "{name}: Rust heap peaked at {peak} bytes");
    eprintln!("{name}: {runs} inputs");
    runs
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A zip (stored members) from (name, bytes).
fn zip_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, b) in members {
        w.start_file(n.as_str(), opts).unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect()
}

#[test]
fn fuzz_torch_zip_files() {
    let dir = scratch("zip");
    let seeds = ["plain.pth", "wrapped.pth", "evil.pth"].iter().map(|n| read(&fixtures().join("torch").join(n))).collect();
    fuzz("torch-zip", seeds, |b| {
        let p = dir.join("x.pth");
        std::fs::write(&p, b).unwrap();
        let _ = msclip::checkpoint::torch_zip::read(&p);
    });
}

/// The pickle interpreter behind zip checkpoints and TorchScript archives: mutated `data.pkl`
/// re-zipped with the original storages, so mutations reach the interpreter (a mutated zip
/// mostly fails its CRC).
#[test]
fn fuzz_pickles_and_torchscript() {
    let dir = scratch("pkl");
    let archives: Vec<Vec<(String, Vec<u8>)>> =
        ["plain.pth", "wrapped.pth", "openai-micro-jit.pt"].iter().map(|n| unzip(&read(&fixtures().join("torch").join(n)))).collect();
    let seeds: Vec<Vec<u8>> = archives
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let pkl = &a.iter().find(|(n, _)| n.ends_with("/data.pkl")).unwrap().1;
            let mut s = vec![i as u8];
            s.extend_from_slice(pkl);
            s
        })
        .collect();
    fuzz("pickle", seeds, |b| {
        let Some((&which, pkl)) = b.split_first() else { return };
        let arch = &archives[which as usize % archives.len()];
        let members: Vec<(String, Vec<u8>)> =
            arch.iter().map(|(n, d)| if n.ends_with("/data.pkl") { (n.clone(), pkl.to_vec()) } else { (n.clone(), d.clone()) }).collect();
        let p = dir.join("x.pt");
        std::fs::write(&p, zip_of(&members)).unwrap();
        let _ = msclip::checkpoint::torch_zip::read(&p);
    });
}

#[test]
fn fuzz_safetensors() {
    let dir = scratch("st");
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _a = (vs.root() / "a").var("weight", &[3, 2], tch::nn::Init::Const(0.5));
    let _b = vs.root().var("b", &[4], tch::nn::Init::Const(-1.0));
    let seed_path = dir.join("seed.safetensors");
    vs.save(&seed_path).unwrap();
    let seeds = vec![read(&seed_path), read(&fixtures().join("torch/openclip-micro.safetensors"))[..4096].to_vec()];
    fuzz("safetensors", seeds, |b| {
        let p = dir.join("x.safetensors");
        std::fs::write(&p, b).unwrap();
        if let Ok(ts) = tch::Tensor::read_safetensors(&p) {
            let _ = msclip::checkpoint::check_finite("x", ts.iter().map(|(n, t)| (n.as_str(), t)));
        }
    });
}

#[test]
fn fuzz_npy() {
    let dir = scratch("npy");
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([3, 2]);
    msclip::analysis::npy::write_f32(&dir.join("seed.npy"), &t).unwrap();
    fuzz("npy", vec![read(&dir.join("seed.npy"))], |b| {
        let p = dir.join("x.npy");
        std::fs::write(&p, b).unwrap();
        if let Ok(mut r) = msclip::analysis::npy::Reader::open(&p) {
            let _ = r.read_rows(0, 2);
            let _ = r.read_rows(r.rows.saturating_sub(1), 4);
        }
    });
}

#[test]
fn fuzz_idx() {
    use std::io::Write;
    let dir = scratch("idx");
    let mut raw = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
    raw.extend((0..18).map(|i| i as u8 * 10));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let seeds = vec![raw.clone(), gz.finish().unwrap()];
    fuzz("idx", seeds, |b| {
        let p = dir.join("x-idx3-ubyte.gz");
        std::fs::write(&p, b).unwrap();
        let _ = msclip::data::idx::read(&p);
    });
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 99]));
    let mut b = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png).unwrap();
    b
}

#[test]
fn fuzz_tar_shards() {
    let dir = scratch("tar");
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in
        [("k1.txt", b"a red circle".to_vec()), ("k1.png", png_bytes(5, 4)), ("k2.txt", b"two".to_vec()), ("k2.jpg", png_bytes(3, 3))]
    {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let seed = builder.into_inner().unwrap();
    fuzz("tar", vec![seed, read(&fixtures().join("fuzz/size-lie.tar"))], |b| {
        use msclip::data::loader::PairSource;
        let p = dir.join("x.tar");
        std::fs::write(&p, b).unwrap();
        if let Ok(src) = msclip::data::shards::ShardSource::open(p.to_str().unwrap()) {
            for i in 0..src.len().min(8) {
                if let Ok((img, _)) = src.get(i) {
                    let _ = msclip::data::image::resize_center_crop(&img, 16);
                }
            }
        }
    });
}

#[test]
fn fuzz_shard_patterns() {
    let seeds: Vec<Vec<u8>> = ["s-{000..009}.tar", "x.tar", "a{0..99999999999}", "x}y{0..2}", "{..}", "{1..}", "a,b{0..1},c"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    fuzz("shard-pattern", seeds, |b| {
        let s = String::from_utf8_lossy(b);
        if let Ok(v) = msclip::data::shards::expand_braces(&s) {
            assert!(v.len() as u64 <= msclip::data::shards::MAX_SHARDS);
        }
    });
}

#[test]
fn fuzz_manifests() {
    let dir = scratch("manifest");
    let full = String::from_utf8(read(&fixtures().join("check/data/manifest.tsv"))).unwrap();
    let head: String = full.lines().take(6).map(|l| format!("{l}\n")).collect();
    let csv = head.replace('\t', ",");
    let seeds = vec![head.into_bytes(), csv.into_bytes(), b"\xef\xbb\xbffilepath\ttitle\r\na.png\t\"quoted, \"\"cap\"\"\"\r\n".to_vec()];
    fuzz("manifest", seeds, |b| {
        for ext in ["tsv", "csv"] {
            let p = dir.join(format!("m.{ext}"));
            std::fs::write(&p, b).unwrap();
            let _ = msclip::data::manifest::read(&p, &msclip::data::manifest::ManifestFormat::for_path(&p));
        }
    });
}

/// Model configs: parsing and validation never panic, and every config that validates and is
/// small enough to build here builds and runs a forward pass without a panic.
#[test]
fn fuzz_model_configs() {
    use msclip::model::{ModelConfig, MsClip};
    let seeds: Vec<Vec<u8>> = ["tiny-clip", "tiny-msclip-s", "tiny-msclip-ln"]
        .iter()
        .map(|n| ModelConfig::preset(n).unwrap().to_toml().into_bytes())
        .chain([read(&fixtures().join("check/micro-msclip-s.toml"))])
        .collect();
    fuzz("model-toml", seeds, |b| {
        let text = String::from_utf8_lossy(b);
        let Ok(cfg) = ModelConfig::from_toml_str(&text, Path::new("fuzz.toml")) else { return };
        if cfg.approx_params() > 12_000_000
            || cfg.vision.image_size > 96
            || cfg.text.context_length > 40
            || cfg.vision.layers + cfg.text.layers > 16
        {
            return;
        }
        // Initialised weights: all-zero ones are a degenerate model, refused by design.
        let (_vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
        let s = cfg.vision.image_size;
        let images = tch::Tensor::zeros([1, 3, s, s], (tch::Kind::Float, tch::Device::Cpu));
        let tokens = tch::Tensor::zeros([1, cfg.text.context_length], (tch::Kind::Int64, tch::Device::Cpu));
        let out = tch::no_grad(|| m.forward(&images, &tokens, &msclip::model::Capture::none(), false));
        assert!(out.is_ok(), "a validated config runs: {:?}", out.err());
    });
}

#[test]
fn fuzz_train_configs() {
    let mut seeds = vec![];
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/train")).unwrap() {
        seeds.push(read(&e.unwrap().path()));
    }
    fuzz("train-toml", seeds, |b| {
        let text = String::from_utf8_lossy(b);
        if let Ok(tc) = toml::from_str::<msclip::train::TrainConfig>(&text) {
            let _ = tc.validate();
        }
    });
}

/// Tokenization stays linear: any input of up to ~100 KB tokenizes in well under a second,
/// always to `context` ids.
#[test]
fn fuzz_tokenizer() {
    let tok = msclip::tokenizer::Tokenizer::new(77);
    let seeds: Vec<Vec<u8>> =
        ["a large red circle left of a small blue square", "caf\u{e9} &amp; na\u{ef}ve \u{1f600} <b>x</b>", "I'm here—it's 42 %"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain([vec![b'a'; 50_000], "\u{1F600}".repeat(5000).into_bytes()])
            .collect();
    fuzz("tokenizer", seeds, |b| {
        let s = String::from_utf8_lossy(b);
        let t = Instant::now();
        let e = tok.tokenize(&s);
        assert_eq!(e.ids.len(), 77);
        assert!(t.elapsed() < Duration::from_secs(1), "{} bytes took {:?}", b.len(), t.elapsed());
    });
}

#[test]
fn fuzz_image_headers() {
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(9, 7, image::Rgb([200, 30, 60]))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let mut rgba = Vec::new();
    image::RgbaImage::from_pixel(4, 4, image::Rgba([10, 20, 30, 128]))
        .write_to(&mut std::io::Cursor::new(&mut rgba), image::ImageFormat::Png)
        .unwrap();
    let seeds = vec![
        png_bytes(6, 5),
        jpeg,
        rgba,
        read(&fixtures().join("fuzz/strip-65000x1.png")),
        read(&fixtures().join("fuzz/bomb-30000x30000.png")),
    ];
    fuzz("image", seeds, |b| {
        if let Ok(img) = msclip::data::image::decode_rgb(b) {
            let _ = msclip::data::image::resize_center_crop(&img, 24);
        }
    });
}

/// The nasty cases, as files: each is refused (or, for the 65000×1 strip, processed)
/// within the limits.
#[test]
fn nasty_corpus_is_handled_within_limits() {
    let dir = fixtures().join("fuzz");
    let timed = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        let refused = f();
        assert!(t.elapsed() < Duration::from_secs(2), "{what} took {:?}", t.elapsed());
        refused
    };
    for name in
        ["memo-bomb.pth", "stride0-2p40.pth", "negative-size.pth", "view-past-storage.pth", "overflowing-stride.pth", "deflate-bomb.pth"]
    {
        let p = dir.join(name);
        let err = msclip::checkpoint::torch_zip::read(&p).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(err.to_string().contains(name), "{name}: {err}");
        assert!(timed(name, &|| msclip::checkpoint::torch_zip::read(&p).is_err()));
    }
    for name in ["shape-overflow.npy", "zero-columns.npy", "header-4g.npy"] {
        assert!(timed(name, &|| msclip::analysis::npy::read(&dir.join(name)).is_err()), "{name}");
    }
    assert!(timed("idx", &|| msclip::data::idx::read(&dir.join("huge-dims-idx3-ubyte.gz")).is_err()));
    assert!(timed("tar", &|| msclip::data::shards::ShardSource::open(dir.join("size-lie.tar").to_str().unwrap()).is_err()));
    assert!(timed("bomb png", &|| msclip::data::image::load_rgb(&dir.join("bomb-30000x30000.png")).is_err()));
    assert!(timed("bad jpeg", &|| msclip::data::image::load_rgb(&dir.join("truncated.jpg")).is_err()));
    let err = msclip::data::image::load_rgb(&dir.join("bomb-30000x30000.png")).unwrap_err().to_string();
    assert!(err.contains("30000×30000") && err.contains("bomb-30000x30000.png"), "{err}");
    // The 65000×1 strip is a valid image: decoded, and resized + cropped without allocating
    // the 14.6M × 224 resize.
    assert!(!timed("strip", &|| {
        let img = msclip::data::image::load_rgb(&dir.join("strip-65000x1.png")).unwrap();
        msclip::data::image::resize_center_crop(&img, 224).dimensions() != (224, 224)
    }));
    // A 2M-deep nested list pickle (4 MB): no stack overflow, refused as holding no tensors.
    let mut pkl = b"\x80\x02".to_vec();
    let depth = 2_000_000;
    for _ in 0..depth {
        pkl.extend_from_slice(b"](");
    }
    pkl.extend(std::iter::repeat_n(b'e', depth));
    pkl.push(b'.');
    let p = scratch("nested").join("nested.pth");
    std::fs::write(&p, zip_of(&[("archive/data.pkl".into(), pkl), ("archive/version".into(), b"3\n".to_vec())])).unwrap();
    assert!(timed("nested lists", &|| msclip::checkpoint::torch_zip::read(&p).is_err()));
    // A single 400,000-letter word: linear tokenization, the ids of short captions unchanged.
    let tok = msclip::tokenizer::Tokenizer::new(77);
    let word = "a".repeat(400_000);
    let t = Instant::now();
    let e = tok.tokenize(&format!("a photo of {word}"));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(e.truncated && e.ids[76] == msclip::tokenizer::EOT);
    assert_eq!(&e.ids[..4], &[49406, 320, 1125, 539]);
}

/// Recipes: parsing and checking never panic (every analysis, field and cap checked by
/// `Recipe::read`), seeded with every shipped recipe.
#[test]
fn fuzz_recipes() {
    let dir = scratch("recipe");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = vec![];
    for d in ["analyses", "analyses/study"] {
        for e in std::fs::read_dir(root.join(d)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                seeds.push(read(&p));
            }
        }
    }
    fuzz("recipe", seeds, |b| {
        let p = dir.join("r.toml");
        std::fs::write(&p, b).unwrap();
        let _ = msclip::commands::figures::Recipe::read(&p);
    });
}

/// CI baselines, zero-shot template files and checkpoints' meta.json: their readers never
/// panic (meta.json: parsed, its model config validated before anything is built).
#[test]
fn fuzz_baselines_templates_and_meta() {
    let dir = scratch("baseline");
    fuzz("baseline", vec![read(&fixtures().join("gap-baseline.json"))], |b| {
        let p = dir.join("b.json");
        std::fs::write(&p, b).unwrap();
        let _ = msclip::analysis::check::Baseline::read(&p);
    });
    fuzz("templates", vec![b"a photo of a {}\nan image of a {}.\n".to_vec(), b"{} {}\n\n{}".to_vec()], |b| {
        let p = dir.join("t.txt");
        std::fs::write(&p, b).unwrap();
        let _ = msclip::commands::zeroshot::read_templates(&p);
    });
    let ck = dir.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::copy(fixtures().join("check/ckpt/model.safetensors"), ck.join("model.safetensors")).unwrap();
    fuzz("meta-json", vec![read(&fixtures().join("check/ckpt/meta.json"))], |b| {
        std::fs::write(ck.join("meta.json"), b).unwrap();
        let _ = msclip::checkpoint::verify(&ck);
    });
}
