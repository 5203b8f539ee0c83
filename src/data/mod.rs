//! Data: the built-in synthetic world and image preprocessing.

pub mod fetch;
pub mod idx;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod pairs;
pub mod shards;
pub mod synth;
pub mod synthetic_set;
pub mod tensors;
