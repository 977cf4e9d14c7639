//! How close the engine runs to the machine's gemm: achieved GFLOP/s of a causal LM's
//! forward pass, gradient and forward-over-reverse pass (gradient plus HVP), and of the
//! forward-over-reverse pass that gives the HVP alone (`transforms::grad_tangents_with`,
//! the unit of work of a mixed-mode meta-gradient's backward step), against two roofs, each replaying exactly
//! the products the pass ran, with the same thread pool, right after each timed pass
//! (medians over `--reps` rounds): the crate's own gemm (`flops::gemm_peak`), and the
//! best gemm the machine offers the process (`flops::gemm_roof`: the fastest of every
//! kernel it can run, `flops::GemmKernel::available`, measured in the same run).
//!
//! Defaults: the scale workload (f32, width 256, 4 layers, 4 heads, MLP 1024, 256-byte
//! sequences, batch 8; about 3.4M parameters), on one thread and on all threads.
//!
//! ```text
//! cargo run --release --example roofline [-- --d 256 --layers 4 --heads 4 --seq 256 --batch 8 --reps 3 --f64]
//! ```

use datarater::autodiff::flops::{self, FlopCount};
use datarater::nn::{CausalLm, TransformerConfig};
use datarater::transforms::{grad_tangents_with, jvp_grad_with, value_and_grad};
use datarater::{Dual, Error, Float, Indices, Params, Result, Rng, Tensor, Value, Var};
use std::time::Instant;

/// One timed pass.
type Pass<'a> = Box<dyn Fn() -> Result<()> + 'a>;

fn flag(args: &[String], name: &'static str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .filter(|&v| v > 0)
            .ok_or(Error::Config {
                field: name,
                reason: "needs a positive integer".into(),
            }),
    }
}

/// The work of one call (a warm-up), then `reps` rounds of one timed call followed by
/// the roofs: the crate's gemm, then the best kernel available, replaying exactly that
/// call's products (best of two replays each). Returns the median seconds, the work and
/// the median roofs in GFLOP/s (own, best).
/// Measuring each call and its roof back to back keeps the ratio honest on a shared
/// host whose speed drifts between runs (the roof moved by 2x across earlier runs).
fn measure<F: Float, T>(
    reps: usize,
    mut f: impl FnMut() -> Result<T>,
) -> Result<(f64, FlopCount, f64, f64)> {
    flops::reset();
    let (r, work) = flops::count(&mut f);
    r?;
    let shapes = flops::gemm_shapes();
    let (mut secs, mut roof, mut best) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        secs.push(t.elapsed().as_secs_f64());
        roof.push(flops::gemm_peak::<F>(&shapes, 0.0).gflops());
        best.push(flops::gemm_roof::<F>(&shapes, 0.0).gflops());
    }
    Ok((median(secs), work, median(roof), median(best)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run<F: Float>(args: &[String]) -> Result<()> {
    let (d, layers, heads) = (
        flag(args, "--d", 256)?,
        flag(args, "--layers", 4)?,
        flag(args, "--heads", 4)?,
    );
    let (seq, batch, reps) = (
        flag(args, "--seq", 256)?,
        flag(args, "--batch", 8)?,
        flag(args, "--reps", 3)?,
    );
    let lm = CausalLm::new(TransformerConfig::new(d, layers, heads, seq))?;
    let mut rng = Rng::new(0);
    let p: Params<Tensor<F>> = lm.init(&mut rng);
    let v: Params<Tensor<F>> = lm.init(&mut rng);
    let mut ids = || {
        Indices::new(
            &[batch, seq],
            (0..batch * seq).map(|_| rng.below(256)).collect(),
        )
    };
    let (x, y) = (ids()?, ids()?);
    println!(
        "causal LM: width {d}, {layers} layers, {heads} heads, MLP {}, seq {seq}, batch {batch}, {} parameters, {}",
        4 * d,
        p.numel(),
        std::any::type_name::<F>()
    );
    println!(
        "{:>7} {:>13} | {:>9} {:>10} {:>9} | {:>10} {:>7} | {:>10} {:>7} | {:>12}",
        "threads",
        "pass",
        "ms",
        "GFLOP",
        "GFLOP/s",
        "own GF/s",
        "of own",
        "best GF/s",
        "of best",
        "other Melem"
    );
    println!(
        "gemm kernels this process can run: {:?}; the crate uses {:?}",
        flops::GemmKernel::available(),
        flops::GemmKernel::best()
    );
    let all = rayon::current_num_threads();
    let mut counts = vec![1];
    if all > 1 {
        counts.push(all);
    }
    for threads in counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Usage(e.to_string()))?;
        pool.install(|| -> Result<()> {
            let f = |g: &[Params<Var<Dual<Tensor<F>>>>]| {
                Ok(lm.per_example_loss(&g[0], &x, &y)?.mean_all())
            };
            let passes: [(&str, Pass); 4] = [
                ("forward", Box::new(|| lm.logits(&p, &x).map(drop))),
                ("gradient", Box::new(|| {
                        value_and_grad(|q| Ok(lm.per_example_loss(q, &x, &y)?.mean_all()), &p)
                            .map(drop)
                    })),
                (
                    "fwd-over-rev",
                    Box::new(|| jvp_grad_with(f, &[&p], &[Some(&v)], false).map(drop)),
                ),
                (
                    "HVP alone",
                    Box::new(|| grad_tangents_with(f, &[&p], &[Some(&v)], false).map(drop)),
                ),
            ];
            for (name, f) in passes {
                let (secs, work, own, best) = measure::<F, _>(reps, &f)?;
                let rate = work.matmul as f64 / secs / 1e9;
                println!(
                    "{threads:>7} {name:>13} | {:>9.1} {:>10.2} {:>9.1} | {:>10.1} {:>6.0}% | {:>10.1} {:>6.0}% | {:>12.1}",
                    secs * 1e3,
                    work.matmul as f64 / 1e9,
                    rate,
                    own,
                    100.0 * rate / own,
                    best,
                    100.0 * rate / best,
                    work.other as f64 / 1e6
                );
            }
            Ok(())
        })?;
    }
    println!(
        "GFLOP/s counts matmul FLOPs only (2mnk); own = the crate's gemm, best = the fastest kernel the process can run, each replayed on the same products, same threads, right after each timed pass (medians of {reps})"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--f64") {
        run::<f64>(&args)
    } else {
        run::<f32>(&args)
    }
}
