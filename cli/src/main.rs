//! `datarater`: meta-train a DataRater on your training and held-out data, score a
//! corpus with it, and keep its better documents. Every computation is a call into the
//! `datarater` library; this crate holds argument parsing, progress and file formats.
//! See `docs/cli.md`.

mod args;
mod curate;
mod error;
mod histogram;
mod input;
mod output;
mod progress;
mod scoring;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = match &cli.command {
        args::Command::Train(_) => Err(error::CliError(
            "`datarater train` is not available in this build yet".into(),
        )),
        args::Command::Score(a) => curate::score(a),
        args::Command::Filter(a) => curate::filter(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
