//! Deterministic parameter initialisation from a seed, independent of libtorch's global RNG
//! (which other threads may draw from) and of thread count: every variable gets its own
//! SplitMix64 stream derived from `(seed, creation index)`; normals by Box–Muller.

use std::cell::Cell;

use tch::{nn, Tensor};

use crate::rng::SplitMix64;

thread_local! {
    static STATE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    static SKIP: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every variable created as zeros (for models whose weights are about to be
/// overwritten by a checkpoint: skips drawing ~150 M random numbers for a B/32).
pub fn without_init<R>(f: impl FnOnce() -> R) -> R {
    let saved = SKIP.with(|s| s.replace(true));
    let r = f();
    SKIP.with(|s| s.set(saved));
    r
}

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every value the same.
    Const(f64),
    /// N(0, std²).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// U(lo, hi).
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
}

/// Normal with std 0.02: the official code's `trunc_normal_(std=.02)` truncates at ±2
/// absolute (±100σ), i.e. numerically a plain normal.
pub const NORMAL_02: Init = Init::Normal { std: 0.02 };

/// Runs `f` with variable creation seeded by `seed` on this thread.
pub fn with_seed<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    let saved = STATE.with(|s| s.replace((seed, 0)));
    let r = f();
    STATE.with(|s| s.set(saved));
    r
}

/// `n` values from `init` on the stream `stream`.
pub fn sample(init: Init, n: usize, stream: u64) -> Vec<f32> {
    let mut rng = SplitMix64::from_state(stream);
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, hi } => (0..n).map(|_| (lo + (hi - lo) * rng.unit_open()) as f32).collect(),
        Init::Normal { std } => {
            let mut out = Vec::with_capacity(n + 1);
            while out.len() < n {
                let (u1, u2) = (rng.unit_open(), rng.unit_open());
                let r = (-2.0 * u1.ln()).sqrt() * std;
                let t = std::f64::consts::TAU * u2;
                out.push((r * t.cos()) as f32);
                out.push((r * t.sin()) as f32);
            }
            out.truncate(n);
            out
        }
    }
}

/// Creates a trainable variable under `p` and fills it deterministically.
pub fn var(p: &nn::Path, name: &str, dims: &[i64], init: Init) -> Tensor {
    if let Init::Const(v) = init {
        return p.var(name, dims, nn::Init::Const(v));
    }
    if SKIP.with(|s| s.get()) {
        return p.var(name, dims, nn::Init::Const(0.0));
    }
    let t = p.var(name, dims, nn::Init::Const(0.0));
    let (seed, index) = STATE.with(|s| {
        let (seed, i) = s.get();
        s.set((seed, i + 1));
        (seed, i)
    });
    let stream = SplitMix64::from_state(seed ^ 0x6D73_636C_6970_0000u64.wrapping_add(index.wrapping_mul(0xA24B_AED4_963E_E407))).next_u64();
    let n = dims.iter().product::<i64>() as usize;
    let values = Tensor::from_slice(&sample(init, n, stream)).view(dims).to_device(t.device());
    tch::no_grad(|| t.shallow_clone().copy_(&values));
    t
}
