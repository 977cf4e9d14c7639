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

/// Makes glibc's `malloc` keep freed memory for reuse (up to a bound) instead of
/// handing every large block straight back to the kernel. Scoring allocates and frees
/// the same few hundred-kilobyte arrays for every batch of sequences; with glibc's
/// defaults each one is a fresh `mmap` whose pages fault in again, which measured 20%
/// of scoring's CPU time in the kernel (and the threads serialise on the page tables).
/// Called once at start-up by the binary; a no-op on other platforms.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // From glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters; it is called before any
        // thread is started. Blocks above 32 MiB are still mapped and unmapped at once,
        // and a heap returns its free top to the kernel beyond 64 MiB.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

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
