//! The direct-effect decomposition in Gandelsman et al.'s convention (`prs_hook.py`,
//! `--convention reference`) against values computed the reference's way in float64 by
//! `fixtures/gen_prs_reference.py` for the OpenCLIP micro model (open_clip 3.3.0, torch 2.11.0):
//! every head's term of both layers and every MLP-like term (ln_pre's output, the two MLPs).

use std::path::Path;

use msclip::causal::decompose::{image_as, Convention, Term};
use msclip::checkpoint::import::import_into;
use msclip::model::{ModelConfig, MsClip};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch").join(name)
}

#[test]
fn reference_convention_matches_prs_hook_term_by_term() {
    let cfg = ModelConfig::from_toml_file(&fixture("openclip-micro.toml")).unwrap();
    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    import_into(msclip::checkpoint::torch_zip::read(&fixture("openclip-micro.pth")).unwrap(), &cfg, &vs, "openclip-micro.pth").unwrap();
    let parity: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("openclip-micro.json")).unwrap()).unwrap();
    let images: Vec<f32> = parity["images"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let images = tch::Tensor::from_slice(&images).view([2, 3, 32, 32]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("prs-reference.json")).unwrap()).unwrap();
    let floats = |k: &str| -> Vec<f64> { r[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let per_head = floats("per_head"); // [B=2, L=2, H=2, E=16]
    let mlps = floats("mlps"); // [B=2, L+1=3, E=16]

    let d = image_as(&m, &images, Convention::Reference).unwrap();
    let mut worst = 0f64;
    let mut check = |t: Term, want: &dyn Fn(usize, usize) -> f64| {
        let got = d.term(t).unwrap_or_else(|| panic!("{t:?}"));
        for b in 0..2 {
            for e in 0..16 {
                let g = got.double_value(&[b as i64, e as i64]);
                let w = want(b, e);
                worst = worst.max((g - w).abs());
                assert!((g - w).abs() <= 2e-6, "{t:?} item {b} dim {e}: {g} vs reference {w}");
            }
        }
    };
    for slot in 0..2 {
        for head in 0..2 {
            check(Term::Head { slot, head }, &|b, e| per_head[((b * 2 + slot) * 2 + head) * 16 + e]);
        }
        check(Term::Mlp { slot }, &|b, e| mlps[(b * 3 + slot + 1) * 16 + e]);
        check(Term::AttnBias { slot }, &|_, _| 0.0);
    }
    check(Term::Embed, &|b, e| mlps[(b * 3) * 16 + e]);
    check(Term::LnBias, &|_, _| 0.0);
    eprintln!("largest difference to the reference: {worst:.2e}");
    // The terms sum to the normalised embedding, and the convention matters: the default
    // (each term centred by its own mean, biases as terms) gives other head terms.
    assert!(d.sum_error() < 1e-6, "{}", d.sum_error());
    let sep = image_as(&m, &images, Convention::Separate).unwrap();
    assert!(sep.sum_error() < 1e-6);
    let h = Term::Head { slot: 1, head: 0 };
    let norm = sep.embedding.norm_scalaropt_dim(2.0, [-1], true);
    let diff = (d.term(h).unwrap() - sep.term(h).unwrap() / &norm).abs().max().double_value(&[]);
    assert!(diff > 1e-3, "the two conventions agree on {h:?} ({diff:.2e}): the test cannot tell them apart");
}
