//! The MS-CLIP model family: configs, blocks, towers and sharing.

pub mod block;
pub mod capture;
pub mod config;
pub mod init;
pub mod layers;
pub mod msclip;
pub mod parallel;
pub mod stem;
pub mod towers;

pub use capture::{ActivationCache, Capture, Edit, Hook, Modality, Site};
pub use config::{ModelConfig, SharedSite, StemKind};
pub use msclip::{ForwardOutput, MsClip, ParamCount};
