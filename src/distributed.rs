//! Meta-training and scoring over several processes (MPI ranks), written once against
//! a small [`Communicator`] trait.
//!
//! * [`SingleProcess`] is the communicator of an ordinary run (one rank); it is always
//!   compiled.
//! * `Mpi` (behind the `mpi` cargo feature, rsmpi over the system's MPI, e.g. Open
//!   MPI) is the communicator of a run launched with `mpirun -n P`.
//!
//! **Who runs what.** Member `i` of a population of `N` belongs to rank
//! [`members_of`]: contiguous blocks, `rank * N / P .. (rank + 1) * N / P`, so ranks
//! hold `floor(N / P)` or `ceil(N / P)` members and the ranks' blocks, in rank order,
//! are the members in order. Each rank keeps only its own members ([`RankState`]);
//! they meet in one process only when a checkpoint is written (gathered to rank 0).
//!
//! **What an outer step exchanges.** Each rank advances its members with
//! [`Trainer::advance`] (in parallel on its rayon threads), then every rank
//! all-gathers every member's updated rater `eta_bar^i` (bit-exact safetensors bytes,
//! about `|eta| * N` bytes in total) with its held-out loss, meta-gradient norm and age.
//! Every rank then sums the `N` updated raters **in member order**, exactly as
//! [`Trainer::commit`] does, so `mpirun -n P` gives bitwise the rater of one process
//! with the same config and seed, for every `P`. (An MPI all-reduce is not used: its
//! summation order would depend on `P`.) Member `i`'s random choices come only from
//! its own stream, which does not depend on where it runs.
//!
//! **Failures.** Every collective carries each rank's `Ok` or `Err`: if any rank
//! failed (bad input, a non-finite meta-gradient), every rank returns the same
//! [`Error::Rank`] naming the first failing rank and its message, and nothing is
//! committed or written. A panic on one rank cannot be agreed on (the other ranks are
//! waiting in a collective), so `Mpi::init` installs a panic hook that prints the
//! message and aborts every rank (`MPI_Abort`).

use crate::autodiff::{Float, Params, Tensor};
use crate::checkpoint::{self, StateTensors};
use crate::error::{Error, Result};
use crate::io::{DtypePolicy, decode_params, encode_params};
use crate::meta::{InnerLoop, MetaOptimizer, OuterLoop, Rater};
use crate::trainer::algorithm::mean_in_order;
use crate::trainer::{Advanced, StepReport, Trainer, TrainerState};
use rayon::prelude::*;
use serde_json::{Value as Json, json};
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "mpi")]
pub use mpi_comm::{Mpi, launched_by_mpi};

/// The collective operations a distributed run needs, between the `size` processes
/// (ranks) of a run. Every method except [`rank`](Self::rank), [`size`](Self::size)
/// and [`abort`](Self::abort) is collective: every rank must call it, in the same order.
pub trait Communicator {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Every rank's `local` bytes, in rank order, on every rank.
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>>;
    /// Every rank's `local` bytes, in rank order, on rank `root` (`None` on the others).
    fn gather_bytes(&self, local: &[u8], root: usize) -> Option<Vec<Vec<u8>>>;
    /// Rank `root`'s `bytes` on every rank (the others' `bytes` are ignored).
    fn broadcast_bytes(&self, bytes: Vec<u8>, root: usize) -> Vec<u8>;
    /// Prints `message` and ends every rank with a non-zero exit status: for failures
    /// that cannot be agreed on collectively (a panic).
    fn abort(&self, message: &str) -> !;

    /// Every rank's payload in rank order, or, if any rank's `local` is an error,
    /// the same error on every rank: [`Error::Rank`] with the first failing rank's
    /// message (with one rank, its own error unchanged).
    ///
    /// # Errors
    /// As above.
    fn all_gather_result(&self, local: Result<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
        if self.size() == 1 {
            return local.map(|b| vec![b]);
        }
        let all = self.all_gather_bytes(&encode_outcome(self.rank(), local));
        all.into_iter().map(decode_outcome).collect()
    }

    /// Rank `root`'s payload on every rank, or its error (as [`Error::Rank`]) on every
    /// rank. Only `root`'s `local` is used.
    ///
    /// # Errors
    /// As above.
    fn broadcast_result(&self, local: Result<Vec<u8>>, root: usize) -> Result<Vec<u8>> {
        if self.size() == 1 {
            return local;
        }
        decode_outcome(self.broadcast_bytes(encode_outcome(self.rank(), local), root))
    }

    /// `Ok` on every rank if every rank's `local` is `Ok`; otherwise the first failing
    /// rank's error on every rank (see [`all_gather_result`](Self::all_gather_result)).
    ///
    /// # Errors
    /// As above.
    fn agree(&self, local: Result<()>) -> Result<()> {
        self.all_gather_result(local.map(|()| Vec::new()))
            .map(|_| ())
    }
}

/// `[0] ++ payload`, or `[1] ++ rank (8 bytes LE) ++ message`.
fn encode_outcome(rank: usize, local: Result<Vec<u8>>) -> Vec<u8> {
    match local {
        Ok(mut b) => {
            b.insert(0, 0);
            b
        }
        Err(e) => {
            // An error that came from another rank keeps its origin.
            let (rank, message) = match e {
                Error::Rank { rank, message } => (rank, message),
                other => (rank, other.to_string()),
            };
            let mut b = vec![1];
            b.extend_from_slice(&(rank as u64).to_le_bytes());
            b.extend_from_slice(message.as_bytes());
            b
        }
    }
}

fn decode_outcome(mut b: Vec<u8>) -> Result<Vec<u8>> {
    match b.first() {
        Some(0) => {
            b.remove(0);
            Ok(b)
        }
        Some(1) if b.len() >= 9 => {
            let rank = u64::from_le_bytes(b[1..9].try_into().expect("8 bytes")) as usize;
            Err(Error::Rank {
                rank,
                message: String::from_utf8_lossy(&b[9..]).into_owned(),
            })
        }
        _ => Err(Error::Usage("malformed message between ranks".into())),
    }
}

/// The communicator of an ordinary, single-process run: rank 0 of 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        vec![local.to_vec()]
    }
    fn gather_bytes(&self, local: &[u8], _root: usize) -> Option<Vec<Vec<u8>>> {
        Some(vec![local.to_vec()])
    }
    fn broadcast_bytes(&self, bytes: Vec<u8>, _root: usize) -> Vec<u8> {
        bytes
    }
    fn abort(&self, message: &str) -> ! {
        eprintln!("{message}");
        std::process::exit(1)
    }
}

/// The block of `0..n` (members of a population, or documents of a block) that `rank`
/// of `size` handles: `rank * n / size .. (rank + 1) * n / size`. The blocks of ranks
/// `0..size`, in order, tile `0..n`.
pub fn share(rank: usize, size: usize, n: usize) -> Range<usize> {
    rank * n / size..(rank + 1) * n / size
}

/// The members of a population of `population` that `comm`'s rank runs ([`share`]).
pub fn members_of(comm: &dyn Communicator, population: usize) -> Range<usize> {
    share(comm.rank(), comm.size(), population)
}

/// What the last distributed outer step exchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Exchange {
    /// Seconds this rank spent in the exchange (encoding, the all-gather, decoding),
    /// including waiting for slower ranks.
    pub seconds: f64,
    /// Bytes gathered on each rank (every member's updated rater and figures).
    pub bytes: usize,
}

/// One rank's part of the training state: the rater, this rank's members and the
/// outer step, plus where its members sit in the population.
#[derive(Clone, Debug)]
pub struct RankState<F: Float, M> {
    /// The rater, this rank's members (in order) and the outer steps completed.
    pub local: TrainerState<F, M>,
    /// Global indices of `local.members`.
    pub members: Range<usize>,
    /// Size of the whole population.
    pub population: usize,
    /// What the last outer step exchanged.
    pub last_exchange: Exchange,
}

impl<F: Float, M> RankState<F, M> {
    /// This rank's part of a whole state (every rank holds `full`; each keeps its
    /// own members).
    pub fn split(full: TrainerState<F, M>, comm: &dyn Communicator) -> Self {
        let population = full.members.len();
        let members = members_of(comm, population);
        let local = TrainerState {
            eta: full.eta,
            members: full
                .members
                .into_iter()
                .skip(members.start)
                .take(members.len())
                .collect(),
            step: full.step,
        };
        RankState {
            local,
            members,
            population,
            last_exchange: Exchange::default(),
        }
    }
}

impl<F: Float, M: StateTensors<F>> RankState<F, M> {
    /// The whole state, assembled on rank 0 (`None` on the other ranks). Collective.
    ///
    /// # Errors
    /// A rank's part that cannot be decoded (a defect), on rank 0.
    pub fn gather(&self, comm: &dyn Communicator) -> Result<Option<TrainerState<F, M>>> {
        let tag = json!({"members": [self.members.start, self.members.end]});
        let bytes = checkpoint::encode_checkpoint(&self.local, &tag)?;
        let Some(parts) = comm.gather_bytes(&bytes, 0) else {
            return Ok(None);
        };
        let mut members = Vec::with_capacity(self.population);
        for (r, part) in parts.iter().enumerate() {
            let range = share(r, comm.size(), self.population);
            let tag = json!({"members": [range.start, range.end]});
            let s: TrainerState<F, M> =
                checkpoint::decode_checkpoint(&format!("<rank {r}'s state>"), part, &tag)?;
            members.extend(s.members);
        }
        Ok(Some(TrainerState {
            eta: self.local.eta.clone(),
            members,
            step: self.local.step,
        }))
    }
}

/// A fresh distributed state: the rater on every rank (as [`Trainer::init`] makes
/// it) and each rank's own members only, each from its own random stream, so the
/// ranks' members together are exactly [`Trainer::init`]'s population.
///
/// # Errors
/// As for [`Trainer::init`] (the same on every rank).
pub fn init<F, I, R, O, M>(
    trainer: &Trainer<'_, F, I, R, O, M>,
    comm: &dyn Communicator,
    eta: Option<Params<Tensor<F>>>,
) -> Result<RankState<F, M::State>>
where
    F: Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    O: OuterLoop<F, I>,
    M: MetaOptimizer<F>,
{
    let eta = trainer.init_rater(eta)?;
    let population = trainer.config().population;
    let members = members_of(comm, population);
    Ok(RankState {
        local: TrainerState {
            members: trainer.init_members(&eta, members.clone()),
            eta,
            step: 0,
        },
        members,
        population,
        last_exchange: Exchange::default(),
    })
}

/// One outer step of Algorithm 1 over every rank: each rank advances its members
/// ([`Trainer::advance`], in parallel on its threads), every rank gathers every
/// member's updated rater and sums them in member order (see the module docs). On
/// error on any rank, every rank returns the same error and `state` is unchanged.
/// Collective. The report covers the whole population.
///
/// # Errors
/// The first failing rank's error ([`Error::Rank`] when there are several ranks).
pub fn step<F, I, R, O, M>(
    trainer: &Trainer<'_, F, I, R, O, M>,
    comm: &dyn Communicator,
    state: &mut RankState<F, M::State>,
) -> Result<StepReport>
where
    F: Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    O: OuterLoop<F, I>,
    M: MetaOptimizer<F>,
{
    let start = Instant::now();
    let (k, first) = (state.local.step, state.members.start);
    let eta = &state.local.eta;
    let advanced = state
        .local
        .members
        .par_iter()
        .enumerate()
        .map(|(j, m)| trainer.advance(eta, m, first + j, k))
        .collect::<Result<Vec<_>>>();
    let exchange = Instant::now();
    let payload = advanced
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|a| encode_advanced(a, first));
    let parts = comm.all_gather_result(payload)?;
    let bytes = parts.iter().map(Vec::len).sum();
    let mut etas = Vec::with_capacity(state.population);
    let mut report = StepReport::new(k);
    for part in &parts {
        decode_advanced(part, &mut etas, &mut report)?;
    }
    if etas.len() != state.population {
        return Err(Error::Config {
            field: "population",
            reason: format!(
                "{} member results for a population of {} (do the ranks agree on the config?)",
                etas.len(),
                state.population
            ),
        });
    }
    let mean = mean_in_order(etas.iter())?;
    let seconds = exchange.elapsed().as_secs_f64();
    let advanced = advanced.expect("an error was returned by the all-gather");
    state.local.members = advanced.into_iter().map(|a| a.member).collect();
    state.local.eta = mean;
    state.local.step += 1;
    state.last_exchange = Exchange { seconds, bytes };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Each member's updated rater under `{i}.`, and its figures (floats as their bits,
/// so they travel exactly) in the `members` metadata.
fn encode_advanced<F: Float, M>(advanced: &[Advanced<F, M>], first: usize) -> Result<Vec<u8>> {
    let mut tensors = Params::new();
    let mut figures = Vec::with_capacity(advanced.len());
    for (j, a) in advanced.iter().enumerate() {
        let i = first + j;
        tensors.extend_scoped(&i.to_string(), a.eta.clone());
        figures.push(json!({
            "i": i,
            "outer_loss": a.outer_loss.to_bits(),
            "grad_norm": a.grad_norm.to_bits(),
            "age": a.member.age,
            "reset": a.reset,
        }));
    }
    encode_params(&tensors, &[("members", &Json::Array(figures).to_string())])
}

fn decode_advanced<F: Float>(
    bytes: &[u8],
    etas: &mut Vec<Params<Tensor<F>>>,
    report: &mut StepReport,
) -> Result<()> {
    let bad = || Error::Usage("malformed member results between ranks".into());
    let (tensors, meta) = decode_params::<F>(bytes, DtypePolicy::Exact)?;
    let figures: Json = meta
        .get("members")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(bad)?;
    for f in figures.as_array().ok_or_else(bad)? {
        let uint = |k: &str| f.get(k).and_then(Json::as_u64).ok_or_else(bad);
        let i = uint("i")? as usize;
        if i != etas.len() {
            return Err(bad());
        }
        etas.push(tensors.scope(&i.to_string()));
        report.push(
            i,
            f64::from_bits(uint("outer_loss")?),
            f64::from_bits(uint("grad_norm")?),
            uint("age")? as usize,
            f.get("reset").and_then(Json::as_bool).ok_or_else(bad)?,
        );
    }
    Ok(())
}

/// Writes the whole state as one checkpoint ([`checkpoint::save_checkpoint`]):
/// gathered to rank 0, which writes it atomically; every rank returns the outcome.
/// Collective.
///
/// # Errors
/// As for [`checkpoint::save_checkpoint`], on every rank.
pub fn save_checkpoint<F: Float, M: StateTensors<F>>(
    path: impl AsRef<Path>,
    state: &RankState<F, M>,
    configs: &Json,
    comm: &dyn Communicator,
) -> Result<()> {
    let written = match state.gather(comm) {
        Ok(Some(full)) => checkpoint::save_checkpoint(path, &full, configs),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    comm.agree(written)
}

/// Reads a checkpoint on rank 0 and hands each rank its part, so a checkpoint written
/// by a run on any number of ranks resumes on any other. Collective.
///
/// # Errors
/// As for [`checkpoint::load_checkpoint`], on every rank.
pub fn load_checkpoint<F: Float, M: StateTensors<F>>(
    path: impl AsRef<Path>,
    expected: &Json,
    comm: &dyn Communicator,
) -> Result<RankState<F, M>> {
    let name = path.as_ref().display().to_string();
    let bytes = if comm.rank() == 0 {
        std::fs::read(path.as_ref()).map_err(|e| Error::File {
            path: name.clone(),
            reason: format!("cannot read checkpoint: {e}"),
        })
    } else {
        Ok(Vec::new())
    };
    let bytes = comm.broadcast_result(bytes, 0)?;
    let full = checkpoint::decode_checkpoint(&name, &bytes, expected)?;
    Ok(RankState::split(full, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_tile_the_range_in_rank_order() {
        for n in 0..10 {
            for size in 1..5 {
                let blocks: Vec<usize> = (0..size).flat_map(|r| share(r, size, n)).collect();
                assert_eq!(blocks, (0..n).collect::<Vec<_>>(), "n = {n}, size = {size}");
            }
        }
        assert_eq!(share(1, 4, 6), 1..3);
    }

    #[test]
    fn outcomes_round_trip_and_keep_the_origin_of_a_forwarded_error() {
        assert_eq!(
            decode_outcome(encode_outcome(2, Ok(vec![7, 8]))),
            Ok(vec![7, 8])
        );
        let e = Error::Config {
            field: "x",
            reason: "bad".into(),
        };
        let first = decode_outcome(encode_outcome(2, Err(e.clone())));
        assert_eq!(
            first,
            Err(Error::Rank {
                rank: 2,
                message: e.to_string()
            })
        );
        let forwarded = decode_outcome(encode_outcome(0, first));
        assert!(matches!(forwarded, Err(Error::Rank { rank: 2, .. })));
        assert!(decode_outcome(vec![]).is_err());
    }

    #[test]
    fn single_process_keeps_the_typed_error() {
        let e = Error::Usage("boom".into());
        assert_eq!(SingleProcess.all_gather_result(Err(e.clone())), Err(e));
        assert_eq!(SingleProcess.agree(Ok(())), Ok(()));
    }
}
