//! Analyses: pure functions from captured tensors to tables (no plotting here).

pub mod attention;
pub mod attribution;
pub mod check;
pub mod embedding;
pub mod gap;
pub mod heads;
pub mod nmi;
pub mod npy;
pub mod probe;
pub mod stats;
pub mod transfer;
