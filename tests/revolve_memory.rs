//! The real heap peak (counting allocator) follows the stored states. Checkpointed mode:
//! with a few snapshots a window of 16 steps costs little more than one step, while
//! storing every state costs about one inner state per step more. Mixed mode: one
//! gradient per step and a few states.
//!
//! A binary of its own with a single test, so no other test allocates concurrently.

use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::meta::{
    DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, Mode, Rater, Sampler, Snapshots,
};
use datarater::optim::Optimizer;
use datarater::trainer::TextBatch;
use datarater::{Params, Rng, Tensor};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

mod common;

#[test]
fn peak_memory_follows_the_stored_states() {
    let (pool, inner, rater) = common::tiny_text(4);
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<f64>> = inner.init(&mut rng);
    let eta: Params<Tensor<f64>> = rater.init(&mut rng);
    let state = inner.opt.init(&theta);
    // One inner state: theta and Adam's two moments.
    let x = 3 * theta.nbytes();
    let batches: Vec<TextBatch> = (0..16).map(|_| pool.sample(&mut rng).unwrap()).collect();
    let outer = pool.sample(&mut rng).unwrap();
    // One thread, so the peaks do not depend on how work is scheduled.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let peak = |steps: usize, mode| {
        let (r, peak) = measure_peak(|| {
            one.install(|| {
                MetaRequest::new(&problem, &eta, &theta, &state, &batches[..steps], &outer)
                    .mode(mode)
                    .run()
                    .unwrap()
            })
        });
        (r.stats, peak)
    };
    // Step 0 needs no forward-over-reverse tape (theta_0 does not depend on eta), so
    // the window of two steps is the one whose working set longer windows share.
    let (_, two_steps) = peak(
        2,
        Mode::Checkpointed {
            snapshots: Snapshots::AtMost(2),
        },
    );
    let (few, few_peak) = peak(
        16,
        Mode::Checkpointed {
            snapshots: Snapshots::AtMost(2),
        },
    );
    let (all, all_peak) = peak(
        16,
        Mode::Checkpointed {
            snapshots: Snapshots::AtMost(16),
        },
    );
    let (_, mixed_two) = peak(2, Mode::Mixed);
    let (mixed, mixed_peak) = peak(16, Mode::Mixed);
    println!(
        "state {x} B; peaks: T=2 {two_steps}, T=16 with 2 snapshots {few_peak}, with 16 {all_peak}, mixed T=2 {mixed_two}, T=16 {mixed_peak}"
    );
    assert_eq!((few.stored_states, all.stored_states), (2, 16));
    // Two snapshots: the second stored state and the one being run forward are about
    // what T = 2 holds anyway (its two stored states, one borrowed).
    assert!(
        few_peak < two_steps + 2 * x,
        "2 snapshots: {few_peak} B vs {two_steps} B at T = 2 (state {x} B)"
    );
    // Mixed mode keeps every gradient but only 3 states (x_0 among them) at T = 16:
    // from T = 2 it grows by 14 gradients and at most 3 states (2 snapshots and a
    // working state), where storing every state would add 14 states more.
    let g = theta.nbytes();
    assert_eq!(mixed.stored_states, 3);
    assert!(
        mixed_peak > mixed_two + 12 * g && mixed_peak < mixed_two + 14 * g + 3 * x,
        "mixed: {mixed_peak} B at T = 16 vs {mixed_two} B at T = 2 (gradient {g} B, state {x} B)"
    );
    // Every state stored: 14 states more than with 2 snapshots.
    assert!(
        all_peak > few_peak + 12 * x,
        "16 snapshots: {all_peak} B vs {few_peak} B with 2 (state {x} B)"
    );
}
