//! The CI regression gate on embedding-gap metrics: current metric values against a baseline
//! file's values and tolerances. Pure: values in, a table out.
//!
//! A metric passes when |current − baseline| ≤ its tolerance (`tolerances.{metric}`, else the
//! default `tolerance`); a metric of the baseline that the run lacks fails (`missing`); a
//! non-finite current value fails; a metric the run has but the baseline lacks is listed as
//! `extra` and does not fail (write a new baseline with `--update` to track it).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::analysis::gap::GapReport;
use crate::analysis::nmi::LayerNmi;
use crate::error::{Error, Result};

/// A baseline file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Baseline {
    /// Default absolute tolerance.
    pub tolerance: f64,
    /// Per-metric tolerances overriding the default.
    #[serde(default)]
    pub tolerances: BTreeMap<String, f64>,
    /// Metric values, by name.
    pub values: BTreeMap<String, f64>,
    /// Where the values came from.
    #[serde(default)]
    pub provenance: Option<serde_json::Value>,
}

impl Baseline {
    /// Reads and validates a baseline: at least one value, finite non-negative tolerances.
    pub fn read(path: &Path) -> Result<Baseline> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        b.validate().map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(b)
    }

    /// Errors on an empty baseline, negative or non-finite tolerances, non-finite values.
    pub fn validate(&self) -> Result<()> {
        if self.values.is_empty() {
            return Err(Error::Invalid("the baseline holds no values; write one with --update".into()));
        }
        for (k, t) in std::iter::once(("tolerance", &self.tolerance)).chain(self.tolerances.iter().map(|(k, t)| (k.as_str(), t))) {
            if !(t.is_finite() && *t >= 0.0) {
                return Err(Error::config(format!("tolerances.{k}"), t, "must be finite and non-negative"));
            }
        }
        if let Some((k, v)) = self.values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::config(format!("values.{k}"), v, "must be finite"));
        }
        if let Some(k) = self.tolerances.keys().find(|k| !self.values.contains_key(*k)) {
            let known: Vec<&str> = self.values.keys().map(|s| s.as_str()).collect();
            return Err(Error::config(
                format!("tolerances.{k}"),
                "(set)",
                format!("no metric of that name in values (a misspelt key would silently disable its check); known: {}", known.join(", ")),
            ));
        }
        Ok(())
    }

    /// The baseline with `values` replacing the old ones (tolerances kept; default 1e-4).
    pub fn updated(old: Option<Baseline>, values: BTreeMap<String, f64>, provenance: serde_json::Value) -> Baseline {
        let (tolerance, tolerances) = old.map(|b| (b.tolerance, b.tolerances)).unwrap_or((1e-4, BTreeMap::new()));
        Baseline { tolerance, tolerances, values, provenance: Some(provenance) }
    }
}

/// The metrics `check` compares: every gap metric (`gap.{name}`, counts excluded) and the NMI
/// of each slot (`nmi.slot{SS}`, the last row the joint space).
pub fn metric_values(gap: &GapReport, nmi: &[LayerNmi]) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    for (k, v) in serde_json::to_value(gap).expect("report serialises").as_object().expect("a struct") {
        if let Some(x) = v.as_f64() {
            if !matches!(k.as_str(), "n" | "dim" | "uniformity_n") {
                values.insert(format!("gap.{k}"), x);
            }
        }
    }
    for r in nmi {
        values.insert(format!("nmi.slot{:02}", r.slot), r.nmi);
    }
    values
}

/// How one metric compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Within tolerance.
    Ok,
    /// Beyond tolerance (or not finite): fails.
    Drift,
    /// In the baseline, not in the run: fails.
    Missing,
    /// In the run, not in the baseline: listed, does not fail.
    Extra,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    /// Metric name (`gap.centroid_gap`, `nmi.slot03`, …).
    pub metric: String,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// This run's value.
    pub current: Option<f64>,
    /// |current − baseline|.
    pub delta: Option<f64>,
    /// The tolerance applied.
    pub tolerance: Option<f64>,
    /// The verdict.
    pub status: Status,
}

/// The comparison of a run with a baseline.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// One row per metric: the baseline's, then extras.
    pub rows: Vec<CheckRow>,
    /// No drift and nothing missing.
    pub passed: bool,
}

/// Compares `current` values with `baseline` (see the module docs for the rules).
pub fn compare(current: &BTreeMap<String, f64>, baseline: &Baseline) -> Result<CheckReport> {
    baseline.validate()?;
    let mut rows = vec![];
    for (k, want) in &baseline.values {
        let tol = *baseline.tolerances.get(k).unwrap_or(&baseline.tolerance);
        let row = match current.get(k) {
            Some(got) => {
                let d = (got - want).abs();
                CheckRow {
                    metric: k.clone(),
                    baseline: Some(*want),
                    current: Some(*got),
                    delta: Some(d),
                    tolerance: Some(tol),
                    status: if d <= tol { Status::Ok } else { Status::Drift },
                }
            }
            None => CheckRow {
                metric: k.clone(),
                baseline: Some(*want),
                current: None,
                delta: None,
                tolerance: Some(tol),
                status: Status::Missing,
            },
        };
        rows.push(row);
    }
    for (k, got) in current.iter().filter(|(k, _)| !baseline.values.contains_key(*k)) {
        rows.push(CheckRow { metric: k.clone(), baseline: None, current: Some(*got), delta: None, tolerance: None, status: Status::Extra });
    }
    let passed = rows.iter().all(|r| matches!(r.status, Status::Ok | Status::Extra));
    Ok(CheckReport { rows, passed })
}

impl CheckReport {
    /// The printed table, one line per metric, then the verdict.
    pub fn table(&self) -> String {
        let mut s = format!("{:<28} {:>14} {:>14} {:>10} {:>10}  status\n", "metric", "baseline", "current", "|Δ|", "tol");
        let num = |v: Option<f64>, w: usize, prec: usize| v.map_or(format!("{:>w$}", "-"), |x| format!("{x:>w$.prec$}"));
        for r in &self.rows {
            let status = match r.status {
                Status::Ok => "ok",
                Status::Drift => "DRIFT",
                Status::Missing => "MISSING",
                Status::Extra => "extra (not in the baseline)",
            };
            let d = r.delta.map_or(format!("{:>10}", "-"), |x| format!("{x:>10.2e}"));
            let t = r.tolerance.map_or(format!("{:>10}", "-"), |x| format!("{x:>10.1e}"));
            s.push_str(&format!("{:<28} {} {} {d} {t}  {status}\n", r.metric, num(r.baseline, 14, 6), num(r.current, 14, 6)));
        }
        s.push_str(if self.passed { "check passed\n" } else { "check FAILED: metrics drifted beyond tolerance\n" });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(values: &[(&str, f64)], tolerances: &[(&str, f64)]) -> Baseline {
        Baseline {
            tolerance: 1e-3,
            tolerances: tolerances.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            provenance: None,
        }
    }

    fn cur(values: &[(&str, f64)]) -> BTreeMap<String, f64> {
        values.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn pass_drift_missing_extra_and_per_metric_tolerance() {
        let b = base(&[("gap.a", 0.5), ("gap.b", 1.0), ("nmi.slot01", 0.9)], &[("gap.b", 0.1)]);
        // Within tolerance everywhere (gap.b's own tolerance admits 0.05).
        let r = compare(&cur(&[("gap.a", 0.5005), ("gap.b", 1.05), ("nmi.slot01", 0.9)]), &b).unwrap();
        assert!(r.passed, "{}", r.table());
        assert!(r.table().ends_with("check passed\n"));
        // Drift: gap.a off by 0.002 > 1e-3.
        let r = compare(&cur(&[("gap.a", 0.502), ("gap.b", 1.0), ("nmi.slot01", 0.9)]), &b).unwrap();
        assert!(!r.passed);
        assert_eq!(r.rows.iter().find(|x| x.metric == "gap.a").unwrap().status, Status::Drift);
        assert!(r.table().contains("DRIFT") && r.table().contains("check FAILED"));
        // Per-metric tolerance: 0.15 off gap.b fails its 0.1.
        let r = compare(&cur(&[("gap.a", 0.5), ("gap.b", 1.15), ("nmi.slot01", 0.9)]), &b).unwrap();
        assert_eq!(r.rows.iter().find(|x| x.metric == "gap.b").unwrap().status, Status::Drift);
        // Missing metric fails; an extra one is listed and passes.
        let r = compare(&cur(&[("gap.a", 0.5), ("gap.b", 1.0)]), &b).unwrap();
        assert!(!r.passed);
        assert_eq!(r.rows.iter().find(|x| x.metric == "nmi.slot01").unwrap().status, Status::Missing);
        let r = compare(&cur(&[("gap.a", 0.5), ("gap.b", 1.0), ("nmi.slot01", 0.9), ("nmi.slot02", 0.1)]), &b).unwrap();
        assert!(r.passed);
        assert_eq!(r.rows.last().unwrap().status, Status::Extra);
        // A NaN current value drifts.
        let r = compare(&cur(&[("gap.a", f64::NAN), ("gap.b", 1.0), ("nmi.slot01", 0.9)]), &b).unwrap();
        assert!(!r.passed);
        // An empty or ill-formed baseline is an error, never a pass.
        assert!(compare(&cur(&[("gap.a", 0.5)]), &base(&[], &[])).unwrap_err().to_string().contains("no values"));
        assert!(compare(&cur(&[("gap.a", 0.5)]), &base(&[("gap.a", 0.5)], &[("gap.a", -1.0)])).is_err());
    }

    #[test]
    fn metric_values_from_in_memory_embeddings() {
        let x = tch::Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let y = tch::Tensor::from_slice(&[0.0f64, 1.0, 0.0, 1.0, 1.0, 0.0]).view([3, 2]);
        let g = crate::analysis::gap::gap_report(&x, &y, 10).unwrap();
        let v = metric_values(&g, &[LayerNmi { slot: 3, nmi: 0.25, inertia: 1.0 }]);
        assert!((v["gap.centroid_gap"] - 2f64.sqrt() / 3.0).abs() < 1e-12);
        assert_eq!(v["nmi.slot03"], 0.25);
        assert!(!v.contains_key("gap.n") && !v.contains_key("gap.uniformity_n"));
        // The gap report is compared against itself: passes; perturbed: drifts.
        let b = Baseline::updated(None, v.clone(), serde_json::Value::Null);
        assert!(compare(&v, &b).unwrap().passed);
        let mut w = v.clone();
        *w.get_mut("gap.margin").unwrap() += 1e-3;
        assert!(!compare(&w, &b).unwrap().passed);
    }
}
