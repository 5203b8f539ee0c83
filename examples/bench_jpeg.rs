//! Loader throughput per core on real JPEGs: decode (the `image` crate's JPEG decoder, as
//! the loader uses it), Pillow-exact bicubic resize + centre crop to SIZE, and normalisation
//! into a tensor — the work of one item in `data::loader` — on one thread, for SECONDS.
//! Usage: bench_jpeg SIZE SECONDS FILE.jpg... → one JSON line per file and one in total.
//! (`scripts/bench/loader_jpeg.sh` feeds it the two photos scikit-learn ships.)
use std::time::Instant;

use msclip::data::image::{decode_rgb, resize_center_crop, to_tensor};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: bench_jpeg SIZE SECONDS FILE.jpg...");
        std::process::exit(2);
    }
    let size: u32 = a[1].parse().expect("SIZE");
    let secs: f64 = a[2].parse().expect("SECONDS");
    tch::set_num_threads(1);
    let (mut total_n, mut total_decode, mut total_resize, mut total_tensor) = (0usize, 0.0, 0.0, 0.0);
    for path in &a[3..] {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (mut n, mut decode, mut resize, mut tensor) = (0usize, 0.0, 0.0, 0.0);
        let mut dims = (0, 0);
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            let t = Instant::now();
            let img = decode_rgb(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
            dims = img.dimensions();
            let t1 = Instant::now();
            let small = resize_center_crop(&img, size);
            let t2 = Instant::now();
            let _x = to_tensor(small.as_raw(), size, size, [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]);
            let t3 = Instant::now();
            decode += (t1 - t).as_secs_f64();
            resize += (t2 - t1).as_secs_f64();
            tensor += (t3 - t2).as_secs_f64();
            n += 1;
        }
        let per = (decode + resize + tensor) / n as f64;
        println!(
            "{{\"file\":\"{path}\",\"width\":{},\"height\":{},\"images\":{n},\"ms_per_image\":{:.3},\"decode_ms\":{:.3},\"resize_ms\":{:.3},\"tensor_ms\":{:.3},\"images_per_s_per_core\":{:.1}}}",
            dims.0, dims.1, per * 1e3, decode / n as f64 * 1e3, resize / n as f64 * 1e3, tensor / n as f64 * 1e3, 1.0 / per
        );
        total_n += n;
        total_decode += decode;
        total_resize += resize;
        total_tensor += tensor;
    }
    let per = (total_decode + total_resize + total_tensor) / total_n as f64;
    println!(
        "{{\"file\":\"all\",\"images\":{total_n},\"ms_per_image\":{:.3},\"decode_share\":{:.2},\"images_per_s_per_core\":{:.1}}}",
        per * 1e3,
        total_decode / (total_decode + total_resize + total_tensor),
        1.0 / per
    );
}
