//! libtorch's autocast state: which dtype autocast runs matrix products in, on CUDA and on CPU.
//!
//! tch exposes autocast only as on/off for CUDA, which means fp16 (libtorch's default there).
//! bf16 needs `at::autocast::set_autocast_dtype(DeviceType::CUDA, ScalarType::BFloat16)`,
//! and CPU autocast needs `at::autocast::set_autocast_enabled(DeviceType::CPU, true)`: plain
//! C++ functions of `libtorch_cpu.so`, called through the exception-guarded C shim
//! (`csrc/ops.cpp`, `msd_autocast_*`) with our own device and dtype codes, which the shim maps
//! to c10's enums (checked by the tests below against libtorch's state).
//!
//! [`autocast`] is the one entry point the training step uses (`train::amp` re-exports it
//! next to its `Precision`): CUDA through tch, CPU through these bindings, with libtorch's
//! nesting count and cast cache handled as `torch.autocast` does (the cache of bf16 copies of
//! the fp32 master weights is cleared when the outermost region ends, so the next step casts
//! the updated weights). [`without_cpu_autocast`] lets the model step out of a region for the
//! few CPU operators whose bf16 kernels are slower than their fp32 ones.

use std::ffi::{c_char, c_int};

use tch::Kind;
#[cfg(test)]
use tch::Tensor;

extern "C" {
    fn msd_autocast_get(device: c_int, enabled: *mut c_int, dtype: *mut c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_autocast_set(device: c_int, enabled: c_int, dtype: c_int, err: *mut c_char, errlen: usize) -> c_int;
    fn msd_autocast_nest(delta: c_int, err: *mut c_char, errlen: usize) -> c_int;
}

/// The shim's device codes.
#[derive(Clone, Copy)]
enum On {
    Cpu = 0,
    Cuda = 1,
}

/// The shim's dtype codes (mapped to c10's in C++).
fn code(kind: Kind) -> c_int {
    match kind {
        Kind::Float => 0,
        Kind::Half => 1,
        Kind::BFloat16 => 2,
        // Invariant: only the precisions of `train::amp::Precision` reach here.
        other => panic!("autocast dtype {other:?} is not supported (fp32, fp16, bf16)"),
    }
}

fn kind_of(code: c_int) -> Option<Kind> {
    match code {
        0 => Some(Kind::Float),
        1 => Some(Kind::Half),
        2 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// A failing call is a libtorch bug (the arguments are valid by construction): it is reported
/// with libtorch's message and ends the operation (`cli::guard_panics` turns it into exit 1).
fn checked(what: &str, f: impl FnOnce(*mut c_char, usize) -> c_int) {
    if let Err(e) = crate::shim::call(f) {
        panic!("libtorch autocast ({what}) failed: {e}");
    }
}

/// (enabled, dtype) of autocast on `device`.
fn get(device: On) -> (bool, Option<Kind>) {
    let (mut enabled, mut dtype) = (0, -1);
    // SAFETY: two out-pointers to live locals; exceptions are caught in the shim.
    checked("get", |err, len| unsafe { msd_autocast_get(device as c_int, &mut enabled, &mut dtype, err, len) });
    (enabled != 0, kind_of(dtype))
}

/// Sets autocast on/off (`None`: leave) and its dtype (`None`: leave) on `device`.
fn set(device: On, enabled: Option<bool>, kind: Option<Kind>) {
    let e = enabled.map_or(-1, |b| b as c_int);
    let d = kind.map_or(-1, code);
    // SAFETY: plain values; exceptions are caught in the shim.
    checked("set", |err, len| unsafe { msd_autocast_set(device as c_int, e, d, err, len) });
}

fn nest(delta: c_int) {
    // SAFETY: plain value; exceptions are caught in the shim.
    checked("nesting", |err, len| unsafe { msd_autocast_nest(delta, err, len) });
}

/// Runs `f` under autocast in `kind` on `device` (`None`: plain fp32, `f` as is). CUDA goes
/// through `tch::autocast`; CPU sets libtorch's CPU autocast state and restores it afterwards,
/// also when `f` panics. The loss should cast its logits to fp32 itself: CPU autocast, unlike
/// CUDA's, leaves `log_softmax` in the input's dtype.
pub fn autocast<T>(device: tch::Device, kind: Option<Kind>, f: impl FnOnce() -> T) -> T {
    match (kind, device) {
        (None, _) => f(),
        (Some(k), tch::Device::Cuda(_)) => {
            set_cuda_autocast_kind(k);
            tch::autocast(true, f)
        }
        (Some(k), _) => {
            /// Restores the CPU autocast state when dropped.
            struct Region {
                was_enabled: bool,
                was_kind: Option<Kind>,
            }
            impl Drop for Region {
                fn drop(&mut self) {
                    nest(-1);
                    set(On::Cpu, Some(self.was_enabled), self.was_kind);
                }
            }
            // The guard undoes these in reverse order, also when `f` panics.
            let (was_enabled, was_kind) = get(On::Cpu);
            let _region = Region { was_enabled, was_kind };
            set(On::Cpu, Some(true), Some(k));
            nest(1);
            f()
        }
    }
}

/// Runs `f` with CPU autocast switched off (and back on afterwards, also on panic), keeping
/// the nesting count and the cast cache: for the few CPU operators whose bf16 kernels are
/// slower than their fp32 ones (see `model::block` and `model::layers`). A plain call when
/// CPU autocast is off.
pub fn without_cpu_autocast<T>(f: impl FnOnce() -> T) -> T {
    if !cpu_autocast_enabled() {
        return f();
    }
    /// Switches CPU autocast back on when dropped.
    struct Back;
    impl Drop for Back {
        fn drop(&mut self) {
            set(On::Cpu, Some(true), None);
        }
    }
    set(On::Cpu, Some(false), None);
    let _back = Back;
    f()
}

extern "C" {
    fn msd_tf32(cublas: std::ffi::c_int, cudnn: std::ffi::c_int, err: *mut std::ffi::c_char, errlen: usize) -> std::ffi::c_int;
}

/// Calls the guarded TF32 switch; the previous state as bits (1: cuBLAS, 2: cuDNN).
fn tf32_call(cublas: std::ffi::c_int, cudnn: std::ffi::c_int) -> crate::Result<std::ffi::c_int> {
    let mut bits = 0;
    // SAFETY: reads/sets two flags of libtorch's global context; exceptions are caught in the
    // shim and come back as an error message.
    crate::shim::call(|err, len| {
        bits = unsafe { msd_tf32(cublas, cudnn, err, len) };
        if bits < 0 {
            1
        } else {
            0
        }
    })
    .map_err(|e| crate::Error::Invalid(format!("TF32 switch: {e}")))?;
    Ok(bits)
}

/// Whether CUDA may use TF32 for fp32 work: `(matmul, conv)` = (cuBLAS, cuDNN). libtorch's
/// defaults are `(false, true)`, as PyTorch's `torch.backends.cuda.matmul.allow_tf32` and
/// `torch.backends.cudnn.allow_tf32`.
pub fn tf32() -> crate::Result<(bool, bool)> {
    let bits = tf32_call(-1, -1)?;
    Ok((bits & 1 != 0, bits & 2 != 0))
}

/// Sets both TF32 switches (process-wide); returns the previous `(matmul, conv)`.
/// `examples/gpu_check.rs` (`MSCLIP_TF32=0`) runs the CPU-vs-CUDA parity with both off.
pub fn set_tf32(matmul: bool, conv: bool) -> crate::Result<(bool, bool)> {
    let bits = tf32_call(matmul as std::ffi::c_int, conv as std::ffi::c_int)?;
    Ok((bits & 1 != 0, bits & 2 != 0))
}

/// Whether CPU autocast is on (for tests and diagnostics).
pub fn cpu_autocast_enabled() -> bool {
    get(On::Cpu).0
}

/// Sets the dtype CUDA autocast casts to (thread-local in libtorch: call it on the thread that
/// runs the forward pass).
pub fn set_cuda_autocast_kind(kind: Kind) {
    set(On::Cuda, None, Some(kind));
}

/// The dtype CUDA autocast casts to now.
pub fn cuda_autocast_kind() -> Option<Kind> {
    get(On::Cuda).1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binding reaches libtorch's state (no GPU needed: the setting is plain data).
    #[test]
    fn autocast_dtype_round_trips_through_libtorch() {
        assert_eq!(cuda_autocast_kind(), Some(Kind::Half), "libtorch's default for CUDA");
        set_cuda_autocast_kind(Kind::BFloat16);
        assert_eq!(cuda_autocast_kind(), Some(Kind::BFloat16));
        set_cuda_autocast_kind(Kind::Half);
        assert_eq!(cuda_autocast_kind(), Some(Kind::Half));
    }

    /// The TF32 switches reach libtorch's context (plain flags; no GPU needed).
    #[test]
    fn tf32_switches_round_trip() {
        let defaults = tf32().unwrap();
        assert_eq!(defaults, (false, true), "libtorch's defaults");
        assert_eq!(set_tf32(true, false).unwrap(), defaults);
        assert_eq!(tf32().unwrap(), (true, false));
        assert_eq!(set_tf32(defaults.0, defaults.1).unwrap(), (true, false));
        assert_eq!(tf32().unwrap(), defaults);
    }

    /// CPU autocast: a matmul of fp32 inputs runs in bf16 inside the region, fp32 outside;
    /// ops outside autocast's lists keep their dtype; the state is restored, also after nesting.
    #[test]
    fn cpu_autocast_casts_matmuls_and_restores_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, tch::Device::Cpu));
        assert!(!cpu_autocast_enabled());
        let (k_in, k_nested, k_add) = autocast(tch::Device::Cpu, Some(Kind::BFloat16), || {
            assert!(cpu_autocast_enabled());
            let nested = autocast(tch::Device::Cpu, Some(Kind::BFloat16), || a.matmul(&b).kind());
            assert!(cpu_autocast_enabled(), "the inner region restores the outer state");
            (a.matmul(&b).kind(), nested, (&a + 1.0).kind())
        });
        assert_eq!((k_in, k_nested, k_add), (Kind::BFloat16, Kind::BFloat16, Kind::Float));
        assert!(!cpu_autocast_enabled());
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        // The bf16 product is the fp32 one to bf16 round-off (8 bits of mantissa).
        let exact = a.matmul(&b);
        let low = autocast(tch::Device::Cpu, Some(Kind::BFloat16), || a.matmul(&b)).to_kind(Kind::Float);
        let rel = (&low - &exact).abs().max().double_value(&[]) / exact.abs().max().double_value(&[]);
        assert!(rel < 3e-2 && rel > 0.0, "{rel}");
        // A panic inside the region still restores it.
        let r = std::panic::catch_unwind(|| autocast(tch::Device::Cpu, Some(Kind::BFloat16), || panic!("boom")));
        assert!(r.is_err());
        assert!(!cpu_autocast_enabled());
        assert_eq!(autocast(tch::Device::Cpu, None, || a.matmul(&b).kind()), Kind::Float);
    }
}
