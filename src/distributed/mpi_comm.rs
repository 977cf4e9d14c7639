//! The MPI communicator (rsmpi), behind the `mpi` feature.

use super::Communicator;
use crate::error::{Error, Result};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _, Root as _};

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`):
/// Open MPI, MPICH/PMI and PMIx set these variables in every rank's environment.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// `MPI_COMM_WORLD` of a run launched with `mpirun -n P`. MPI is initialised by
/// [`Mpi::init`] and finalised when the value is dropped (keep it for the whole run).
pub struct Mpi {
    world: SimpleCommunicator,
    // Declared last: dropped (MPI_Finalize) after the communicator.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (once per process) and installs a panic hook that prints the
    /// panic and aborts every rank (`MPI_Abort`), so a panic on one rank never leaves
    /// the others waiting in a collective.
    ///
    /// # Errors
    /// [`Error::Usage`] if MPI was already initialised in this process.
    pub fn init() -> Result<Mpi> {
        // Only the main thread communicates; rayon's threads only compute.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Usage("MPI is already initialised in this process".into()))?;
        let world = universe.world();
        let rank = world.rank();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            eprintln!("rank {rank} panicked: aborting every rank");
            SimpleCommunicator::world().abort(101)
        }));
        Ok(Mpi {
            world,
            _universe: universe,
        })
    }

    fn count(&self, len: usize) -> i32 {
        i32::try_from(len).unwrap_or_else(|_| {
            self.abort(&format!(
                "rank {}: a message of {len} bytes exceeds MPI's 2 GiB limit per message",
                self.rank()
            ))
        })
    }
}

/// Splits `buf` at `counts` (concatenated in rank order).
fn split(buf: &[u8], counts: &[i32]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let part = buf[at..at + c as usize].to_vec();
            at += c as usize;
            part
        })
        .collect()
}

fn displacements(counts: &[i32]) -> Vec<i32> {
    counts
        .iter()
        .scan(0i32, |at, &c| {
            let d = *at;
            *at += c;
            Some(d)
        })
        .collect()
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        let n = self.count(local.len());
        let mut counts = vec![0i32; self.size()];
        self.world.all_gather_into(&n, &mut counts[..]);
        let total = self.count(counts.iter().map(|&c| c as usize).sum());
        let displs = displacements(&counts);
        let mut buf = vec![0u8; total as usize];
        let mut parts = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
        self.world.all_gather_varcount_into(local, &mut parts);
        split(&buf, &counts)
    }

    fn gather_bytes(&self, local: &[u8], root: usize) -> Option<Vec<Vec<u8>>> {
        let n = self.count(local.len());
        let root_process = self.world.process_at_rank(root as i32);
        if self.rank() != root {
            root_process.gather_into(&n);
            root_process.gather_varcount_into(local);
            return None;
        }
        let mut counts = vec![0i32; self.size()];
        root_process.gather_into_root(&n, &mut counts[..]);
        let total = self.count(counts.iter().map(|&c| c as usize).sum());
        let displs = displacements(&counts);
        let mut buf = vec![0u8; total as usize];
        let mut parts = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
        root_process.gather_varcount_into_root(local, &mut parts);
        Some(split(&buf, &counts))
    }

    fn broadcast_bytes(&self, mut bytes: Vec<u8>, root: usize) -> Vec<u8> {
        let root_process = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root_process.broadcast_into(&mut len);
        self.count(len as usize);
        bytes.resize(len as usize, 0);
        root_process.broadcast_into(&mut bytes[..]);
        bytes
    }

    fn abort(&self, message: &str) -> ! {
        eprintln!("{message}");
        self.world.abort(1)
    }
}
