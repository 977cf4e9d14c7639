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
//! thread when the problem can cut batches ([`MetaProblem::sub_batch`]), and step 0's
//! pass is forward mode only (`theta_0` does not depend on `eta`).

use super::revolve;
use super::{MetaProblem, check_weighted, weighted_sum};
use crate::autodiff::transforms::{jvp, jvp_grad_with, value_and_grad, vjp};
use crate::autodiff::{Dual, Float, Params, Tape, Tensor, Value, Var};
use crate::error::{Error, Result};
use crate::optim::{OptState, Optimizer};
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Which meta-gradient engine to run. All give the same meta-gradient (to rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward-over-reverse backward sweep over the stored gradients `g_t`; each step's
    /// pass keeps all its activations (no block rematerialisation: faster, one step's
    /// activations in memory).
    ///
    /// Of the states `(theta_t, s_t)` at most the least `s` with `C(s + 3, 3) >= T` are
    /// stored at once (placed as in [`Mode::Checkpointed`] with `snapshots: 0`, the
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
        /// The most inner states `(theta_t, s_t)` stored at once; more than `T` act as
        /// `T`. `0` picks the least `s` with `C(s + 3, 3) >= T`, so `r <= 3`: a bounded
        /// amount of recomputation (under 3 inner steps per step, next to a backward
        /// step that costs about 3 inner steps anyway), for `s` growing only like the
        /// cube root of `6 T` (1 for `T <= 4`, 3 at `T = 16`, 6 at `T = 64`).
        snapshots: usize,
    },
    /// Reverse-over-reverse through the whole unrolled window (the baseline).
    Unrolled,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Mixed => write!(f, "mixed"),
            Mode::Checkpointed { snapshots: 0 } => write!(f, "checkpointed (automatic snapshots)"),
            Mode::Checkpointed { snapshots } => write!(f, "checkpointed ({snapshots} snapshots)"),
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
    /// Largest number of bytes any tape held (unrolled: the whole window's tape; mixed:
    /// one step's forward-over-reverse tape, summed over the slices of the batch that
    /// ran at once; see [`MetaProblem::sub_batch`]).
    pub peak_tape_bytes: usize,
    /// Largest number of bytes of stored trajectory (`theta_t`, `s_t`, `g_t`) alive at once.
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
/// let r = MetaRequest {
///     problem: &problem,
///     eta: &eta,
///     theta: &theta,
///     state: &inner.optimizer().init(&theta),
///     batches: &[batch],
///     outer_batch: &held_out,
///     mode: Mode::Mixed,
///     memory_budget: None,
/// }
/// .run()?;
/// // Up-weighting large x (a > 0) would pull m towards the outlier 5 and away from the
/// // held-out data near 1, so the meta-gradient in `a` is positive (descent lowers `a`).
/// assert!(r.grad["a"].item() > 0.0);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Copy)]
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
    /// Which engine to run.
    pub mode: Mode,
    /// Optional limit on the bytes of tapes and stored trajectory alive at once. A run
    /// that passes it stops with [`Error::MemoryBudget`] naming the bytes in use, the mode
    /// and the inner step, and frees everything it held. Checked after every inner step
    /// of the forward sweep and every step of the backward sweep, so the overshoot is
    /// at most one step's tape.
    pub memory_budget: Option<usize>,
}

impl<F: Float, P: MetaProblem<F>> MetaRequest<'_, F, P> {
    /// Computes the meta-gradient `dJ(theta_T(eta))/d eta`.
    ///
    /// Inputs are never modified.
    ///
    /// # Errors
    /// - [`Error::Config`] for an empty window or an invalid optimiser
    ///   ([`Optimizer::validate`]);
    /// - [`Error::Params`] when `state` does not match `theta` or the optimiser (slot
    ///   count, names, shapes);
    /// - [`Error::Shape`] when per-example weights and losses are not both `[batch]`;
    /// - [`Error::NonFinite`] naming the inner step and the quantity where a NaN or
    ///   infinity appeared;
    /// - [`Error::MemoryBudget`] when the budget is passed;
    /// - the problem's own errors.
    pub fn run(&self) -> Result<MetaGradient<F>> {
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
            Mode::Checkpointed { snapshots: 0 } => {
                binomial(self, revolve::auto_snapshots(n), false)
            }
            Mode::Checkpointed { snapshots } => binomial(self, snapshots.min(n), false),
        }
    }

    /// [`Error::MemoryBudget`] if `in_use` bytes pass the budget at inner step `step`.
    fn check_budget(&self, in_use: usize, step: usize) -> Result<()> {
        match self.memory_budget {
            Some(budget) if in_use > budget => Err(Error::MemoryBudget {
                budget,
                in_use,
                mode: self.mode,
                step,
            }),
            _ => Ok(()),
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

/// What one first-order inner step yields: `(L_t, g_t, theta_{t+1}, s_{t+1}, w_t)`,
/// `w_t` the weights when the problem has the weighted form.
type StepOut<F> = (
    F,
    Params<Tensor<F>>,
    Params<Tensor<F>>,
    OptState<Tensor<F>>,
    Option<Tensor<F>>,
);

/// One first-order inner step. With the weighted form the weights are computed once on
/// numbers (and returned for the backward sweep); otherwise `inner_loss` runs with
/// `eta` as constants.
#[allow(clippy::too_many_arguments)]
fn inner_step<F: Float, P: MetaProblem<F>>(
    problem: &P,
    eta: &Params<Tensor<F>>,
    eta_c: &Params<Var<Tensor<F>>>,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
    batch: &P::Batch,
    t: usize,
) -> Result<StepOut<F>> {
    let (loss, g, w) = match problem.example_weights(eta, batch) {
        Some(w) => {
            let w = w?;
            let parts = for_shards(problem, batch, &w, |w, b| {
                let w = Var::constant_of(w);
                value_and_grad(|th| weighted_sum(&w, &losses(problem, th, b)?), theta)
            })?;
            let loss = parts.iter().map(|(l, _)| l.item()).sum::<F>();
            let g = sum(parts.into_iter().map(|(_, g)| g))?;
            (loss, g, Some(w))
        }
        None => {
            let (loss, g) = value_and_grad(|th| problem.inner_loss(th, eta_c, batch), theta)?;
            (loss.item(), g, None)
        }
    };
    finite_scalar(loss, t, "inner loss")?;
    finite(&g, t, "inner gradient")?;
    let (th, st) = problem.optimizer().update(theta, state, &g);
    Ok((loss, g, th, st, w))
}

/// The adjoints carried backwards through the window: `theta_bar`, `s_bar` and the
/// meta-gradient accumulated so far.
struct Adjoint<F: Float> {
    theta: Params<Tensor<F>>,
    state: Vec<Params<Tensor<F>>>,
    eta: Params<Tensor<F>>,
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
        }
    }

    /// Steps the adjoints back over inner step `t` (from `theta_t, s_t` with gradient
    /// `g_t` and weights `w_t`): the optimiser's adjoint, then one forward-over-reverse
    /// pass ([`products`]). `alive`: the trajectory bytes held meanwhile, for the budget;
    /// `g_t` and an owned `s_t` are freed before the pass, which needs neither.
    #[allow(clippy::too_many_arguments)]
    fn step_back<P: MetaProblem<F>>(
        &mut self,
        req: &MetaRequest<'_, F, P>,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: Cow<'_, OptState<Tensor<F>>>,
        g: Params<Tensor<F>>,
        weights: Option<&Tensor<F>>,
        remat: bool,
        alive: usize,
        stats: &mut MetaStats,
    ) -> Result<()> {
        let adj = req
            .problem
            .optimizer()
            .adjoint(theta, &state, &g, &self.theta, &self.state);
        finite(&adj.grad, t, "optimiser adjoint")?;
        let freed = g.nbytes()
            + match state {
                Cow::Owned(s) => s.slots.iter().map(Params::nbytes).sum(),
                Cow::Borrowed(_) => 0,
            };
        drop(g);
        // Nor are the adjoints of step t + 1.
        (self.theta, self.state) = (adj.theta, adj.state);
        let alive = alive - freed;
        // theta_0 does not depend on eta: its adjoint is not needed.
        let (h_gbar, m_gbar, tape_bytes) = products(
            req.problem,
            theta,
            req.eta,
            weights,
            &adj.grad,
            &req.batches[t],
            remat,
            t > 0,
        )?;
        stats.peak_tape_bytes = stats.peak_tape_bytes.max(tape_bytes);
        req.check_budget(alive + tape_bytes, t)?;
        if let Some(h) = &h_gbar {
            finite(h, t, "Hessian-vector product")?;
            self.theta = self.theta.add_scaled(h, F::one())?;
        }
        finite(&m_gbar, t, "mixed product (meta-gradient contribution)")?;
        self.eta = self.eta.add_scaled(&m_gbar, F::one())?;
        Ok(())
    }
}

/// The outer loss at `theta_T` and the adjoints it starts the backward sweep with.
fn outer_start<F: Float, P: MetaProblem<F>>(
    req: &MetaRequest<'_, F, P>,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
) -> Result<(F, Adjoint<F>)> {
    let n = req.batches.len();
    let (j, theta_bar) = value_and_grad(|th| req.problem.outer_loss(th, req.outer_batch), theta)?;
    finite_scalar(j.item(), n, "outer loss")?;
    finite(&theta_bar, n, "outer gradient")?;
    Ok((j.item(), Adjoint::new(theta_bar, state, req.eta)))
}

/// An inner state `(theta_t, s_t)`.
type State<F> = (Params<Tensor<F>>, OptState<Tensor<F>>);

/// What mixed mode keeps of a step: `(g_t, w_t)`.
type Kept<F> = (Params<Tensor<F>>, Option<Tensor<F>>);

/// The bytes of a kept `(g_t, w_t)`.
fn kept_bytes<F: Float>((g, w): &Kept<F>) -> usize {
    g.nbytes() + w.as_ref().map_or(0, Tensor::nbytes)
}

/// The bytes of an inner state `(theta, s)`.
fn state_bytes<F: Float>(theta: &Params<Tensor<F>>, state: &OptState<Tensor<F>>) -> usize {
    theta.nbytes() + state.slots.iter().map(Params::nbytes).sum::<usize>()
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
    let n = req.batches.len();
    let mut sweep = Sweep {
        req,
        eta_c: req.eta.map(|e| Var::constant_of(e.clone())),
        inner_losses: Vec::with_capacity(n),
        grads: keep_grads.then(|| Vec::with_capacity(n)),
        kept: 0,
        end: None,
        stats: MetaStats {
            steps: n,
            ..MetaStats::default()
        },
    };
    let mut stack = vec![Snapshot {
        t: 0,
        theta: Cow::Borrowed(req.theta),
        state: Cow::Borrowed(req.state),
    }];
    let mut stored = state_bytes(req.theta, req.state);
    let mut tasks = vec![Task::Reverse {
        a: 0,
        b: n,
        snapshots,
    }];
    while let Some(task) = tasks.pop() {
        let (a, b, s) = match task {
            Task::Free => {
                let x = stack.pop().expect("a snapshot to free");
                stored -= state_bytes(&x.theta, &x.state);
                continue;
            }
            Task::Reverse { a, b, snapshots } => (a, b, snapshots),
        };
        let top = stack.last().expect("the snapshot of x_a");
        debug_assert_eq!(top.t, a);
        if b - a > 1 && s > 1 {
            let m = a + revolve::split(b - a, s);
            let (theta, state) = sweep.run_to(top, m, stored)?.expect("m > a");
            stored += state_bytes(&theta, &state);
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
            match sweep.run_to(top, t, stored)? {
                Some((theta, state)) => {
                    let working = state_bytes(&theta, &state);
                    sweep.reverse(t, &theta, Cow::Owned(state), stored + working)?;
                }
                None => sweep.reverse(t, &top.theta, Cow::Borrowed(&*top.state), stored)?,
            }
        }
    }
    let (outer_loss, adjoint, theta, state) = sweep.end.expect("every step was reversed");
    Ok(MetaGradient {
        grad: adjoint.eta,
        outer_loss,
        inner_losses: sweep.inner_losses,
        theta,
        state,
        stats: sweep.stats,
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

/// [`binomial`]'s bookkeeping: which steps have run, what was kept and recomputed.
struct Sweep<'r, 'a, F: Float, P: MetaProblem<F>> {
    req: &'r MetaRequest<'a, F, P>,
    eta_c: Params<Var<Tensor<F>>>,
    inner_losses: Vec<F>,
    /// Mixed mode: `(g_t, w_t)` of every step that has run and is not reversed yet
    /// (index `t`). Checkpointed mode: `None`.
    grads: Option<Vec<Kept<F>>>,
    /// Their bytes.
    kept: usize,
    /// Set by the first step reversed, the last one.
    end: Option<WindowEnd<F>>,
    stats: MetaStats,
}

impl<F: Float, P: MetaProblem<F>> Sweep<'_, '_, F, P> {
    /// Inner step `t` from `(theta, state)`; its first run records its loss, any later
    /// one counts as recomputed.
    fn step(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
    ) -> Result<StepOut<F>> {
        let req = self.req;
        let out = inner_step(
            req.problem,
            req.eta,
            &self.eta_c,
            theta,
            state,
            &req.batches[t],
            t,
        )?;
        if t == self.inner_losses.len() {
            self.inner_losses.push(out.0);
        } else {
            self.stats.recomputed_steps += 1;
        }
        Ok(out)
    }

    /// `x_{t+1}` from `x_t = (theta, state)`: the kept gradient's update replayed, or
    /// the inner step run (its gradient kept in mixed mode). `stored`: the bytes of the
    /// stored states, for the budget.
    fn advance(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        stored: usize,
    ) -> Result<State<F>> {
        let (th, st) = match &self.grads {
            Some(grads) if t < grads.len() => {
                self.stats.replayed_updates += 1;
                let opt = self.req.problem.optimizer();
                opt.update(theta, state, &grads[t].0)
            }
            _ => {
                let (_, g, th, st, w) = self.step(t, theta, state)?;
                if let Some(grads) = &mut self.grads {
                    debug_assert_eq!(grads.len(), t, "first runs come in order");
                    let k = (g, w);
                    self.kept += kept_bytes(&k);
                    grads.push(k);
                }
                (th, st)
            }
        };
        let alive = stored + self.kept + state_bytes(&th, &st);
        self.stats.trajectory_bytes = self.stats.trajectory_bytes.max(alive);
        self.req.check_budget(alive, t)?;
        Ok((th, st))
    }

    /// Runs from snapshot `x` to step `t`: `None` when `x` is `x_t`, else `x_t`.
    fn run_to(&mut self, x: &Snapshot<'_, F>, t: usize, stored: usize) -> Result<Option<State<F>>> {
        let mut cur: Option<State<F>> = None;
        for i in x.t..t {
            let (theta, state) = cur.as_ref().map_or((&*x.theta, &*x.state), |(a, b)| (a, b));
            cur = Some(self.advance(i, theta, state, stored)?);
        }
        Ok(cur)
    }

    /// Reverses step `t` at `x_t`. `stored`: the bytes of the stored states and of `x_t`.
    fn reverse(
        &mut self,
        t: usize,
        theta: &Params<Tensor<F>>,
        state: Cow<'_, OptState<Tensor<F>>>,
        stored: usize,
    ) -> Result<()> {
        let req = self.req;
        let k = match &mut self.grads {
            Some(grads) if t < grads.len() => {
                let k = grads.pop().expect("t < len");
                debug_assert_eq!(grads.len(), t, "steps are reversed last first");
                self.kept -= kept_bytes(&k);
                k
            }
            _ => {
                let (_, g, th, st, w) = self.step(t, theta, &state)?;
                // x_{t+1} is only needed at the end of the window, for J and the result.
                if t + 1 == req.batches.len() {
                    let (j, adjoint) = outer_start(req, &th, &st)?;
                    self.end = Some((j, adjoint, th, st));
                }
                (g, w)
            }
        };
        let alive = stored + self.kept + kept_bytes(&k);
        self.stats.trajectory_bytes = self.stats.trajectory_bytes.max(alive);
        req.check_budget(alive, t)?;
        let (g, w) = k;
        let remat = self.grads.is_none();
        let (_, adjoint, _, _) = self.end.as_mut().expect("the last step is reversed first");
        adjoint.step_back(
            req,
            t,
            theta,
            state,
            g,
            w.as_ref(),
            remat,
            alive,
            &mut self.stats,
        )
    }
}

/// `(H_t g, M_t g, tape bytes)` at one stored step: the tangent along `g` (a direction
/// in `theta`) of the inner objective's gradients with respect to `theta` and `eta`, by
/// forward-over-reverse. When the problem exposes its weighted form
/// (`sum_i w_i(eta) l_i(theta)`, see [`MetaProblem::example_weights`]) the weights stay
/// out of that pass: it runs over `theta` only with `w` constant (split over threads by
/// [`for_shards`]), which gives `H_t g` and the losses' tangents `d_i`; then
/// `M_t g = grad_eta <w(eta), d>` is one first-order backward pass through `w` (on its
/// own tape, after the forward-over-reverse tapes are freed, so they are never alive
/// together). Without `need_h` (step 0, whose `theta` does not depend on `eta`) only
/// `M_t g` is computed: the weighted form needs only `d`, a forward-mode pass; the
/// generic form records only the ops that depend on `eta`. `remat`: rematerialise
/// checkpointed blocks in the forward-over-reverse pass.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn products<F: Float, P: MetaProblem<F>>(
    problem: &P,
    theta: &Params<Tensor<F>>,
    eta: &Params<Tensor<F>>,
    weights: Option<&Tensor<F>>,
    g: &Params<Tensor<F>>,
    batch: &P::Batch,
    remat: bool,
    need_h: bool,
) -> Result<(Option<Params<Tensor<F>>>, Params<Tensor<F>>, usize)> {
    let w = match weights {
        Some(w) => Some(Ok(w.clone())),
        None => problem.example_weights(eta, batch),
    };
    let Some(w) = w else {
        if !need_h {
            // theta as constants carrying the tangent: only the ops that depend on eta
            // are recorded.
            let th = theta.zip_map(g, |p, t| Var::constant_of(Dual::new(p.clone(), t.clone())))?;
            let r = jvp_grad_with(
                |gs| problem.inner_loss(&th, &gs[0], batch),
                &[eta],
                &[None],
                remat,
            )?;
            let m = r.tangents.into_iter().next().expect("one group");
            return Ok((None, m, r.tape_bytes));
        }
        let r = jvp_grad_with(
            |gs| problem.inner_loss(&gs[0], &gs[1], batch),
            &[theta, eta],
            &[Some(g), None],
            remat,
        )?;
        let [h, m]: [Params<Tensor<F>>; 2] = r.tangents.try_into().expect("two groups");
        return Ok((Some(h), m, r.tape_bytes));
    };
    let parts = for_shards(problem, batch, &w?, |w, b| {
        if !need_h {
            let (_, d) = jvp(|th| losses(problem, th, b), theta, g)?;
            check_weighted(w.shape().to_vec(), d.shape().to_vec())?;
            return Ok((None, d, 0));
        }
        let w = Var::constant_of(Dual::constant_of(w));
        let mut d = None;
        let r = jvp_grad_with(
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
        Ok((Some(h), d.expect("set by the objective"), r.tape_bytes))
    })?;
    // The shards' tapes may all be alive at once.
    let tape_bytes = parts.iter().map(|p| p.2).sum();
    let d = Tensor::concat(&parts.iter().map(|p| &p.1).collect::<Vec<_>>(), 0);
    let h = match need_h {
        true => Some(sum(parts.into_iter().map(|p| p.0.expect("need_h")))?),
        false => None,
    };
    let (_, m) = vjp(
        |e| {
            problem
                .example_weights(e, batch)
                .unwrap_or_else(|| Err(partial_weighted_form()))
        },
        eta,
        &d,
    )?;
    Ok((h, m, tape_bytes))
}

/// Runs `f(w_k, batch_k)` on slices of a weighted-form batch (`w` its weights, one per
/// example along axis 0) and returns the results in order: one slice per rayon thread
/// when the problem can split its batches ([`MetaProblem::sub_batch`] and
/// [`MetaProblem::batch_len`], against which `w` is checked), else the whole batch.
fn for_shards<F: Float, P: MetaProblem<F>, R: Send>(
    problem: &P,
    batch: &P::Batch,
    w: &Tensor<F>,
    f: impl Fn(Tensor<F>, &P::Batch) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = w.shape().first().copied().unwrap_or(1);
    let Some(len) = problem.batch_len(batch) else {
        return Ok(vec![f(w.clone(), batch)?]);
    };
    check_weighted(w.shape().to_vec(), vec![len])?;
    let k = rayon::current_num_threads().min(n);
    if k > 1 {
        let ranges: Vec<Range<usize>> = (0..k).map(|i| i * n / k..(i + 1) * n / k).collect();
        let subs: Option<Vec<P::Batch>> = ranges
            .iter()
            .map(|r| problem.sub_batch(batch, r.clone()))
            .collect();
        if let Some(subs) = subs {
            return ranges
                .into_par_iter()
                .zip(subs)
                .map(|(r, b)| f(w.slice(0, r.start, r.end), &b))
                .collect();
        }
    }
    Ok(vec![f(w.clone(), batch)?])
}

/// The sum of parameter sets with the same names and shapes.
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
    for (t, batch) in batches.iter().enumerate() {
        // The inner backward pass runs on values recorded on the outer tape.
        let (loss, g) = value_and_grad(|th| problem.inner_loss(th, &eta_in, batch), &theta)?;
        finite_scalar(loss.item(), t, "inner loss")?;
        finite(&g.map(|v| v.value().clone()), t, "inner gradient")?;
        inner_losses.push(loss.item());
        (theta, state) = opt.update(&theta, &state, &g);
        req.check_budget(tape.bytes(), t)?;
    }
    let j = problem.outer_loss(&theta, outer_batch)?;
    finite_scalar(j.item(), n, "outer loss")?;
    let peak = tape.bytes();
    let wrt: Vec<&Var<Tensor<F>>> = eta_v.values().collect();
    let seed = Tensor::filled(&j.shape(), F::one());
    let grads = tape.backward(&j, seed, &wrt)?;
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
            peak_tape_bytes: peak,
            trajectory_bytes: 0,
            recomputed_steps: 0,
            replayed_updates: 0,
            stored_states: 0,
        },
    })
}
