//! The memory budget of a meta-gradient: a run that passes it stops with a typed error
//! naming the bytes in use, the mode and the inner step, and frees everything it held
//! (the counting allocator returns to its baseline). One test function, so no other
//! test's allocations run alongside.

use datarater::alloc::{CountingAlloc, current_bytes};
use datarater::meta::InnerLoop;
use datarater::meta::{DataRaterProblem, MeanLoss, MetaRequest, Mode, Rater, Sampler};
use datarater::optim::Optimizer;
use datarater::trainer::TextBatch;
use datarater::{Error, Params, Rng, Tensor};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

mod common;

#[test]
fn a_run_past_its_memory_budget_stops_and_frees_everything() {
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
    let batches: Vec<TextBatch> = (0..4).map(|_| pool.sample(&mut rng).unwrap()).collect();
    let outer = pool.sample(&mut rng).unwrap();
    let request = |mode, memory_budget| MetaRequest {
        problem: &problem,
        eta: &eta,
        theta: &theta,
        state: &state,
        batches: &batches,
        outer_batch: &outer,
        mode,
        memory_budget,
    };
    for mode in [
        Mode::Mixed,
        Mode::Checkpointed { snapshots: 2 },
        Mode::Unrolled,
    ] {
        let free = request(mode, None).run().unwrap();
        let used = free.stats.peak_tape_bytes + free.stats.trajectory_bytes;
        // A budget it fits in changes nothing.
        let fits = request(mode, Some(used + free.stats.trajectory_bytes))
            .run()
            .unwrap();
        assert_eq!(fits.grad, free.grad, "{mode}");
        for budget in [1024, used / 2] {
            let baseline = current_bytes();
            let err = request(mode, Some(budget)).run().unwrap_err();
            assert_eq!(current_bytes(), baseline, "{mode}: everything freed");
            match err {
                Error::MemoryBudget {
                    budget: b,
                    in_use,
                    mode: m,
                    step,
                } => {
                    assert_eq!((b, m), (budget, mode));
                    assert!(in_use > budget, "{mode}: {in_use} <= {budget}");
                    assert!(step < batches.len(), "{mode}: step {step}");
                    let msg = err.to_string();
                    assert!(msg.contains(&format!("inner step {step}")), "{msg}");
                }
                other => panic!("{mode}: expected a budget error, got {other}"),
            }
        }
        // Unrolled keeps the whole window on one tape: half of its peak is passed only
        // after some steps have been recorded.
        if mode == Mode::Unrolled {
            match request(mode, Some(used / 2)).run() {
                Err(Error::MemoryBudget { step, .. }) => assert!(step >= 1, "step {step}"),
                other => panic!("expected a budget error, got {other:?}"),
            }
        }
    }
}
