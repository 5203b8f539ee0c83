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
//! their own lr scale and weight decay (official `LR_SHARE`, `WD_SHARE: 0.2`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Weight decay of modality-specific parameters (official 0.05).
    pub weight_decay: f64,
    /// Weight decay of shared parameters (official `WD_SHARE` 0.2).
    pub weight_decay_shared: f64,
    /// Learning-rate multiplier of shared parameters (official `LR_SHARE / LR`, 1.0).
    pub lr_scale_shared: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.05, weight_decay_shared: 0.2, lr_scale_shared: 1.0 }
    }
}

/// Which group a parameter falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Group {
    pub decay: bool,
    pub shared: bool,
}

/// Decides the group from the VarStore name.
pub fn group_of(name: &str, dims: usize) -> Group {
    let last = name.rsplit('.').next().unwrap_or(name);
    let no_decay = dims < 2
        || last == "bias"
        || name.contains(".ln")
        || name.contains("ln_")
        || name.contains(".bn")
        || name.contains("_bn")
        || name.contains("embedding")
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

pub struct AdamW {
    pub config: AdamWConfig,
    slots: Vec<Slot>,
    /// Number of updates applied.
    pub step: i64,
}

impl AdamW {
    /// All trainable variables of `vs`, in name order.
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> AdamW {
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        let slots = vars
            .into_iter()
            .map(|(name, param)| {
                let group = group_of(&name, param.dim());
                Slot { m: param.zeros_like().detach(), v: param.zeros_like().detach(), name, param, group }
            })
            .collect();
        AdamW { config, slots, step: 0 }
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for s in &self.slots {
            let g = s.param.grad();
            if g.defined() {
                sq += g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]);
            }
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

    /// One update with base learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.param.grad();
                if !g.defined() {
                    continue;
                }
                let lr_g = if s.group.shared { lr * c.lr_scale_shared } else { lr };
                let wd = if !s.group.decay { 0.0 } else if s.group.shared { c.weight_decay_shared } else { c.weight_decay };
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

    #[test]
    fn groups_follow_the_official_exclusions() {
        assert_eq!(group_of("shared.blocks.3.fc1.weight", 2), Group { decay: true, shared: true });
        assert_eq!(group_of("shared.blocks.3.fc1.bias", 1), Group { decay: false, shared: true });
        assert!(!group_of("visual.blocks.1.ln1.weight", 1).decay);
        assert!(!group_of("text.token_embedding", 2).decay);
        assert!(!group_of("visual.positional_embedding", 2).decay);
        assert!(!group_of("logit_scale", 0).decay);
        assert!(group_of("visual.proj", 2).decay);
        assert!(group_of("visual.stem.blocks.0.conv.weight", 4).decay);
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
        opt.step(0.01);
        // Step 1: m̂ = g, v̂ = g², update = g/(|g|+eps) ≈ 1; p = 1·(1 − 0.001) − 0.01.
        let got = Vec::<f32>::try_from(w.view([-1])).unwrap();
        for v in got {
            assert!((v as f64 - (0.999 - 0.01)).abs() < 1e-6, "{v}");
        }
    }
}
