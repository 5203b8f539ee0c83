//! msclip: train, load and explain MS-CLIP (modality-shared CLIP) models on libtorch.

pub mod analysis;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod error;
pub mod eval;
pub mod io;
pub mod model;
pub mod plot;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

/// The tool version recorded in every output's provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
