//! Differentiable inner optimisers: an update rule generic over the algebra (so it can
//! be recorded on a tape for the unrolled baseline) and its exact, hand-written adjoint
//! (for the mixed-mode backward sweep).

use crate::autodiff::{Float, Params, Tensor, Value};

/// Optimiser state: a step counter and zero or more slots shaped like the parameters
/// (momentum buffer; Adam's first and second moments).
#[derive(Clone, Debug, PartialEq)]
pub struct OptState<V> {
    /// Number of updates applied so far.
    pub step: usize,
    /// Per-parameter slots, in an order fixed by the optimiser.
    pub slots: Vec<Params<V>>,
}

/// Cotangents of one update's inputs, returned by [`Optimizer::adjoint`].
#[derive(Clone, Debug)]
pub struct Adjoint<F: Float> {
    /// Cotangent of the parameters before the update.
    pub theta: Params<Tensor<F>>,
    /// Cotangent of the state before the update (same slots).
    pub state: Vec<Params<Tensor<F>>>,
    /// Cotangent of the gradient fed to the update.
    pub grad: Params<Tensor<F>>,
}

/// A differentiable optimiser: `(theta', s') = U(theta, s, g)`.
pub trait Optimizer<F: Float>: Clone + Send + Sync {
    /// Fresh state for `params`.
    fn init(&self, params: &Params<Tensor<F>>) -> OptState<Tensor<F>>;
    /// One update, in any algebra.
    fn update<V: Value<F = F>>(&self, theta: &Params<V>, state: &OptState<V>, g: &Params<V>) -> (Params<V>, OptState<V>);
    /// The VJP of [`update`](Optimizer::update) at `(theta, state, g)` applied to the
    /// cotangents of its outputs.
    fn adjoint(
        &self,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        g: &Params<Tensor<F>>,
        theta_bar: &Params<Tensor<F>>,
        state_bar: &[Params<Tensor<F>>],
    ) -> Adjoint<F>;
}
