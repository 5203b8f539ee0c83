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

/// What [`run`] did: a new baseline written, or a comparison.
pub enum CheckOutcome {
    /// `--update`: the baseline was (re)written.
    Updated,
    /// The comparison with the baseline.
    Compared(crate::analysis::check::CheckReport),
}

/// `check`: reads (and, unless updating, validates) the baseline before the model runs, then
/// computes the current values; with `update` writes the new baseline atomically (keeping
/// its tolerances), else compares.
pub fn run(model: &LoadedModel, data: &DataOptions, opts: &NmiOptions, baseline: &std::path::Path, update: bool) -> Result<CheckOutcome> {
    use crate::analysis::check::{compare, Baseline};
    use crate::error::Error;
    let existing = if update {
        match std::fs::read_to_string(baseline) {
            Ok(t) => Some(
                serde_json::from_str::<Baseline>(&t).map_err(|e| Error::Parse { path: baseline.to_path_buf(), message: e.to_string() })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(baseline, e)),
        }
    } else {
        Some(Baseline::read(baseline)?)
    };
    let (values, provenance) = current(model, data, opts)?;
    match existing {
        Some(old) if !update => Ok(CheckOutcome::Compared(compare(&values, &old)?)),
        old => {
            let b = Baseline::updated(old, values, provenance);
            let text = serde_json::to_string_pretty(&b).map_err(|e| Error::Invalid(format!("{}: {e}", baseline.display())))?;
            crate::io::write_atomic(baseline, text.as_bytes())?;
            Ok(CheckOutcome::Updated)
        }
    }
}
