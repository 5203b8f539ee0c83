//! The CI regression check on embedding-gap metrics (fixtures/check, fixtures/gap-baseline.json).

use std::process::Command;

fn check(baseline: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_msclip-analyze"))
        .args(["check", "--checkpoint", "fixtures/check/ckpt", "--manifest", "fixtures/check/data/manifest.tsv", "--baseline", baseline])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn fixture_passes_and_a_perturbed_metric_fails() {
    let (code, out, err) = check("fixtures/gap-baseline.json");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("gap.centroid_gap") && out.contains("check passed"), "{out}");
    assert!(out.lines().filter(|l| l.ends_with(" ok")).count() >= 20, "{out}");

    // Perturb one baseline value beyond its tolerance: exit 1, the metric is named.
    let text = std::fs::read_to_string(format!("{}/fixtures/gap-baseline.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let g = v["values"]["gap.centroid_gap"].as_f64().unwrap();
    v["values"]["gap.centroid_gap"] = serde_json::json!(g + 0.01);
    let p = std::env::temp_dir().join(format!("msclip-baseline-{}.json", std::process::id()));
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    let (code, out, _) = check(p.to_str().unwrap());
    assert_eq!(code, 1, "{out}");
    let line = out.lines().find(|l| l.starts_with("gap.centroid_gap")).unwrap();
    assert!(line.ends_with("DRIFT"), "{line}");
    assert!(out.contains("check FAILED"));

    // A metric the baseline expects but the run lacks is a failure too.
    v["values"]["gap.centroid_gap"] = serde_json::json!(g);
    v["values"]["nmi.slot99"] = serde_json::json!(0.5);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    let (code, out, _) = check(p.to_str().unwrap());
    assert_eq!(code, 1);
    assert!(out.contains("nmi.slot99") && out.contains("MISSING"));

    // Bad input: exit 2 naming the file.
    std::fs::write(&p, "{not json").unwrap();
    let (code, _, err) = check(p.to_str().unwrap());
    assert_eq!(code, 2);
    assert!(err.contains(p.to_str().unwrap()), "{err}");
}
