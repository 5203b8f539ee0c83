//! The command-line front-ends of the three binaries: clap argument definitions, the dispatch
//! to [`crate::commands`] and [`crate::train`], printing and exit codes. They live in the
//! library so that a test can parse and run them in-process; `src/bin/` only calls
//! [`analyze::main`], [`train::main`] and [`data::main`]. No computation happens here: each
//! command builds typed options, calls the library and prints or writes its report
//! (tests/layering.rs enforces it).

pub mod analyze;
pub mod data;
pub mod train;
