//! Checks of distributed meta-training, run by `.ci/run` under `mpirun -n 2` and `-n 3`
//! (and without `mpirun`, as one process). Each prints one `PASS` or `FAIL` line (rank
//! 0) and exits non-zero on failure.
//!
//! ```text
//! mpi_check same [N]                   P ranks give bitwise the single-process rater and population
//! mpi_check save DIR                   2 outer steps, then a checkpoint DIR/ckpt.safetensors
//! mpi_check resume DIR                 DIR's checkpoint + 2 steps == 4 uninterrupted steps (bitwise)
//! mpi_check fault input|nonfinite|panic DIR
//!                                      rank 1 fails in outer step 1 (after a checkpoint of
//!                                      step 1): every rank must exit non-zero with its message
//! mpi_check verify DIR                 DIR holds exactly one intact checkpoint, of step 1
//! mpi_check compare A B               two checkpoints of `datarater train` (f32) hold the same
//!                                      state, bitwise
//! mpi_check poison RATER OUT BYTE    writes a copy of a `datarater train` rater whose token
//!                                      embedding of byte BYTE is NaN: documents holding
//!                                      that byte score NaN (a fault for `datarater score`)
//! mpi_check bench [P1_SECONDS]         benchmark: outer-step time of a population of 4
//!                                      (d_model 32, 2 layers, batch 16, T = 2), time and bytes
//!                                      exchanged per step; the speed-up over P1_SECONDS
//! ```
//!
//! Build: `cargo build --release --features mpi --example mpi_check`.

use datarater::curate::rater_file::RaterFile;
use datarater::data::Corpus;
use datarater::distributed::{self, Communicator, Mpi, RankState, SingleProcess, launched_by_mpi};
use datarater::meta::{InnerLoop, Mode, OuterLoop, Sampler};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::Adam;
use datarater::trainer::{
    MetaAdam, MetaAdamState, Sequences, Setup, TextBatch, TextLm, TextPool, TextRater, Trainer,
    TrainerConfig, TrainerState,
};
use datarater::{Error, Params, Result, Rng, Value};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

type Inner = TextLm<Adam<f64>>;
type State = TrainerState<f64, MetaAdamState<f64>>;

/// The models: tiny for the checks, `d_model` 32 (two layers) for `bench`.
fn cfg(causal: bool, d_model: usize) -> TransformerConfig {
    TransformerConfig::new(d_model, if d_model > 8 { 2 } else { 1 }, 2, 12)
        .with_d_ff(2 * d_model)
        .with_causal(causal)
}

/// The failure injected on rank 1 once armed.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Input,
    NonFinite,
    Panic,
}

struct Fault {
    kind: Option<Kind>,
    armed: AtomicBool,
}

impl Fault {
    fn is(&self, kind: Kind) -> bool {
        self.kind == Some(kind) && self.armed.load(Ordering::SeqCst)
    }
}

/// The training pool, failing when the fault is armed (bad input in this rank's shard,
/// or a panic).
struct Train<'a> {
    pool: TextPool,
    fault: &'a Fault,
}

impl Sampler<TextBatch> for Train<'_> {
    fn sample(&self, rng: &mut Rng) -> Result<TextBatch> {
        if self.fault.is(Kind::Input) {
            return Err(Error::File {
                path: "train-shard-1.jsonl".into(),
                reason: "line 17: field `text` is missing (injected fault)".into(),
            });
        }
        if self.fault.is(Kind::Panic) {
            panic!("injected panic in the training sampler");
        }
        self.pool.sample(rng)
    }
}

/// The mean held-out loss, made NaN when the fault is armed (a non-finite meta-gradient).
struct Objective<'a> {
    fault: &'a Fault,
}

impl OuterLoop<f64, Inner> for Objective<'_> {
    fn loss<V: Value<F = f64>>(
        &self,
        inner: &Inner,
        theta: &Params<V>,
        batch: &TextBatch,
    ) -> Result<V> {
        let loss = inner.per_example_loss(theta, batch)?.mean_all();
        Ok(if self.fault.is(Kind::NonFinite) {
            loss.scale(f64::NAN)
        } else {
            loss
        })
    }
}

struct Parts<'a> {
    inner: Inner,
    rater: TextRater,
    objective: Objective<'a>,
    meta: MetaAdam,
    train: Train<'a>,
    held: TextPool,
}

fn parts(fault: &Fault, d_model: usize, batch: usize) -> Parts<'_> {
    let seqs = Corpus::embedded().sequences(12).expect("embedded corpus");
    Parts {
        inner: TextLm::new(CausalLm::new(cfg(true, d_model)).unwrap(), Adam::new(1e-2)).unwrap(),
        rater: TextRater {
            scorer: SequenceScorer::new(cfg(false, d_model)).unwrap(),
        },
        objective: Objective { fault },
        meta: MetaAdam::default().with_lr(1e-2),
        train: Train {
            pool: TextPool::new(Sequences::from_rows(&seqs[..200]).unwrap(), batch).unwrap(),
            fault,
        },
        held: TextPool::new(Sequences::from_rows(&seqs[200..260]).unwrap(), batch).unwrap(),
    }
}

type T<'a> = Trainer<'a, f64, Inner, TextRater, Objective<'a>, MetaAdam>;

fn trainer<'a>(p: &'a Parts<'a>, population: usize) -> T<'a> {
    // Resets every 2 steps, staggered: members reset at different steps.
    let config = TrainerConfig::default()
        .with_outer_steps(4)
        .with_inner_steps(2)
        .with_population(population)
        .with_reset_every(2)
        .with_mode(Mode::Mixed)
        .with_seed(5);
    let setup = Setup {
        inner: &p.inner,
        rater: &p.rater,
        outer: &p.objective,
        meta_opt: &p.meta,
        train: &p.train,
        held_out: &p.held,
    };
    Trainer::new(setup, config).unwrap()
}

fn configs() -> serde_json::Value {
    json!({"check": "mpi_check", "population": 6})
}

/// `steps` single-process outer steps from the start.
/// On a pool of 3 threads, whatever each rank has: results must not depend on it.
fn reference(t: &T<'_>, steps: usize) -> (State, Vec<Vec<f64>>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        let mut s = t.init(None).unwrap();
        let losses = (0..steps)
            .map(|_| t.step(&mut s).unwrap().outer_losses)
            .collect();
        (s, losses)
    })
}

/// Bitwise equality of two whole states, or the first difference.
fn same_state<F: datarater::Float>(
    a: &TrainerState<F, MetaAdamState<F>>,
    b: &TrainerState<F, MetaAdamState<F>>,
) -> std::result::Result<(), String> {
    if a.step != b.step {
        return Err(format!("step {} vs {}", a.step, b.step));
    }
    if a.eta != b.eta {
        return Err("the raters differ".into());
    }
    if a.members.len() != b.members.len() {
        return Err("population sizes differ".into());
    }
    for (i, (x, y)) in a.members.iter().zip(&b.members).enumerate() {
        let same = x.theta == y.theta
            && x.opt_state == y.opt_state
            && x.meta_state.m == y.meta_state.m
            && x.meta_state.v == y.meta_state.v
            && x.meta_state.t == y.meta_state.t
            && x.age == y.age
            && x.rng.state() == y.rng.state();
        if !same {
            return Err(format!("member {i} differs"));
        }
    }
    Ok(())
}

/// Rank 0's verdict, shared so every rank exits alike.
fn verdict(
    comm: &dyn Communicator,
    name: &str,
    check: std::result::Result<String, String>,
) -> ExitCode {
    let ok = comm.broadcast_bytes(vec![u8::from(check.is_ok())], 0) == [1];
    if comm.rank() == 0 {
        match &check {
            Ok(what) => println!("PASS {name} (P = {}): {what}", comm.size()),
            Err(why) => println!("FAIL {name} (P = {}): {why}", comm.size()),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(
    t: &T<'_>,
    comm: &dyn Communicator,
    s: &mut RankState<f64, MetaAdamState<f64>>,
    steps: usize,
) -> Vec<Vec<f64>> {
    (0..steps)
        .map(|_| distributed::step(t, comm, s).unwrap().outer_losses)
        .collect()
}

fn ckpt(dir: &Path) -> PathBuf {
    dir.join("ckpt.safetensors")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mpi = launched_by_mpi().then(|| Mpi::init().expect("MPI initialises"));
    let comm: &dyn Communicator = match &mpi {
        Some(m) => m,
        None => &SingleProcess,
    };
    let kind = match (
        args.first().map(String::as_str),
        args.get(1).map(String::as_str),
    ) {
        (Some("fault"), Some("input")) => Some(Kind::Input),
        (Some("fault"), Some("nonfinite")) => Some(Kind::NonFinite),
        (Some("fault"), Some("panic")) => Some(Kind::Panic),
        _ => None,
    };
    let fault = Fault {
        kind,
        armed: AtomicBool::new(false),
    };
    let bench = args.first().map(String::as_str) == Some("bench");
    let p = if bench {
        parts(&fault, 32, 16)
    } else {
        parts(&fault, 8, 4)
    };
    // `same N` takes the population (default 6); `bench` uses 4, the other checks 6.
    let population = match args.as_slice() {
        [cmd, n] if cmd == "same" => n.parse().expect("a population size"),
        _ if bench => 4,
        _ => 6,
    };
    let t = trainer(&p, population);
    let dir = |i: usize| PathBuf::from(args.get(i).expect("a directory argument"));
    match args.first().map(String::as_str) {
        Some("same") => {
            let mut s = distributed::init(&t, comm, None).unwrap();
            let losses = run(&t, comm, &mut s, 3);
            let full = s.gather(comm).unwrap();
            let check = match full {
                None => Ok(String::new()),
                Some(full) => {
                    let (r, ref_losses) = reference(&t, 3);
                    same_state(&full, &r).and_then(|()| {
                        if losses == ref_losses {
                            Ok(format!(
                                "N = {population} over {} ranks (blocks of {:?} members), 3 outer steps: rater, every member and every \
                                 held-out loss bitwise equal to one process",
                                comm.size(),
                                (0..comm.size())
                                    .map(|r| distributed::share(r, comm.size(), population).len())
                                    .collect::<Vec<_>>()
                            ))
                        } else {
                            Err("held-out losses differ".into())
                        }
                    })
                }
            };
            verdict(comm, "same", check)
        }
        Some("save") => {
            let dir = dir(1);
            let mut s = distributed::init(&t, comm, None).unwrap();
            run(&t, comm, &mut s, 2);
            distributed::save_checkpoint(ckpt(&dir), &s, &configs(), comm).unwrap();
            verdict(comm, "save", Ok(format!("wrote {}", ckpt(&dir).display())))
        }
        Some("resume") => {
            let dir = dir(1);
            let mut s = distributed::load_checkpoint(ckpt(&dir), &configs(), comm).unwrap();
            let resumed_at = s.local.step;
            run(&t, comm, &mut s, 2);
            let check = match s.gather(comm).unwrap() {
                None => Ok(String::new()),
                Some(full) => {
                    let (r, _) = reference(&t, 4);
                    same_state(&full, &r).map(|()| {
                        format!("resumed at step {resumed_at}, 2 more steps: bitwise the uninterrupted run")
                    })
                }
            };
            verdict(comm, "resume", check)
        }
        Some("fault") => {
            let dir = dir(2);
            let mut s = distributed::init(&t, comm, None).unwrap();
            run(&t, comm, &mut s, 1);
            distributed::save_checkpoint(ckpt(&dir), &s, &configs(), comm).unwrap();
            fault.armed.store(comm.rank() == 1, Ordering::SeqCst);
            let result = distributed::step(&t, comm, &mut s)
                .and_then(|_| distributed::save_checkpoint(ckpt(&dir), &s, &configs(), comm));
            match result {
                Ok(()) => {
                    println!("FAIL fault: rank {} saw no error", comm.rank());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // Every rank must report rank 1's message.
                    let agreed = matches!(e, Error::Rank { rank: 1, .. }) && s.local.step == 1;
                    println!(
                        "{} fault: rank {} stopped with: {e}",
                        if agreed { "AGREED" } else { "FAIL" },
                        comm.rank()
                    );
                    ExitCode::from(if agreed { 3 } else { 1 })
                }
            }
        }
        Some("bench") => {
            let mut s = distributed::init(&t, comm, None).unwrap();
            run(&t, comm, &mut s, 1); // warm-up
            let steps = 5;
            let (mut total, mut exchange, mut bytes) = (0.0, 0.0, 0);
            for _ in 0..steps {
                total += distributed::step(&t, comm, &mut s).unwrap().seconds;
                exchange += s.last_exchange.seconds;
                bytes = s.last_exchange.bytes;
            }
            let (step_s, comm_s) = (total / steps as f64, exchange / steps as f64);
            // Rank 0's figures; every rank waits for the slowest in the exchange.
            if comm.rank() == 0 {
                let eta_bytes = s.local.eta.nbytes();
                println!(
                    "P = {} ranks x {} threads, population 4: {:.1} ms per outer step, of which \
                     {:.2} ms exchanging ({bytes} bytes gathered per step; rater {eta_bytes} bytes x 4 = {})",
                    comm.size(),
                    rayon::current_num_threads(),
                    step_s * 1e3,
                    comm_s * 1e3,
                    4 * eta_bytes
                );
                if let Some(p1) = args.get(1).and_then(|x| x.parse::<f64>().ok()) {
                    println!(
                        "speed-up over one rank ({:.1} ms): {:.2}x",
                        p1 * 1e3,
                        p1 / step_s
                    );
                } else {
                    println!(
                        "seconds per step: {step_s:.4} (pass it to the P = 2 run for the speed-up)"
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Some("compare") => {
            let load = |i: usize| {
                let path = dir(i);
                let configs = datarater::checkpoint::read_checkpoint_configs(&path).unwrap();
                datarater::checkpoint::load_checkpoint::<f32, MetaAdamState<f32>>(&path, &configs)
                    .unwrap()
            };
            let (a, b) = (load(1), load(2));
            let check = same_state(&a, &b).map(|()| {
                format!(
                    "{} and {}: rater and all {} members bitwise equal after {} steps",
                    args[1],
                    args[2],
                    a.members.len(),
                    a.step
                )
            });
            verdict(comm, "compare", check)
        }
        Some("verify") => {
            let dir = dir(1);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            let loaded = datarater::checkpoint::load_checkpoint::<f64, MetaAdamState<f64>>(
                ckpt(&dir),
                &configs(),
            );
            let check = match loaded {
                Ok(s) if s.step == 1 && files == ["ckpt.safetensors"] => {
                    Ok("the step-1 checkpoint is intact and alone".to_string())
                }
                Ok(s) => Err(format!("checkpoint of step {}, files {files:?}", s.step)),
                Err(e) => Err(e.to_string()),
            };
            verdict(comm, "verify", check)
        }
        Some("poison") => {
            // A rater damaged in one row: byte BYTE's token embedding is NaN, so exactly
            // the sequences holding that byte score NaN (for `datarater score`'s fault check).
            let [_, input, output, byte] = args.as_slice() else {
                eprintln!("usage: mpi_check poison RATER OUT BYTE");
                return ExitCode::FAILURE;
            };
            let mut f = RaterFile::<f32>::load(input).unwrap();
            let byte: usize = byte.parse().expect("a byte value");
            let emb = f.eta.get_mut("tok_emb").expect("a token embedding");
            let (shape, mut data) = (emb.shape().to_vec(), emb.to_vec());
            data[byte * shape[1]..(byte + 1) * shape[1]].fill(f32::NAN);
            *emb = datarater::Tensor::from_vec(&shape, data).unwrap();
            f.save(output).unwrap();
            ExitCode::SUCCESS
        }

        _ => {
            eprintln!(
                "usage: mpi_check same | save DIR | resume DIR | fault input|nonfinite|panic DIR | verify DIR | poison RATER OUT BYTE"
            );
            ExitCode::FAILURE
        }
    }
}
