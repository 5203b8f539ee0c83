//! Data-parallel training over c10d/Gloo (issue 12), with real processes: `msclip-train
//! --nproc-per-node 2` (and by hand, torchrun-style) against one process at the same global
//! batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

const BIN: &str = env!("CARGO_BIN_EXE_msclip-train");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msclip-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A 10-step run of `model` with `batch` pairs per rank.
fn config(dir: &Path, model: &str, batch: usize, accum: usize, extra: &str) -> PathBuf {
    let model = if model.ends_with(".toml") { format!("{}/{model}", env!("CARGO_MANIFEST_DIR")) } else { model.to_string() };
    let text = format!(
        "model = \"{model}\"\ndata_items = 640\nsteps = 10\nbatch_size = {batch}\naccum_freq = {accum}\nlr = 3e-3\nmin_lr = 1e-5\n\
         warmup_steps = 2\ngrad_clip = 1.0\nseed = 3\nsave_every = 5\nkeep = 2\neval_every = 0\neval_items = 100\nworkers = 1\n\
         logit_scale_init = 2.6592600369262695\n{extra}"
    );
    let p = dir.join(format!("{model}-{batch}-{accum}-{}.toml", extra.len()).replace('/', "_"));
    std::fs::write(&p, text).unwrap();
    p
}

fn train(cfg: &Path, out: &Path, args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}: {}", out.display(), String::from_utf8_lossy(&o.stderr));
    o
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// The trainable tensors of the run's step-10 checkpoint (BatchNorm buffers left out).
fn params(run: &Path, step: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(run.join("checkpoints").join(step).join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.contains("running_") && !n.contains("num_batches_tracked"))
        .collect()
}

fn max_param_diff(a: &Path, b: &Path) -> f64 {
    let (pa, pb) = (params(a, "step-00000010"), params(b, "step-00000010"));
    assert_eq!(pa.keys().collect::<Vec<_>>(), pb.keys().collect::<Vec<_>>());
    pa.iter().map(|(n, t)| (t - &pb[n]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn assert_equivalent(one: &Path, two: &Path, what: &str) {
    assert_equivalent_within(one, two, what, 1e-5)
}

fn assert_equivalent_within(one: &Path, two: &Path, what: &str, param_tol: f64) {
    let (l1, l2) = (losses(one), losses(two));
    assert_eq!(l1.len(), 10);
    assert_eq!(l2.len(), 10);
    for (s, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!((a - b).abs() <= 1e-6, "{what}: step {} loss {a} vs {b}", s + 1);
    }
    // The runs learn: the loss moves, so equal losses are not equal constants.
    assert!((l1[0] - l1[9]).abs() > 1e-3, "{what}: loss did not move: {l1:?}");
    let d = max_param_diff(one, two);
    eprintln!(
        "{what}: max |Δloss| {:.1e}, max |Δparam| after 10 steps {d:.1e}",
        l1.iter().zip(&l2).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
    );
    assert!(d <= param_tol, "{what}: parameters differ by {d}");
}

/// 2 processes × 16 = 1 process × 32: the loss at every step, the parameters after 10 steps;
/// also with gradient accumulation and with each rank computing only its rows (local loss).
#[test]
fn two_ranks_equal_one_process_at_equal_global_batch() {
    let d = tmp("equal");
    let one = d.join("one");
    train(&config(&d, "tiny-clip", 32, 1, ""), &one, &[]);
    let two = d.join("two");
    let o = train(&config(&d, "tiny-clip", 16, 1, ""), &two, &["--nproc-per-node", "2"]);
    assert_equivalent(&one, &two, "tiny-clip 2×16 vs 1×32");
    // Telemetry: rank 0 writes the global batch and the communication share; rank 1 its log.
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(two.join("metrics.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["world"], 2);
    assert_eq!(last["global_batch"], 32);
    let comm = last["comm_frac"].as_f64().unwrap();
    assert!(comm > 0.0 && comm < 1.0, "{comm}");
    assert!(std::fs::read_to_string(two.join("rank-1.log")).unwrap().contains("rank 1: step 10/10"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("spawning 2 workers"));

    let local = d.join("local");
    train(&config(&d, "tiny-clip", 16, 1, "local_loss = true\n"), &local, &["--nproc-per-node", "2"]);
    // The local loss sums the same terms in another order; AdamW's normalised update turns
    // float noise in near-zero gradient entries into up to ~2e-5 here (the gradients
    // themselves agree to 1e-6: `local_loss_gradient_equals_full_loss_gradient`).
    assert_equivalent_within(&one, &local, "tiny-clip 2×16 local loss vs 1×32", 5e-5);

    // Accumulation composes: micro-batches of 8 on each of 2 ranks vs 4 micro-batches of 8.
    let one_acc = d.join("one-acc");
    train(&config(&d, "tiny-clip", 32, 4, ""), &one_acc, &[]);
    let two_acc = d.join("two-acc");
    train(&config(&d, "tiny-clip", 16, 2, ""), &two_acc, &["--nproc-per-node", "2"]);
    assert_equivalent(&one_acc, &two_acc, "tiny-clip 2×16 accum 2 vs 1×32 accum 4");
    let _ = std::fs::remove_dir_all(&d);
}

/// BatchNorm (MS-CLIP-S's parallel branch) normalises with per-rank statistics: 2 ranks × 16
/// equal one process × 32 in micro-batches of 16 (accum 2), whose BatchNorm also sees 16.
#[test]
fn batchnorm_model_under_per_rank_statistics() {
    let d = tmp("bn");
    let m = "fixtures/check/micro-msclip-s.toml";
    let one = d.join("one");
    train(&config(&d, m, 32, 2, ""), &one, &[]);
    let two = d.join("two");
    train(&config(&d, m, 16, 1, ""), &two, &["--nproc-per-node", "2"]);
    assert_equivalent(&one, &two, "micro-msclip-s 2×16 vs 1×32 accum 2");
    let _ = std::fs::remove_dir_all(&d);
}

/// Resume under 2 ranks is exact; a resume may change the world size at equal global batch,
/// and is refused (naming both batches) when the global batch would change.
#[test]
fn resume_under_two_ranks_is_exact() {
    let d = tmp("resume");
    let cfg = config(&d, "tiny-clip", 16, 1, "");
    let full = d.join("full");
    train(&cfg, &full, &["--nproc-per-node", "2"]);
    let cut = d.join("cut");
    train(&cfg, &cut, &["--nproc-per-node", "2", "--stop-after", "5"]);
    assert_eq!(losses(&cut).len(), 5);
    train(&cfg, &cut, &["--nproc-per-node", "2", "--resume"]);
    assert_eq!(losses(&cut), losses(&full));
    assert_eq!(max_param_diff(&full, &cut), 0.0);

    // Same global batch on one rank: allowed, and it continues the same sample sequence.
    let moved = d.join("moved");
    train(&cfg, &moved, &["--nproc-per-node", "2", "--stop-after", "5"]);
    train(&config(&d, "tiny-clip", 32, 1, ""), &moved, &["--resume"]);
    let (a, b) = (losses(&full), losses(&moved));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
    }
    // A different global batch: refused.
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&moved)
        .args(["--resume", "--stop-after", "10"])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("32 pairs per step") && err.contains("= 16"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

fn by_hand(cfg: &Path, out: &Path, rank: usize, port: u16, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_bounded(c: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = c.kill();
            panic!("process still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Killing one rank (launched by hand, torchrun-style) makes the other exit non-zero within
/// a bounded time, and leaves a run directory whose newest checkpoint verifies and resumes.
#[test]
fn killing_a_rank_stops_the_other_and_keeps_the_run_loadable() {
    let d = tmp("kill");
    let cfg = d.join("long.toml");
    let text = std::fs::read_to_string(config(&d, "tiny-clip", 16, 1, ""))
        .unwrap()
        .replace("steps = 10", "steps = 100000")
        .replace("save_every = 5", "save_every = 3");
    std::fs::write(&cfg, text).unwrap();
    let run = d.join("run");
    let port = free_port();
    let mut r0 = by_hand(&cfg, &run, 0, port, &["--dist-timeout", "60"]);
    let mut r1 = by_hand(&cfg, &run, 1, port, &["--dist-timeout", "60"]);
    let t = Instant::now();
    while msclip::checkpoint::latest_valid(&run.join("checkpoints")).is_none() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    r1.kill().unwrap();
    let _ = r1.wait();
    let t = Instant::now();
    let status = wait_bounded(&mut r0, Duration::from_secs(90));
    assert!(!status.success());
    eprintln!("rank 0 exited {:?} {:.1} s after rank 1 was killed", status.code(), t.elapsed().as_secs_f64());
    let mut err = String::new();
    std::io::Read::read_to_string(r0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("rank 0 of 2"), "{err}");
    let (latest, _) = msclip::checkpoint::latest_valid(&run.join("checkpoints")).expect("a checkpoint that verifies");
    msclip::checkpoint::verify(&latest).unwrap();
    // The run resumes (one process, same global batch) from there.
    let short = std::fs::read_to_string(config(&d, "tiny-clip", 32, 1, "")).unwrap().replace("steps = 10", "steps = 100000");
    let one = d.join("one.toml");
    std::fs::write(&one, short).unwrap();
    let step = msclip::checkpoint::verify(&latest).unwrap().step;
    train(&one, &run, &["--resume", "--stop-after", &(step + 1).to_string()]);
    let _ = std::fs::remove_dir_all(&d);
}

/// A rendezvous that cannot form is exit 2 naming the address: the port is taken, or the
/// other ranks never come (wrong world size, unreachable master).
#[test]
fn failed_rendezvous_names_the_address() {
    let d = tmp("rdv");
    let cfg = config(&d, "tiny-clip", 16, 1, "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut r0 = by_hand(&cfg, &d.join("a"), 0, port, &["--dist-timeout", "5"]);
    let s = wait_bounded(&mut r0, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(r0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(s.code(), Some(2), "{err}");
    assert!(err.contains(&format!("rendezvous at 127.0.0.1:{port}")), "{err}");
    // Rank 1 of 2 with no rank 0 anywhere.
    let port = free_port();
    let t = Instant::now();
    let mut r1 = by_hand(&cfg, &d.join("b"), 1, port, &["--dist-timeout", "3"]);
    let s = wait_bounded(&mut r1, Duration::from_secs(60));
    let mut err = String::new();
    std::io::Read::read_to_string(r1.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(s.code(), Some(2), "{err}");
    assert!(err.contains(&format!("rendezvous at 127.0.0.1:{port}")), "{err}");
    eprintln!("missing rank 0: exit 2 after {:.1} s", t.elapsed().as_secs_f64());
    drop(taken);
    let _ = std::fs::remove_dir_all(&d);
}

/// The gradient itself: two ranks (threads of this process, each with its own model and Gloo
/// group) with the full loss and with the local loss, summed over ranks, equal the one-process
/// gradient of the whole batch, tensor by tensor, to fp32 summation noise (relative to each
/// tensor's largest entry: < 5e-5; the accumulation test allows 1e-4).
#[test]
fn local_loss_gradient_equals_full_loss_gradient() {
    use msclip::data::synthetic_set;
    use msclip::distributed::{Launch, ProcessGroup};
    use msclip::model::{ModelConfig, MsClip};
    use msclip::tokenizer::Tokenizer;
    use msclip::train::{loss_and_backward, loss_and_backward_dist, DistLoss};

    let grads_of = |vs: &tch::nn::VarStore| -> BTreeMap<String, Tensor> {
        vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t.grad().copy())).collect()
    };
    let cfg = ModelConfig::preset("tiny-clip").unwrap();
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let idx: Vec<usize> = (0..16).collect();
    let (im, tk, _) = synthetic_set::batch(9, &idx, cfg.vision.image_size as u32, cfg.preprocess.mean, cfg.preprocess.std, &tok);
    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 4);
    let full_loss = loss_and_backward(&m, &vs, &im, &tk, 1, 1.0).unwrap();
    let want = grads_of(&vs);
    for local_loss in [false, true] {
        let port = free_port();
        let handles: Vec<_> = (0..2usize)
            .map(|rank| {
                let (cfg, im, tk) = (cfg.clone(), im.narrow(0, rank as i64 * 8, 8).copy(), tk.narrow(0, rank as i64 * 8, 8).copy());
                std::thread::spawn(move || {
                    let g = ProcessGroup::new(
                        &Launch { rank, world: 2, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port },
                        60,
                    )
                    .unwrap();
                    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 4);
                    let how = DistLoss { group: &g, accum: 1, loss_scale: 1.0, local_loss };
                    let (loss, _) = loss_and_backward_dist(&m, &vs, &im, &tk, &how).unwrap();
                    let mut names = vec![];
                    let mut grads = vec![];
                    let mut sorted: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
                    sorted.sort_by(|a, b| a.0.cmp(&b.0));
                    for (n, t) in sorted {
                        names.push(n);
                        grads.push(t.grad().copy());
                    }
                    g.all_reduce_sum(&mut grads).unwrap();
                    (loss, names.into_iter().zip(grads).collect::<BTreeMap<_, _>>())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (loss, got) in results {
            assert!((loss - full_loss).abs() < 1e-6, "local_loss {local_loss}: loss {loss} vs {full_loss}");
            let mut worst: f64 = 0.0;
            for (n, w) in &want {
                let scale = w.abs().max().double_value(&[]).max(1e-8);
                let d = (w - &got[n]).abs().max().double_value(&[]) / scale;
                assert!(d < 5e-5, "local_loss {local_loss}: {n}: relative gradient difference {d}");
                worst = worst.max(d);
            }
            assert!(want["logit_scale"].abs().double_value(&[]) > 0.0);
            eprintln!("local_loss {local_loss}: worst relative gradient difference {worst:.1e}");
        }
    }
}

/// Ranks started with different configurations (per-rank batch, local loss) fail on every
/// rank with exit 1 and a message naming the disagreement, before training.
#[test]
fn ranks_that_disagree_fail_on_every_rank_naming_it() {
    let d = tmp("disagree");
    for (a, b, want) in [
        (config(&d, "tiny-clip", 16, 1, ""), config(&d, "tiny-clip", 8, 1, ""), "batch_size (per rank) (rank 0: 16, rank 1: 8)"),
        (config(&d, "tiny-clip", 16, 1, ""), config(&d, "tiny-clip", 16, 1, "local_loss = true\n"), "local_loss (rank 0: 0, rank 1: 1)"),
    ] {
        let port = free_port();
        let run = d.join(format!("run-{port}"));
        let mut r0 = by_hand(&a, &run, 0, port, &["--dist-timeout", "30"]);
        let mut r1 = by_hand(&b, &run, 1, port, &["--dist-timeout", "30"]);
        for (rank, r) in [(0, &mut r0), (1, &mut r1)] {
            let s = wait_bounded(r, Duration::from_secs(120));
            let mut err = String::new();
            std::io::Read::read_to_string(r.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert_eq!(s.code(), Some(1), "rank {rank}: {err}");
            assert!(err.contains("different configurations") && err.contains(want), "rank {rank}: {err}");
        }
        assert!(!run.join("metrics.jsonl").exists(), "nothing trained");
    }
    let _ = std::fs::remove_dir_all(&d);
}
