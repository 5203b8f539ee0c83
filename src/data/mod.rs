//! Data: the built-in synthetic world and image preprocessing.

pub mod image;
pub mod synth;
