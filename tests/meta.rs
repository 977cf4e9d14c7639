//! Meta-gradients computed three ways (mixed mode, checkpointed mixed mode, unrolled
//! reverse-over-reverse) agree with each other to ~1e-9 and with central finite
//! differences of the outer loss, for every optimiser and several window lengths.
//! The problems are written against the public traits only, as a downstream crate would.

use datarater::autodiff::check::compare;
use datarater::meta::{
    DEFAULT_SHARDS, DataRaterProblem, InnerLoop, MeanLoss, MetaGradient, MetaProblem, MetaRequest,
    Mode, Rater, Snapshots, slices,
};
use datarater::nn::{Activation, CausalLm, Mlp, SequenceScorer, TransformerConfig, normal};
use datarater::optim::{Adam, Momentum, OptState, Optimizer, Sgd};
use datarater::transforms::value_and_grad;
use datarater::{Error, Indices, Params, Result, Rng, Tensor, Value, Var};
use std::ops::Range;

/// One meta-gradient of `p` from `(theta, state)` through `batches`.
fn meta_grad<P: MetaProblem<f64>>(
    mode: Mode,
    p: &P,
    eta: &Params<Tensor<f64>>,
    theta: &Params<Tensor<f64>>,
    state: &OptState<Tensor<f64>>,
    batches: &[P::Batch],
    outer: &P::Batch,
) -> Result<MetaGradient<f64>> {
    MetaRequest::new(p, eta, theta, state, batches, outer)
        .mode(mode)
        .run()
}

/// Checkpointed mode with at most `snapshots` stored states (`0`: automatic).
const fn ck(snapshots: usize) -> Mode {
    Mode::Checkpointed {
        snapshots: match snapshots {
            0 => Snapshots::Auto,
            s => Snapshots::AtMost(s),
        },
    }
}

// ---- a regression problem: MLP inner model, MLP rater on (x, y) ------------------------

#[derive(Clone)]
struct XyBatch {
    x: Tensor<f64>,
    y: Tensor<f64>,
}

struct Regression<O> {
    mlp: Mlp,
    opt: O,
    /// Input feature forced to exactly zero (so its first-layer weights get exact zero gradients).
    dead_feature: bool,
}

impl<O: Optimizer<f64>> InnerLoop<f64> for Regression<O> {
    type Batch = XyBatch;
    type Opt = O;
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.mlp.init(rng)
    }
    fn optimizer(&self) -> &O {
        &self.opt
    }
    fn per_example_loss<V: Value<F = f64>>(&self, theta: &Params<V>, b: &XyBatch) -> Result<V> {
        let out = self.mlp.forward(theta, &V::constant(b.x.clone()))?;
        let n = b.x.shape()[0];
        Ok(out.sub(&V::constant(b.y.clone())).square().reshape(&[n]))
    }
    fn split_batch(&self, b: &XyBatch, size: usize) -> Option<Vec<XyBatch>> {
        let rows = |r: Range<usize>| XyBatch {
            x: b.x.slice(0, r.start, r.end),
            y: b.y.slice(0, r.start, r.end),
        };
        Some(slices(b.x.shape()[0], size).map(rows).collect())
    }
}

impl<O> Regression<O> {
    /// Six examples `y = sin(sum x) + noise`.
    fn sample(&self, rng: &mut Rng) -> XyBatch {
        let n = 6;
        let mut x = normal::<f64>(rng, &[n, 3], 1.0).to_vec();
        if self.dead_feature {
            x.iter_mut().skip(2).step_by(3).for_each(|v| *v = 0.0);
        }
        let noise = normal::<f64>(rng, &[n], 0.3).to_vec();
        let y = x
            .chunks(3)
            .zip(noise)
            .map(|(row, e)| row.iter().sum::<f64>().sin() + e)
            .collect();
        XyBatch {
            x: Tensor::from_vec(&[n, 3], x).unwrap(),
            y: Tensor::from_vec(&[n, 1], y).unwrap(),
        }
    }
}

struct XyRater(Mlp);

impl Rater<f64, XyBatch> for XyRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.0.init(rng)
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &XyBatch) -> Result<V> {
        let xy = V::constant(Tensor::concat(&[&b.x, &b.y], 1));
        let n = b.x.shape()[0];
        Ok(self.0.forward(eta, &xy)?.reshape(&[n]))
    }
}

// ---- a language-model problem: causal transformer inner model, bidirectional rater -----

#[derive(Clone)]
struct TokBatch {
    inputs: Indices,
    targets: Indices,
}

struct Lm<O> {
    lm: CausalLm,
    opt: O,
}

impl<O: Optimizer<f64>> InnerLoop<f64> for Lm<O> {
    type Batch = TokBatch;
    type Opt = O;
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.lm.init(rng)
    }
    fn optimizer(&self) -> &O {
        &self.opt
    }
    fn per_example_loss<V: Value<F = f64>>(&self, theta: &Params<V>, b: &TokBatch) -> Result<V> {
        self.lm.per_example_loss(theta, &b.inputs, &b.targets)
    }
    fn split_batch(&self, b: &TokBatch, size: usize) -> Option<Vec<TokBatch>> {
        slices(b.inputs.shape()[0], size)
            .map(|r| {
                Some(TokBatch {
                    inputs: b.inputs.rows(r.clone()).ok()?,
                    targets: b.targets.rows(r).ok()?,
                })
            })
            .collect()
    }
}

impl<O> Lm<O> {
    /// Three random token sequences.
    fn sample(&self, rng: &mut Rng) -> TokBatch {
        let (n, t, v) = (3, 5, self.lm.cfg.vocab);
        let seq: Vec<usize> = (0..n * (t + 1)).map(|_| rng.below(v)).collect();
        let rows: Vec<&[usize]> = seq.chunks(t + 1).collect();
        let inputs = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
        let targets = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
        TokBatch {
            inputs: Indices::new(&[n, t], inputs).unwrap(),
            targets: Indices::new(&[n, t], targets).unwrap(),
        }
    }
}

struct TokRater(SequenceScorer);

impl Rater<f64, TokBatch> for TokRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.0.init(rng)
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &TokBatch) -> Result<V> {
        self.0.scores(eta, &b.inputs)
    }
}

/// Two layers, so checkpointed mode recomputes a layer inside a meta-gradient.
fn tiny(causal: bool) -> TransformerConfig {
    TransformerConfig::new(8, 2, 2, 5)
        .with_vocab(7)
        .with_d_ff(16)
        .with_causal(causal)
}

// ---- the checks --------------------------------------------------------------------

/// `J(eta)` by plain first-order rollout (no meta-gradient machinery).
fn rollout<P: MetaProblem<f64>>(
    p: &P,
    eta: &Params<Tensor<f64>>,
    theta: &Params<Tensor<f64>>,
    state: &OptState<Tensor<f64>>,
    batches: &[P::Batch],
    outer: &P::Batch,
) -> f64 {
    let eta_c = eta.map(|e| Var::constant_of(e.clone()));
    let (mut th, mut st) = (theta.clone(), state.clone());
    for b in batches {
        let (_, g) = value_and_grad(|q| p.inner_loss(q, &eta_c, b), &th).unwrap();
        (th, st) = p.optimizer().update(&th, &st, &g);
    }
    p.outer_loss(&th, outer).unwrap().item()
}

/// `t(l, s)` for every `l <= n`, `s <= m`: the fewest inner steps that reverse `l`
/// steps with `s` stored states, by its recurrence (Griewank & Walther 2000): one state
/// runs from the start to each step in turn; more advance `j` steps, store that state,
/// reverse the rest with one state fewer, then the first `j` steps.
fn binomial_optimum(n: usize, m: usize) -> Vec<Vec<usize>> {
    let mut t = vec![vec![0; m + 1]; n + 1];
    for l in 1..=n {
        t[l][1] = l * (l - 1) / 2;
        for s in 2..=m {
            t[l][s] = (1..l)
                .map(|j| j + t[l - j][s - 1] + t[j][s])
                .min()
                .unwrap_or(0);
        }
    }
    t
}

/// The snapshots `ck(snapshots)` uses for `steps` steps: as given
/// (at most `steps`), or for `0` the least `s` with `C(s + 3, 3) >= steps`.
fn effective_snapshots(snapshots: usize, steps: usize) -> usize {
    match snapshots {
        0 => (1..)
            .find(|&s: &usize| (s + 1) * (s + 2) * (s + 3) / 6 >= steps)
            .unwrap(),
        s => s.min(steps),
    }
}

/// A checkpointed run recomputed the fewest steps its snapshots allow and never stored
/// more states than that.
fn check_schedule(label: &str, r: &MetaGradient<f64>, snapshots: usize) {
    let (t, s) = (r.stats.steps, effective_snapshots(snapshots, r.stats.steps));
    assert_eq!(
        r.stats.recomputed_steps,
        binomial_optimum(t, s)[t][s],
        "{label}: T = {t}, {s} snapshots"
    );
    assert!(
        (1..=s).contains(&r.stats.stored_states),
        "{label}: {} states stored, {s} allowed",
        r.stats.stored_states
    );
}

/// Runs all three modes, checks they agree to `1e-9` and match finite differences of
/// the rollout along `dirs` random directions (or the full FD gradient when `dirs == 0`).
#[allow(clippy::too_many_arguments)]
fn check_modes<P: MetaProblem<f64>>(
    label: &str,
    p: &P,
    eta: &Params<Tensor<f64>>,
    theta: &Params<Tensor<f64>>,
    batches: &[P::Batch],
    outer: &P::Batch,
    dirs: usize,
    rng: &mut Rng,
) {
    let state = p.optimizer().init(theta);
    // Mixed-mode passes run on slices of the batch: run them whole (one shard) and in
    // the default shards, on 1 and 3 threads.
    let run_with = |mode, shards, threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            MetaRequest::new(p, eta, theta, &state, batches, outer)
                .mode(mode)
                .shards(shards)
                .run()
                .unwrap()
        })
    };
    let run = |mode, threads| run_with(mode, DEFAULT_SHARDS, threads);
    let mixed = run(Mode::Mixed, 1);
    let unrolled = run(Mode::Unrolled, 1);
    let whole = run_with(Mode::Mixed, 1, 3);
    let r = compare(&whole.grad, &mixed.grad).unwrap();
    assert!(r.ok(1e-9), "{label}: mixed whole vs in slices {r:?}");
    for (snapshots, threads) in [(1, 1), (2, 3), (0, 1)] {
        let ck = run(ck(snapshots), threads);
        let r = compare(&ck.grad, &mixed.grad).unwrap();
        assert!(
            r.ok(1e-9),
            "{label}: checkpointed({snapshots} snapshots) vs mixed {r:?}"
        );
        assert!(
            (ck.outer_loss - mixed.outer_loss).abs() < 1e-12 * mixed.outer_loss.abs().max(1.0),
            "{label}"
        );
        // The same steps (split over another number of threads for some).
        assert_eq!(ck.inner_losses.len(), mixed.inner_losses.len(), "{label}");
        for (a, b) in ck.inner_losses.iter().zip(&mixed.inner_losses) {
            assert!(
                (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                "{label}: {a} vs {b}"
            );
        }
        check_schedule(label, &ck, snapshots);
    }
    let r = compare(&unrolled.grad, &mixed.grad).unwrap();
    assert!(r.ok(1e-9), "{label}: unrolled vs mixed {r:?}");
    assert!(
        (unrolled.outer_loss - mixed.outer_loss).abs() < 1e-12 * mixed.outer_loss.abs().max(1.0),
        "{label}"
    );
    assert_eq!(mixed.stats.steps, batches.len());
    let j = |e: &Params<Tensor<f64>>| rollout(p, e, theta, &state, batches, outer);
    assert!(
        (j(eta) - mixed.outer_loss).abs() < 1e-12 * mixed.outer_loss.abs().max(1.0),
        "{label}: outer loss"
    );
    let eps = if dirs == 0 { 1e-5 } else { 1e-6 };
    if dirs == 0 {
        let fd = datarater::autodiff::check::fd_gradient(j, eta, eps);
        let r = compare(&mixed.grad, &fd).unwrap();
        // Relative to the gradient's scale, with a floor at the differences' round-off.
        assert!(
            r.ok(1e-5) || r.max_abs < 1e-10,
            "{label}: mixed vs finite differences {r:?}"
        );
    }
    for _ in 0..dirs {
        let d = eta.map(|t| normal(rng, t.shape(), 1.0));
        let fd = (j(&eta.add_scaled(&d, eps).unwrap()) - j(&eta.add_scaled(&d, -eps).unwrap()))
            / (2.0 * eps);
        let an = mixed.grad.dot(&d).unwrap();
        // Relative, with a floor at the central difference's round-off (|J| eps_mach / eps).
        assert!(
            (an - fd).abs() <= 1e-5 * an.abs().max(fd.abs()) + 1e-9,
            "{label}: directional {an} vs fd {fd}"
        );
    }
}

/// A problem that shows the engines only its inner and outer losses (no weighted form,
/// no sub-batches): their generic path.
struct Whole<'a, P>(&'a P);

impl<P: MetaProblem<f64>> MetaProblem<f64> for Whole<'_, P> {
    type Batch = P::Batch;
    type Opt = P::Opt;
    fn optimizer(&self) -> &P::Opt {
        self.0.optimizer()
    }
    fn inner_loss<V: Value<F = f64>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        batch: &P::Batch,
    ) -> Result<V> {
        self.0.inner_loss(theta, eta, batch)
    }
    fn outer_loss<V: Value<F = f64>>(&self, theta: &Params<V>, batch: &P::Batch) -> Result<V> {
        self.0.outer_loss(theta, batch)
    }
}

fn regression_case<O: Optimizer<f64>>(label: &str, opt: O, steps: usize, dead_feature: bool) {
    let mut rng = Rng::new(42);
    let inner = Regression {
        mlp: Mlp::new(&[3, 6, 1], Activation::Tanh).unwrap(),
        opt: opt.clone(),
        dead_feature,
    };
    let rater = XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap());
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let theta = inner.init(&mut rng);
    let eta = rater.init(&mut rng);
    let batches: Vec<XyBatch> = (0..steps).map(|_| inner.sample(&mut rng)).collect();
    let outer = inner.sample(&mut rng);
    check_modes(
        &format!("{label}, T={steps}"),
        &problem,
        &eta,
        &theta,
        &batches,
        &outer,
        0,
        &mut rng,
    );
    check_modes(
        &format!("{label}, T={steps}, generic path"),
        &Whole(&problem),
        &eta,
        &theta,
        &batches,
        &outer,
        0,
        &mut rng,
    );
}

fn all_optimisers(steps: usize) {
    regression_case("sgd", Sgd::new(0.1), steps, false);
    regression_case("momentum", Momentum::new(0.1, 0.9), steps, false);
    regression_case("nesterov", Momentum::nesterov(0.1, 0.9), steps, false);
    regression_case("adam", Adam::new(0.05), steps, false);
    regression_case("adamw", Adam::adamw(0.05, 0.1), steps, false);
}

#[test]
fn mlp_all_optimisers_t1() {
    all_optimisers(1);
}

#[test]
fn mlp_all_optimisers_t2() {
    all_optimisers(2);
}

#[test]
fn mlp_all_optimisers_t4() {
    all_optimisers(4);
}

#[test]
fn mlp_all_optimisers_t8() {
    all_optimisers(8);
}

/// Checkpointed mode for window lengths that are and are not binomial numbers, with one
/// snapshot, a few, the automatic choice and more than the window: the meta-gradient of
/// mixed and unrolled mode and of finite differences, the fewest recomputed steps, and
/// never more stored states (or their bytes) than allowed.
#[test]
fn checkpointed_schedules_for_many_windows_and_snapshot_counts() {
    let mut rng = Rng::new(11);
    let inner = regression(Adam::new(0.05));
    let rater = XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap());
    let p = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let (theta, eta) = (inner.init(&mut rng), rater.init(&mut rng));
    let state = inner.opt.init(&theta);
    // One inner state: theta and Adam's two moments.
    let x_bytes = 3 * theta.nbytes();
    for steps in [1, 2, 3, 5, 8, 13, 16] {
        let batches: Vec<XyBatch> = (0..steps).map(|_| inner.sample(&mut rng)).collect();
        let outer = inner.sample(&mut rng);
        let run = |mode| meta_grad(mode, &p, &eta, &theta, &state, &batches, &outer).unwrap();
        let mixed = run(Mode::Mixed);
        // Mixed mode stores the automatic number of states and replays the optimiser's
        // update for the rest: as often as the optimal schedule runs steps forward,
        // less the T - 1 first runs of its first descent (the forward sweep), and no
        // model pass twice.
        let auto = effective_snapshots(0, steps);
        assert_eq!(mixed.stats.stored_states, auto, "T = {steps}");
        let replays = binomial_optimum(steps, auto)[steps][auto] - (steps - 1);
        assert_eq!(mixed.stats.replayed_updates, replays, "T = {steps}");
        assert!(replays < 2 * steps, "T = {steps}");
        assert_eq!(mixed.stats.recomputed_steps, 0, "T = {steps}");
        let unrolled = run(Mode::Unrolled);
        let d = eta.map(|t| normal(&mut rng, t.shape(), 1.0));
        let eps = 1e-6;
        let j = |e: &Params<Tensor<f64>>| rollout(&p, e, &theta, &state, &batches, &outer);
        let fd = (j(&eta.add_scaled(&d, eps).unwrap()) - j(&eta.add_scaled(&d, -eps).unwrap()))
            / (2.0 * eps);
        for snapshots in [1, 2, 3, 0, steps + 2] {
            let label = format!("T = {steps}, snapshots {snapshots}");
            let ck = run(ck(snapshots));
            for (other, name) in [(&mixed, "mixed"), (&unrolled, "unrolled")] {
                let r = compare(&ck.grad, &other.grad).unwrap();
                assert!(r.ok(1e-9), "{label}: vs {name} {r:?}");
            }
            let an = ck.grad.dot(&d).unwrap();
            assert!(
                (an - fd).abs() <= 1e-5 * an.abs().max(fd.abs()) + 1e-9,
                "{label}: directional {an} vs fd {fd}"
            );
            assert_eq!(ck.theta, mixed.theta, "{label}");
            check_schedule(&label, &ck, snapshots);
            // The stored states, one more being run forward, and one step's gradient and
            // weights.
            let s = effective_snapshots(snapshots, steps);
            let w_bytes = 6 * std::mem::size_of::<f64>();
            let most = (s + 1) * x_bytes + theta.nbytes() + w_bytes;
            assert!(
                ck.stats.trajectory_bytes <= most,
                "{label}: {} trajectory bytes, at most {most}",
                ck.stats.trajectory_bytes
            );
        }
    }
}

#[test]
fn adam_with_exact_zero_gradients_gives_finite_meta_gradients() {
    // Feature 2 is always zero, so its first-layer weights get exactly zero gradients
    // and Adam's second moment stays exactly zero for them.
    regression_case("adam, zero grads", Adam::new(0.05), 3, true);
    regression_case("adamw, zero grads", Adam::adamw(0.05, 0.1), 3, true);
}

fn lm_case<O: Optimizer<f64>>(label: &str, opt: O, steps: usize) {
    let mut rng = Rng::new(7);
    let inner = Lm {
        lm: CausalLm::new(tiny(true)).unwrap(),
        opt: opt.clone(),
    };
    let rater = TokRater(SequenceScorer::new(tiny(false)).unwrap());
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let theta = inner.init(&mut rng);
    let eta = rater.init(&mut rng).map(|t| t.map(|x| x * 20.0));
    let batches: Vec<TokBatch> = (0..steps).map(|_| inner.sample(&mut rng)).collect();
    let outer = inner.sample(&mut rng);
    check_modes(
        &format!("{label}, T={steps}"),
        &problem,
        &eta,
        &theta,
        &batches,
        &outer,
        3,
        &mut rng,
    );
}

#[test]
fn transformer_all_optimisers() {
    for steps in [1, 2, 4, 8] {
        lm_case("lm sgd", Sgd::new(0.5), steps);
        lm_case("lm momentum", Momentum::new(0.3, 0.9), steps);
        lm_case("lm nesterov", Momentum::nesterov(0.3, 0.9), steps);
        lm_case("lm adam", Adam::new(0.01), steps);
        lm_case("lm adamw", Adam::adamw(0.01, 0.1), steps);
    }
}

/// `L = 0.5 |theta - eta|^2`, `J = 0.5 |theta_T - c|^2` with SGD: closed form
/// `dJ/deta = (1 - (1 - lr)^T) (theta_T - c)`.
struct Quadratic {
    c: Tensor<f64>,
    opt: Sgd<f64>,
}

impl MetaProblem<f64> for Quadratic {
    type Batch = ();
    type Opt = Sgd<f64>;
    fn optimizer(&self) -> &Sgd<f64> {
        &self.opt
    }
    fn inner_loss<V: Value<F = f64>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        _: &(),
    ) -> Result<V> {
        Ok(theta["w"].sub(&eta["w"]).square().sum_all().scale(0.5))
    }
    fn outer_loss<V: Value<F = f64>>(&self, theta: &Params<V>, _: &()) -> Result<V> {
        Ok(theta["w"]
            .sub(&V::constant(self.c.clone()))
            .square()
            .sum_all()
            .scale(0.5))
    }
}

#[test]
fn custom_inner_objective_matches_closed_form() {
    let w =
        |v: Vec<f64>| Params::from_iter([("w".to_string(), Tensor::from_vec(&[3], v).unwrap())]);
    let (theta, eta) = (w(vec![1.0, -2.0, 0.5]), w(vec![0.3, 0.1, -1.0]));
    let (lr, steps) = (0.3, 5);
    let problem = Quadratic {
        c: Tensor::from_vec(&[3], vec![2.0, 0.0, 1.0]).unwrap(),
        opt: Sgd::new(lr),
    };
    let decay = (1.0f64 - lr).powi(steps as i32);
    let state = problem.opt.init(&theta);
    for mode in [Mode::Mixed, Mode::Unrolled, ck(0)] {
        let r = meta_grad(mode, &problem, &eta, &theta, &state, &vec![(); steps], &()).unwrap();
        for i in 0..3 {
            let th = eta["w"].to_vec()[i] + decay * (theta["w"].to_vec()[i] - eta["w"].to_vec()[i]);
            let expect = (1.0 - decay) * (th - problem.c.to_vec()[i]);
            assert!((r.grad["w"].to_vec()[i] - expect).abs() < 1e-12, "{mode:?}");
            assert!((r.theta["w"].to_vec()[i] - th).abs() < 1e-12, "{mode:?}");
        }
    }
}

/// `L = sum(theta * eta) + 0 * sum(ln theta)`: with `eta = 1`, `lr = 1`, theta goes
/// 1.5, 0.5, -0.5, so the inner loss is NaN exactly at step 2.
struct BlowsUp(Sgd<f64>);

impl MetaProblem<f64> for BlowsUp {
    type Batch = ();
    type Opt = Sgd<f64>;
    fn optimizer(&self) -> &Sgd<f64> {
        &self.0
    }
    fn inner_loss<V: Value<F = f64>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        _: &(),
    ) -> Result<V> {
        let t = &theta["w"];
        Ok(t.mul(&eta["w"]).sum_all().add(&t.ln().sum_all().scale(0.0)))
    }
    fn outer_loss<V: Value<F = f64>>(&self, theta: &Params<V>, _: &()) -> Result<V> {
        Ok(theta["w"].sum_all())
    }
}

#[test]
fn non_finite_values_name_the_step_and_leave_inputs_intact() {
    let w =
        |x: f64| Params::from_iter([("w".to_string(), Tensor::from_vec(&[1], vec![x]).unwrap())]);
    let (theta, eta) = (w(1.5), w(1.0));
    let (theta_before, eta_before) = (theta.clone(), eta.clone());
    let problem = BlowsUp(Sgd::new(1.0));
    let state = problem.0.init(&theta);
    for mode in [Mode::Mixed, Mode::Unrolled, ck(2)] {
        let err = meta_grad(mode, &problem, &eta, &theta, &state, &[(); 4], &()).unwrap_err();
        match err {
            Error::NonFinite { step, quantity } => {
                assert_eq!(step, 2, "{mode:?}: {quantity}");
                assert!(quantity.contains("inner loss"), "{mode:?}: {quantity}");
            }
            other => panic!("{mode:?}: expected NonFinite, got {other:?}"),
        }
        // Two steps are fine.
        assert!(meta_grad(mode, &problem, &eta, &theta, &state, &[(); 2], &()).is_ok());
    }
    assert_eq!(theta, theta_before);
    assert_eq!(eta, eta_before);
}

/// The weighted form with `w = sqrt(eta x)`, `x = 0` on the batches marked `true`: the
/// weights are finite there (0), their gradient is `0 / 0`. `l_i = theta_i^2`.
struct NanWeights(Sgd<f64>);

impl MetaProblem<f64> for NanWeights {
    type Batch = bool;
    type Opt = Sgd<f64>;
    fn optimizer(&self) -> &Sgd<f64> {
        &self.0
    }
    fn inner_loss<V: Value<F = f64>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        zero: &bool,
    ) -> Result<V> {
        let w = self.example_weights(eta, zero).expect("weighted form")?;
        let l = self.example_losses(theta, zero).expect("weighted form")?;
        Ok(w.mul(&l).sum_all())
    }
    fn outer_loss<V: Value<F = f64>>(&self, theta: &Params<V>, _: &bool) -> Result<V> {
        Ok(theta["w"].square().sum_all())
    }
    fn example_weights<V: Value<F = f64>>(
        &self,
        eta: &Params<V>,
        zero: &bool,
    ) -> Option<Result<V>> {
        let x = if *zero {
            vec![0.0, 0.0]
        } else {
            vec![1.0, 2.0]
        };
        let x = V::constant(Tensor::from_vec(&[2], x).unwrap());
        Some(Ok(eta["w"].mul(&x).sqrt()))
    }
    fn example_losses<V: Value<F = f64>>(&self, theta: &Params<V>, _: &bool) -> Option<Result<V>> {
        Some(Ok(theta["w"].square()))
    }
}

/// The mixed modes run the weighted form's rater passes (`M_t g`) after the backward
/// sweep, together: a non-finite one still names its step (the last such step, as the
/// sweep meets them last first), and a window without one is unaffected.
#[test]
fn a_non_finite_rater_contribution_names_its_step() {
    let w =
        |v: Vec<f64>| Params::from_iter([("w".to_string(), Tensor::from_vec(&[2], v).unwrap())]);
    let (theta, eta) = (w(vec![1.5, -0.5]), w(vec![1.0, 0.5]));
    let problem = NanWeights(Sgd::new(0.1));
    let state = problem.0.init(&theta);
    for mode in [Mode::Mixed, ck(2)] {
        for (bad, expect) in [(&[2][..], 2), (&[0], 0), (&[1, 3], 3)] {
            let batches: Vec<bool> = (0..5).map(|t| bad.contains(&t)).collect();
            let err = meta_grad(mode, &problem, &eta, &theta, &state, &batches, &false);
            match err {
                Err(Error::NonFinite { step, quantity }) => {
                    assert_eq!(step, expect, "{mode:?}, bad steps {bad:?}: {quantity}");
                    assert!(quantity.contains("mixed product"), "{mode:?}: {quantity}");
                }
                other => panic!("{mode:?}, bad steps {bad:?}: expected NonFinite, got {other:?}"),
            }
        }
        let fine = meta_grad(mode, &problem, &eta, &theta, &state, &[false; 5], &false).unwrap();
        assert!(
            fine.grad["w"]
                .to_vec()
                .iter()
                .all(|g| g.is_finite() && *g != 0.0)
        );
    }
}

#[test]
fn empty_window_is_a_config_error() {
    let w = Params::from_iter([("w".to_string(), Tensor::from_vec(&[1], vec![1.0]).unwrap())]);
    let problem = BlowsUp(Sgd::new(0.1));
    let err = meta_grad(Mode::Mixed, &problem, &w, &w, &problem.0.init(&w), &[], &()).unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "batches",
            ..
        }
    ));
}

// ---- bad input is a typed error, in every mode ------------------------------------------

const MODES: [Mode; 3] = [Mode::Mixed, Mode::Unrolled, ck(2)];

/// The shape a rater gives its scores for a batch of `n` examples.
type ScoreShape = fn(usize) -> Vec<usize>;

/// The regression problem's rater, giving its scores the shape `ScoreShape(n)`.
struct ShapedRater(XyRater, ScoreShape);

impl Rater<f64, XyBatch> for ShapedRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.0.init(rng)
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &XyBatch) -> Result<V> {
        let s = self.0.scores(eta, b)?;
        let n = s.shape()[0];
        let want = (self.1)(n);
        if want.iter().product::<usize>() == n {
            Ok(s.reshape(&want))
        } else {
            Ok(s.slice(0, 0, want[0]))
        }
    }
}

fn regression(opt: Adam<f64>) -> Regression<Adam<f64>> {
    Regression {
        mlp: Mlp::new(&[3, 4, 1], Activation::Tanh).unwrap(),
        opt,
        dead_feature: false,
    }
}

#[test]
fn rater_scores_that_are_not_one_per_example_are_a_shape_error() {
    let inner = regression(Adam::new(0.05));
    let mut rng = Rng::new(3);
    let theta = inner.init(&mut rng);
    let batches = vec![inner.sample(&mut rng), inner.sample(&mut rng)];
    let outer = inner.sample(&mut rng);
    // [6, 1] would broadcast against the [6] losses into [6, 6]; [5] is a short batch.
    let shapes: [(ScoreShape, Vec<usize>); 2] =
        [(|n| vec![n, 1], vec![6, 1]), (|n| vec![n - 1], vec![5])];
    for (shape, got) in shapes {
        let rater = ShapedRater(
            XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap()),
            shape,
        );
        let eta = rater.init(&mut rng);
        let problem = DataRaterProblem {
            inner: &inner,
            rater: &rater,
            outer: &MeanLoss,
        };
        for mode in MODES {
            let check = |r: Result<MetaGradient<f64>>, path: &str| match r {
                Err(Error::ShapeExpected { shape, .. }) => {
                    assert_eq!(shape, got, "{mode} {path}");
                }
                Err(Error::Shape { lhs, rhs, .. }) => {
                    // Cut into slices of 2 by the weights' count (5), the batch's last
                    // slice holds 2 examples for 1 weight.
                    let last_slice = (vec![1], vec![2]);
                    assert!(
                        lhs == got || rhs == got || (lhs.clone(), rhs.clone()) == last_slice,
                        "{mode} {path}: {lhs:?} {rhs:?}"
                    );
                }
                other => panic!("{mode} {path}: expected a shape error, got {other:?}"),
            };
            let state = inner.opt.init(&theta);
            check(
                meta_grad(mode, &problem, &eta, &theta, &state, &batches, &outer),
                "weighted form",
            );
            check(
                meta_grad(
                    mode,
                    &Whole(&problem),
                    &eta,
                    &theta,
                    &state,
                    &batches,
                    &outer,
                ),
                "generic path",
            );
        }
    }
}

/// Regression with SGD, for optimiser-validation tests.
fn sgd_regression(opt: Sgd<f64>) -> Regression<Sgd<f64>> {
    Regression {
        mlp: Mlp::new(&[3, 4, 1], Activation::Tanh).unwrap(),
        opt,
        dead_feature: false,
    }
}

#[test]
fn invalid_inner_optimisers_are_config_errors() {
    let rater = XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap());
    let mut rng = Rng::new(5);
    let eta = rater.init(&mut rng);
    let no_eps = Adam::new(0.05).with_eps(0.0).with_eps_root(0.0);
    let adam = regression(no_eps);
    let sgd = sgd_regression(Sgd::new(-0.1));
    let theta = adam.init(&mut rng);
    let batches = vec![adam.sample(&mut rng)];
    let outer = adam.sample(&mut rng);
    for mode in MODES {
        let p = DataRaterProblem {
            inner: &adam,
            rater: &rater,
            outer: &MeanLoss,
        };
        let state = adam.opt.init(&theta);
        let err = meta_grad(mode, &p, &eta, &theta, &state, &batches, &outer).unwrap_err();
        assert!(
            matches!(err, Error::Config { field: "eps", .. }),
            "{mode}: {err}"
        );
        let p = DataRaterProblem {
            inner: &sgd,
            rater: &rater,
            outer: &MeanLoss,
        };
        let state = sgd.opt.init(&theta);
        let err = meta_grad(mode, &p, &eta, &theta, &state, &batches, &outer).unwrap_err();
        assert!(
            matches!(err, Error::Config { field: "lr", .. }),
            "{mode}: {err}"
        );
    }
}

#[test]
fn optimiser_state_that_does_not_match_theta_is_a_params_error() {
    let inner = regression(Adam::new(0.05));
    let rater = XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap());
    let p = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let mut rng = Rng::new(6);
    let (theta, eta) = (inner.init(&mut rng), rater.init(&mut rng));
    let batches = vec![inner.sample(&mut rng)];
    let outer = inner.sample(&mut rng);
    // Momentum keeps one slot, Adam two.
    let one_slot = Momentum::new(0.1, 0.9).init(&theta);
    // Adam state for another model.
    let other = Mlp::new(&[3, 7, 1], Activation::Tanh).unwrap();
    let wrong_shapes = inner.opt.init(&other.init::<f64>(&mut rng));
    for mode in MODES {
        for (state, what) in [(&one_slot, "slots given"), (&wrong_shapes, "slot 0")] {
            match meta_grad(mode, &p, &eta, &theta, state, &batches, &outer) {
                Err(Error::Params { reason, .. }) => assert!(reason.contains(what), "{reason}"),
                other => panic!("{mode}: expected a params error, got {other:?}"),
            }
        }
    }
}

/// An inner loop whose `split_batch` cuts the batch wrongly: the whole batch as the
/// first slice (its losses do not line up with the slice's weights), or one slice too
/// few (an example would be left out).
struct BadSlices(Regression<Adam<f64>>, bool);

impl InnerLoop<f64> for BadSlices {
    type Batch = XyBatch;
    type Opt = Adam<f64>;
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        self.0.init(rng)
    }
    fn optimizer(&self) -> &Adam<f64> {
        &self.0.opt
    }
    fn per_example_loss<V: Value<F = f64>>(&self, theta: &Params<V>, b: &XyBatch) -> Result<V> {
        self.0.per_example_loss(theta, b)
    }
    fn split_batch(&self, b: &XyBatch, size: usize) -> Option<Vec<XyBatch>> {
        let mut parts = self.0.split_batch(b, size)?;
        match self.1 {
            true => parts[0] = b.clone(),
            false => drop(parts.pop()),
        }
        Some(parts)
    }
}

#[test]
fn slices_that_do_not_match_the_weights_are_a_shape_error() {
    let rater = XyRater(Mlp::new(&[4, 5, 1], Activation::Tanh).unwrap());
    // Six examples in slices of 2: the whole batch as the first slice gives 6 losses
    // for its 2 weights; two slices instead of three leave two examples out.
    for (whole_first, want) in [(true, (vec![2], vec![6])), (false, (vec![2], vec![3]))] {
        let inner = BadSlices(regression(Adam::new(0.05)), whole_first);
        let p = DataRaterProblem {
            inner: &inner,
            rater: &rater,
            outer: &MeanLoss,
        };
        let mut rng = Rng::new(8);
        let (theta, eta) = (inner.init(&mut rng), rater.init(&mut rng));
        let batches = vec![inner.0.sample(&mut rng), inner.0.sample(&mut rng)];
        let outer = inner.0.sample(&mut rng);
        let state = inner.0.opt.init(&theta);
        for mode in [Mode::Mixed, ck(2)] {
            match meta_grad(mode, &p, &eta, &theta, &state, &batches, &outer) {
                Err(Error::Shape { lhs, rhs, .. }) => assert_eq!((lhs, rhs), want.clone()),
                other => panic!("{mode}: expected a shape error, got {other:?}"),
            }
        }
    }
}
