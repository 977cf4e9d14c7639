//! The memory budget of a meta-gradient is an upper bound on what the run allocates,
//! measured from outside with the counting allocator (real heap bytes above the
//! inputs), in every mode and for several windows:
//! - a run with budget `B` (completing or stopping) never allocates more than `B` plus
//!   one step's working set (`MetaStats::peak_step_bytes`, the slack the docs state:
//!   the first step of each kind has nothing to predict it);
//! - `MetaStats::peak_bytes` is the smallest budget the run completes under (one byte
//!   less stops it), and is within a factor of 2 of the measured peak;
//! - a run that stops returns a typed error naming the budget, the bytes, the mode and
//!   the inner step, and frees everything it held.
//!
//! One test function, so no other test's allocations run alongside.

use datarater::alloc::{CountingAlloc, current_bytes, measure_peak};
use datarater::meta::{
    DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, Mode, Rater, Sampler, Snapshots,
};
use datarater::optim::Optimizer;
use datarater::trainer::TextBatch;
use datarater::{Error, Params, Rng, Tensor};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

mod common;

#[test]
fn the_memory_budget_bounds_the_real_heap() {
    let (pool, inner, rater) = common::tiny_text(6);
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<f64>> = inner.init(&mut rng);
    let eta: Params<Tensor<f64>> = rater.init(&mut rng);
    let state = inner.opt.init(&theta);
    let batches: Vec<TextBatch> = (0..6).map(|_| pool.sample(&mut rng).unwrap()).collect();
    let outer = pool.sample(&mut rng).unwrap();
    // One thread: the shards run one after another, so the real peak does not depend on
    // how rayon schedules them (the budget counts them all alive at once).
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let run = |mode, steps: usize, budget: Option<usize>| {
        let base = current_bytes();
        let (r, peak) = measure_peak(|| {
            one.install(|| {
                let req =
                    MetaRequest::new(&problem, &eta, &theta, &state, &batches[..steps], &outer)
                        .mode(mode);
                match budget {
                    Some(b) => req.memory_budget(b).run(),
                    None => req.run(),
                }
            })
        });
        if r.is_err() {
            assert_eq!(
                current_bytes(),
                base,
                "{mode}, T = {steps}: everything freed"
            );
        }
        (r, peak)
    };
    // The first run on a thread makes what a thread keeps for the process's life (the
    // gemm kernels' packing workspace): not the run's memory, so not measured.
    run(Mode::Mixed, 1, None).0.unwrap();
    for mode in [
        Mode::Mixed,
        Mode::Checkpointed {
            snapshots: Snapshots::AtMost(2),
        },
        Mode::Checkpointed {
            snapshots: Snapshots::Auto,
        },
        Mode::Unrolled,
    ] {
        for steps in [1, 3, 6] {
            let label = format!("{mode}, T = {steps}");
            let (free, real) = run(mode, steps, None);
            let free = free.unwrap();
            let (counted, slack) = (free.stats.peak_bytes, free.stats.peak_step_bytes);
            println!("{label}: real peak {real} B, counted {counted} B, one step {slack} B");
            assert!(
                real <= counted + slack && counted <= 2 * real,
                "{label}: counted {counted} B vs real {real} B"
            );
            // The counted peak is the smallest budget that completes.
            let (fits, _) = run(mode, steps, Some(counted));
            assert_eq!(fits.unwrap().grad, free.grad, "{label}");
            match run(mode, steps, Some(counted - 1)).0 {
                Err(Error::MemoryBudget { .. }) => {}
                other => panic!("{label}: one byte less must stop, got {other:?}"),
            }
            for fraction in [0.02, 0.2, 0.5, 0.8, 0.95, 1.2] {
                let budget = (fraction * real as f64) as usize;
                let (r, peak) = run(mode, steps, Some(budget));
                assert!(
                    peak <= budget + slack,
                    "{label}, budget {budget} B: the heap reached {peak} B (slack {slack} B)"
                );
                match r {
                    Ok(r) => assert_eq!(r.grad, free.grad, "{label}"),
                    Err(
                        ref err @ Error::MemoryBudget {
                            budget: b,
                            in_use,
                            mode: m,
                            step,
                        },
                    ) => {
                        assert_eq!((b, m), (budget, mode), "{label}");
                        assert!(in_use > budget, "{label}: {in_use} <= {budget}");
                        assert!(step <= steps, "{label}: step {step}");
                        let msg = err.to_string();
                        assert!(msg.contains(&format!("inner step {step}")), "{msg}");
                    }
                    Err(other) => panic!("{label}: expected a budget error, got {other}"),
                }
            }
        }
    }
}
