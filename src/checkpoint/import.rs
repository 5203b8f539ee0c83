//! Maps published state-dict key names (OpenAI CLIP / OpenCLIP, and the official MS-CLIP-S
//! layout, docs/spec-msclip.md §3) onto msclip's VarStore names, converting to fp32.
//!
//! Vision block `i` is `visual.transformer.resblocks.{i}`, text block `i` is
//! `transformer.resblocks.{i}`; a shared site reads its tensor once (from the vision key) and
//! the duplicate text key must hold the same values. Known extras (`input_resolution`,
//! `context_length`, `vocab_size`, BN `num_batches_tracked`) are ignored.

use std::collections::{BTreeMap, BTreeSet};

use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{ModelConfig, SharedSite, StemKind};

const SITES: [(&str, &str); 10] = [
    ("attn.in_proj_weight", "attn_in.weight"),
    ("attn.in_proj_bias", "attn_in.bias"),
    ("attn.out_proj.weight", "attn_out.weight"),
    ("attn.out_proj.bias", "attn_out.bias"),
    ("mlp.c_fc.weight", "fc1.weight"),
    ("mlp.c_fc.bias", "fc1.bias"),
    ("mlp.c_proj.weight", "fc2.weight"),
    ("mlp.c_proj.bias", "fc2.bias"),
    ("ln_1.weight", "ln1.weight"),
    ("ln_1.bias", "ln1.bias"),
];

/// The shared site a block tensor name (`fc1.weight`) belongs to; `None` for anything else.
fn site_of(ours: &str) -> Option<SharedSite> {
    let prefix = ours.split('.').next()?;
    SharedSite::ALL.into_iter().find(|s| s.name() == prefix)
}

/// Pairs of names: (published key, msclip name), or (text key, vision key) for duplicates.
pub type KeyPairs = Vec<(String, String)>;

/// (source key, our name) for every tensor the config needs; shared sites appear once, under
/// the vision key, and `duplicates` lists the text keys that must equal them.
pub fn key_map(cfg: &ModelConfig) -> (KeyPairs, KeyPairs) {
    let mut map = vec![];
    let mut dups = vec![];
    let block_sites = SITES.iter().copied().chain([("ln_2.weight", "ln2.weight"), ("ln_2.bias", "ln2.bias")]);
    let block_sites: Vec<(&str, &str)> = block_sites.collect();
    for slot in 0..cfg.vision.layers.max(cfg.text.layers) {
        for &(src, ours) in &block_sites {
            let site = site_of(ours).expect("every block site of the key table is a SharedSite (tested)");
            let shared = cfg.is_shared(slot, site);
            let vkey = format!("visual.transformer.resblocks.{slot}.{src}");
            let tkey = format!("transformer.resblocks.{slot}.{src}");
            if cfg.vision_has_block(slot) {
                let dst = if shared { format!("shared.blocks.{slot}.{ours}") } else { format!("visual.blocks.{slot}.{ours}") };
                map.push((vkey.clone(), dst));
            }
            if cfg.text_has_block(slot) {
                if shared {
                    dups.push((tkey, vkey));
                } else {
                    map.push((tkey, format!("text.blocks.{slot}.{ours}")));
                }
            }
        }
    }
    for (src, ours) in [
        ("visual.class_embedding", "visual.class_embedding"),
        ("visual.positional_embedding", "visual.positional_embedding"),
        ("visual.ln_pre.weight", "visual.ln_pre.weight"),
        ("visual.ln_pre.bias", "visual.ln_pre.bias"),
        ("visual.ln_post.weight", "visual.ln_post.weight"),
        ("visual.ln_post.bias", "visual.ln_post.bias"),
        ("visual.proj", "visual.proj"),
        ("token_embedding.weight", "text.token_embedding"),
        ("positional_embedding", "text.positional_embedding"),
        ("ln_final.weight", "text.ln_final.weight"),
        ("ln_final.bias", "text.ln_final.bias"),
        ("text_projection", "text.projection"),
        ("logit_scale", "logit_scale"),
    ] {
        map.push((src.into(), ours.into()));
    }
    match cfg.vision.stem {
        StemKind::Patch => map.push(("visual.conv1.weight".into(), "visual.patch_embed.weight".into())),
        StemKind::EarlyConv => {
            let p = "visual.transformer.resblocks.0";
            let bn = |map: &mut Vec<(String, String)>, src: String, dst: String| {
                for s in ["weight", "bias", "running_mean", "running_var"] {
                    map.push((format!("{src}.{s}"), format!("{dst}.{s}")));
                }
            };
            map.push((format!("{p}.conv1.weight"), "visual.stem.conv1.weight".into()));
            bn(&mut map, format!("{p}.bn1"), "visual.stem.bn1".into());
            let n = cfg.vision.early_conv.as_ref().map_or(0, |e| e.strides.len());
            for k in 0..n {
                let q = format!("{p}.resnet_stage.conv_{k}");
                map.push((format!("{q}.conv1.weight"), format!("visual.stem.blocks.{k}.conv.weight")));
                bn(&mut map, format!("{q}.bn1"), format!("visual.stem.blocks.{k}.bn"));
                map.push((format!("{q}.downsample.0.weight"), format!("visual.stem.blocks.{k}.down_conv.weight")));
                bn(&mut map, format!("{q}.downsample.1"), format!("visual.stem.blocks.{k}.down_bn"));
            }
            map.push((format!("{p}.last_conv.weight"), "visual.stem.last_conv.weight".into()));
        }
    }
    if let Some(pb) = &cfg.vision.parallel_branch {
        let bn = |map: &mut Vec<(String, String)>, src: String, dst: String| {
            for s in ["weight", "bias", "running_mean", "running_var"] {
                map.push((format!("{src}.{s}"), format!("{dst}.{s}")));
            }
        };
        for k in 0..pb.stage_strides.len() {
            let src = format!("visual.transformer.parallel_branch_v.{k}");
            let dst = format!("visual.parallel.stages.{k}");
            if k == 0 {
                map.push((format!("{src}.conv.weight"), format!("{dst}.conv.weight")));
                bn(&mut map, format!("{src}.bn"), format!("{dst}.bn"));
            } else {
                let q = format!("{src}.resnet_stage.conv_0");
                for c in ["conv1", "conv2", "conv3", "residual_conv"] {
                    map.push((format!("{q}.{c}.weight"), format!("{dst}.{c}.weight")));
                }
                for b in ["bn1", "bn2", "bn3", "residual_bn"] {
                    bn(&mut map, format!("{q}.{b}"), format!("{dst}.{b}"));
                }
            }
            let a = format!("visual.transformer.parallel_lateral_adapter.{k}");
            let d = format!("visual.parallel.adapters.{k}");
            map.push((format!("{a}.top2bottom_dw_conv.conv.weight"), format!("{d}.t2b_dw.conv.weight")));
            bn(&mut map, format!("{a}.top2bottom_dw_conv.bn"), format!("{d}.t2b_dw.bn"));
            map.push((format!("{a}.top2bottom_pw_conv.conv.weight"), format!("{d}.t2b_pw.weight")));
            map.push((format!("{a}.bottom_dw_conv.conv.weight"), format!("{d}.bottom_dw.conv.weight")));
            bn(&mut map, format!("{a}.bottom_dw_conv.bn"), format!("{d}.bottom_dw.bn"));
            map.push((format!("{a}.ln_adapt.weight"), format!("{d}.ln_adapt.weight")));
            map.push((format!("{a}.ln_adapt.bias"), format!("{d}.ln_adapt.bias")));
        }
    }
    (map, dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_site_name_maps_to_its_shared_site() {
        for (_, ours) in SITES.iter().chain(&[("", "ln2.weight"), ("", "ln2.bias")]) {
            let site = site_of(ours).unwrap_or_else(|| panic!("{ours}"));
            assert!(ours.starts_with(site.name()));
        }
        assert_eq!(site_of("ln3.weight"), None);
        assert_eq!(site_of("ln2.bias"), Some(SharedSite::Ln2));
    }
}

fn ignorable(key: &str) -> bool {
    matches!(key, "input_resolution" | "context_length" | "vocab_size") || key.ends_with("num_batches_tracked")
}

/// Copies published tensors into `vs` (built from `cfg`). Every missing, unexpected or
/// mis-shaped tensor, and every shared duplicate that differs, is listed in the error.
pub fn import_into(tensors: Vec<(String, Tensor)>, cfg: &ModelConfig, vs: &nn::VarStore, origin: &str) -> Result<()> {
    let src: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let (map, dups) = key_map(cfg);
    let mut problems = vec![];
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for (key, ours) in &map {
        let Some(var) = vars.get(ours) else {
            problems.push(format!("internal: no variable {ours} for {key}"));
            continue;
        };
        match src.get(key) {
            None => problems.push(format!("missing {key} {:?}", var.size())),
            Some(t) if t.size() != var.size() => problems.push(format!("{key}: expected {:?}, found {:?}", var.size(), t.size())),
            Some(_) => {
                used.insert(key);
            }
        }
    }
    for (tkey, vkey) in &dups {
        match (src.get(tkey), src.get(vkey)) {
            (Some(a), Some(b)) if a.size() == b.size() => {
                if !a.to_kind(Kind::Float).equal(&b.to_kind(Kind::Float)) {
                    problems.push(format!("{tkey} differs from the shared {vkey}"));
                }
                used.insert(tkey);
            }
            (Some(_), Some(_)) => problems.push(format!("{tkey}: shape differs from the shared {vkey}")),
            (Some(_), None) => {}
            (None, _) => {} // a file that stores shared weights once is fine
        }
    }
    let unexpected: Vec<&String> = src.keys().filter(|k| !used.contains(k.as_str()) && !ignorable(k)).collect();
    for k in &unexpected {
        problems.push(format!("unexpected {k}"));
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(30);
        return Err(Error::Checkpoint(format!("{origin}: does not fit model {} ({n} problems): {}", cfg.name, problems.join("; "))));
    }
    tch::no_grad(|| {
        for (key, ours) in &map {
            vars[ours].shallow_clone().copy_(&src[key].to_kind(Kind::Float));
        }
    });
    Ok(())
}

/// The first preset whose key map matches every shape of `tensors` (for `--model auto`).
pub fn infer_preset(tensors: &[(String, Tensor)]) -> Result<ModelConfig> {
    let shapes: BTreeMap<&str, Vec<i64>> = tensors.iter().map(|(k, t)| (k.as_str(), t.size())).collect();
    for (name, _) in crate::model::config::PRESETS {
        let cfg = ModelConfig::preset(name)?;
        // Cheap filter on two shapes before building the candidate.
        let g = cfg.grid();
        if shapes.get("visual.positional_embedding") != Some(&vec![g * g + 1, cfg.vision.width])
            || shapes.get("token_embedding.weight") != Some(&vec![cfg.text.vocab_size, cfg.text.width])
        {
            continue;
        }
        let (vs, _) = crate::model::MsClip::build_for_loading(&cfg, tch::Device::Cpu);
        let vars = vs.variables();
        let (map, _) = key_map(&cfg);
        if map.len() <= shapes.len() && map.iter().all(|(k, o)| shapes.get(k.as_str()) == vars.get(o).map(|v| v.size()).as_ref()) {
            return Ok(cfg);
        }
    }
    Err(Error::Checkpoint("no preset matches the checkpoint's keys and shapes; pass --model PRESET or --model-config FILE".into()))
}

/// The OpenAI/OpenCLIP state dict of a model (inverse of [`key_map`]); shared sites are
/// written under both towers' keys, as PyTorch's `state_dict()` does. BN buffers included.
pub fn export_state_dict(cfg: &ModelConfig, vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let vars = vs.variables();
    let (map, dups) = key_map(cfg);
    let mut out: Vec<(String, Tensor)> = map.iter().map(|(k, o)| (k.clone(), vars[o].detach().copy())).collect();
    let by_key: BTreeMap<String, Tensor> = out.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    for (t, v) in dups {
        out.push((t, by_key[&v].copy()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What [`import_file`] did, with the time of each phase.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The model the weights were imported as.
    pub model: String,
    /// Seconds reading the file.
    pub read_s: f64,
    /// Seconds building the model and mapping the tensors.
    pub map_s: f64,
    /// Seconds writing the checkpoint.
    pub write_s: f64,
}

/// Imports published weights (`torch.save` zip, TorchScript archive, or safetensors) as an
/// msclip checkpoint directory `out`. `cfg`: the model config; `None` infers the preset from
/// keys and shapes. An existing `out` is replaced only with `force`.
pub fn import_file(from: &std::path::Path, cfg: Option<ModelConfig>, out: &std::path::Path, force: bool) -> Result<ImportReport> {
    if out.exists() && !force {
        return Err(Error::Checkpoint(format!("{}: exists; pass --force to replace it", out.display())));
    }
    let t0 = std::time::Instant::now();
    let tensors = if from.extension().is_some_and(|e| e == "safetensors") {
        Tensor::read_safetensors(from).map_err(|e| Error::Checkpoint(format!("{}: {e}", from.display())))?
    } else {
        super::torch_zip::read(from)?
    };
    let read_s = t0.elapsed().as_secs_f64();
    let cfg = match cfg {
        Some(c) => c,
        None => infer_preset(&tensors)?,
    };
    let t1 = std::time::Instant::now();
    let (vs, _m) = crate::model::MsClip::build_for_loading(&cfg, tch::Device::Cpu);
    import_into(tensors, &cfg, &vs, &from.display().to_string())?;
    let map_s = t1.elapsed().as_secs_f64();
    let t2 = std::time::Instant::now();
    let meta = super::Meta::initial(cfg.clone(), 0, format!("imported from {} (sha256 {})", from.display(), crate::io::sha256_file(from)?));
    super::save_dir(out, &vs, &[], meta)?;
    Ok(ImportReport { model: cfg.name, read_s, map_s, write_s: t2.elapsed().as_secs_f64() })
}

/// Writes a checkpoint as an OpenAI/OpenCLIP-named state dict (safetensors, atomically).
/// Returns the number of tensors and whether the names are OpenCLIP-loadable (vanilla CLIP);
/// MS-CLIP models keep the official code's key names.
pub fn export_file(checkpoint: &std::path::Path, out: &std::path::Path, force: bool) -> Result<(usize, bool)> {
    if out.exists() && !force {
        return Err(Error::Checkpoint(format!("{}: exists; pass --force to replace it", out.display())));
    }
    let (vs, m, _) = super::load(checkpoint, tch::Device::Cpu)?;
    write_export(&m.config, &vs, out)
}

/// [`export_file`] of a freshly initialised model (`config`, `seed`): random weights in the
/// published layout, e.g. to exercise the import path at full size without a download.
pub fn export_init(config: &ModelConfig, seed: i64, out: &std::path::Path, force: bool) -> Result<(usize, bool)> {
    if out.exists() && !force {
        return Err(Error::Checkpoint(format!("{}: exists; pass --force to replace it", out.display())));
    }
    config.validate()?;
    let (vs, _) = crate::model::MsClip::build(config, tch::Device::Cpu, seed);
    write_export(config, &vs, out)
}

fn write_export(config: &ModelConfig, vs: &tch::nn::VarStore, out: &std::path::Path) -> Result<(usize, bool)> {
    let vanilla = config.sharing.is_empty() && config.vision.stem == StemKind::Patch;
    let sd = export_state_dict(config, vs);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    Tensor::write_safetensors(&sd, &tmp)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok((sd.len(), vanilla))
}
