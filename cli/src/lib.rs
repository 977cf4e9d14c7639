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

/// This process's communicator: one process, or, in a build with the `mpi` feature
/// launched by `mpirun`, MPI's (initialised here; finalised when dropped).
///
/// # Errors
/// MPI could not be initialised.
pub fn communicator() -> error::Result<Box<dyn datarater::distributed::Communicator>> {
    #[cfg(feature = "mpi")]
    if datarater::distributed::launched_by_mpi() {
        return Ok(Box::new(datarater::distributed::Mpi::init()?));
    }
    Ok(Box::new(datarater::distributed::SingleProcess))
}

/// Runs a parsed command line.
///
/// # Errors
/// The first failure, as a human-readable message.
pub fn run(cli: &args::Cli) -> error::Result<()> {
    let comm = communicator()?;
    if comm.size() > 1 && !matches!(cli.command, args::Command::Train(_)) {
        // Every rank would write the same output: refuse (on every rank alike).
        fail!(
            "only `datarater train` runs on several MPI ranks so far; run score and filter without mpirun"
        );
    }
    match &cli.command {
        args::Command::Train(a) => train::train(a, comm.as_ref()),
        args::Command::Score(a) => curate::score(a),
        args::Command::Filter(a) => curate::filter(a),
    }
}
