//! The safe `torch.save` reader on fixtures written by PyTorch (fixtures/gen_torch_checkpoints.py).

use std::path::Path;

use msclip::checkpoint::torch_zip::read;
use tch::Kind;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torch").join(name)
}

fn check_against(expected: &serde_json::Value, got: &[(String, tch::Tensor)]) {
    let exp = expected.as_object().unwrap();
    assert_eq!(got.len(), exp.len());
    for (name, t) in got {
        let e = &exp[name];
        let shape: Vec<i64> = e["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(t.size(), shape, "{name}");
        let kind = match e["dtype"].as_str().unwrap() {
            "float32" => Kind::Float,
            "float16" => Kind::Half,
            "bfloat16" => Kind::BFloat16,
            "int64" => Kind::Int64,
            other => panic!("{other}"),
        };
        assert_eq!(t.kind(), kind, "{name}");
        let want: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let have = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1))
            .unwrap_or_else(|_| vec![t.to_kind(Kind::Double).double_value(&[])]);
        // The stored values are f32 or narrower: equal as f32 means bit-exact (JSON's decimal
        // round trip only perturbs the f64 below f32 precision). int64 compares exactly.
        if kind == Kind::Int64 {
            assert_eq!(have, want, "{name}");
        } else {
            let h: Vec<f32> = have.iter().map(|&v| v as f32).collect();
            let w: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_eq!(h, w, "{name}: values");
        }
    }
}

#[test]
fn reads_views_offsets_dtypes_and_parameters() {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap();
    let got = read(&fixture("plain.pth")).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a.weight", "a.bias", "a.weight_t", "slice", "big", "half", "bf16", "idx", "scalar", "param"]);
    check_against(&expected["plain"], &got);
}

#[test]
fn unwraps_state_dict_and_module_prefix() {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("expected.json")).unwrap()).unwrap();
    let got = read(&fixture("wrapped.pth")).unwrap();
    check_against(&expected["wrapped"], &got);
}

#[test]
fn refuses_foreign_globals_and_non_checkpoints() {
    let err = read(&fixture("evil.pth")).unwrap_err().to_string();
    assert!(err.contains("refusing to load global `posix.system`"), "{err}");
    assert!(err.contains("evil.pth"), "{err}");
    let err = read(&fixture("not-a-checkpoint.pth")).unwrap_err().to_string();
    assert!(err.contains("not a PyTorch zip checkpoint"), "{err}");
    // A truncated copy of a real checkpoint is an error, not a panic.
    let bytes = std::fs::read(fixture("plain.pth")).unwrap();
    let p = std::env::temp_dir().join(format!("msclip-trunc-{}.pth", std::process::id()));
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(read(&p).is_err());
}

#[test]
fn openclip_state_dict_imports_with_matching_embeddings() {
    use msclip::checkpoint::import::import_into;
    use msclip::model::{ModelConfig, MsClip};
    let cfg = ModelConfig::from_toml_file(&fixture("openclip-micro.toml")).unwrap();
    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    import_into(read(&fixture("openclip-micro.pth")).unwrap(), &cfg, &vs, "openclip-micro.pth").unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("openclip-micro.json")).unwrap()).unwrap();
    let floats = |k: &str| -> Vec<f32> { r[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect() };
    let images = tch::Tensor::from_slice(&floats("images")).view([2, 3, 32, 32]);
    let toks: Vec<i64> =
        r["tokens"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap())).collect();
    let tokens = tch::Tensor::from_slice(&toks).view([2, 8]);
    let (ie, te) = tch::no_grad(|| (m.encode_image(&images).unwrap(), m.encode_text(&tokens).unwrap()));
    let want_i = tch::Tensor::from_slice(&floats("image_embeds")).view([2, 16]);
    let want_t = tch::Tensor::from_slice(&floats("text_embeds")).view([2, 16]);
    let di = (&ie - &want_i).abs().max().double_value(&[]);
    let dt = (&te - &want_t).abs().max().double_value(&[]);
    assert!(di <= 1e-5 && dt <= 1e-5, "image {di:.2e}, text {dt:.2e}");
    assert!((m.logit_scale.double_value(&[]) - r["logit_scale"].as_f64().unwrap()).abs() < 1e-6);
    // Per-head attention of every layer (vision 0, 1 then text 0, 1) against OpenCLIP's.
    use msclip::model::{ActivationCache, Capture, Modality, Site};
    let mut cache = ActivationCache::new();
    tch::no_grad(|| {
        let _ = m.encode_image_with(&images, &Capture::attention(), &mut cache, false).unwrap();
        let _ = m.encode_text_with(&tokens, &Capture::attention(), &mut cache).unwrap();
    });
    let att = r["attention"].as_array().unwrap();
    let shapes = r["attention_shapes"].as_array().unwrap();
    for (i, (modality, slot)) in
        [(Modality::Vision, 0), (Modality::Vision, 1), (Modality::Text, 0), (Modality::Text, 1)].into_iter().enumerate()
    {
        let shape: Vec<i64> = shapes[i].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let want: Vec<f32> = att[i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = cache.get(modality, slot, Site::AttnProbs).unwrap();
        assert_eq!(got.size(), shape);
        let d = (got - tch::Tensor::from_slice(&want).view(shape.as_slice())).abs().max().double_value(&[]);
        assert!(d <= 1e-5, "{modality:?} slot {slot}: attention differs by {d:.2e}");
    }
    // OpenCLIP's safetensors of the same weights gives the same model.
    let (vs3, m3) = MsClip::build_for_loading(&cfg, tch::Device::Cpu);
    import_into(tch::Tensor::read_safetensors(fixture("openclip-micro.safetensors")).unwrap(), &cfg, &vs3, "openclip-micro.safetensors")
        .unwrap();
    let ie3 = tch::no_grad(|| m3.encode_image(&images).unwrap());
    assert!(ie3.equal(&ie));
    // The same file into the wrong architecture names the offending tensors.
    let other = ModelConfig::preset("tiny-clip").unwrap();
    let (vs2, _) = MsClip::build(&other, tch::Device::Cpu, 0);
    let err = import_into(read(&fixture("openclip-micro.pth")).unwrap(), &other, &vs2, "openclip-micro.pth").unwrap_err().to_string();
    assert!(err.contains("visual.transformer.resblocks.0.attn.in_proj_weight: expected [384, 128], found [96, 32]"), "{err}");
    assert!(err.contains("does not fit model tiny-clip ("), "{err}");
}

#[test]
fn official_msclip_s_layout_lands_where_it_belongs() {
    use msclip::checkpoint::import::{import_into, key_map};
    use msclip::model::{ModelConfig, MsClip};
    let cfg = ModelConfig::from_toml_file(&fixture("official-micro.toml")).unwrap();
    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    let src = read(&fixture("official-micro.pth")).unwrap();
    assert!(!src.iter().any(|(k, _)| k == "visual.conv1.weight"));
    let by_name: std::collections::HashMap<String, tch::Tensor> = src.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    import_into(src, &cfg, &vs, "official-micro.pth").unwrap();
    let vars = vs.variables();
    let (map, dups) = key_map(&cfg);
    assert_eq!(map.len(), vars.len(), "every variable (parameters and BN buffers) has one source key");
    for (key, ours) in &map {
        assert!(vars[ours].equal(&by_name[key]), "{key} → {ours}");
    }
    // The text-side duplicates of shared sites (5 slots × 8 tensors) equal the vision ones.
    assert_eq!(dups.len(), 5 * 8);
    for (t, v) in &dups {
        assert!(by_name[t].equal(&by_name[v]));
    }
    assert!(vars["visual.parallel.adapters.0.t2b_dw.bn.running_var"]
        .equal(&by_name["visual.transformer.parallel_lateral_adapter.0.top2bottom_dw_conv.bn.running_var"]));
    // It runs.
    let e = tch::no_grad(|| m.encode_image(&tch::Tensor::zeros([1, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu))).unwrap());
    assert_eq!(e.size(), [1, 32]);
    // A shared duplicate that differs is reported.
    let mut bad = read(&fixture("official-micro.pth")).unwrap();
    for (k, t) in bad.iter_mut() {
        if k == "transformer.resblocks.3.mlp.c_fc.bias" {
            *t = &*t + 1.0;
        }
    }
    let err = import_into(bad, &cfg, &vs, "x.pth").unwrap_err().to_string();
    assert!(
        err.contains("transformer.resblocks.3.mlp.c_fc.bias differs from the shared visual.transformer.resblocks.3.mlp.c_fc.bias"),
        "{err}"
    );
}

#[test]
fn official_msclip_s_b32_keys_and_shapes_are_covered() {
    use msclip::checkpoint::import::key_map;
    use msclip::model::{ModelConfig, MsClip};
    let listing: std::collections::BTreeMap<String, Vec<i64>> =
        serde_json::from_slice(&std::fs::read(fixture("official-msclip-s-b32-keys.json")).unwrap()).unwrap();
    let cfg = ModelConfig::preset("msclip-s-b32").unwrap();
    let (vs, _) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    let vars = vs.variables();
    let (map, dups) = key_map(&cfg);
    let mut covered: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (key, ours) in &map {
        assert_eq!(listing.get(key), Some(&vars[ours].size()), "{key} → {ours}");
        covered.insert(key.clone());
    }
    for (t, v) in &dups {
        assert_eq!(listing[t], listing[v]);
        covered.insert(t.clone());
    }
    let rest: Vec<&String> = listing.keys().filter(|k| !covered.contains(*k) && !k.ends_with("num_batches_tracked")).collect();
    assert!(rest.is_empty(), "official keys with no destination: {rest:?}");
    assert_eq!(listing.len(), 521);
}

#[test]
fn import_export_cli_round_trip() {
    let bin = env!("CARGO_BIN_EXE_msclip-train");
    let dir = std::env::temp_dir().join(format!("msclip-imp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
    };
    let pth = fixture("openclip-micro.pth");
    let toml = fixture("openclip-micro.toml");
    let ck = dir.join("ck");
    let (code, out) =
        run(&["import", "--from", pth.to_str().unwrap(), "--model-config", toml.to_str().unwrap(), "--out", ck.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let exp = dir.join("exp.safetensors");
    let (code, out) = run(&["export", "--checkpoint", ck.to_str().unwrap(), "--out", exp.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Exported names and values equal the original OpenCLIP state dict.
    let orig: std::collections::BTreeMap<String, tch::Tensor> = read(&pth).unwrap().into_iter().collect();
    let back: std::collections::BTreeMap<String, tch::Tensor> = tch::Tensor::read_safetensors(&exp).unwrap().into_iter().collect();
    assert_eq!(orig.keys().collect::<Vec<_>>(), back.keys().collect::<Vec<_>>());
    for (k, t) in &orig {
        assert!(t.equal(&back[k]), "{k}");
    }
    // Re-importing the safetensors export works too; `auto` finds no preset for this micro model.
    let (code, out) = run(&[
        "import",
        "--from",
        exp.to_str().unwrap(),
        "--model-config",
        toml.to_str().unwrap(),
        "--out",
        dir.join("ck2").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["import", "--from", pth.to_str().unwrap(), "--out", dir.join("ck3").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("no preset matches"), "{out}");
    let (code, out) = run(&[
        "import",
        "--from",
        fixture("evil.pth").to_str().unwrap(),
        "--model",
        "tiny-clip",
        "--out",
        dir.join("ck4").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(out.contains("posix.system"), "{out}");
}

#[test]
fn openai_torchscript_archive_imports_with_matching_embeddings() {
    use msclip::checkpoint::import::import_into;
    use msclip::model::{ModelConfig, MsClip};
    let src = read(&fixture("openai-micro-jit.pt")).unwrap();
    // Tensors come out of the module tree by attribute path; OpenAI's fp16 weights stay fp16 here.
    let conv = src.iter().find(|(k, _)| k == "visual.conv1.weight").unwrap();
    assert_eq!(conv.1.kind(), tch::Kind::Half);
    let cfg = ModelConfig::from_toml_file(&fixture("openai-micro.toml")).unwrap();
    let (vs, m) = MsClip::build(&cfg, tch::Device::Cpu, 0);
    import_into(src, &cfg, &vs, "openai-micro-jit.pt").unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("openai-micro-jit.json")).unwrap()).unwrap();
    let floats = |k: &str| -> Vec<f32> { r[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect() };
    let toks: Vec<i64> =
        r["tokens"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap())).collect();
    let (ie, te) = tch::no_grad(|| {
        (
            m.encode_image(&tch::Tensor::from_slice(&floats("images")).view([2, 3, 32, 32])).unwrap(),
            m.encode_text(&tch::Tensor::from_slice(&toks).view([2, 8])).unwrap(),
        )
    });
    let di = (&ie - tch::Tensor::from_slice(&floats("image_embeds")).view([2, 16])).abs().max().double_value(&[]);
    let dt = (&te - tch::Tensor::from_slice(&floats("text_embeds")).view([2, 16])).abs().max().double_value(&[]);
    assert!(di <= 1e-5 && dt <= 1e-5, "image {di:.2e}, text {dt:.2e}");
}
