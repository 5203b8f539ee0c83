//! `check`: the CI regression gate. The model's gap metrics and layer-wise NMI (computed in
//! fp32 with a fixed order and batch size) against a baseline ([`crate::analysis::check`]).

use std::collections::BTreeMap;

use super::nmi::{self, NmiOptions};
use super::DataOptions;
use crate::analysis::check::metric_values;
use crate::checkpoint::LoadedModel;
use crate::error::Result;

/// The current values of every checked metric and the provenance to store with a baseline.
pub fn current(model: &LoadedModel, data: &DataOptions, opts: &NmiOptions) -> Result<(BTreeMap<String, f64>, serde_json::Value)> {
    let out = nmi::run(model, data, opts)?;
    let mut provenance = out.provenance.clone();
    // The baseline's provenance is the model's and data's, without the NMI note of `nmi`.
    provenance.notes.retain(|n| !n.starts_with("NMI:"));
    Ok((metric_values(&out.joint_gap, &out.layers), serde_json::to_value(provenance).expect("provenance serialises")))
}
