//! Wall time of one DataRater meta-gradient through T = 2 Adam steps, mixed mode
//! (forward-over-reverse backward sweep) vs the unrolled reverse-over-reverse baseline,
//! on a small causal transformer LM rated by a small bidirectional transformer (f32).
//!
//! The problem is written directly against the public `meta::MetaProblem` trait:
//! `L(theta, eta) = sum_i softmax_i(rater(eta)) * lm_loss_i(theta)`, outer loss the mean
//! LM loss on a held-out batch. `mixed` and `unrolled` see only those two losses (the
//! engines' generic path); `mixed-weighted` also gets the weighted form and sub-batches
//! (`example_weights`, `example_losses`, `split_batch`), as `DataRaterProblem` gives them.
//!
//! ```text
//! cargo bench --bench meta
//! ```

use criterion::{BenchmarkId, Criterion, SamplingMode};
use datarater::meta::{MetaProblem, MetaRequest, Mode, slices, weighted_sum};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::{Indices, Params, Result, Rng, Tensor, Value};
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Batch {
    inputs: Indices,
    targets: Indices,
}

/// The DataRater objective; `weighted` also exposes its weighted form and sub-batches
/// (as `DataRaterProblem` does), otherwise the engines see only the two losses.
struct Problem {
    lm: CausalLm,
    rater: SequenceScorer,
    opt: Adam<f32>,
    weighted: bool,
}

impl MetaProblem<f32> for Problem {
    type Batch = Batch;
    type Opt = Adam<f32>;
    fn optimizer(&self) -> &Adam<f32> {
        &self.opt
    }
    fn inner_loss<V: Value<F = f32>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        b: &Batch,
    ) -> Result<V> {
        let w = self.rater.scores(eta, &b.inputs)?.softmax(0);
        weighted_sum(&w, &self.lm.per_example_loss(theta, &b.inputs, &b.targets)?)
    }
    fn outer_loss<V: Value<F = f32>>(&self, theta: &Params<V>, b: &Batch) -> Result<V> {
        Ok(self
            .lm
            .per_example_loss(theta, &b.inputs, &b.targets)?
            .mean_all())
    }
    fn example_weights<V: Value<F = f32>>(&self, eta: &Params<V>, b: &Batch) -> Option<Result<V>> {
        self.weighted
            .then(|| Ok(self.rater.scores(eta, &b.inputs)?.softmax(0)))
    }
    fn example_losses<V: Value<F = f32>>(&self, theta: &Params<V>, b: &Batch) -> Option<Result<V>> {
        self.weighted
            .then(|| self.lm.per_example_loss(theta, &b.inputs, &b.targets))
    }
    fn split_batch(&self, b: &Batch, size: usize) -> Option<Vec<Batch>> {
        slices(b.inputs.shape()[0], size)
            .map(|r| {
                Some(Batch {
                    inputs: b.inputs.rows(r.clone()).ok()?,
                    targets: b.targets.rows(r).ok()?,
                })
            })
            .collect()
    }
}

fn batch(rng: &mut Rng, n: usize, seq: usize) -> Batch {
    let bytes: Vec<Vec<usize>> = (0..n)
        .map(|_| (0..=seq).map(|_| rng.below(256)).collect())
        .collect();
    let idx = |f: &dyn Fn(&Vec<usize>) -> Vec<usize>| {
        Indices::new(&[n, seq], bytes.iter().flat_map(f).collect()).expect("shape")
    };
    Batch {
        inputs: idx(&|s| s[..seq].to_vec()),
        targets: idx(&|s| s[1..].to_vec()),
    }
}

static TIMES: Mutex<Vec<(&str, f64)>> = Mutex::new(Vec::new());

fn main() {
    let (n, seq, steps) = (8, 63, 2);
    let cfg = |d_model, n_heads, causal| {
        TransformerConfig::new(d_model, 1, n_heads, 64).with_causal(causal)
    };
    let problem = Problem {
        lm: CausalLm::new(cfg(32, 2, true)).expect("valid"),
        rater: SequenceScorer::new(cfg(16, 2, false)).expect("valid"),
        opt: Adam::new(1e-3),
        weighted: false,
    };
    let weighted = Problem {
        lm: problem.lm.clone(),
        rater: problem.rater.clone(),
        opt: problem.opt,
        weighted: true,
    };
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<f32>> = problem.lm.init(&mut rng);
    let eta: Params<Tensor<f32>> = problem.rater.init(&mut rng);
    let state = problem.opt.init(&theta);
    let batches: Vec<Batch> = (0..steps).map(|_| batch(&mut rng, n, seq)).collect();
    let outer = batch(&mut rng, n, seq);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut g = c.benchmark_group("meta-gradient-T2-f32");
    g.sampling_mode(SamplingMode::Flat);
    let runs = [
        ("mixed", Mode::Mixed, &problem),
        ("mixed-weighted", Mode::Mixed, &weighted),
        ("unrolled", Mode::Unrolled, &problem),
    ];
    for (name, mode, p) in runs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let request = MetaRequest::new(p, &eta, &theta, &state, &batches, &outer);
                    black_box(request.mode(mode).run().expect("meta-gradient"));
                    let e = t.elapsed();
                    total += e;
                    TIMES
                        .lock()
                        .expect("not poisoned")
                        .push((name, e.as_secs_f64()));
                }
                total
            })
        });
    }
    g.finish();
    c.final_summary();

    let times = TIMES.lock().expect("not poisoned");
    let med = |name: &str| {
        let mut v: Vec<f64> = times
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, t)| *t)
            .collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    if let (Some(m), Some(w), Some(u)) = (med("mixed"), med("mixed-weighted"), med("unrolled")) {
        println!(
            "\nmeta-gradient, T = {steps}, batch {n} x {seq} tokens, {} threads (median per call, this run):",
            rayon::current_num_threads()
        );
        println!(
            "  mixed {:.2} ms, mixed-weighted {:.2} ms, unrolled {:.2} ms; mixed / unrolled = {:.2}x, mixed-weighted / unrolled = {:.2}x",
            m * 1e3,
            w * 1e3,
            u * 1e3,
            m / u,
            w / u
        );
    }
}
