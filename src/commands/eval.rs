//! `eval`: the training-time held-out evaluation ([`crate::eval::evaluate`]) as one report.

use serde::Serialize;

use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::eval::{evaluate, EvalResult};

/// One evaluation row.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOutput {
    /// The model's name.
    pub model: String,
    /// Its weights' identity.
    pub weights: String,
    /// The scores.
    pub eval: EvalResult,
}

/// Zero-shot over the 48 synthetic classes, R@1 both ways and the gap on `items` held-out
/// items of the world with `seed`; a non-finite metric is an error.
pub fn run(model: &LoadedModel, items: usize, seed: u64) -> Result<EvalOutput> {
    let eval = evaluate(&model.model, seed, items)?;
    eval.check_finite()?;
    Ok(EvalOutput { model: model.model.config.name.clone(), weights: model.weights_id.clone(), eval })
}
