//! Meta-learning: the public traits a downstream crate implements ([`Rater`],
//! [`InnerLoop`], [`OuterLoop`]), the inner objective that connects them
//! ([`MetaProblem`], with the DataRater weighting [`DataRaterProblem`] as the default),
//! and the exact meta-gradient engines ([`meta_gradient`]: mixed mode, unrolled
//! reverse-over-reverse, checkpointed mixed mode).

mod engine;

pub use engine::{MetaGradient, MetaStats, Mode, meta_gradient};

use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::Result;
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::ops::Range;

/// A model that scores a batch: one raw score per example (higher = more useful).
/// Written generically over the algebra so the engines can differentiate it.
pub trait Rater<F: Float, B>: Sync {
    /// Fresh rater parameters `eta`.
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>>;
    /// Raw scores `[batch]` for the examples of `batch`.
    fn scores<V: Value<F = F>>(&self, eta: &Params<V>, batch: &B) -> Result<V>;
}

/// The inner problem: the model being trained, its per-example loss, its optimiser, and
/// how it draws training batches.
pub trait InnerLoop<F: Float>: Sync {
    /// A batch of training examples.
    type Batch: Sync + Send;
    /// The inner optimiser.
    type Opt: Optimizer<F>;
    /// Fresh inner parameters `theta`.
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>>;
    /// The inner optimiser.
    fn optimizer(&self) -> &Self::Opt;
    /// Per-example losses `[batch]`.
    fn per_example_loss<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        batch: &Self::Batch,
    ) -> Result<V>;
    /// Draws a training batch.
    fn sample_batch(&self, rng: &mut Rng) -> Self::Batch;
    /// Optional, for speed: the examples `range` of `batch` as a batch of their own,
    /// whose per-example losses are exactly those rows of `batch`'s. With it the
    /// mixed-mode engines split each inner step's passes over rayon's threads (see
    /// [`MetaProblem::sub_batch`]). The default `None` keeps every pass whole.
    fn sub_batch(&self, batch: &Self::Batch, range: Range<usize>) -> Option<Self::Batch> {
        let _ = (batch, range);
        None
    }
}

/// The outer problem: the held-out objective, and the meta-update applied to the
/// meta-gradient.
pub trait OuterLoop<F: Float, I: InnerLoop<F>>: Sync {
    /// Per-model state of the meta-optimiser (e.g. Adam moments).
    type MetaState: Clone + Send;
    /// Draws a held-out batch.
    fn sample_batch(&self, rng: &mut Rng) -> I::Batch;
    /// The scalar held-out objective of inner parameters; by default the mean
    /// per-example inner loss.
    fn loss<V: Value<F = F>>(&self, inner: &I, theta: &Params<V>, batch: &I::Batch) -> Result<V> {
        Ok(inner.per_example_loss(theta, batch)?.mean_all())
    }
    /// Fresh meta-optimiser state for rater parameters `eta`.
    fn init_state(&self, eta: &Params<Tensor<F>>) -> Self::MetaState;
    /// One meta-optimiser step: the updated rater parameters given the meta-gradient.
    /// `state` is updated in place; `step` counts outer steps from 0.
    fn update(
        &self,
        eta: &Params<Tensor<F>>,
        meta_grad: &Params<Tensor<F>>,
        state: &mut Self::MetaState,
        step: usize,
    ) -> Result<Params<Tensor<F>>>;
}

/// What a meta-gradient differentiates: an inner objective `L(theta, eta; batch)` whose
/// `theta`-gradient drives the inner optimiser, and an outer objective `J(theta; batch)`.
pub trait MetaProblem<F: Float>: Sync {
    /// A batch.
    type Batch: Sync + Send;
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

    /// Optional, for speed, with the weighted form: the examples `range` (rows of
    /// `example_losses`) of `batch` as a batch of their own. Each inner step's passes
    /// over `theta` are sums over examples, so the mixed-mode engines then run them on
    /// one slice of the batch per rayon thread and add the results: the same
    /// meta-gradient up to rounding, computed data-parallel. The default `None` keeps
    /// every pass whole (and single-threaded). Run the engine inside a one-thread
    /// `rayon::ThreadPool` to turn the split off.
    fn sub_batch(&self, batch: &Self::Batch, range: Range<usize>) -> Option<Self::Batch> {
        let _ = (batch, range);
        None
    }
}

/// The DataRater objective: `L(theta, eta) = sum_i softmax_i(rater(eta, batch)) * l_i(theta)`
/// (a SUM with softmax weights over the batch), and the outer loop's held-out loss.
pub struct DataRaterProblem<'a, I, R, O> {
    /// The inner loop.
    pub inner: &'a I,
    /// The rater.
    pub rater: &'a R,
    /// The outer loop.
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
    fn inner_loss<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        eta: &Params<V>,
        batch: &I::Batch,
    ) -> Result<V> {
        let w = self.rater.scores(eta, batch)?.softmax(0);
        Ok(w.mul(&self.inner.per_example_loss(theta, batch)?).sum_all())
    }
    fn outer_loss<V: Value<F = F>>(&self, theta: &Params<V>, batch: &I::Batch) -> Result<V> {
        self.outer.loss(self.inner, theta, batch)
    }
    fn example_weights<V: Value<F = F>>(
        &self,
        eta: &Params<V>,
        batch: &I::Batch,
    ) -> Option<Result<V>> {
        Some(self.rater.scores(eta, batch).map(|s| s.softmax(0)))
    }
    fn example_losses<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        batch: &I::Batch,
    ) -> Option<Result<V>> {
        Some(self.inner.per_example_loss(theta, batch))
    }
    fn sub_batch(&self, batch: &I::Batch, range: Range<usize>) -> Option<I::Batch> {
        self.inner.sub_batch(batch, range)
    }
}

/// Softmax weights the rater assigns to the examples of a batch (they sum to 1).
pub fn weights<F: Float, B, R: Rater<F, B>>(
    rater: &R,
    eta: &Params<Tensor<F>>,
    batch: &B,
) -> Result<Tensor<F>> {
    Ok(rater.scores(eta, batch)?.softmax(0))
}
