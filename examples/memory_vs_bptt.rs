//! Peak memory and wall time of one meta-gradient, unrolled reverse-over-reverse vs
//! mixed mode vs checkpointed mixed mode, for window lengths T = 1..32.
//!
//! Workload (f32): inner model a byte-level causal pre-LN transformer (vocabulary 256,
//! width 64, 2 layers, 4 heads, MLP 4x, GELU, learned positions) on sequences of 128
//! bytes (127 next-byte predictions), batch 16, Adam (lr 1e-3); rater a bidirectional
//! transformer (width 32, 1 layer, 2 heads) mean-pooled to one score; outer batch 16.
//!
//! Peak bytes are real heap bytes from the counting global allocator, measured around
//! the meta-gradient call (the model, data and trajectory inputs are excluded: they are
//! the same for every mode).
//!
//! Threads: the mixed and checkpointed modes split each inner step's passes over the
//! batch's examples, one slice per rayon thread ([`MetaProblem::sub_batch`]); the
//! unrolled mode is one tape, recorded and swept in order (only its batched attention
//! products use several threads). Set `RAYON_NUM_THREADS=1` to compare them on one
//! thread.
//!
//! ```text
//! cargo run --release --example memory_vs_bptt [-- --steps 1,2,4,8,16,32 --reps 3 --f64]
//! RAYON_NUM_THREADS=1 cargo run --release --example memory_vs_bptt
//! ```
//!
//! [`MetaProblem::sub_batch`]: datarater::meta::MetaProblem::sub_batch

use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::data::Corpus;
use datarater::meta::{DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, Mode, Rater, Sampler};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{TextBatch, TextLm, TextPool, TextRater};
use datarater::{Float, Params, Result, Rng, Tensor};
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn run<F: Float>(steps: &[usize], reps: usize) -> Result<()> {
    let corpus = Corpus::embedded();
    let pool = Arc::new(corpus.sequences(128)?);
    let lm = CausalLm::new(TransformerConfig {
        vocab: 256,
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        d_ff: 256,
        max_len: 128,
        causal: true,
    })?;
    let scorer = SequenceScorer::new(TransformerConfig {
        vocab: 256,
        d_model: 32,
        n_layers: 1,
        n_heads: 2,
        d_ff: 128,
        max_len: 128,
        causal: false,
    })?;
    let inner = TextLm::new(lm.clone(), Adam::<F>::new(F::c(1e-3)))?;
    let pool = TextPool::new(pool, 16)?;
    let rater = TextRater { scorer };
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    // The reference the modes' accuracy is measured against: mixed mode in f64 on one
    // thread, from the same starting point.
    let inner64 = TextLm::new(lm, Adam::<f64>::new(1e-3))?;
    let problem64 = DataRaterProblem {
        inner: &inner64,
        rater: &rater,
        outer: &MeanLoss,
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<F>> = inner.init(&mut rng);
    let eta: Params<Tensor<F>> = rater.init(&mut rng);
    let state = inner.opt.init(&theta);
    println!(
        "precision {}; inner params {} ({:.2} MiB), rater params {}",
        std::any::type_name::<F>(),
        theta.numel(),
        mib(theta.nbytes()),
        eta.numel()
    );
    println!(
        "{:>3} | {:>12} {:>12} {:>12} | {:>8} | {:>10} {:>10} {:>10} | {:>12}",
        "T",
        "unrolled MiB",
        "mixed MiB",
        "ckpt MiB",
        "unr/mix",
        "unrolled s",
        "mixed s",
        "ckpt s",
        "mixed faster"
    );
    for &t in steps {
        let batches: Vec<TextBatch> = (0..t)
            .map(|_| pool.sample(&mut rng))
            .collect::<Result<_>>()?;
        let outer = pool.sample(&mut rng)?;
        let mut row = Vec::new();
        let mut grads = Vec::new();
        for mode in [Mode::Unrolled, Mode::Mixed, Mode::Checkpointed { every: 0 }] {
            let (mut peak, mut secs) = (0, Vec::new());
            for _ in 0..reps {
                let start = Instant::now();
                let request = MetaRequest {
                    problem: &problem,
                    eta: &eta,
                    theta: &theta,
                    state: &state,
                    batches: &batches,
                    outer_batch: &outer,
                    mode,
                    memory_budget: None,
                };
                let (r, p) = measure_peak(|| request.run());
                secs.push(start.elapsed().as_secs_f64());
                peak = peak.max(p);
                grads.push(r?.grad);
            }
            row.push((peak, median(secs)));
        }
        let (u, m, c) = (row[0], row[1], row[2]);
        let (theta64, eta64) = (theta.cast(), eta.cast());
        let state64 = inner64.opt.init(&theta64);
        let exact = one_thread.install(|| {
            MetaRequest {
                problem: &problem64,
                eta: &eta64,
                theta: &theta64,
                state: &state64,
                batches: &batches,
                outer_batch: &outer,
                mode: Mode::Mixed,
                memory_budget: None,
            }
            .run()
        })?;
        let err = |i: usize| -> Result<f64> {
            Ok(datarater::autodiff::check::compare(&grads[i * reps].cast(), &exact.grad)?.rel)
        };
        println!(
            "{t:>3} | {:>12.1} {:>12.1} {:>12.1} | {:>7.1}x | {:>10.3} {:>10.3} {:>10.3} | {:>11.2}x   (rel. error vs f64: {:.1e} {:.1e} {:.1e})",
            mib(u.0),
            mib(m.0),
            mib(c.0),
            u.0 as f64 / m.0 as f64,
            u.1,
            m.1,
            c.1,
            u.1 / m.1,
            err(0)?,
            err(1)?,
            err(2)?
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let steps: Vec<usize> = value("--steps")
        .unwrap_or_else(|| "1,2,4,8,16,32".into())
        .split(',')
        .map(|s| {
            s.trim().parse().map_err(|_| datarater::Error::Config {
                field: "--steps",
                reason: format!("`{s}` is not a number"),
            })
        })
        .collect::<Result<_>>()?;
    let reps: usize = value("--reps").map_or(Ok(3), |s| {
        s.parse().map_err(|_| datarater::Error::Config {
            field: "--reps",
            reason: format!("`{s}` is not a number"),
        })
    })?;
    println!(
        "memory_vs_bptt: one meta-gradient of the held-out loss w.r.t. the rater, through T Adam steps"
    );
    println!(
        "inner: causal pre-LN transformer, vocab 256, width 64, 2 layers, 4 heads, MLP 256, GELU, learned positions; 128-byte sequences, batch 16, Adam lr 1e-3"
    );
    println!(
        "rater: bidirectional transformer, width 32, 1 layer, 2 heads, mean-pooled; outer batch 16; checkpointed mode stores every ceil(sqrt(T))-th state"
    );
    println!(
        "peak = real heap bytes (counting allocator) above the live bytes at the call; time = median of {reps} runs"
    );
    println!(
        "threads: {} (mixed/ckpt split each step's passes over the examples; unrolled is one tape)",
        rayon::current_num_threads()
    );
    println!(
        "rel. error vs f64: max-norm relative distance of unrolled, mixed, ckpt from an f64 mixed-mode reference\n"
    );
    if args.iter().any(|a| a == "--f64") {
        run::<f64>(&steps, reps)
    } else {
        run::<f32>(&steps, reps)
    }
}
