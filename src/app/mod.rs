//! The command-line front-ends of the three binaries: clap argument definitions, the dispatch
//! to [`crate::commands`] and [`crate::train`], printing and exit codes. They live in the
//! library so that a test can parse and run them in-process; `src/bin/` only calls
//! [`analyze::main`], [`train::main`] and [`data::main`]. No computation happens here: each
//! command builds typed options, calls the library and prints or writes its report
//! (tests/layering.rs enforces it).

pub mod analyze;
pub mod data;
pub mod train;

#[cfg(test)]
mod tests {
    /// clap's own consistency checks on every argument definition of the three binaries
    /// (conflicts, requirements, defaults, value parsers), which otherwise fire only when a
    /// user hits them.
    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        super::analyze::Cli::command().debug_assert();
        super::train::Cli::command().debug_assert();
        super::data::Cli::command().debug_assert();
    }
}
