//! Cost of second-order derivatives relative to a gradient, on the two model families
//! the crate ships, in `f32` and `f64`:
//!
//! * `grad`: value and gradient, one reverse pass (`transforms::value_and_grad`);
//! * `hvp`: value, gradient and Hessian-vector product in one forward-over-reverse pass
//!   (`transforms::hvp`, `Var<Dual<Tensor>>`);
//! * `hvp-keep`: the same pass with checkpointed blocks recorded op by op instead of
//!   rematerialised (`transforms::jvp_grad_with(.., false)`);
//! * `gradgrad`: the same `H v` by reverse-over-reverse (`transforms::hvp_rev_rev`,
//!   `Var<Var<Tensor>>`: a recorded backward pass, differentiated again). It cannot
//!   rematerialise (on a tape over recorded values a block runs inline), so `hvp-keep`
//!   is its like-for-like comparison: the memory gap between `hvp` and `gradgrad` is
//!   part mode, part rematerialisation, and the table shows both parts.
//!
//! Workloads: an MLP `[256, 512, 512, 10]` (GELU) on a batch of 256 with mean
//! cross-entropy, and a byte-level causal transformer LM (`nn::CausalLm`: vocabulary
//! 256, width 64, 2 layers, 4 heads, MLP 256) on 16 sequences of 127 tokens with mean
//! next-token cross-entropy. The transformer's plain forward pass is timed too, to
//! report achieved GFLOP/s.
//!
//! Criterion does the measuring (10 samples, short measurement windows). After it, the
//! bench times each workload again in interleaved rounds (forward, grad, hvp, gradgrad,
//! forward, grad, ...), so that slow changes in machine load hit all quantities alike,
//! and prints a summary table: per workload the median call time of each quantity over
//! the rounds and the ratios `hvp / grad` and `gradgrad / grad`, all from this one run.
//! Before timing a workload the bench checks once that the two HVPs agree, and records
//! the peak heap bytes of one call of each with the counting allocator.
//!
//! ```text
//! cargo bench --bench autodiff                 # everything (about two minutes)
//! cargo bench --bench autodiff -- transformer  # only ids containing "transformer"
//! ```

use criterion::{Criterion, SamplingMode};
use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::autodiff::check::compare;
use datarater::nn::{Activation, CausalLm, Mlp, TransformerConfig, normal};
use datarater::transforms::{hvp, hvp_rev_rev, jvp_grad_with, value_and_grad};
use datarater::{Float, Indices, Params, Result, Rng, Tensor, Value};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A scalar loss written once over the algebra.
trait Workload<F: Float> {
    fn loss<V: Value<F = F>>(&self, p: &Params<V>) -> Result<V>;
    /// Forward pass on plain tensors (what GFLOP/s is measured on).
    fn forward(&self, p: &Params<Tensor<F>>) -> Result<Tensor<F>> {
        self.loss(p)
    }
    /// Matmul FLOPs of one forward pass (`2 m n k` per matmul), if counted.
    fn matmul_flops(&self) -> Option<f64> {
        None
    }
}

struct MlpTask<F: Float> {
    mlp: Mlp,
    x: Tensor<F>,
    y: Indices,
}

impl<F: Float> Workload<F> for MlpTask<F> {
    fn loss<V: Value<F = F>>(&self, p: &Params<V>) -> Result<V> {
        let logits = self.mlp.forward(p, &V::constant(self.x.clone()))?;
        Ok(logits.cross_entropy(&self.y)?.mean_all())
    }
}

struct LmTask {
    lm: CausalLm,
    inputs: Indices,
    targets: Indices,
}

impl<F: Float> Workload<F> for LmTask {
    fn loss<V: Value<F = F>>(&self, p: &Params<V>) -> Result<V> {
        Ok(self
            .lm
            .per_example_loss(p, &self.inputs, &self.targets)?
            .mean_all())
    }
    fn forward(&self, p: &Params<Tensor<F>>) -> Result<Tensor<F>> {
        self.lm.logits(p, &self.inputs)
    }
    fn matmul_flops(&self) -> Option<f64> {
        let c = &self.lm.cfg;
        let (b, t) = (self.inputs.shape()[0] as f64, self.inputs.shape()[1] as f64);
        let (d, ff, h, vocab) = (
            c.d_model as f64,
            c.d_ff as f64,
            c.n_heads as f64,
            c.vocab as f64,
        );
        let dh = d / h;
        let rows = b * t;
        let mm = |m: f64, n: f64, k: f64| 2.0 * m * n * k;
        let layer = mm(rows, 3.0 * d, d) // qkv projection
            + 2.0 * b * h * mm(t, t, dh) // scores q k^T and probabilities @ v (full, the mask does not skip work)
            + mm(rows, d, d) // attention output projection
            + mm(rows, ff, d) // MLP up
            + mm(rows, d, ff); // MLP down
        Some(c.n_layers as f64 * layer + mm(rows, vocab, d)) // + LM head
    }
}

/// Interleaved timing rounds per workload for the summary table (1 in `--test` mode).
const ROUNDS: usize = 9;

#[derive(Default)]
struct Facts {
    /// Rows in first-run order.
    order: Vec<String>,
    /// Per-call wall times from the interleaved rounds, by (row, quantity).
    times: BTreeMap<(String, &'static str), Vec<f64>>,
    flops: BTreeMap<String, f64>,
    peak: BTreeMap<(String, &'static str), usize>,
    agree: BTreeMap<String, f64>,
}

static FACTS: Mutex<Option<Facts>> = Mutex::new(None);

fn with_facts<T>(f: impl FnOnce(&mut Facts) -> T) -> T {
    let mut g = FACTS.lock().expect("not poisoned");
    f(g.get_or_insert_with(Facts::default))
}

/// Benchmark ids are `row/quantity`. Positional command-line arguments filter them by
/// substring (criterion treats them as regexes; plain words behave the same), so a
/// filtered run skips the untimed checks and the table rounds of filtered-out workloads.
fn wanted(row: &str) -> bool {
    // Criterion options that take a value (the value is not a filter).
    const WITH_VALUE: [&str; 14] = [
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--color",
        "--output-format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return false;
    }
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if a.starts_with('-') {
            skip_next = WITH_VALUE.contains(&a.as_str());
        } else {
            filters.push(a.as_str());
        }
    }
    let ids = ["forward", "grad", "hvp", "hvp-keep", "gradgrad"].map(|w| format!("{row}/{w}"));
    filters.is_empty() || filters.iter().any(|f| ids.iter().any(|id| id.contains(f)))
}

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

fn bench_workload<F: Float, W: Workload<F>>(
    c: &mut Criterion,
    row: &str,
    w: &W,
    p: &Params<Tensor<F>>,
    v: &Params<Tensor<F>>,
) {
    if !wanted(row) {
        return;
    }
    // The quantities, as closures over the same function.
    let grad = || value_and_grad(|q| w.loss(q), p).expect("grad");
    let fwd_over_rev = || hvp(|q| w.loss(q), p, v).expect("hvp");
    let fwd_over_rev_keep =
        || jvp_grad_with(|g| w.loss(&g[0]), &[p], &[Some(v)], false).expect("hvp, no remat");
    let rev_over_rev = || hvp_rev_rev(|q| w.loss(q), p, v).expect("grad of grad");

    // Once, untimed: both HVPs agree, and the peak heap of each call.
    let (_, peak_g) = measure_peak(grad);
    let ((_, _, hv), peak_h) = measure_peak(fwd_over_rev);
    let (_, peak_hk) = measure_peak(fwd_over_rev_keep);
    let (hv2, peak_gg) = measure_peak(rev_over_rev);
    let rel = compare(&hv.cast::<f64>(), &hv2.cast::<f64>())
        .expect("same names")
        .rel;
    with_facts(|facts| {
        facts.order.push(row.to_string());
        facts.agree.insert(row.to_string(), rel);
        for (what, b) in [
            ("grad", peak_g),
            ("hvp", peak_h),
            ("hvp-keep", peak_hk),
            ("gradgrad", peak_gg),
        ] {
            facts.peak.insert((row.to_string(), what), b);
        }
        if let Some(fl) = w.matmul_flops() {
            facts.flops.insert(row.to_string(), fl);
        }
    });

    let forward = || w.forward(p).expect("forward");
    let mut g = c.benchmark_group(row);
    g.sampling_mode(SamplingMode::Flat);
    if w.matmul_flops().is_some() {
        g.bench_function("forward", |b| b.iter(forward));
    }
    g.bench_function("grad", |b| b.iter(grad));
    g.bench_function("hvp", |b| b.iter(fwd_over_rev));
    g.bench_function("hvp-keep", |b| b.iter(fwd_over_rev_keep));
    g.bench_function("gradgrad", |b| b.iter(rev_over_rev));
    g.finish();

    // The summary table's timings: interleaved rounds.
    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut time = |what: &'static str, f: &dyn Fn()| {
        let t = Instant::now();
        f();
        times
            .entry(what)
            .or_default()
            .push(t.elapsed().as_secs_f64());
    };
    for _ in 0..if test_mode() { 1 } else { ROUNDS } {
        if w.matmul_flops().is_some() {
            time("forward", &|| drop(black_box(forward())));
        }
        time("grad", &|| drop(black_box(grad())));
        time("hvp", &|| drop(black_box(fwd_over_rev())));
        time("hvp-keep", &|| drop(black_box(fwd_over_rev_keep())));
        time("gradgrad", &|| drop(black_box(rev_over_rev())));
    }
    with_facts(|facts| {
        for (what, v) in times {
            facts.times.insert((row.to_string(), what), v);
        }
    });
}

fn random_tangent<F: Float>(p: &Params<Tensor<F>>, rng: &mut Rng) -> Params<Tensor<F>> {
    p.map(|t| normal(rng, t.shape(), 1.0))
}

fn mlp<F: Float>(c: &mut Criterion) {
    let (batch, sizes) = (256, [256, 512, 512, 10]);
    let mut rng = Rng::new(1);
    let task = MlpTask::<F> {
        mlp: Mlp::new(&sizes, Activation::Gelu).expect("valid sizes"),
        x: normal(&mut rng, &[batch, sizes[0]], 1.0),
        y: Indices::new(&[batch], (0..batch).map(|_| rng.below(sizes[3])).collect())
            .expect("shape"),
    };
    let p = task.mlp.init::<F>(&mut rng);
    let v = random_tangent(&p, &mut rng);
    let row = format!("mlp-{}", std::any::type_name::<F>());
    bench_workload(c, &row, &task, &p, &v);
}

fn transformer<F: Float>(c: &mut Criterion) {
    let (batch, seq) = (16, 127);
    let cfg = TransformerConfig::new(64, 2, 4, 128).with_d_ff(256);
    let lm = CausalLm::new(cfg).expect("valid config");
    let mut rng = Rng::new(2);
    // Next-byte targets: the inputs shifted by one inside a random 128-byte window.
    let bytes: Vec<Vec<usize>> = (0..batch)
        .map(|_| (0..=seq).map(|_| rng.below(256)).collect())
        .collect();
    let inputs = Indices::new(
        &[batch, seq],
        bytes.iter().flat_map(|s| s[..seq].to_vec()).collect(),
    )
    .expect("shape");
    let targets = Indices::new(
        &[batch, seq],
        bytes.iter().flat_map(|s| s[1..].to_vec()).collect(),
    )
    .expect("shape");
    let task = LmTask {
        lm,
        inputs,
        targets,
    };
    let p = task.lm.init::<F>(&mut rng);
    let v = random_tangent(&p, &mut rng);
    let row = format!("transformer-{}", std::any::type_name::<F>());
    bench_workload(c, &row, &task, &p, &v);
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn summary() {
    let facts = FACTS.lock().expect("not poisoned");
    let Some(facts) = facts.as_ref() else { return };
    let med = |row: &str, what: &'static str| {
        facts
            .times
            .get(&(row.to_string(), what))
            .and_then(|v| median(v))
    };
    let rounds = facts.times.values().map(Vec::len).max().unwrap_or(0);
    println!(
        "\n=== summary: median wall time per call over {rounds} interleaved rounds (this run) ==="
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>9}",
        "workload",
        "grad ms",
        "hvp ms",
        "keep ms",
        "gg ms",
        "hvp/grad",
        "keep/grad",
        "gg/grad",
        "grad MiB",
        "hvp MiB",
        "keep MiB",
        "gg MiB",
        "hvp agree"
    );
    for row in &facts.order {
        let (Some(g), Some(h), Some(hk), Some(gg)) = (
            med(row, "grad"),
            med(row, "hvp"),
            med(row, "hvp-keep"),
            med(row, "gradgrad"),
        ) else {
            continue;
        };
        let peak = |what| mib(facts.peak[&(row.clone(), what)]);
        println!(
            "{:<16} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>7.2}x {:>7.2}x {:>7.2}x | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>9.1e}",
            row,
            g * 1e3,
            h * 1e3,
            hk * 1e3,
            gg * 1e3,
            h / g,
            hk / g,
            gg / g,
            peak("grad"),
            peak("hvp"),
            peak("hvp-keep"),
            peak("gradgrad"),
            facts.agree[row],
        );
    }
    println!("MiB: peak heap of one call above the live bytes at the call (counting allocator).");
    println!(
        "hvp rematerialises checkpointed blocks; keep (hvp-keep) records them op by op, as gradgrad must: compare keep with gg for the mode alone."
    );
    println!(
        "hvp agree: max relative difference between the forward-over-reverse and reverse-over-reverse H v."
    );
    for row in &facts.order {
        if let (Some(fl), Some(t)) = (facts.flops.get(row), med(row, "forward")) {
            println!(
                "{row}: forward pass {:.2} ms, {:.3} GFLOP of matmuls -> {:.2} GFLOP/s (counts matmul FLOPs only, 2mnk per matmul)",
                t * 1e3,
                fl / 1e9,
                fl / t / 1e9
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    mlp::<f32>(&mut c);
    mlp::<f64>(&mut c);
    transformer::<f32>(&mut c);
    transformer::<f64>(&mut c);
    c.final_summary();
    summary();
}
