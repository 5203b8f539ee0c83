//! AdamW with savable state (tch cannot save its optimizers' state) and parameter groups.
//!
//! Per parameter p with gradient g, at step t (PyTorch `AdamW`, decoupled decay):
//! ```text
//! p ← p·(1 − lr·wd)
//! m ← β₁m + (1−β₁)g;   v ← β₂v + (1−β₂)g²
//! p ← p − lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
//! ```
//! Groups: no weight decay on biases, LayerNorm/BatchNorm, embeddings, CLS and `logit_scale`
//! (official `no_weight_decay()` + `WITHOUT_WD_LIST: [bn, bias, ln]`); shared parameters get
//! their own lr scale and weight decay (official `LR_SHARE`, `WD_SHARE: 0.2`). With
//! `weight_decay_embeddings = true` the decay groups are OpenCLIP's training script's
//! (`exclude = ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n`):
//! the token and positional embeddings are then decayed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

/// AdamW's hyper-parameters (the learning rate comes per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Weight decay of modality-specific parameters (official 0.05).
    pub weight_decay: f64,
    /// Weight decay of shared parameters (official `WD_SHARE` 0.2).
    pub weight_decay_shared: f64,
    /// Learning-rate multiplier of shared parameters (official `LR_SHARE / LR`, 1.0).
    pub lr_scale_shared: f64,
    /// Decay the 2-D embeddings (token, positional) too, as OpenCLIP's training script does;
    /// false (the official MS-CLIP code's `no_weight_decay()`) by default.
    #[serde(default)]
    pub weight_decay_embeddings: bool,
}

impl AdamWConfig {
    /// Checks the domains: β ∈ [0, 1), ε > 0, weight decays ≥ 0, the shared lr scale > 0,
    /// all finite. The error names the key (`optimizer.beta1`, …).
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, v: f64, why: &str| Err(Error::config(format!("optimizer.{k}"), v, why));
        for (k, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(k, v, "must be in [0, 1)");
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad("eps", self.eps, "must be positive and finite");
        }
        for (k, v) in [("weight_decay", self.weight_decay), ("weight_decay_shared", self.weight_decay_shared)] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(k, v, "must be non-negative and finite");
            }
        }
        if !(self.lr_scale_shared > 0.0 && self.lr_scale_shared.is_finite()) {
            return bad("lr_scale_shared", self.lr_scale_shared, "must be positive and finite");
        }
        Ok(())
    }
}

impl AdamWConfig {
    /// The learning rate and weight decay of a parameter group at base learning rate `lr`.
    pub fn lr_and_decay(&self, group: Group, lr: f64) -> (f64, f64) {
        let lr_g = if group.shared { lr * self.lr_scale_shared } else { lr };
        let wd = if !group.decay {
            0.0
        } else if group.shared {
            self.weight_decay_shared
        } else {
            self.weight_decay
        };
        (lr_g, wd)
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.05,
            weight_decay_shared: 0.2,
            lr_scale_shared: 1.0,
            weight_decay_embeddings: false,
        }
    }
}

/// Which group a parameter falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Weight decay applies.
    pub decay: bool,
    /// A shared parameter.
    pub shared: bool,
}

/// Decides the group from the VarStore name; `decay_embeddings` decays the 2-D embeddings
/// (OpenCLIP's groups, see the module doc).
pub fn group_of(name: &str, dims: usize, decay_embeddings: bool) -> Group {
    let last = name.rsplit('.').next().unwrap_or(name);
    let no_decay = dims < 2
        || last == "bias"
        || name.contains(".ln")
        || name.contains("ln_")
        || name.contains(".bn")
        || name.contains("_bn")
        || (name.contains("embedding") && !decay_embeddings)
        || name == "logit_scale";
    Group { decay: !no_decay, shared: name.starts_with("shared.") }
}

struct Slot {
    name: String,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    group: Group,
}

/// Which code applies the AdamW update (the same formula; state and checkpoints identical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Per tensor, libtorch tensor ops (~10 passes over memory per parameter).
    Tensor,
    /// Our single pass over memory per tensor (contiguous CPU fp32; others fall back to
    /// [`Kernel::Tensor`]).
    SinglePass,
    /// PyTorch's own multi-tensor fused kernel, `at::_fused_adamw_` (CPU and CUDA), one call
    /// per parameter group, through the C++ shim `csrc/ops.cpp`.
    Aten,
}

extern "C" {
    fn msd_fused_adamw(
        params: *const *mut std::ffi::c_void,
        grads: *const *mut std::ffi::c_void,
        exp_avgs: *const *mut std::ffi::c_void,
        exp_avg_sqs: *const *mut std::ffi::c_void,
        n: std::ffi::c_int,
        step: f64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut std::ffi::c_char,
        errlen: usize,
    ) -> std::ffi::c_int;
    fn msd_grads_to_none(
        ts: *const *mut std::ffi::c_void,
        n: std::ffi::c_int,
        err: *mut std::ffi::c_char,
        errlen: usize,
    ) -> std::ffi::c_int;
}

/// AdamW over every trainable variable of a VarStore, with savable state.
pub struct AdamW {
    /// Its hyper-parameters.
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied.
    pub step: i64,
    /// The update's kernel (default [`Kernel::Aten`]).
    pub kernel: Kernel,
}

impl AdamW {
    /// All trainable variables of `vs` (those that require a gradient: frozen ones are left
    /// out, and get no state), in name order.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> AdamW {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let slots = vars
            .into_iter()
            .map(|(name, param)| {
                let group = group_of(&name, param.dim(), config.weight_decay_embeddings);
                Slot { m: param.zeros_like().detach(), v: param.zeros_like().detach(), name, param, group }
            })
            .collect();
        AdamW { config, slots, step: 0, kernel: Kernel::Aten }
    }

    /// Clears every gradient: drops it, as PyTorch's `zero_grad(set_to_none=True)` (its
    /// default), so the next backward stores its gradient rather than zero-filling the old
    /// buffer and adding into it (two passes over all parameters per step). A parameter that
    /// then gets no gradient is skipped by [`AdamW::step`], as in PyTorch.
    pub fn zero_grad(&mut self) {
        let mut ps: Vec<Tensor> = self.slots.iter().map(|s| s.param.shallow_clone()).collect();
        let ptrs = crate::shim::tensor_ptrs(&mut ps);
        // SAFETY: valid tensor handles owned by `ps` for the duration of the call; resetting a
        // grad is what `Tensor::zero_grad`'s C++ counterpart does with set_to_none.
        // An exception here would be a libtorch bug: it is caught in the shim and reported.
        if let Err(e) = crate::shim::call(|err, len| unsafe { msd_grads_to_none(ptrs.as_ptr(), ptrs.len() as std::ffi::c_int, err, len) }) {
            panic!("libtorch could not reset gradients: {e}");
        }
    }

    /// The defined gradients, in name order (views of the live gradients: editing them in
    /// place edits what [`AdamW::step`] uses).
    pub fn grads(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.param.grad()).filter(|g| g.defined()).collect()
    }

    /// Global L2 norm of the gradients (sums of squares accumulated in f64).
    pub fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for s in &self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            sq += match fused::cpu_f32(&g) {
                Some(n) if self.kernel != Kernel::Tensor => fused::sum_sq(unsafe { fused::slice(&g, n) }),
                _ => g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]),
            };
        }
        sq.sqrt()
    }

    /// Multiplies all gradients by `factor`; returns false if any is inf/NaN (then the
    /// update must be skipped).
    pub fn unscale_grads(&mut self, factor: f64) -> bool {
        let mut finite = true;
        tch::no_grad(|| {
            for s in &self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                    if finite && g.isfinite().all().int64_value(&[]) == 0 {
                        finite = false;
                    }
                }
            }
        });
        finite
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for s in &self.slots {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            });
        }
        norm
    }

    /// One update with base learning rate `lr`. With [`Kernel::Aten`], a kernel ATen refuses
    /// (mixed devices or dtypes) is an error, not a silent switch to another update mid-run.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        if self.kernel == Kernel::Aten {
            return self.step_aten(lr).map_err(|e| {
                Error::Stopped(format!(
                    "AdamW step {}: at::_fused_adamw_ failed ({e}); no parameter was updated by it (the tensor-op update, Kernel::Tensor, avoids ATen's kernel)",
                    self.step
                ))
            });
        }
        let single_pass = self.kernel != Kernel::Tensor;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let (lr_g, wd) = c.lr_and_decay(s.group, lr);
                if single_pass {
                    let n = [&s.param, &g, &s.m, &s.v].map(fused::cpu_f32);
                    if n.iter().all(|k| k.is_some() && *k == n[0]) {
                        let coeffs = fused::Coeffs::new(c, lr_g, wd, bc1, bc2);
                        // SAFETY: four distinct contiguous CPU f32 buffers of equal length
                        // (param, its grad, and the two moments created here); no autograd
                        // is recorded inside no_grad and no other handle writes meanwhile.
                        unsafe {
                            fused::update(
                                &s.param,
                                &g,
                                &s.m,
                                &s.v,
                                n[0].expect("checked above: all four are CPU f32 buffers of one length"),
                                &coeffs,
                            )
                        };
                        continue;
                    }
                }
                let mut p = s.param.shallow_clone();
                if wd > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr_g * wd);
                }
                // m ← lerp(m, g, 1−β₁) = β₁m + (1−β₁)g; v likewise with g².
                let _ = s.m.lerp_(&g, 1.0 - c.beta1);
                let _ = s.v.lerp_(&g.square(), 1.0 - c.beta2);
                // p ← p − (lr/bc1)·m / (√v/√bc2 + ε)
                let mut denom = s.v.sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt()).g_add_scalar_(c.eps);
                let _ = denom.g_mul_scalar_(-bc1 / lr_g);
                let _ = p.addcdiv_(&s.m, &denom);
            }
        });
        Ok(())
    }

    /// [`Kernel::Aten`]: one `_fused_adamw_` call per (learning rate, weight decay) group, at
    /// step `self.step` (already incremented).
    fn step_aten(&self, lr: f64) -> std::result::Result<(), String> {
        let c = &self.config;
        let mut groups: BTreeMap<(bool, bool), Vec<usize>> = BTreeMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.param.grad().defined() {
                groups.entry((s.group.shared, s.group.decay)).or_default().push(i);
            }
        }
        for ((shared, decay), idx) in groups {
            let (lr_g, wd) = c.lr_and_decay(Group { decay, shared }, lr);
            let mut p: Vec<Tensor> = idx.iter().map(|&i| self.slots[i].param.shallow_clone()).collect();
            let mut g: Vec<Tensor> = idx.iter().map(|&i| self.slots[i].param.grad()).collect();
            let mut m: Vec<Tensor> = idx.iter().map(|&i| self.slots[i].m.shallow_clone()).collect();
            let mut v: Vec<Tensor> = idx.iter().map(|&i| self.slots[i].v.shallow_clone()).collect();
            let ptrs = crate::shim::tensor_ptrs;
            let (pp, gp, mp, vp) = (ptrs(&mut p), ptrs(&mut g), ptrs(&mut m), ptrs(&mut v));
            crate::shim::call(|err, len| unsafe {
                msd_fused_adamw(
                    pp.as_ptr(),
                    gp.as_ptr(),
                    mp.as_ptr(),
                    vp.as_ptr(),
                    pp.len() as std::ffi::c_int,
                    self.step as f64,
                    lr_g,
                    c.beta1,
                    c.beta2,
                    wd,
                    c.eps,
                    err,
                    len,
                )
            })?;
        }
        Ok(())
    }

    /// Moments as named tensors (`m.NAME`, `v.NAME`) plus the step, for `optim.safetensors`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step]))];
        for s in &self.slots {
            out.push((format!("m.{}", s.name), s.m.shallow_clone()));
            out.push((format!("v.{}", s.name), s.v.shallow_clone()));
        }
        out
    }

    /// Restores [`AdamW::state`]; errors list missing or mis-shaped entries.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, origin: &str) -> Result<()> {
        let map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let step = map.get("step").ok_or_else(|| Error::Invalid(format!("{origin}: no `step` tensor")))?;
        let mut problems = Vec::new();
        for s in &self.slots {
            for (key, dst) in [(format!("m.{}", s.name), &s.m), (format!("v.{}", s.name), &s.v)] {
                match map.get(&key) {
                    None => problems.push(format!("missing {key}")),
                    Some(src) if src.size() != dst.size() => {
                        problems.push(format!("{key}: expected {:?}, found {:?}", dst.size(), src.size()))
                    }
                    Some(_) => {}
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(format!("{origin}: optimizer state does not fit the model: {}", problems.join("; "))));
        }
        tch::no_grad(|| {
            for s in &mut self.slots {
                s.m.copy_(&map[&format!("m.{}", s.name)]);
                s.v.copy_(&map[&format!("v.{}", s.name)]);
            }
        });
        self.step = step.int64_value(&[0]);
        Ok(())
    }

    /// Names and groups (for reports and tests).
    pub fn groups(&self) -> Vec<(String, Group)> {
        self.slots.iter().map(|s| (s.name.clone(), s.group)).collect()
    }
}

/// The AdamW update in one pass over memory for contiguous CPU fp32 tensors.
///
/// The tensor-op form reads and writes the parameter-sized buffers about ten times per step
/// (decay, two lerps, a square, sqrt, two scalings, addcdiv); at small model sizes the
/// 49,408-row token embedding makes that a large share of the step. Here each element is
/// loaded once: `p ← p·(1−lr·wd)`, `m ← m + (1−β₁)(g−m)`, `v ← v + (1−β₂)(g²−v)`,
/// `p ← p − (lr/bc₁)·m/(√v/√bc₂ + ε)` — PyTorch's `_single_tensor_adamw` formula, the same
/// as the tensor path up to float rounding (tested). Large tensors are split over libtorch's
/// thread count.
mod fused {
    use super::AdamWConfig;
    use tch::{Device, Kind, Tensor};

    /// Element count when `t` is a contiguous CPU fp32 tensor.
    pub fn cpu_f32(t: &Tensor) -> Option<usize> {
        (t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()).then(|| t.numel())
    }

    /// # Safety
    /// `t` is a contiguous CPU f32 tensor of `n` elements that outlives the slice.
    pub unsafe fn slice(t: &Tensor, n: usize) -> &[f32] {
        if n == 0 {
            return &[];
        }
        std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
    }

    /// # Safety
    /// `data` points to `n` contiguous f32 (a tensor's storage, from `data_ptr`) that nothing
    /// else reads or writes while the slice lives. (A raw pointer, not `&Tensor`: a mutable
    /// slice must not be derived from a shared borrow.)
    unsafe fn slice_mut<'a>(data: *mut std::ffi::c_void, n: usize) -> &'a mut [f32] {
        if n == 0 {
            return &mut [];
        }
        std::slice::from_raw_parts_mut(data as *mut f32, n)
    }

    pub fn sum_sq(g: &[f32]) -> f64 {
        // Blocks of f32 partial sums keep the loop vectorised; blocks add up in f64.
        g.chunks(1024).map(|c| c.iter().map(|x| x * x).sum::<f32>() as f64).sum()
    }

    pub struct Coeffs {
        decay: f32,
        a1: f32,
        a2: f32,
        step_size: f32,
        inv_sqrt_bc2: f32,
        eps: f32,
    }

    impl Coeffs {
        pub fn new(c: &AdamWConfig, lr: f64, wd: f64, bc1: f64, bc2: f64) -> Coeffs {
            Coeffs {
                decay: (1.0 - lr * wd) as f32,
                a1: (1.0 - c.beta1) as f32,
                a2: (1.0 - c.beta2) as f32,
                step_size: (lr / bc1) as f32,
                inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                eps: c.eps as f32,
            }
        }
    }

    fn kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coeffs) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m += k.a1 * (g - *m);
            *v += k.a2 * (g * g - *v);
            let denom = v.sqrt() * k.inv_sqrt_bc2 + k.eps;
            *p = *p * k.decay - k.step_size * *m / denom;
        }
    }

    /// # Safety
    /// `p`, `g`, `m`, `v` are distinct contiguous CPU f32 tensors of `n` elements each.
    pub unsafe fn update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, n: usize, k: &Coeffs) {
        let (p, g, m, v) = (slice_mut(p.data_ptr(), n), slice(g, n), slice_mut(m.data_ptr(), n), slice_mut(v.data_ptr(), n));
        let threads = (tch::get_num_threads().max(1) as usize).min(n / (1 << 16)).max(1);
        if threads == 1 {
            return kernel(p, g, m, v, k);
        }
        let chunk = n.div_ceil(threads);
        std::thread::scope(|s| {
            for (((p, g), m), v) in p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk)) {
                s.spawn(move || kernel(p, g, m, v, k));
            }
        });
    }
}

/// Cosine schedule with linear warm-up: `lr(t) = base·t/warmup` for `t < warmup`, then
/// `min + (base − min)·½(1 + cos(π·(t − warmup)/(total − warmup)))`.
pub fn cosine_lr(step: i64, total: i64, warmup: i64, base: f64, min: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `zero_grad` drops the gradients (PyTorch's set_to_none): undefined until the next
    /// backward, which then stores exactly its gradient; a parameter that got none is left
    /// alone by the update (no decay, no moment change), as PyTorch's AdamW does.
    #[test]
    fn zero_grad_drops_gradients_and_step_skips_parameters_without_one() {
        for kernel in [Kernel::Aten, Kernel::SinglePass, Kernel::Tensor] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let root = vs.root();
            let a = root.var_copy("a", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
            let b = root.var_copy("b", &Tensor::from_slice(&[4.0f32, 5.0]));
            let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.5, ..Default::default() });
            opt.kernel = kernel;
            (&a * &a).sum(Kind::Float).backward();
            (&b * 2.0).sum(Kind::Float).backward();
            opt.step(0.1).unwrap();
            opt.zero_grad();
            assert!(!a.grad().defined() && !b.grad().defined(), "{kernel:?}: gradients still defined");
            let b_before = b.copy();
            let moments_b =
                |o: &AdamW| o.state().into_iter().filter(|(k, _)| k == "m.b" || k == "v.b").map(|(_, t)| t.copy()).collect::<Vec<_>>();
            let state_b = moments_b(&opt);
            assert_eq!(state_b.len(), 2);
            (&a * 3.0).sum(Kind::Float).backward();
            assert_eq!(Vec::<f32>::try_from(&a.grad()).unwrap(), vec![3.0, 3.0, 3.0], "{kernel:?}: stored, not accumulated");
            opt.step(0.1).unwrap();
            assert!(b.equal(&b_before), "{kernel:?}: a parameter without gradient moved");
            for (now, before) in moments_b(&opt).iter().zip(&state_b) {
                assert!(now.equal(before), "{kernel:?}: its moments moved");
            }
        }
    }

    /// The single-pass CPU update, ATen's `_fused_adamw_` and the tensor-op path give the same
    /// parameters, moments and gradient norm over 20 steps (to fp32 round-off), in every group
    /// (decay/no-decay, shared/own), for a tensor large enough to be split over threads.
    #[test]
    fn fused_update_equals_tensor_path() {
        let run = |kernel: Kernel| {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let root = vs.root();
            tch::manual_seed(11);
            let cpu = (Kind::Float, tch::Device::Cpu);
            let _w = (&root / "shared" / "blocks" / 0 / "fc1").var_copy("weight", &Tensor::randn([300, 700], cpu));
            let _b = (&root / "text" / "blocks" / 0 / "fc1").var_copy("bias", &Tensor::randn([300], cpu));
            let _e = (&root / "visual").var_copy("proj", &Tensor::randn([16, 8], cpu));
            let mut opt = AdamW::new(&vs, AdamWConfig { lr_scale_shared: 0.5, ..Default::default() });
            opt.kernel = kernel;
            let mut norms = Vec::new();
            for step in 0..20 {
                opt.zero_grad();
                tch::manual_seed(100 + step);
                let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
                let loss: Tensor =
                    vars.values().map(|t| (t * Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu))).sum(Kind::Float)).sum();
                loss.backward();
                norms.push(opt.grad_norm());
                opt.step(1e-2).unwrap();
            }
            let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
            (vars, opt.state(), norms)
        };
        let (pt, st, nt) = run(Kernel::Tensor);
        for kernel in [Kernel::SinglePass, Kernel::Aten] {
            let (pf, sf, nf) = run(kernel);
            for (name, a) in &pf {
                let d = (a - &pt[name]).abs().max().double_value(&[]);
                assert!(d < 1e-6, "{kernel:?}: {name}: {d}");
            }
            for ((name, a), (_, b)) in sf.iter().zip(st.iter()) {
                let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]);
                assert!(d < 1e-6, "{kernel:?}: {name}: {d}");
            }
            for (a, b) in nf.iter().zip(&nt) {
                assert!((a - b).abs() < 1e-6 * b, "{kernel:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn groups_follow_the_official_exclusions() {
        for oc in [false, true] {
            assert_eq!(group_of("shared.blocks.3.fc1.weight", 2, oc), Group { decay: true, shared: true });
            assert_eq!(group_of("shared.blocks.3.fc1.bias", 1, oc), Group { decay: false, shared: true });
            assert!(!group_of("visual.blocks.1.ln1.weight", 1, oc).decay);
            assert!(!group_of("logit_scale", 0, oc).decay);
            assert!(!group_of("visual.class_embedding", 1, oc).decay);
            assert!(group_of("visual.proj", 2, oc).decay);
            assert!(group_of("visual.stem.blocks.0.conv.weight", 4, oc).decay);
            // The 2-D embeddings: official MS-CLIP never decays them, OpenCLIP's script does.
            for emb in ["text.token_embedding", "text.positional_embedding", "visual.positional_embedding"] {
                assert_eq!(group_of(emb, 2, oc).decay, oc, "{emb}");
            }
        }
    }

    #[test]
    fn cosine_schedule_values() {
        assert!((cosine_lr(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((cosine_lr(10, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(55, 100, 10, 1.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((cosine_lr(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn matches_a_hand_computed_adamw_step() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
        let mut opt = AdamW::new(&vs, AdamWConfig { weight_decay: 0.1, ..Default::default() });
        (&w * Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2])).sum(Kind::Float).backward();
        opt.step(0.01).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = g/(|g|+eps) ≈ 1; p = 1·(1 − 0.001) − 0.01.
        let got = Vec::<f32>::try_from(w.view([-1])).unwrap();
        for v in got {
            assert!((v as f64 - (0.999 - 0.01)).abs() < 1e-6, "{v}");
        }
    }
}
