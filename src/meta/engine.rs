//! Exact meta-gradients through `T` steps of a real inner optimiser, three ways.
//!
//! * [`Mode::Mixed`]: store every step's gradient `g_t` in the forward sweep; in the
//!   backward sweep, one forward-over-reverse pass per step yields both `H_t g_bar` and
//!   `M_t g_bar` (MixFlow-MG). Only one step's activations are ever alive; that pass
//!   records the model's checkpointed blocks op by op (no block runs twice). The states
//!   `(theta_t, s_t)` come from a few stored ones by replaying the optimiser's update on
//!   the stored gradients: no model pass, and bitwise the forward sweep's states.
//! * [`Mode::Checkpointed`]: store at most `s` states `(theta_t, s_t)` at once, placed by
//!   binomial checkpointing (Griewank & Walther's revolve, see `revolve.rs`), and
//!   recompute the others from them as the backward sweep reaches them: the trajectory
//!   term is `s` states, for the fewest recomputed steps any such schedule allows.
//!   The memory-lean mode: its forward-over-reverse passes also rematerialise blocks,
//!   so a step's working set is about one block's dual activations.
//! * [`Mode::Unrolled`]: the naive baseline, reverse-over-reverse through the whole
//!   window on one tape (every inner backward pass recorded), as `jax.grad` of a loop
//!   of `jax.grad` or PyTorch's `create_graph=True` do.
//!
//! With the DataRater's weighted form ([`MetaProblem::example_weights`]) the two mixed
//! modes run each inner step's passes over `theta` on one slice of the batch per rayon
//! thread when the problem can cut batches ([`MetaProblem::split_batch`]), and step 0's
//! pass is forward mode only (`theta_0` does not depend on `eta`).

use super::revolve;
use super::{MetaProblem, check_weighted, weighted_sum};
use crate::autodiff::transforms::{grad_tangents_with, jvp, value_and_grad_measured, vjp_measured};
use crate::autodiff::{Dual, Float, Params, Tape, Tensor, Value, Var};
use crate::error::{Error, Result};
use crate::optim::{OptState, Optimizer, adjoint_by_tensor, update_by_tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Which meta-gradient engine to run. All give the same meta-gradient (to rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Forward-over-reverse backward sweep over the stored gradients `g_t`; each step's
    /// pass keeps all its activations (no block rematerialisation: faster, one step's
    /// activations in memory).
    ///
    /// Of the states `(theta_t, s_t)` at most the least `s` with `C(s + 3, 3) >= T` are
    /// stored at once (placed as in [`Mode::Checkpointed`] with [`Snapshots::Auto`], the
    /// forward sweep storing the first ones as it passes them); the others are
    /// recovered by replaying the optimiser's update on the stored gradients. That is
    /// fewer than `2 T` elementwise updates in all ([`MetaStats::replayed_updates`]), no
    /// model pass, and bitwise the states of the forward sweep. Per inner step the
    /// trajectory grows by one gradient, not by a state and a gradient.
    Mixed,
    /// Mixed mode storing no gradients and at most `snapshots` inner states at once (the
    /// window's start included), placed by binomial checkpointing (Griewank & Walther
    /// 2000, "Algorithm 799: revolve"), and recomputing the rest by running inner steps
    /// (model passes), each backward step's gradient included; its forward-over-reverse
    /// passes rematerialise checkpointed blocks.
    ///
    /// With `s` snapshots and `r` the least integer with `T <= C(s + r, s)`, it
    /// recomputes `r T - C(s + r, s + 1)` inner steps ([`MetaStats::recomputed_steps`]),
    /// the fewest any schedule can: fewer than `r` per step on average. `s >= T`
    /// recomputes `T - 1` (each step's gradient, which is not stored), `s = 1`
    /// recomputes `T (T - 1) / 2`.
    Checkpointed {
        /// How many inner states `(theta_t, s_t)` may be stored at once.
        snapshots: Snapshots,
    },
    /// Reverse-over-reverse through the whole unrolled window (the baseline).
    Unrolled,
}

/// How many inner states checkpointed mode stores at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Snapshots {
    /// The least `s` with `C(s + 3, 3) >= T`, so `r <= 3`: a bounded amount of
    /// recomputation (under 3 inner steps per step, next to a backward step that costs
    /// about 3 inner steps anyway), for `s` growing only like the cube root of `6 T`
    /// (1 for `T <= 4`, 3 at `T = 16`, 6 at `T = 64`).
    #[default]
    Auto,
    /// At most this many (at least 1; more than `T` act as `T`).
    AtMost(usize),
}

impl Snapshots {
    /// The snapshots used for a window of `steps` inner steps.
    ///
    /// # Errors
    /// [`Error::Config`] for `AtMost(0)`.
    pub fn resolve(self, steps: usize) -> Result<usize> {
        match self {
            Snapshots::Auto => Ok(revolve::auto_snapshots(steps)),
            Snapshots::AtMost(0) => Err(Error::Config {
                field: "snapshots",
                reason: "at least one state (the window's start) is stored; use Snapshots::Auto \
                         to let the engine choose"
                    .into(),
            }),
            Snapshots::AtMost(s) => Ok(s.min(steps)),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Mixed => write!(f, "mixed"),
            Mode::Checkpointed {
                snapshots: Snapshots::Auto,
            } => write!(f, "checkpointed (automatic snapshots)"),
            Mode::Checkpointed {
                snapshots: Snapshots::AtMost(s),
            } => write!(f, "checkpointed ({s} snapshots)"),
            Mode::Unrolled => write!(f, "unrolled"),
        }
    }
}

/// Measurements of one meta-gradient computation.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MetaStats {
    /// Inner steps differentiated through.
    pub steps: usize,
    /// The most bytes the computation held at once beyond its inputs, as the memory
    /// budget counts them (see [`MetaRequest::memory_budget`]): the smallest budget this
    /// run completes under.
    pub peak_bytes: usize,
    /// The largest working set of one step (its tapes, cotangents and new values, on
    /// top of what is held across steps): how far the first step of a kind, which has
    /// nothing to predict it, may pass a budget.
    pub peak_step_bytes: usize,
    /// Largest number of bytes any tape held (unrolled: the whole window's tape; mixed:
    /// one step's forward-over-reverse tapes, summed over the slices of the batch, which
    /// may all be alive at once; see [`MetaRequest::shards`]).
    pub peak_tape_bytes: usize,
    /// Largest number of bytes of stored trajectory (`theta_t`, `s_t`, `g_t`, the
    /// working state) alive at once.
    pub trajectory_bytes: usize,
    /// Inner steps run again after their first run (checkpointed mode: to reach a state
    /// that was not stored, or to recompute a step's gradient for its backward step).
    pub recomputed_steps: usize,
    /// Optimiser updates replayed on a stored gradient to recover a state that was not
    /// stored (mixed mode): elementwise work over the parameters, no model pass.
    pub replayed_updates: usize,
    /// Largest number of inner states `(theta_t, s_t)` stored at once, the window's start
    /// included (mixed: at most the least `s` with `C(s + 3, 3) >= T`; checkpointed: at
    /// most its snapshots; unrolled: 0, its states live on its tape).
    pub stored_states: usize,
}

/// The result of [`MetaRequest::run`].
#[derive(Clone, Debug)]
pub struct MetaGradient<F: Float> {
    /// `d J(theta_T(eta)) / d eta`.
    pub grad: Params<Tensor<F>>,
    /// The outer loss `J(theta_T)`.
    pub outer_loss: F,
    /// The inner objective at each step.
    pub inner_losses: Vec<F>,
    /// Inner parameters after the window.
    pub theta: Params<Tensor<F>>,
    /// Inner optimiser state after the window.
    pub state: OptState<Tensor<F>>,
    /// Measurements.
    pub stats: MetaStats,
}

/// The error for a problem whose weighted form is only half given.
fn partial_weighted_form() -> Error {
    Error::Usage(
        "MetaProblem::example_weights and example_losses must both be Some or both be None".into(),
    )
}

/// The per-example losses of a weighted-form problem.
fn losses<F: Float, P: MetaProblem<F>, V: Value<F = F>>(
    problem: &P,
    theta: &Params<V>,
    batch: &P::Batch,
) -> Result<V> {
    problem
        .example_losses(theta, batch)
        .ok_or_else(partial_weighted_form)?
}

fn finite<F: Float>(p: &Params<Tensor<F>>, step: usize, quantity: &str) -> Result<()> {
    match p.first_non_finite() {
        Some(name) => Err(Error::NonFinite {
            step,
            quantity: format!("{quantity} (`{name}`)"),
        }),
        None => Ok(()),
    }
}

fn finite_scalar<F: Float>(x: F, step: usize, quantity: &str) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite {
            step,
            quantity: quantity.to_string(),
        })
    }
}

/// One meta-gradient computation: what to differentiate, from where, and how.
///
/// `theta_T` comes from `batches.len()` steps of the problem's own optimiser
/// ([`MetaProblem::optimizer`]) on `problem.inner_loss` from `(theta, state)`, and
/// `J = problem.outer_loss(theta_T, outer_batch)`; [`run`](Self::run) returns
/// `dJ/d eta`.
///
/// ```
/// use datarater::meta::{DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, Mode, Rater};
/// use datarater::optim::{Optimizer, Sgd};
/// use datarater::{Params, Result, Rng, Tensor, Value};
///
/// // Inner model: one scalar `m` fitted to the batch by squared error.
/// struct Mean(Sgd<f64>);
/// impl InnerLoop<f64> for Mean {
///     type Batch = Tensor<f64>;
///     type Opt = Sgd<f64>;
///     fn init(&self, _: &mut Rng) -> Params<Tensor<f64>> {
///         Params::from_iter([("m".to_string(), Tensor::zeros(&[1]).unwrap())])
///     }
///     fn optimizer(&self) -> &Sgd<f64> {
///         &self.0
///     }
///     fn per_example_loss<V: Value<F = f64>>(&self, th: &Params<V>, x: &Tensor<f64>) -> Result<V> {
///         Ok(V::constant(x.clone()).sub(&th["m"]).square())
///     }
/// }
/// // Rater: score_i = a * x_i.
/// struct Linear;
/// impl Rater<f64, Tensor<f64>> for Linear {
///     fn init(&self, _: &mut Rng) -> Params<Tensor<f64>> {
///         Params::from_iter([("a".to_string(), Tensor::zeros(&[1]).unwrap())])
///     }
///     fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, x: &Tensor<f64>) -> Result<V> {
///         Ok(V::constant(x.clone()).mul(&eta["a"]))
///     }
/// }
///
/// let inner = Mean(Sgd::new(0.5));
/// let problem = DataRaterProblem { inner: &inner, rater: &Linear, outer: &MeanLoss };
/// let (eta, theta) = (Linear.init(&mut Rng::new(0)), inner.init(&mut Rng::new(0)));
/// let batch = Tensor::from_vec(&[3], vec![0.0, 1.0, 5.0])?;
/// let held_out = Tensor::from_vec(&[2], vec![0.9, 1.1])?;
/// let state = inner.optimizer().init(&theta);
/// let batches = [batch];
/// let r = MetaRequest::new(&problem, &eta, &theta, &state, &batches, &held_out)
///     .mode(Mode::Mixed)
///     .run()?;
/// // Up-weighting large x (a > 0) would pull m towards the outlier 5 and away from the
/// // held-out data near 1, so the meta-gradient in `a` is positive (descent lowers `a`).
/// assert!(r.grad["a"].item() > 0.0);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct MetaRequest<'a, F: Float, P: MetaProblem<F>> {
    /// The inner and outer objectives (and the inner optimiser).
    pub problem: &'a P,
    /// Rater parameters: what the meta-gradient is taken with respect to.
    pub eta: &'a Params<Tensor<F>>,
    /// Inner parameters at the start of the window.
    pub theta: &'a Params<Tensor<F>>,
    /// Inner optimiser state at the start of the window (from the problem's optimiser's
    /// `init`, or carried over from earlier steps).
    pub state: &'a OptState<Tensor<F>>,
    /// One training batch per inner step (at least one).
    pub batches: &'a [P::Batch],
    /// The held-out batch of the outer objective.
    pub outer_batch: &'a P::Batch,
    /// Which engine to run (default [`Mode::Mixed`]).
    pub mode: Mode,
    /// Optional limit on the bytes the computation allocates (see
    /// [`memory_budget`](Self::memory_budget)).
    pub memory_budget: Option<usize>,
    /// How many slices each inner step's batch is cut into (default [`DEFAULT_SHARDS`];
    /// see [`shards`](Self::shards)).
    pub shards: usize,
}

/// The default number of slices an inner step's batch is cut into
/// ([`MetaRequest::shards`]).
pub const DEFAULT_SHARDS: usize = 4;

impl<'a, F: Float, P: MetaProblem<F>> MetaRequest<'a, F, P> {
    /// A request for `dJ/d eta` through `batches.len()` inner steps from `(theta,
    /// state)`, `J` the outer loss on `outer_batch`: mixed mode, no memory budget,
    /// [`DEFAULT_SHARDS`] slices per batch.
    pub fn new(
        problem: &'a P,
        eta: &'a Params<Tensor<F>>,
        theta: &'a Params<Tensor<F>>,
        state: &'a OptState<Tensor<F>>,
        batches: &'a [P::Batch],
        outer_batch: &'a P::Batch,
    ) -> Self {
        MetaRequest {
            problem,
            eta,
            theta,
            state,
            batches,
            outer_batch,
            mode: Mode::Mixed,
            memory_budget: None,
            shards: DEFAULT_SHARDS,
        }
    }

    /// Which engine to run.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// A limit on the bytes the computation allocates beyond its inputs: tapes, stored
    /// states and gradients, the window's end state, the adjoints, and each step's
    /// working set. Before each step the engine predicts that step's bytes from the
    /// steps of the same kind already run (they have the same shapes) and stops with
    /// [`Error::MemoryBudget`] (naming the bytes, the mode and the inner step) instead of
    /// running a step that would pass the budget, freeing everything it held. The first
    /// step of each kind has nothing to predict from and is checked as it runs, so a run
    /// may pass the budget by at most one step's working set
    /// ([`MetaStats::peak_step_bytes`]). [`MetaStats::peak_bytes`] of a run is the
    /// smallest budget that run completes under.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Cuts each inner step's batch into `shards` slices of consecutive examples (fewer
    /// when the batch is smaller), when the problem can split its batches
    /// ([`MetaProblem::split_batch`]); the mixed modes run their passes over `theta` on
    /// the slices in parallel (rayon) and add the results in slice order. The slices
    /// depend only on the batch and this number, never on the thread count, so the
    /// result is bitwise the same on any number of threads (or ranks). `1` keeps every
    /// pass whole; `0` acts as `1`.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Computes the meta-gradient `dJ(theta_T(eta))/d eta`.
    ///
    /// Inputs are never modified.
    ///
    /// # Errors
    /// - [`Error::Config`] for an empty window, an invalid optimiser
    ///   ([`Optimizer::validate`]) or `Snapshots::AtMost(0)`;
    /// - [`Error::Params`] when `state` does not match `theta` or the optimiser (slot
    ///   count, names, shapes);
    /// - [`Error::Shape`] when per-example weights and losses are not both `[batch]`;
    /// - [`Error::NonFinite`] naming the inner step and the quantity where a NaN or
    ///   infinity appeared;
    /// - [`Error::MemoryBudget`] when the budget would be passed;
    /// - the problem's own errors.
    pub fn run(&self) -> Result<MetaGradient<F>> {
        crate::autodiff::kernels::on_worker(|| self.run_on_worker())
    }

    fn run_on_worker(&self) -> Result<MetaGradient<F>> {
        let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
        let opt = self.problem.optimizer();
        opt.validate()?;
        if self.batches.is_empty() {
            return Err(Error::Config {
                field: "batches",
                reason: "need at least one inner step".into(),
            });
        }
        check_state(opt, self.theta, self.state)?;
        let n = self.batches.len();
        match self.mode {
            Mode::Unrolled => unrolled(self),
            Mode::Mixed => binomial(self, revolve::auto_snapshots(n), true),
            Mode::Checkpointed { snapshots } => binomial(self, snapshots.resolve(n)?, false),
        }
    }
}

/// `state` must be what `opt` keeps for `theta`: as many slots, each shaped like `theta`.
fn check_state<F: Float, O: Optimizer<F>>(
    opt: &O,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
) -> Result<()> {
    let want = opt.init(theta).slots.len();
    if state.slots.len() != want {
        return Err(Error::Params {
            name: "optimiser state".into(),
            reason: format!(
                "{} slots given, the optimiser keeps {want}",
                state.slots.len()
            ),
        });
    }
    for (i, slot) in state.slots.iter().enumerate() {
        theta.check_like(slot).map_err(|e| match e {
            Error::Params { name, reason } => Error::Params {
                name,
                reason: format!("optimiser state slot {i} vs theta: {reason}"),
            },
            other => other,
        })?;
    }
    Ok(())
}

/// The memory budget's book ([`MetaRequest::memory_budget`]).
///
/// `held`: the bytes the engine holds across steps beyond its inputs (stored states and
/// gradients, the working state, the window's end and the adjoints; unrolled: its tape).
/// Each step allocates a working set on top of that and frees it when it ends. Steps of
/// one kind have the same shapes, so the largest working set seen of a kind predicts
/// the next one: a step runs only when `held` plus its prediction fits the budget.
struct Ledger {
    budget: Option<usize>,
    mode: Mode,
    held: usize,
    /// The largest working set seen per [`Kind`].
    seen: [Option<usize>; 5],
    peak: usize,
    peak_step: usize,
}

/// The kinds of step whose working sets [`Ledger`] predicts.
#[derive(Clone, Copy)]
enum Kind {
    /// A first-order inner step (unrolled: one step recorded on the tape).
    Inner = 0,
    /// An optimiser update replayed on a kept gradient.
    Replay = 1,
    /// A backward step: the optimiser's adjoint and a forward-over-reverse pass
    /// (unrolled: the backward sweep).
    Back = 2,
    /// The outer loss and its gradient.
    Outer = 3,
    /// One wave of the rater passes the backward sweep left to the end
    /// ([`Adjoint::finish`]).
    Rater = 4,
}

impl Ledger {
    fn new(budget: Option<usize>, mode: Mode) -> Self {
        Ledger {
            budget,
            mode,
            held: 0,
            seen: [None; 5],
            peak: 0,
            peak_step: 0,
        }
    }

    fn check(&self, bytes: usize, step: usize) -> Result<()> {
        match self.budget {
            Some(budget) if bytes > budget => Err(Error::MemoryBudget {
                budget,
                in_use: bytes,
                mode: self.mode,
                step,
            }),
            _ => Ok(()),
        }
    }

    /// Before a step of `kind` at inner step `step`: refuses it when what is held plus
    /// its predicted working set would pass the budget. Returns what is held now, the
    /// base that [`after`](Self::after) measures the step's working set from.
    fn before(&mut self, kind: Kind, step: usize) -> Result<usize> {
        if let Some(ws) = self.seen[kind as usize] {
            self.peak = self.peak.max(self.held + ws);
            self.check(self.held + ws, step)?;
        }
        Ok(self.held)
    }

    /// After a step of `kind` that began with `base` bytes held and allocated at most
    /// `ws` bytes on top of them (the first step of its kind is checked only here).
    fn after(&mut self, kind: Kind, base: usize, ws: usize, step: usize) -> Result<()> {
        let seen = &mut self.seen[kind as usize];
        *seen = Some(seen.map_or(ws, |s| s.max(ws)));
        self.peak = self.peak.max(base + ws);
        self.peak_step = self.peak_step.max(ws);
        self.check(base + ws, step)
    }

    fn hold(&mut self, bytes: usize) {
        self.held += bytes;
        self.peak = self.peak.max(self.held);
    }

    fn release(&mut self, bytes: usize) {
        self.held -= bytes;
    }
}

/// What one first-order inner step yields: `(L_t, g_t, theta_{t+1}, s_{t+1}, w_t)`,
/// `w_t` the weights when the problem has the weighted form.
type StepOut<F> = (
    F,
    Params<Tensor<F>>,
    Params<Tensor<F>>,
    OptState<Tensor<F>>,
    Option<Tensor<F>>,
);

/// One first-order inner step, and its working set in bytes. `weights` is the step's
/// [`MetaProblem::example_weights`] on numbers (returned for the backward sweep); without
/// them `inner_loss` runs with `eta` as constants.
#[allow(clippy::too_many_arguments)]
fn inner_step<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    eta_c: &Params<Var<Tensor<F>>>,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
    t: usize,
    weights: Option<Result<Tensor<F>>>,
) -> Result<(StepOut<F>, usize)> {
    let (problem, batch) = (req.problem, &req.batches[t]);
    let (loss, g, w, tapes) = match weights {
        Some(w) => {
            let w = w?;
            let (parts, alive) = for_shards(req, batch, &w, |w, b| {
                let w = Var::constant_of(w);
                value_and_grad_measured(|th| weighted_sum(&w, &losses(problem, th, b)?), theta)
            })?;
            // `alive` shards' working sets at once, and every shard's gradient.
            let tapes = alive * parts.iter().map(|p| p.2).max().unwrap_or(0)
                + parts.iter().map(|p| p.1.nbytes()).sum::<usize>();
            let loss = parts.iter().map(|p| p.0.item()).sum::<F>();
            let g = sum(parts.into_iter().map(|p| p.1))?;
            (loss, g, Some(w), tapes)
        }
        None => {
            let (loss, g, tapes) =
                value_and_grad_measured(|th| problem.inner_loss(th, eta_c, batch), theta)?;
            (loss.item(), g, None, tapes)
        }
    };
    finite_scalar(loss, t, "inner loss")?;
    finite(&g, t, "inner gradient")?;
    let (th, st) = update_by_tensor(problem.optimizer(), theta, state, &g);
    let ws = tapes + g.nbytes() + w.as_ref().map_or(0, Tensor::nbytes) + state_bytes(&th, &st);
    Ok(((loss, g, th, st, w), ws))
}

/// The adjoints carried backwards through the window: `theta_bar`, `s_bar` and the
/// meta-gradient accumulated so far.
struct Adjoint<F: Float> {
    theta: Params<Tensor<F>>,
    state: Vec<Params<Tensor<F>>>,
    eta: Params<Tensor<F>>,
    /// The steps' contributions to `eta_bar` not added yet, last step first (see
    /// [`Contribution`]).
    pending: Vec<(usize, Contribution<F>)>,
}

/// A step's meta-gradient contribution `M_t g`.
///
/// With the weighted form it is `grad_eta <w_t(eta), d_t>`: one first-order pass through
/// the rater, which needs only `eta`, the step's batch and the losses' tangents `d_t`,
/// never the backward sweep's later steps. Those passes are small (the rater's ops
/// rarely fill both threads) and ran between the steps' forward-over-reverse passes on
/// one thread while the others waited: 10% of the reference meta-gradient. So the sweep
/// keeps `d_t` (one number per example) and [`Adjoint::finish`] runs the passes
/// together at the end, one per thread, adding them to `eta_bar` in step order as
/// before: the same sum, bitwise.
enum Contribution<F: Float> {
    /// Computed with the step's pass (the generic form).
    Ready(Params<Tensor<F>>),
    /// The weighted form's rater pass, still to run on the losses' tangents `d_t`.
    Rater(Tensor<F>),
}

impl<F: Float> Contribution<F> {
    fn nbytes(&self) -> usize {
        match self {
            Contribution::Ready(m) => m.nbytes(),
            Contribution::Rater(d) => d.nbytes(),
        }
    }
}

impl<F: Float> Adjoint<F> {
    /// The adjoints at the end of the window: `theta_bar = dJ/d theta_T`, `s_bar = 0`.
    fn new(
        theta_bar: Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        eta: &Params<Tensor<F>>,
    ) -> Self {
        Adjoint {
            theta: theta_bar,
            state: state.slots.iter().map(Params::zeros_like).collect(),
            eta: eta.zeros_like(),
            pending: Vec::new(),
        }
    }

    fn nbytes(&self) -> usize {
        self.theta.nbytes() + slot_bytes(&self.state) + self.eta.nbytes()
    }

    /// Steps the adjoints back over inner step `t` (from `theta_t, s_t` with gradient
    /// `g_t` and weights `w_t`): the optimiser's adjoint, then one forward-over-reverse
    /// pass ([`products`]). `g_t` and an owned `s_t` are freed (and released from the
    /// ledger) before the pass, which needs neither.
    #[allow(clippy::too_many_arguments)]
    fn step_back<P: MetaProblem<F>>(
        &mut self,
        req: &MetaRequest<'_, F, P>,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: Cow<'_, OptState<Tensor<F>>>,
        kept: Kept<F>,
        remat: bool,
        ledger: &mut Ledger,
        stats: &mut MetaStats,
    ) -> Result<()> {
        let base = ledger.before(Kind::Back, t)?;
        let opt = req.problem.optimizer();
        let adj = adjoint_by_tensor(opt, theta, &state, &kept.0, &self.theta, &self.state);
        finite(&adj.grad, t, "optimiser adjoint")?;
        // The old and the new adjoints and g_bar are alive together here.
        let new_adjoint = adj.theta.nbytes() + slot_bytes(&adj.state);
        let g_bar = adj.grad.nbytes();
        // g_t and an owned s_t are freed here.
        let freed = kept_bytes(&kept)
            + match state {
                Cow::Owned(s) => slot_bytes(&s.slots),
                Cow::Borrowed(_) => 0,
            };
        let (g, w) = kept;
        drop(g);
        ledger.release(freed);
        // Nor are the adjoints of step t + 1 needed any longer (the new ones have the
        // same shapes).
        (self.theta, self.state) = (adj.theta, adj.state);
        // theta_0 does not depend on eta: its adjoint is not needed.
        let pass = products(req, theta, w.as_ref(), &adj.grad, t, remat, t > 0)?;
        stats.peak_tape_bytes = stats.peak_tape_bytes.max(pass.tape_bytes);
        // Then the pass beside g_bar, and the new theta_bar and eta_bar as they are summed.
        let summed = self.theta.nbytes() + self.eta.nbytes();
        let ws =
            (new_adjoint + g_bar).max((g_bar + pass.working_bytes + summed).saturating_sub(freed));
        ledger.after(Kind::Back, base, ws, t)?;
        if let Some(h) = &pass.h {
            finite(h, t, "Hessian-vector product")?;
            self.theta = self.theta.add_scaled(h, F::one())?;
        }
        match pass.m {
            // Added at once while nothing before it waits (eta_bar sums in step order).
            Contribution::Ready(m) if self.pending.is_empty() => {
                finite(&m, t, MIXED)?;
                self.eta = self.eta.add_scaled(&m, F::one())?;
            }
            m => {
                ledger.hold(m.nbytes());
                self.pending.push((t, m));
            }
        }
        Ok(())
    }

    /// Adds the pending contributions to `eta_bar` in step order, running the rater
    /// passes among them in waves of one per rayon thread (so at most that many rater
    /// tapes are alive at once; which thread runs which never changes a result).
    fn finish<P: MetaProblem<F>>(
        &mut self,
        req: &MetaRequest<'_, F, P>,
        ledger: &mut Ledger,
    ) -> Result<()> {
        let wave = rayon::current_num_threads().max(1);
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(wave) {
            let first = chunk[0].0;
            let base = ledger.before(Kind::Rater, first)?;
            let done: Vec<(Params<Tensor<F>>, usize)> = chunk
                .par_iter()
                .map(|(t, c)| match c {
                    Contribution::Ready(m) => Ok((m.clone(), 0)),
                    Contribution::Rater(d) => {
                        let batch = &req.batches[*t];
                        let (_, m, tape) = vjp_measured(
                            |e| {
                                req.problem
                                    .example_weights(e, batch)
                                    .unwrap_or_else(|| Err(partial_weighted_form()))
                            },
                            req.eta,
                            d,
                        )?;
                        Ok((m, tape))
                    }
                })
                .collect::<Result<_>>()?;
            // The wave's tapes, its results and the new eta_bar as they are summed.
            let tapes = chunk.len() * done.iter().map(|r| r.1).max().unwrap_or(0);
            let results: usize = done.iter().map(|r| r.0.nbytes()).sum();
            ledger.after(
                Kind::Rater,
                base,
                tapes + results + self.eta.nbytes(),
                first,
            )?;
            for ((t, c), (m, _)) in chunk.iter().zip(done) {
                finite(&m, *t, MIXED)?;
                self.eta = self.eta.add_scaled(&m, F::one())?;
                ledger.release(c.nbytes());
            }
        }
        Ok(())
    }
}

/// What a non-finite `M_t g` is reported as.
const MIXED: &str = "mixed product (meta-gradient contribution)";

/// An inner state `(theta_t, s_t)`.
type State<F> = (Params<Tensor<F>>, OptState<Tensor<F>>);

/// What mixed mode keeps of a step: `(g_t, w_t)`.
type Kept<F> = (Params<Tensor<F>>, Option<Tensor<F>>);

/// The bytes of a kept `(g_t, w_t)`.
fn kept_bytes<F: Float>((g, w): &Kept<F>) -> usize {
    g.nbytes() + w.as_ref().map_or(0, Tensor::nbytes)
}

/// The bytes of optimiser-state slots (or of their adjoints).
fn slot_bytes<F: Float>(slots: &[Params<Tensor<F>>]) -> usize {
    slots.iter().map(Params::nbytes).sum()
}

/// The bytes of an inner state `(theta, s)`.
fn state_bytes<F: Float>(theta: &Params<Tensor<F>>, state: &OptState<Tensor<F>>) -> usize {
    theta.nbytes() + slot_bytes(&state.slots)
}

/// Mixed (`keep_grads`) and checkpointed mode: reverses the window with at most
/// `snapshots` inner states stored at once, placed by binomial checkpointing.
///
/// Reversing steps `[a, b)` from a snapshot of `x_a` with `s` snapshots: with one step or
/// one snapshot, run from `x_a` to each step `t = b - 1, ..., a` in turn and reverse it;
/// otherwise run `j = revolve::split` steps, store `x_{a+j}`, reverse `[a + j, b)` with
/// `s - 1` snapshots, free it, and reverse `[a, a + j)` with `s`. The first run of every
/// step comes in order, so the first descent is the forward sweep.
///
/// The two modes differ in what running a step again costs. Checkpointed mode keeps no
/// gradient: it runs the inner step again (a model pass), also for the gradient of the
/// step it reverses, and rematerialises blocks in its forward-over-reverse passes. Mixed
/// mode keeps every `(g_t, w_t)` from the step's first run: a state it did not store is
/// the optimiser's update replayed on the kept gradient, the same call on the same
/// numbers as the first run (so bitwise the same state), elementwise work with no model
/// pass; its forward-over-reverse passes record blocks op by op.
fn binomial<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    snapshots: usize,
    keep_grads: bool,
) -> Result<MetaGradient<F>> {
    binomial_observed(req, snapshots, keep_grads, &mut |_, _, _| {})
}

/// Sees each state `(t, theta_t, s_t)` a backward step runs at (for the tests).
type Observer<'o, F> = &'o mut dyn FnMut(usize, &Params<Tensor<F>>, &OptState<Tensor<F>>);

/// [`binomial`], showing `observe` every state a backward step runs at.
fn binomial_observed<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    snapshots: usize,
    keep_grads: bool,
    observe: Observer<'_, F>,
) -> Result<MetaGradient<F>> {
    let n = req.batches.len();
    // The weighted form's w_t depend only on eta and the batches: all computed here, one
    // step per rayon thread, rather than each on one thread before its step's shards
    // while the other threads waited (like the rater passes of `Adjoint::finish`).
    let weights: Vec<_> = req
        .batches
        .par_iter()
        .map(|b| req.problem.example_weights(req.eta, b))
        .collect();
    let weight_bytes = weights
        .iter()
        .map(|w| {
            w.as_ref()
                .and_then(|w| w.as_ref().ok())
                .map_or(0, Tensor::nbytes)
        })
        .sum();
    let mut sweep = Sweep {
        req,
        eta_c: req.eta.map(|e| Var::constant_of(e.clone())),
        inner_losses: Vec::with_capacity(n),
        grads: keep_grads.then(|| Vec::with_capacity(n)),
        end: None,
        weights,
        ledger: Ledger::new(req.memory_budget, req.mode),
        trajectory: 0,
        stats: MetaStats {
            steps: n,
            ..MetaStats::default()
        },
        observe,
    };
    sweep.ledger.hold(weight_bytes);
    // The window's start is borrowed from the caller: not counted.
    let mut stack = vec![Snapshot {
        t: 0,
        theta: Cow::Borrowed(req.theta),
        state: Cow::Borrowed(req.state),
    }];
    let mut tasks = vec![Task::Reverse {
        a: 0,
        b: n,
        snapshots,
    }];
    while let Some(task) = tasks.pop() {
        let (a, b, s) = match task {
            Task::Free => {
                let x = stack.pop().expect("a snapshot to free");
                sweep.drop_state(state_bytes(&x.theta, &x.state));
                continue;
            }
            Task::Reverse { a, b, snapshots } => (a, b, snapshots),
        };
        let top = stack.last().expect("the snapshot of x_a");
        assert_eq!(
            top.t, a,
            "the top snapshot holds the start of the steps reversed"
        );
        if b - a > 1 && s > 1 {
            let m = a + revolve::split(b - a, s);
            let (theta, state) = sweep.run_to(top, m)?.expect("m > a");
            stack.push(Snapshot {
                t: m,
                theta: Cow::Owned(theta),
                state: Cow::Owned(state),
            });
            sweep.stats.stored_states = sweep.stats.stored_states.max(stack.len());
            tasks.extend([
                Task::Reverse {
                    a,
                    b: m,
                    snapshots: s,
                },
                Task::Free,
                Task::Reverse {
                    a: m,
                    b,
                    snapshots: s - 1,
                },
            ]);
            continue;
        }
        sweep.stats.stored_states = sweep.stats.stored_states.max(stack.len());
        for t in (a..b).rev() {
            // x_t: the snapshot, or a working state run forward from it.
            match sweep.run_to(top, t)? {
                Some((theta, state)) => {
                    let bytes = theta.nbytes();
                    sweep.reverse(t, &theta, Cow::Owned(state))?;
                    // Its s_t was freed by the backward step, theta_t only now.
                    sweep.drop_state(bytes);
                }
                None => sweep.reverse(t, &top.theta, Cow::Borrowed(&*top.state))?,
            }
        }
    }
    let (outer_loss, mut adjoint, theta, state) = sweep.end.expect("every step was reversed");
    adjoint.finish(req, &mut sweep.ledger)?;
    let mut stats = sweep.stats;
    stats.peak_bytes = sweep.ledger.peak;
    stats.peak_step_bytes = sweep.ledger.peak_step;
    Ok(MetaGradient {
        grad: adjoint.eta,
        outer_loss,
        inner_losses: sweep.inner_losses,
        theta,
        state,
        stats,
    })
}

/// A stored inner state `x_t = (theta_t, s_t)`; the window's start is borrowed from the
/// request.
struct Snapshot<'a, F: Float> {
    t: usize,
    theta: Cow<'a, Params<Tensor<F>>>,
    state: Cow<'a, OptState<Tensor<F>>>,
}

/// What [`binomial`] does next with its stack of snapshots.
enum Task {
    /// Reverse steps `b - 1` down to `a`, the top snapshot holding `x_a`, using at most
    /// `snapshots` snapshots (that one included).
    Reverse {
        a: usize,
        b: usize,
        snapshots: usize,
    },
    /// Free the top snapshot.
    Free,
}

/// `(J, the adjoints, theta_T, s_T)`: what the end of the window gives.
type WindowEnd<F> = (F, Adjoint<F>, Params<Tensor<F>>, OptState<Tensor<F>>);

/// [`binomial`]'s bookkeeping: which steps have run, what was kept and recomputed, and
/// the memory budget's book.
struct Sweep<'r, 'a, 'o, F: Float, P: MetaProblem<F>> {
    req: &'r MetaRequest<'a, F, P>,
    eta_c: Params<Var<Tensor<F>>>,
    inner_losses: Vec<F>,
    /// Mixed mode: `(g_t, w_t)` of every step that has run and is not reversed yet
    /// (index `t`). Checkpointed mode: `None`.
    grads: Option<Vec<Kept<F>>>,
    /// Set by the first step reversed, the last one.
    end: Option<WindowEnd<F>>,
    /// Every step's [`MetaProblem::example_weights`] on numbers, computed up front.
    weights: Vec<Option<Result<Tensor<F>>>>,
    ledger: Ledger,
    /// Bytes of stored and working states and kept gradients held now.
    trajectory: usize,
    stats: MetaStats,
    observe: Observer<'o, F>,
}

impl<F: Float, P: MetaProblem<F>> Sweep<'_, '_, '_, F, P> {
    /// Holds `bytes` more of trajectory.
    fn keep_state(&mut self, bytes: usize) {
        self.ledger.hold(bytes);
        self.trajectory += bytes;
        self.stats.trajectory_bytes = self.stats.trajectory_bytes.max(self.trajectory);
    }

    /// Releases `bytes` of trajectory.
    fn drop_state(&mut self, bytes: usize) {
        self.ledger.release(bytes);
        self.trajectory -= bytes;
    }

    /// Inner step `t` from `(theta, state)`; its first run records its loss, any later
    /// one counts as recomputed.
    fn step(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
    ) -> Result<StepOut<F>> {
        let base = self.ledger.before(Kind::Inner, t)?;
        let weights = match &mut self.weights[t] {
            Some(Ok(w)) => Some(Ok(w.clone())),
            // An error is given once: the run stops with it.
            slot => slot.take(),
        };
        let (out, ws) = inner_step(self.req, &self.eta_c, theta, state, t, weights)?;
        self.ledger.after(Kind::Inner, base, ws, t)?;
        if t == self.inner_losses.len() {
            self.inner_losses.push(out.0);
        } else {
            self.stats.recomputed_steps += 1;
        }
        Ok(out)
    }

    /// `x_{t+1}` from `x_t = (theta, state)`: the kept gradient's update replayed, or
    /// the inner step run (its gradient kept in mixed mode). The result is held.
    fn advance(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
    ) -> Result<State<F>> {
        let (th, st) = match &self.grads {
            Some(grads) if t < grads.len() => {
                let base = self.ledger.before(Kind::Replay, t)?;
                self.stats.replayed_updates += 1;
                let opt = self.req.problem.optimizer();
                let (th, st) = update_by_tensor(opt, theta, state, &grads[t].0);
                self.ledger
                    .after(Kind::Replay, base, state_bytes(&th, &st), t)?;
                (th, st)
            }
            _ => {
                let (_, g, th, st, w) = self.step(t, theta, state)?;
                if let Some(grads) = &mut self.grads {
                    assert_eq!(grads.len(), t, "first runs come in order");
                    let k = (g, w);
                    let bytes = kept_bytes(&k);
                    grads.push(k);
                    self.keep_state(bytes);
                }
                (th, st)
            }
        };
        self.keep_state(state_bytes(&th, &st));
        Ok((th, st))
    }

    /// Runs from snapshot `x` to step `t`: `None` when `x` is `x_t`, else `x_t` (held).
    fn run_to(&mut self, x: &Snapshot<'_, F>, t: usize) -> Result<Option<State<F>>> {
        let mut cur: Option<State<F>> = None;
        for i in x.t..t {
            let (theta, state) = cur.as_ref().map_or((&*x.theta, &*x.state), |(a, b)| (a, b));
            let next = self.advance(i, theta, state)?;
            // The previous working state is freed once the next one exists.
            if let Some((th, st)) = cur.replace(next) {
                self.drop_state(state_bytes(&th, &st));
            }
        }
        Ok(cur)
    }

    /// Reverses step `t` at `x_t` (a held working state when `state` is owned).
    fn reverse(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: Cow<'_, OptState<Tensor<F>>>,
    ) -> Result<()> {
        let req = self.req;
        (self.observe)(t, theta, &state);
        let k = match &mut self.grads {
            Some(grads) if t < grads.len() => {
                let k = grads.pop().expect("t < len");
                assert_eq!(grads.len(), t, "steps are reversed last first");
                k
            }
            _ => {
                let (_, g, th, st, w) = self.step(t, theta, &state)?;
                // x_{t+1} is only needed at the end of the window, for J and the result.
                if t + 1 == req.batches.len() {
                    let base = self.ledger.before(Kind::Outer, t + 1)?;
                    let (j, theta_bar, ws) = outer_start(req, &th)?;
                    self.ledger.after(Kind::Outer, base, ws, t + 1)?;
                    let adjoint = Adjoint::new(theta_bar, &st, req.eta);
                    self.ledger.hold(adjoint.nbytes() + state_bytes(&th, &st));
                    self.end = Some((j, adjoint, th, st));
                }
                let k = (g, w);
                self.keep_state(kept_bytes(&k));
                k
            }
        };
        if matches!(state, Cow::Owned(_)) {
            // step_back frees the owned s_t: it leaves the trajectory with g_t.
            self.trajectory -= slot_bytes(&state.slots);
        }
        self.trajectory -= kept_bytes(&k);
        let remat = self.grads.is_none();
        let (_, adjoint, _, _) = self.end.as_mut().expect("the last step is reversed first");
        adjoint.step_back(
            req,
            t,
            theta,
            state,
            k,
            remat,
            &mut self.ledger,
            &mut self.stats,
        )
    }
}

/// The outer loss at `theta_T`, its gradient (the adjoint the backward sweep starts
/// with) and the working set of computing them.
fn outer_start<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    theta: &Params<Tensor<F>>,
) -> Result<(F, Params<Tensor<F>>, usize)> {
    let n = req.batches.len();
    let (j, theta_bar, ws) =
        value_and_grad_measured(|th| req.problem.outer_loss(th, req.outer_batch), theta)?;
    finite_scalar(j.item(), n, "outer loss")?;
    finite(&theta_bar, n, "outer gradient")?;
    Ok((j.item(), theta_bar, ws))
}

/// What one forward-over-reverse step ([`products`]) yields.
struct Products<F: Float> {
    /// `H_t g` (absent for step 0).
    h: Option<Params<Tensor<F>>>,
    /// `M_t g`, or what computes it.
    m: Contribution<F>,
    /// The forward-over-reverse tapes' bytes (all shards).
    tape_bytes: usize,
    /// The pass's working set: tapes, cotangents, the shards' results and their sums.
    working_bytes: usize,
}

/// `H_t g` and `M_t g` at step `t`: the tangent along `g` (a direction in `theta`) of
/// the inner objective's gradients with respect to `theta` and `eta`, by
/// forward-over-reverse. When the problem exposes its weighted form
/// (`sum_i w_i(eta) l_i(theta)`, see [`MetaProblem::example_weights`]) the weights stay
/// out of that pass: it runs over `theta` only with `w` constant (on the batch's shards,
/// [`for_shards`]), which gives `H_t g` and the losses' tangents `d_i`; then
/// `M_t g = grad_eta <w(eta), d>` is one first-order backward pass through `w`, left to
/// [`Adjoint::finish`] ([`Contribution::Rater`]). Without `need_h` (step 0, whose
/// `theta` does not depend on `eta`) only `M_t g` is computed: the weighted form needs
/// only `d`, a forward-mode pass; the generic form records only the ops that depend on
/// `eta`. `remat`: rematerialise checkpointed blocks in the forward-over-reverse pass.
fn products<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    theta: &Params<Tensor<F>>,
    weights: Option<&Tensor<F>>,
    g: &Params<Tensor<F>>,
    t: usize,
    remat: bool,
    need_h: bool,
) -> Result<Products<F>> {
    let (problem, eta, batch) = (req.problem, req.eta, &req.batches[t]);
    let w = match weights {
        Some(w) => Some(Ok(w.clone())),
        None => problem.example_weights(eta, batch),
    };
    let Some(w) = w else {
        let (h, m, tape_bytes, cotangent_bytes) = if need_h {
            let r = grad_tangents_with(
                |gs| problem.inner_loss(&gs[0], &gs[1], batch),
                &[theta, eta],
                &[Some(g), None],
                remat,
            )?;
            let (tape, cot) = (r.tape_bytes, r.cotangent_bytes);
            let [h, m]: [Params<Tensor<F>>; 2] = r.tangents.try_into().expect("two groups");
            (Some(h), m, tape, cot)
        } else {
            // theta as constants carrying the tangent: only the ops that depend on eta
            // are recorded.
            let th = theta.zip_map(g, |p, t| Var::constant_of(Dual::new(p.clone(), t.clone())))?;
            let r = grad_tangents_with(
                |gs| problem.inner_loss(&th, &gs[0], batch),
                &[eta],
                &[None],
                remat,
            )?;
            let (tape, cot) = (r.tape_bytes, r.cotangent_bytes);
            let m = r.tangents.into_iter().next().expect("one group");
            (None, m, tape, cot)
        };
        let results = h.as_ref().map_or(0, Params::nbytes) + m.nbytes();
        return Ok(Products {
            h,
            m: Contribution::Ready(m),
            tape_bytes,
            working_bytes: tape_bytes + cotangent_bytes + results,
        });
    };
    let w = w?;
    let (parts, alive) = for_shards(req, batch, &w, |w, b| {
        if !need_h {
            let (_, d) = jvp(|th| losses(problem, th, b), theta, g)?;
            check_weighted(w.shape().to_vec(), d.shape().to_vec())?;
            return Ok((None, d, 0, 0));
        }
        let w = Var::constant_of(Dual::constant_of(w));
        let mut d = None;
        let r = grad_tangents_with(
            |gs| -> Result<Var<Dual<Tensor<F>>>> {
                let l = losses(problem, &gs[0], b)?;
                d = Some(l.value().tangent_or_zeros());
                weighted_sum(&w, &l)
            },
            &[theta],
            &[Some(g)],
            remat,
        )?;
        let h = r.tangents.into_iter().next().expect("one group");
        let ws = r.tape_bytes + r.cotangent_bytes;
        Ok((Some(h), d.expect("set by the objective"), r.tape_bytes, ws))
    })?;
    // `alive` shards' tapes at once, and every shard's results.
    let tape_bytes = alive * parts.iter().map(|p| p.2).max().unwrap_or(0);
    let results: usize = parts
        .iter()
        .map(|p| p.0.as_ref().map_or(0, Params::nbytes) + p.1.nbytes())
        .sum();
    let mut working_bytes = alive * parts.iter().map(|p| p.3).max().unwrap_or(0) + results;
    let d = Tensor::concat(&parts.iter().map(|p| &p.1).collect::<Vec<_>>(), 0);
    let h = match need_h {
        true => Some(sum(parts.into_iter().map(|p| p.0.expect("need_h")))?),
        false => None,
    };
    working_bytes += h.as_ref().map_or(0, Params::nbytes) + d.nbytes();
    Ok(Products {
        h,
        m: Contribution::Rater(d),
        tape_bytes,
        working_bytes,
    })
}

/// Runs `f(w_k, batch_k)` on the shards of a weighted-form batch (`w` its weights, one
/// per example along axis 0) and returns the results in shard order, with the most
/// shards that ran at once. The shards are `req.shards` slices of consecutive examples
/// when the problem can split its batches ([`MetaProblem::split_batch`]), else the
/// whole batch: a function of the batch size and `req.shards` only. They run in waves
/// of one shard per rayon thread (so at most that many shards' working sets are alive
/// at once); rayon decides which thread runs which, never what is added to what, so
/// sums of the results taken in order are bitwise the same on any number of threads.
fn for_shards<F: Float, P: MetaProblem<F>, R: Send>(
    req: &MetaRequest<'_, F, P>,
    batch: &P::Batch,
    w: &Tensor<F>,
    f: impl Fn(Tensor<F>, &P::Batch) -> Result<R> + Sync,
) -> Result<(Vec<R>, usize)> {
    let whole = || Ok((vec![f(w.clone(), batch)?], 1));
    let n = match w.shape() {
        [n] => *n,
        // Not [batch]: the whole batch, whose objective reports the shapes.
        _ => return whole(),
    };
    let size = n.div_ceil(req.shards.max(1)).max(1);
    if size >= n {
        return whole();
    }
    let Some(parts) = req.problem.split_batch(batch, size) else {
        return whole();
    };
    let ranges: Vec<Range<usize>> = super::slices(n, size).collect();
    if parts.len() != ranges.len() {
        return Err(Error::Shape {
            op: "split_batch: slices of the batch vs slices of its weights",
            lhs: vec![parts.len()],
            rhs: vec![ranges.len()],
        });
    }
    let wave = rayon::current_num_threads().clamp(1, parts.len());
    let mut out = Vec::with_capacity(parts.len());
    for (parts, ranges) in parts.chunks(wave).zip(ranges.chunks(wave)) {
        let done: Vec<R> = parts
            .par_iter()
            .zip(ranges)
            .map(|(b, r)| f(w.slice(0, r.start, r.end), b))
            .collect::<Result<_>>()?;
        out.extend(done);
    }
    Ok((out, wave))
}

/// The sum of parameter sets with the same names and shapes, added in order.
fn sum<F: Float>(parts: impl IntoIterator<Item = Params<Tensor<F>>>) -> Result<Params<Tensor<F>>> {
    let mut parts = parts.into_iter();
    let first = parts.next().expect("at least one part");
    parts.try_fold(first, |acc, p| acc.add_scaled(&p, F::one()))
}

fn unrolled<F: Float, P: MetaProblem<F>>(req: &MetaRequest<'_, F, P>) -> Result<MetaGradient<F>> {
    let MetaRequest {
        problem,
        eta,
        theta: theta0,
        state: state0,
        batches,
        outer_batch,
        ..
    } = *req;
    let opt = problem.optimizer();
    let n = batches.len();
    let mut ledger = Ledger::new(req.memory_budget, req.mode);
    let tape = Tape::<Tensor<F>>::with_checkpointing(false);
    let eta_v = eta.map(|e| tape.var(e.clone()));
    // The rater's parameters are constants of each inner tape but variables of the outer one.
    let eta_in = eta_v.map(|e| Var::constant_of(e.clone()));
    let lift = |p: &Params<Tensor<F>>| p.map(|x| Var::constant_of(x.clone()));
    let mut theta = lift(theta0);
    let mut state = OptState {
        step: state0.step,
        slots: state0.slots.iter().map(lift).collect(),
    };
    let mut inner_losses = Vec::with_capacity(n);
    // Every step adds the same shapes to the tape: the growth of the last one predicts
    // the next.
    for (t, batch) in batches.iter().enumerate() {
        let base = ledger.before(Kind::Inner, t)?;
        // The inner backward pass runs on values recorded on the outer tape; its own
        // tape and cotangents are freed with the step.
        let (loss, g, inner_ws) =
            value_and_grad_measured(|th| problem.inner_loss(th, &eta_in, batch), &theta)?;
        finite_scalar(loss.item(), t, "inner loss")?;
        finite(&g.map(|v| v.value().clone()), t, "inner gradient")?;
        inner_losses.push(loss.item());
        (theta, state) = opt.update(&theta, &state, &g);
        let grown = tape.held_bytes() - base;
        ledger.after(Kind::Inner, base, grown + inner_ws, t)?;
        ledger.hold(grown);
    }
    let base = ledger.before(Kind::Outer, n)?;
    let j = problem.outer_loss(&theta, outer_batch)?;
    finite_scalar(j.item(), n, "outer loss")?;
    let held = tape.held_bytes();
    ledger.after(Kind::Outer, base, held - base, n)?;
    ledger.hold(held - base);
    let peak = tape.bytes();
    let wrt: Vec<&Var<Tensor<F>>> = eta_v.values().collect();
    let seed = Tensor::filled(&j.shape(), F::one());
    // The backward sweep stops itself before its cotangents pass what is left.
    let limit = req.memory_budget;
    let (grads, cot_bytes) = tape
        .backward_within(&j, seed, &wrt, limit)
        .map_err(|e| match e {
            Error::MemoryBudget { budget, in_use, .. } => Error::MemoryBudget {
                budget,
                in_use,
                mode: req.mode,
                step: n,
            },
            other => other,
        })?;
    ledger.after(Kind::Back, ledger.held, cot_bytes, n)?;
    let grad: Params<Tensor<F>> = eta_v.names().map(str::to_string).zip(grads).collect();
    finite(&grad, 0, "meta-gradient")?;
    let unlift = |p: &Params<Var<Tensor<F>>>| p.map(|x| x.value().clone());
    Ok(MetaGradient {
        grad,
        outer_loss: j.item(),
        inner_losses,
        theta: unlift(&theta),
        state: OptState {
            step: state.step,
            slots: state.slots.iter().map(unlift).collect(),
        },
        stats: MetaStats {
            steps: n,
            peak_bytes: ledger.peak,
            peak_step_bytes: ledger.peak_step,
            peak_tape_bytes: peak,
            trajectory_bytes: 0,
            recomputed_steps: 0,
            replayed_updates: 0,
            stored_states: 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Corpus;
    use crate::meta::{DataRaterProblem, InnerLoop, MeanLoss, Rater, Sampler};
    use crate::nn::{CausalLm, SequenceScorer, TransformerConfig};
    use crate::optim::Adam;
    use crate::rng::Rng;
    use crate::trainer::{Sequences, TextLm, TextPool, TextRater};

    /// Mixed mode recovers the states it did not store by replaying the optimiser's
    /// update on the kept gradients: every state a backward step runs at is bitwise the
    /// state of a run that stores them all (checkpointed mode with a snapshot per step),
    /// and of a plain forward rollout.
    #[test]
    fn replayed_states_are_bitwise_the_forward_sweeps() {
        let cfg = |causal| TransformerConfig {
            vocab: 256,
            d_model: 8,
            n_layers: 1,
            n_heads: 2,
            d_ff: 16,
            max_len: 12,
            causal,
        };
        let seqs = Corpus::embedded().sequences(12).unwrap();
        let pool = TextPool::new(Sequences::from_rows(&seqs[..64]).unwrap(), 4).unwrap();
        let inner = TextLm::new(CausalLm::new(cfg(true)).unwrap(), Adam::new(1e-2)).unwrap();
        let rater = TextRater {
            scorer: SequenceScorer::new(cfg(false)).unwrap(),
        };
        let problem = DataRaterProblem {
            inner: &inner,
            rater: &rater,
            outer: &MeanLoss,
        };
        let mut rng = Rng::new(1);
        let theta: Params<Tensor<f64>> = inner.init(&mut rng);
        let eta: Params<Tensor<f64>> = rater.init(&mut rng);
        let state = inner.opt.init(&theta);
        let n = 13;
        let batches: Vec<_> = (0..n).map(|_| pool.sample(&mut rng).unwrap()).collect();
        let outer = pool.sample(&mut rng).unwrap();
        let req = MetaRequest::new(&problem, &eta, &theta, &state, &batches, &outer);
        let seen = |snapshots, keep_grads| {
            let mut at = vec![None; n];
            let r = binomial_observed(&req, snapshots, keep_grads, &mut |t, th, st| {
                assert!(at[t].is_none(), "step {t} reversed twice");
                at[t] = Some((th.clone(), st.clone()));
            })
            .unwrap();
            (at.into_iter().map(Option::unwrap).collect::<Vec<_>>(), r)
        };
        let (mixed, r) = seen(revolve::auto_snapshots(n), true);
        assert!(r.stats.replayed_updates > 0 && r.stats.stored_states < n);
        let (all, _) = seen(n, false);
        let eta_c = eta.map(|e| Var::constant_of(e.clone()));
        let mut x = (theta.clone(), state.clone());
        for t in 0..n {
            assert!(mixed[t] == all[t], "step {t}: replayed vs stored state");
            assert!(mixed[t] == x, "step {t}: replayed vs forward rollout");
            let w = req.problem.example_weights(req.eta, &req.batches[t]);
            let ((_, _, th, st, _), _) = inner_step(&req, &eta_c, &x.0, &x.1, t, w).unwrap();
            x = (th, st);
        }
    }
}
