//! The `datarater` command line as a library: argument types, input readers, output
//! files, progress, and the subcommands, so benchmarks and tests can run the real code
//! paths (for example under a counting allocator). Every computation is a call into the
//! `datarater` library; this crate holds argument parsing, progress and file formats.
//! See `docs/cli.md`.

pub mod args;
pub mod curate;
pub mod error;
pub mod histogram;
pub mod input;
pub mod output;
pub mod progress;
pub mod scoring;
pub mod train;

/// Runs a parsed command line.
///
/// # Errors
/// The first failure, as a human-readable message.
pub fn run(cli: &args::Cli) -> error::Result<()> {
    match &cli.command {
        args::Command::Train(a) => train::train(a),
        args::Command::Score(a) => curate::score(a),
        args::Command::Filter(a) => curate::filter(a),
    }
}
