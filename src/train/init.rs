//! Starting a run from existing weights (`init`) and keeping parameters fixed (`freeze`).

use std::collections::{BTreeMap, BTreeSet};

use tch::{nn, Tensor};

use super::select;
use super::InitConfig;
use crate::checkpoint::{self, InitRecord, ModelSource};
use crate::error::{Error, Result};

/// Copies the tensors `init` selects from its source checkpoint into `vs` (the rest keeps
/// its seed initialisation) and returns what was loaded. The source is verified (hashes,
/// config, finite tensors) first; nothing is copied unless every selected tensor resolves
/// with matching shapes.
pub fn apply(init: &InitConfig, vs: &nn::VarStore) -> Result<InitRecord> {
    let dir = match ModelSource::for_run(&init.from) {
        Ok(ModelSource::Checkpoint(d)) => d,
        _ => {
            return Err(Error::Invalid(format!(
                "init.from {}: neither a checkpoint directory (with meta.json) nor a run directory with checkpoints; import published weights with `msclip-train import` first",
                init.from.display()
            )))
        }
    };
    let meta = checkpoint::verify(&dir)?;
    let path = dir.join("model.safetensors");
    let source: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
        .map_err(|e| Error::Invalid(format!("{}: not a readable safetensors file: {e}", path.display())))?
        .into_iter()
        .collect();
    checkpoint::check_finite(&path.display().to_string(), source.iter().map(|(n, t)| (n.as_str(), t)))?;
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let shapes = |m: &BTreeMap<String, Tensor>| m.iter().map(|(n, t)| (n.clone(), t.size())).collect::<BTreeMap<_, _>>();
    let origin = format!("{} (model {})", dir.display(), meta.model.name);
    let pairs = select::init_pairs(&init.select, &shapes(&vars), &shapes(&source), &origin)?;
    tch::no_grad(|| {
        for (t, s) in &pairs {
            vars[t].shallow_clone().copy_(&source[s]);
        }
    });
    Ok(InitRecord {
        from: dir,
        source_sha256: meta.sha256.get("model.safetensors").cloned().unwrap_or_default(),
        source_model: meta.model.name.clone(),
        select: init.select.clone(),
        tensors: pairs,
    })
}

/// Stops gradients for the trainable parameters the `freeze` selectors pick (buffers are
/// left alone); returns their names. Call before the optimizer is built: it takes only
/// parameters that require a gradient.
pub fn freeze(selectors: &[String], vs: &nn::VarStore) -> Result<BTreeSet<String>> {
    if selectors.is_empty() {
        return Ok(BTreeSet::new());
    }
    let vars = vs.variables();
    let trainable: BTreeSet<String> = vars.iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n.clone()).collect();
    let picked = select::select(selectors, &trainable, "freeze")?;
    for name in &picked {
        let _ = vars[name].shallow_clone().set_requires_grad(false);
    }
    Ok(picked)
}
