//! Meta-learning: the public traits a downstream crate implements, the inner objective
//! that connects them, and the exact meta-gradient engines.
//!
//! Each use implements only what it uses:
//!
//! | to ... | implement | or use the ready-made |
//! | --- | --- | --- |
//! | score examples | [`Rater`] | `trainer::TextRater`, `trainer::MlpRater` |
//! | train an inner model on weighted examples | [`InnerLoop`] | `trainer::TextLm` |
//! | say what "better on held-out data" means | [`OuterLoop`] | [`MeanLoss`] |
//! | compute one meta-gradient | (the three above, joined by [`DataRaterProblem`]) or [`MetaProblem`] directly; then [`MetaRequest::run`] | |
//! | update the rater from meta-gradients | [`MetaOptimizer`] | `trainer::MetaAdam`, `trainer::MetaSgd` |
//! | draw training and held-out batches (Algorithm 1) | [`Sampler`] (any `Fn(&mut Rng) -> Result<B>`) | `trainer::TextPool` |
//!
//! [`MetaRequest`] runs one of three engines ([`Mode`]): mixed mode (MixFlow-MG),
//! checkpointed mixed mode, and unrolled reverse-over-reverse, the baseline. They give
//! the same meta-gradient to rounding.

mod engine;
mod revolve;

pub use engine::{DEFAULT_SHARDS, MetaGradient, MetaRequest, MetaStats, Mode, Snapshots};

use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::ops::Range;

/// A model that scores a batch: one raw score per example (higher = more useful).
/// Written generically over the algebra so the engines can differentiate it.
///
/// `scores` must return shape `[batch]`, one score per example; the engines check it
/// against the per-example losses and report any other shape (for example `[batch, 1]`)
/// as [`Error::Shape`] instead of broadcasting it.
pub trait Rater<F: Float, B>: Sync {
    /// Fresh rater parameters `eta`.
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>>;
    /// Raw scores `[batch]` for the examples of `batch`.
    fn scores<V: Value<F = F>>(&self, eta: &Params<V>, batch: &B) -> Result<V>;
}

/// The inner problem: the model being trained, its per-example loss and its optimiser.
/// Where its batches come from is a [`Sampler`]'s business.
pub trait InnerLoop<F: Float>: Sync {
    /// A batch of training examples.
    type Batch: Sync + Send;
    /// The inner optimiser.
    type Opt: Optimizer<F>;
    /// Fresh inner parameters `theta`.
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>>;
    /// The inner optimiser (the one every meta-gradient differentiates through).
    fn optimizer(&self) -> &Self::Opt;
    /// Per-example losses `[batch]`.
    fn per_example_loss<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        batch: &Self::Batch,
    ) -> Result<V>;
    /// Optional, for speed: `batch` cut into consecutive slices of `size` examples (the
    /// last one holding the rest), in order, each a batch of its own whose per-example
    /// losses are exactly those rows of `batch`'s. With it the mixed-mode engines run
    /// each inner step's passes on the slices in parallel ([`MetaRequest::shards`]);
    /// the default `None` keeps every pass whole. [`slices`] gives the ranges, so an
    /// implementation is one line, e.g. `slices(b.len(), size).map(|r| b.rows(r)).collect()`
    /// for a batch type with a fallible `rows(range) -> Option<Self>`.
    fn split_batch(&self, batch: &Self::Batch, size: usize) -> Option<Vec<Self::Batch>> {
        let _ = (batch, size);
        None
    }
}

/// The outer objective: the scalar held-out loss of inner parameters, whose gradient
/// with respect to the rater is the meta-gradient. The default is the mean per-example
/// inner loss ([`MeanLoss`] is that default, ready-made).
pub trait OuterLoop<F: Float, I: InnerLoop<F>>: Sync {
    /// The scalar held-out objective `J(theta; batch)`.
    fn loss<V: Value<F = F>>(&self, inner: &I, theta: &Params<V>, batch: &I::Batch) -> Result<V> {
        Ok(inner.per_example_loss(theta, batch)?.mean_all())
    }
}

/// The held-out objective "mean per-example inner loss".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeanLoss;

impl<F: Float, I: InnerLoop<F>> OuterLoop<F, I> for MeanLoss {}

/// Draws batches: the training stream of an inner model, or held-out batches.
///
/// Any `Fn(&mut Rng) -> Result<B> + Sync` closure is a sampler:
///
/// ```
/// use datarater::meta::Sampler;
/// use datarater::Rng;
/// let dice = |rng: &mut Rng| Ok(1 + rng.below(6));
/// let roll = dice.sample(&mut Rng::new(0)).unwrap();
/// assert!((1..=6).contains(&roll));
/// ```
pub trait Sampler<B>: Sync {
    /// One batch, drawing every random choice from `rng`.
    fn sample(&self, rng: &mut Rng) -> Result<B>;
}

impl<B, S: Fn(&mut Rng) -> Result<B> + Sync> Sampler<B> for S {
    fn sample(&self, rng: &mut Rng) -> Result<B> {
        self(rng)
    }
}

/// The meta-optimiser: turns a meta-gradient into updated rater parameters. In
/// Algorithm 1 each inner model has its own state.
pub trait MetaOptimizer<F: Float>: Sync {
    /// Per-model state (e.g. Adam moments).
    type State: Clone + Send + Sync;
    /// Fresh state for rater parameters `eta`.
    fn init_state(&self, eta: &Params<Tensor<F>>) -> Self::State;
    /// One step: the updated rater parameters given the meta-gradient. `state` is
    /// updated in place; `step` counts outer steps from 0.
    fn update(
        &self,
        eta: &Params<Tensor<F>>,
        meta_grad: &Params<Tensor<F>>,
        state: &mut Self::State,
        step: usize,
    ) -> Result<Params<Tensor<F>>>;
    /// Checks the hyper-parameters, returning [`Error::Config`]
    /// naming the first bad one.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// What a meta-gradient differentiates: an inner objective `L(theta, eta; batch)` whose
/// `theta`-gradient drives the inner optimiser, and an outer objective `J(theta; batch)`.
pub trait MetaProblem<F: Float>: Sync {
    /// A batch.
    type Batch: Sync + Send;
    /// The inner optimiser.
    type Opt: Optimizer<F>;
    /// The inner optimiser the meta-gradient differentiates through.
    fn optimizer(&self) -> &Self::Opt;
    /// The scalar inner objective.
    fn inner_loss<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        batch: &Self::Batch,
    ) -> Result<V>;
    /// The scalar outer objective.
    fn outer_loss<V: Value<F = F>>(&self, theta: &Params<V>, batch: &Self::Batch) -> Result<V>;

    /// Optional structure, for speed: when the inner objective is a weighted sum of
    /// per-example losses, `inner_loss(theta, eta) = sum_i w_i(eta) l_i(theta)`, return
    /// the weights `w(eta)` here and the losses `l(theta)` (same shape) from
    /// [`example_losses`](Self::example_losses). The default `None` means "no such
    /// form": the engines then differentiate `inner_loss` as a whole.
    ///
    /// With the weighted form the mixed-mode engines get the mixed product
    /// `M_t g = grad_eta sum_i w_i(eta) d_i`, `d_i = <g, grad_theta l_i(theta_t)>`
    /// (the tangent of the losses in the forward-over-reverse pass over `theta`), from
    /// ONE first-order backward pass through `w`, instead of carrying the weights'
    /// computation through the forward-over-reverse pass. The result is the same
    /// (exactly, up to rounding); only the cost changes.
    fn example_weights<V: Value<F = F>>(
        &self,
        eta: &Params<V>,
        batch: &Self::Batch,
    ) -> Option<Result<V>> {
        let _ = (eta, batch);
        None
    }

    /// The per-example losses `l(theta)` of the weighted form (see
    /// [`example_weights`](Self::example_weights)); must be `Some` whenever that is.
    fn example_losses<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        batch: &Self::Batch,
    ) -> Option<Result<V>> {
        let _ = (theta, batch);
        None
    }

    /// Optional, for speed, with the weighted form: `batch` cut into consecutive slices
    /// of `size` examples (rows of `example_losses`; the last slice holds the rest), in
    /// order, each a batch of its own. Each inner step's passes over `theta` are sums
    /// over examples, so the mixed-mode engines then run them on the slices in parallel
    /// and add the results in slice order: the same meta-gradient up to rounding, and
    /// bitwise the same on any number of threads (the slices depend only on the batch
    /// and [`MetaRequest::shards`]). The engines check the slices against the weights
    /// (their number, and each slice's losses against its weights, [`Error::Shape`]
    /// otherwise). The default `None` keeps every pass whole.
    fn split_batch(&self, batch: &Self::Batch, size: usize) -> Option<Vec<Self::Batch>> {
        let _ = (batch, size);
        None
    }
}

/// The ranges of consecutive slices of `size` examples (the last one holding the rest)
/// of a batch of `n`: what [`InnerLoop::split_batch`] cuts.
///
/// ```
/// let r: Vec<_> = datarater::meta::slices(5, 2).collect();
/// assert_eq!(r, vec![0..2, 2..4, 4..5]);
/// ```
pub fn slices(n: usize, size: usize) -> impl Iterator<Item = Range<usize>> {
    let size = size.max(1);
    (0..n).step_by(size).map(move |a| a..(a + size).min(n))
}

/// The DataRater objective: `L(theta, eta) = sum_i softmax_i(rater(eta, batch)) * l_i(theta)`
/// (a SUM with softmax weights over the batch), and the outer loop's held-out loss.
pub struct DataRaterProblem<'a, I, R, O> {
    /// The inner loop.
    pub inner: &'a I,
    /// The rater.
    pub rater: &'a R,
    /// The outer objective.
    pub outer: &'a O,
}

impl<F, I, R, O> MetaProblem<F> for DataRaterProblem<'_, I, R, O>
where
    F: Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    O: OuterLoop<F, I>,
{
    type Batch = I::Batch;
    type Opt = I::Opt;
    fn optimizer(&self) -> &I::Opt {
        self.inner.optimizer()
    }
    fn inner_loss<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        batch: &I::Batch,
    ) -> Result<V> {
        let w = softmax_weights(self.rater.scores(eta, batch)?)?;
        weighted_sum(&w, &self.inner.per_example_loss(theta, batch)?)
    }
    fn outer_loss<V: Value<F = F>>(&self, theta: &Params<V>, batch: &I::Batch) -> Result<V> {
        self.outer.loss(self.inner, theta, batch)
    }
    fn example_weights<V: Value<F = F>>(
        &self,
        eta: &Params<V>,
        batch: &I::Batch,
    ) -> Option<Result<V>> {
        Some(self.rater.scores(eta, batch).and_then(softmax_weights))
    }
    fn example_losses<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        batch: &I::Batch,
    ) -> Option<Result<V>> {
        Some(self.inner.per_example_loss(theta, batch))
    }
    fn split_batch(&self, batch: &I::Batch, size: usize) -> Option<Vec<I::Batch>> {
        self.inner.split_batch(batch, size)
    }
}

/// The softmax over the batch of a rater's scores, which must have shape `[batch]`.
fn softmax_weights<V: Value>(scores: V) -> Result<V> {
    let shape = scores.shape();
    if shape.len() != 1 || shape[0] == 0 {
        return Err(Error::ShapeExpected {
            op: "rater scores",
            shape,
            expected: "[batch] with batch > 0 (one score per example)".into(),
        });
    }
    Ok(scores.softmax(0))
}

/// `sum_i w_i l_i` for per-example weights and losses that must both have shape
/// `[batch]`: anything else (a `[batch, 1]` score column, a batch of another size) is an
/// [`Error::Shape`] naming both shapes, never a silent broadcast.
pub fn weighted_sum<V: Value>(w: &V, losses: &V) -> Result<V> {
    check_weighted(w.shape(), losses.shape())?;
    Ok(w.mul(losses).sum_all())
}

/// Weights and losses (or their tangents) must both be `[batch]`.
fn check_weighted(w: Vec<usize>, losses: Vec<usize>) -> Result<()> {
    if w.len() != 1 || w != losses {
        return Err(Error::Shape {
            op: "weights * per-example losses (both must be [batch])",
            lhs: w,
            rhs: losses,
        });
    }
    Ok(())
}

/// Softmax weights the rater assigns to the examples of a batch (they sum to 1).
///
/// # Errors
/// The rater's errors, and [`Error::Shape`] when its scores are not `[batch]`.
pub fn weights<F: Float, B, R: Rater<F, B>>(
    rater: &R,
    eta: &Params<Tensor<F>>,
    batch: &B,
) -> Result<Tensor<F>> {
    softmax_weights(rater.scores(eta, batch)?)
}
