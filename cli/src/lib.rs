//! The `datarater` command line as a library: argument types, input readers, output
//! files, progress, and the subcommands, so benchmarks and tests can run the real code
//! paths (for example under a counting allocator). Every computation is a call into the
//! `datarater` library; this crate holds argument parsing, progress and file formats.
//! See `docs/cli.md`.

pub mod args;
pub mod curate;
pub mod error;
pub mod evaluate;
pub mod histogram;
pub mod input;
pub mod interrupt;
pub mod output;
pub mod progress;
pub mod scoring;
pub mod shards;
pub mod train;

use datarater::distributed::Communicator;

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

/// `local` if every rank of `comm` succeeded, else the first failing rank's message
/// (`rank R: ...`) on every rank. Collective. With one process, `local` unchanged.
///
/// # Errors
/// As above.
pub fn agree<T, E: Into<error::CliError>>(
    comm: &dyn Communicator,
    local: Result<T, E>,
) -> error::Result<T> {
    let (value, outcome) = match local {
        Ok(v) => (Some(v), Ok(())),
        Err(e) => (None, Err(datarater::Error::Usage(e.into().0))),
    };
    comm.agree(outcome)?;
    Ok(value.expect("no rank failed"))
}

/// Runs `f` on rank 0 only (the others get `None`); every rank returns its outcome
/// ([`agree`]). Collective.
///
/// # Errors
/// `f`'s error, on every rank.
pub fn on_root<T>(
    comm: &dyn Communicator,
    f: impl FnOnce() -> error::Result<T>,
) -> error::Result<Option<T>> {
    let local = if comm.rank() == 0 {
        f().map(Some)
    } else {
        Ok(None)
    };
    agree(comm, local)
}

/// Runs a parsed command line in this process ([`communicator`]).
///
/// # Errors
/// The first failure, as a human-readable message.
pub fn run(cli: &args::Cli) -> error::Result<()> {
    run_on(cli, communicator()?.as_ref())
}

/// Runs a parsed command line on `comm`'s ranks.
///
/// # Errors
/// The first failure on any rank, as a human-readable message (the same on every rank).
pub fn run_on(cli: &args::Cli, comm: &dyn Communicator) -> error::Result<()> {
    match &cli.command {
        args::Command::Train(a) => train::train(a, comm),
        args::Command::Score(a) => curate::score(a, comm),
        args::Command::Filter(a) => curate::filter(a, comm),
        // One process's work: rank 0 does it.
        args::Command::Evaluate(a) => on_root(comm, || evaluate::evaluate(a)).map(|_| ()),
    }
}
