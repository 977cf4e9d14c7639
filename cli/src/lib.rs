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
/// MPI could not be initialised; or this build has no MPI but the environment says a
/// launcher started several ranks ([`launcher_ranks`]): each would run the whole job
/// alone and write the same files.
pub fn communicator() -> error::Result<Box<dyn datarater::distributed::Communicator>> {
    #[cfg(feature = "mpi")]
    if datarater::distributed::launched_by_mpi() {
        return Ok(Box::new(datarater::distributed::Mpi::init()?));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some((var, n)) = launcher_ranks(|k| std::env::var(k).ok()) {
        return Err(error::CliError(format!(
            "started as one of {n} ranks ({var}={n}), but this `datarater` was built without MPI: each rank would run the whole job alone and write the same files. Build it with `cargo build --release -p datarater-cli --features mpi` (see docs/distributed.md), or run it without the launcher"
        )));
    }
    Ok(Box::new(datarater::distributed::SingleProcess))
}

/// The number of ranks a launcher's environment (looked up with `env`) says this
/// process is one of, when more than one, with the variable that says so: Open MPI's
/// `OMPI_COMM_WORLD_SIZE`, MPICH's (and other PMI launchers') `PMI_SIZE`, and Slurm's
/// `SLURM_STEP_NUM_TASKS`, which `srun` sets for its tasks (not `SLURM_NTASKS`: a batch
/// script's own shell has it too, and is one process).
pub fn launcher_ranks(env: impl Fn(&str) -> Option<String>) -> Option<(&'static str, usize)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .into_iter()
        .find_map(|var| {
            let n: usize = env(var)?.trim().parse().ok()?;
            (n > 1).then_some((var, n))
        })
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
    match local {
        Ok(v) => {
            comm.agree(Ok(()))?;
            Ok(v)
        }
        Err(e) => {
            let e = e.into();
            // Every rank gets an error here (this one failed); the first failing rank's.
            match comm.agree(Err(datarater::Error::Usage(e.0.clone()))) {
                Err(first) => Err(first.into()),
                Ok(()) => Err(e),
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::launcher_ranks;

    /// An environment holding just `vars`.
    fn env(vars: &'static [(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launcher_ranks_reads_the_launchers_variables() {
        assert_eq!(launcher_ranks(env(&[])), None);
        assert_eq!(launcher_ranks(env(&[("OMPI_COMM_WORLD_SIZE", "1")])), None);
        assert_eq!(
            launcher_ranks(env(&[("OMPI_COMM_WORLD_SIZE", "2")])),
            Some(("OMPI_COMM_WORLD_SIZE", 2))
        );
        assert_eq!(
            launcher_ranks(env(&[("PMI_SIZE", "3")])),
            Some(("PMI_SIZE", 3))
        );
        assert_eq!(
            launcher_ranks(env(&[("SLURM_STEP_NUM_TASKS", " 4 ")])),
            Some(("SLURM_STEP_NUM_TASKS", 4))
        );
        // A batch script's own shell: one process, though the job has several tasks.
        assert_eq!(
            launcher_ranks(env(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "0")])),
            None
        );
        assert_eq!(launcher_ranks(env(&[("PMI_SIZE", "many")])), None);
    }
}
