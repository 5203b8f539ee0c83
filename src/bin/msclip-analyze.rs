//! `msclip-analyze`: thin front-end over the library's analyses.
//! Exit status: 0 ok, 2 bad input (unknown preset, bad config, unreadable file, …).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use msclip::analysis::attention::{image_query_maps, text_maps, HeadMap};
use msclip::data::{image as img, synth};
use msclip::io::{sha256_hex, write_atomic, Provenance};
use msclip::model::{ActivationCache, Capture, Modality, ModelConfig, MsClip, Site};
use msclip::plot::{matrix_png_svg, overlay_grid_png, Matrix, OverlayGrid};
use msclip::tokenizer::Tokenizer;
use msclip::{Error, Result};
use tch::{Device, Tensor};

#[derive(Parser)]
#[command(name = "msclip-analyze", version, about = "Inspect and explain CLIP / MS-CLIP models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArg {
    /// Built-in preset (clip-b32, clip-b16, msclip-b32, msclip-s-b32, msclip-s-b16, tiny-clip, tiny-msclip, tiny-msclip-s).
    #[arg(long, conflicts_with_all = ["config", "checkpoint"])]
    model: Option<String>,
    /// A model config TOML file (any point of the sharing spectrum).
    #[arg(long, conflicts_with = "checkpoint")]
    config: Option<PathBuf>,
    /// A checkpoint directory (RUN/checkpoints/step-NNNNNNNN) with trained weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

/// A model ready to run and the identity of its weights for provenance.
struct Loaded {
    model: MsClip,
    _vs: tch::nn::VarStore,
    weights_id: String,
}

impl ModelArg {
    fn load(&self) -> Result<ModelConfig> {
        match (&self.model, &self.config, &self.checkpoint) {
            (Some(name), _, _) => ModelConfig::preset(name),
            (None, Some(path), _) => ModelConfig::from_toml_file(path),
            (None, None, Some(dir)) => Ok(msclip::checkpoint::verify(dir)?.model),
            (None, None, None) => Err(Error::Invalid("give --model PRESET, --config FILE or --checkpoint DIR".into())),
        }
    }

    /// The model with its weights: a checkpoint's, or a fresh initialisation from `seed`.
    fn build(&self, seed: u64) -> Result<Loaded> {
        if let Some(dir) = &self.checkpoint {
            let (vs, model, meta) = msclip::train::load_checkpoint(dir, Device::Cpu)?;
            let sha = meta.sha256.get("model.safetensors").cloned().unwrap_or_default();
            return Ok(Loaded { model, _vs: vs, weights_id: sha });
        }
        let cfg = self.load()?;
        let (vs, model) = MsClip::build(&cfg, Device::Cpu, seed as i64);
        Ok(Loaded { model, _vs: vs, weights_id: format!("init:seed={seed}") })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Unique parameter counts: total, shared, vision-only, text-only.
    Params {
        #[command(flatten)]
        model: ModelArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a caption (CLIP BPE, SOT/EOT, padded to the context).
    Tokenize {
        text: String,
        #[arg(long, default_value_t = 77)]
        context: usize,
        #[arg(long)]
        json: bool,
    },
    /// Per-head attention maps of both towers for one image and caption.
    Attention(AttentionArgs),
    /// Held-out synthetic evaluation: zero-shot (48 colour × shape classes), retrieval R@1,
    /// modality gap; one table row (or JSON).
    Eval {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long, default_value_t = 1000)]
        items: usize,
        /// Seed of the held-out world (the training seed keeps it disjoint from training items).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AttentionArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Image file; without it a scene of the synthetic world is drawn.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Caption; defaults to the synthetic scene's caption.
    #[arg(long)]
    caption: Option<String>,
    #[arg(long)]
    out: PathBuf,
    /// Seed of the model initialisation and of the synthetic scene.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Slots to draw (default: all attention layers).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Heads to draw (default: all).
    #[arg(long, value_delimiter = ',')]
    heads: Option<Vec<usize>>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params { model, json } => params(&model, json),
        Command::Tokenize { text, context, json } => tokenize(&text, context, json),
        Command::Attention(a) => attention(&a),
        Command::Eval { model, items, seed, json } => eval(&model, items, seed, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn params(model: &ModelArg, json: bool) -> Result<()> {
    let cfg = model.load()?;
    let (vs, _m) = MsClip::build(&cfg, Device::Cpu, 0);
    let c = MsClip::param_count(&vs);
    if json {
        println!("{}", serde_json::to_string(&c).unwrap());
    } else {
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", "model", "total", "shared", "vision_only", "text_only");
        println!("{:<14} {:>14} {:>14} {:>14} {:>14}", cfg.name, c.total, c.shared, c.vision_only, c.text_only);
    }
    Ok(())
}

fn eval(model: &ModelArg, items: usize, seed: u64, json: bool) -> Result<()> {
    if items < 2 {
        return Err(Error::config("--items", items, "need at least 2"));
    }
    let loaded = model.build(seed)?;
    let r = msclip::train::evaluate(&loaded.model, seed, items)?;
    if json {
        let out = serde_json::json!({"model": loaded.model.config.name, "weights": loaded.weights_id, "eval": r});
        println!("{out}");
    } else {
        println!(
            "{:<14} zero-shot top1 {:.3} top5 {:.3} | R@1 i→t {:.3} t→i {:.3} | gap {:.3}",
            loaded.model.config.name, r.zero_shot_top1, r.zero_shot_top5, r.image_to_text_r1, r.text_to_image_r1, r.modality_gap
        );
    }
    Ok(())
}

fn tokenize(text: &str, context: usize, json: bool) -> Result<()> {
    if context < 2 {
        return Err(Error::config("--context", context, "must be at least 2 (SOT and EOT)"));
    }
    let enc = Tokenizer::new(context).tokenize(text);
    if enc.truncated {
        eprintln!("note: caption longer than {context} tokens; truncated with EOT in the last slot");
    }
    if json {
        println!("{}", serde_json::to_string(&enc.ids).unwrap());
    } else {
        println!("{}", enc.ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn select<T: Copy + PartialEq + std::fmt::Display>(wanted: &Option<Vec<T>>, all: &[T], what: &str) -> Result<Vec<T>> {
    match wanted {
        None => Ok(all.to_vec()),
        Some(w) => {
            for x in w {
                if !all.contains(x) {
                    let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
                    return Err(Error::Invalid(format!("{what} {x} out of range; available: {}", list.join(","))));
                }
            }
            Ok(w.clone())
        }
    }
}

fn attention(a: &AttentionArgs) -> Result<()> {
    let cfg = a.model.load()?;
    let size = cfg.vision.image_size as u32;
    let (rgb, default_caption, data_id) = match &a.image {
        Some(path) => {
            let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let im = img::resize_center_crop(&img::load_rgb(path)?, size);
            (im, None, sha256_hex(&raw))
        }
        None => {
            let scene = synth::scene(a.seed, 0, size);
            let im = image::RgbImage::from_raw(size, size, scene.pixels.clone()).expect("scene size");
            (im, Some(scene.caption.clone()), format!("synthetic:seed={}:index=0", a.seed))
        }
    };
    let caption = a.caption.clone().or(default_caption).ok_or_else(|| Error::Invalid("--caption is required with --image".into()))?;
    let tok = Tokenizer::new(cfg.text.context_length as usize);
    let enc = tok.tokenize(&caption);
    if enc.truncated {
        eprintln!("note: caption longer than {} tokens; truncated", cfg.text.context_length);
    }
    let loaded = a.model.build(a.seed)?;
    let model = &loaded.model;
    let pixels = img::to_tensor(rgb.as_raw(), size, size, cfg.preprocess.mean, cfg.preprocess.std).unsqueeze(0);
    let tokens = Tensor::from_slice(&enc.ids).view([1, -1]);
    let vslots = select(&a.layers.as_ref().map(|l| l.iter().copied().filter(|s| cfg.vision_has_block(*s)).collect()), &cfg.vision_attention_slots(), "layer")?;
    let tslots = select(&a.layers, &cfg.text_attention_slots(), "layer")?;
    let heads_all: Vec<usize> = (0..cfg.vision.heads.max(cfg.text.heads) as usize).collect();
    let heads = select(&a.heads, &heads_all, "head")?;

    let mut cache = ActivationCache::new();
    let capture = Capture::attention();
    let (ie, te) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        Ok((model.encode_image_with(&pixels, &capture, &mut cache, false)?, model.encode_text_with(&tokens, &capture, &mut cache)?))
    })?;
    let similarity = ie.matmul(&te.tr()).double_value(&[0, 0]);

    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut prov = Provenance::new(&cfg.name, loaded.weights_id.clone(), data_id, cfg.preprocess.clone(), a.seed);
    if a.model.checkpoint.is_none() {
        prov.notes.push("model weights are a fresh initialisation (no checkpoint given)".into());
    }
    prov.notes.push("attention = post-softmax probabilities per head; image maps are CLS→patch rows".into());

    // Image: CLS → patches, layer × head grid (+ mean column).
    let grid = cfg.grid();
    let mut cells = Vec::new();
    let mut csv = prov.csv_header() + "modality,slot,head,query,key,value\n";
    for &slot in &vslots {
        let probs = cache.require(Modality::Vision, slot, Site::AttnProbs)?;
        let maps = image_query_maps(probs, slot, 0, 0, grid)?;
        let mut row = Vec::new();
        for m in maps.iter().filter(|m| m.head.is_none_or(|h| heads.contains(&h) && h < cfg.vision.heads as usize)) {
            push_csv(&mut csv, "vision", m, 0);
            row.push((m.values.clone(), m.side));
        }
        cells.push(row);
    }
    let mut col_labels: Vec<String> = heads.iter().filter(|&&h| h < cfg.vision.heads as usize).map(|h| format!("head {h}")).collect();
    col_labels.push("mean".into());
    overlay_grid_png(
        &a.out.join("vision_cls_attention.png"),
        &OverlayGrid {
            title: format!("{} — CLS→patch attention, \"{}\"", cfg.name, short(&caption)),
            base: &rgb,
            cells,
            row_labels: vslots.iter().map(|s| format!("slot {s}")).collect(),
            col_labels,
            cell: 96,
            alpha: 0.55,
        },
    )?;

    // Text: token × token per slot (head mean), words from SOT..EOT.
    let labels: Vec<String> = enc.ids[..=enc.eot_position].iter().map(|&i| tok.token_label(i)).collect();
    for &slot in &tslots {
        let probs = cache.require(Modality::Text, slot, Site::AttnProbs)?;
        let maps = text_maps(probs, slot, 0, enc.eot_position as i64)?;
        for m in maps.iter().filter(|m| m.head.is_none_or(|h| heads.contains(&h) && h < cfg.text.heads as usize)) {
            push_csv(&mut csv, "text", m, -1);
        }
        let mean = maps.last().expect("head mean");
        matrix_png_svg(
            &a.out.join(format!("text_attention_slot{slot}")),
            &Matrix { title: format!("{} — text attention, slot {slot} (head mean)", cfg.name), values: &mean.values, side: mean.side, labels: labels.clone() },
        )?;
    }
    write_atomic(&a.out.join("attention.csv"), csv.as_bytes())?;
    let summary = serde_json::json!({
        "provenance": prov,
        "caption": caption,
        "token_ids": enc.ids,
        "eot_position": enc.eot_position,
        "words": enc.words,
        "similarity": similarity,
        "vision_slots": vslots,
        "text_slots": tslots,
        "grid": grid,
    });
    write_atomic(&a.out.join("attention.json"), serde_json::to_string_pretty(&summary).unwrap().as_bytes())?;
    println!("wrote {} (image–caption cosine {similarity:.4})", a.out.display());
    Ok(())
}

fn push_csv(csv: &mut String, modality: &str, m: &HeadMap, query: i64) {
    let head = m.head.map(|h| h.to_string()).unwrap_or_else(|| "mean".into());
    for (i, v) in m.values.iter().enumerate() {
        // Image rows: key = patch index (row-major); text rows: query,key inside SOT..EOT.
        let (q, k) = if query >= 0 { (query as usize, i) } else { (i / m.side, i % m.side) };
        csv.push_str(&format!("{modality},{},{head},{q},{k},{v:.6e}\n", m.slot));
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 48 { format!("{}…", s.chars().take(47).collect::<String>()) } else { s.to_string() }
}
