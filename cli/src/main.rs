//! `datarater`: meta-train a DataRater on your training and held-out data, score a
//! corpus with it, and keep its better documents. See `docs/cli.md`.

use std::process::ExitCode;

fn main() -> ExitCode {
    datarater_cli::tune_allocator();
    let cli = datarater_cli::args::Cli::from_env();
    match datarater_cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
