//! `datarater`: meta-train a DataRater on your training and held-out data, score a
//! corpus with it, and keep its better documents. See `docs/cli.md`.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = datarater_cli::args::Cli::from_env();
    let comm = match datarater_cli::communicator() {
        Ok(comm) => comm,
        Err(e) => return fail(&e),
    };
    // The error is printed before `comm` drops (finalising MPI): mpirun ends the other
    // ranks as soon as one exits non-zero, and each should have printed it.
    // One buffer pool for the whole command (released when it returns): successive
    // meta-gradients and scored blocks reuse each other's buffers.
    match datarater::alloc::reuse_buffers(|| datarater_cli::run_on(&cli, comm.as_ref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `error: <message>` in one write, so that the lines of several ranks (merged
/// into one stream by mpirun) do not interleave.
fn fail(e: &datarater_cli::error::CliError) -> ExitCode {
    let _ = std::io::stderr().write_all(format!("error: {e}\n").as_bytes());
    ExitCode::FAILURE
}
