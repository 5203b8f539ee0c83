//! Data: the built-in synthetic world and image preprocessing.

pub mod idx;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod shards;
pub mod synthetic_set;
pub mod synth;
