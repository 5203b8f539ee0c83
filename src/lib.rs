//! msclip: train, load and explain MS-CLIP (modality-shared CLIP) models on libtorch.
//!
//! # A short tour
//!
//! Load a checkpoint (trained here, or imported from OpenAI/OpenCLIP/official MS-CLIP weights
//! with `msclip-train import`), encode an image and a caption, record attention on the one
//! forward path, compute the modality-gap metrics of saved embeddings, and run a figure
//! recipe:
//!
//! ```no_run
//! use msclip::checkpoint::ModelSource;
//! use msclip::commands::{attention, figures, gap};
//! use msclip::model::{ActivationCache, Capture, Modality, Site};
//! use msclip::tokenizer::Tokenizer;
//!
//! // 1. Load: a checkpoint directory (hashes verified, config validated, tensors finite).
//! let loaded = ModelSource::Checkpoint("fixtures/check/ckpt".into()).load(0)?;
//! let model = &loaded.model;
//!
//! // 2. Encode: L2-normalised embeddings of a synthetic scene and its caption.
//! let size = model.config.vision.image_size as u32;
//! let scene = msclip::data::synth::scene(7, 0, size);
//! let pre = &model.config.preprocess;
//! let image = msclip::data::image::to_tensor(&scene.pixels, size, size, pre.mean, pre.std).unsqueeze(0);
//! let tokens = Tokenizer::new(model.config.text.context_length as usize).tokenize_batch(&[&scene.caption]);
//! let out = tch::no_grad(|| model.forward(&image, &tokens, &Capture::attention(), false))?;
//! println!("cosine {:.3}", out.image.matmul(&out.text.tr()).double_value(&[0, 0]));
//!
//! // 3. Capture: per-head attention probabilities [B, H, L, L], keyed by (tower, slot, site).
//! let last = *model.config.vision_attention_slots().last().unwrap();
//! let probs = out.cache.require(Modality::Vision, last, Site::AttnProbs)?;
//! println!("vision slot {last}: {:?}", probs.size());
//! let mut cache = ActivationCache::new();
//! let _ = model.encode_text_with(&tokens, &Capture::sites(&[Site::Resid]), &mut cache)?;
//!
//! // The same as a command, with its report and files: maps, rollout, relevancy.
//! let report = attention::run(&loaded, &attention::AttentionOptions::default())?;
//! report.write(std::path::Path::new("out/attention"))?;
//!
//! // 4. Gap metrics of saved embeddings (`msclip-analyze embed` writes them), streamed.
//! let g = gap::run_npy("out/image.npy".as_ref(), "out/text.npy".as_ref(), gap::DEFAULT_UNIFORMITY_MAX)?;
//! println!("centroid gap {:.4}, RMG {:.4}", g.gap.centroid_gap, g.gap.rmg);
//!
//! // 5. Run one recipe of analyses/ into a folder.
//! let recipe = figures::Recipe::read("analyses/nmi-by-layer.toml".as_ref())?;
//! figures::run_one(&recipe, "out/nmi-by-layer".as_ref())?;
//! # Ok::<(), msclip::Error>(())
//! ```
//!
//! # Layout
//!
//! `model` (configs, blocks, towers, sharing, [`model::Capture`]) ← `data`, `checkpoint`,
//! `tokenizer` ← `analysis` (pure functions from captured tensors to tables) and `eval`
//! (model + data → embeddings) ← `train`, `commands` (each command a function with a typed
//! report) ← `src/bin/` (argument parsing only). `plot` renders tables and never touches a
//! model. `tests/layering.rs` checks these rules on the sources.
#![warn(missing_docs)]

pub mod analysis;
pub mod app;
pub mod autocast;
pub mod causal;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod io;
pub mod limits;
pub mod model;
pub mod plot;
pub mod profile;
pub mod rng;
mod shim;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// The tool version recorded in every output's provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
