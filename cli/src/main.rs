//! `datarater`: meta-train a DataRater on your training and held-out data, score a
//! corpus with it, and keep its better documents. See `docs/cli.md`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = datarater_cli::args::Cli::from_env();
    let comm = match datarater_cli::communicator() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The error is printed before `comm` drops (finalising MPI): mpirun ends the other
    // ranks as soon as one exits non-zero, and each should have printed the message.
    match datarater_cli::run_on(&cli, comm.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
