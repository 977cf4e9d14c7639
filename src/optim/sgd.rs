//! Plain stochastic gradient descent.

use super::{
    Adjoint, OptState, Optimizer, check_positive, check_shapes, check_slot_cotangents, check_slots,
    elementwise, entry,
};
use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::Result;

/// Plain SGD: `theta' = theta - lr * g`, no slots.
///
/// Adjoint: `theta_bar = theta_bar'`, `g_bar = -lr * theta_bar'`.
///
/// ```
/// use datarater::optim::{Optimizer, Sgd};
/// use datarater::{Params, Tensor};
/// let mut p = Params::new();
/// p.insert("w", Tensor::<f64>::from_vec(&[2], vec![1.0, 2.0]).unwrap());
/// let g = p.clone();
/// let opt = Sgd::new(0.5);
/// let (p2, s2) = opt.update(&p, &opt.init(&p), &g);
/// assert_eq!(p2["w"].to_vec(), vec![0.5, 1.0]);
/// assert_eq!(s2.step, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Sgd<F> {
    /// Learning rate (finite, `> 0`).
    pub lr: F,
}

impl<F: Float> Sgd<F> {
    /// SGD with learning rate `lr` (checked by [`validate`](Sgd::validate)).
    pub fn new(lr: F) -> Self {
        Sgd { lr }
    }

    /// Checks the learning rate.
    pub fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr)
    }
}

impl<F: Float> Optimizer<F> for Sgd<F> {
    fn per_tensor(&self) -> bool {
        true
    }
    fn init(&self, _params: &Params<Tensor<F>>) -> OptState<Tensor<F>> {
        OptState {
            step: 0,
            slots: Vec::new(),
        }
    }

    fn update<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        state: &OptState<V>,
        g: &Params<V>,
    ) -> (Params<V>, OptState<V>) {
        const OP: &str = "Sgd::update";
        check_slots(OP, state, 0);
        let theta2 = theta
            .iter()
            .map(|(k, th)| {
                let gk = entry(OP, g, k);
                (k.to_string(), th.sub(&gk.scale(self.lr)))
            })
            .collect();
        let state2 = OptState {
            step: state.step + 1,
            slots: Vec::new(),
        };
        (theta2, state2)
    }

    fn adjoint(
        &self,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        g: &Params<Tensor<F>>,
        theta_bar: &Params<Tensor<F>>,
        state_bar: &[Params<Tensor<F>>],
    ) -> Adjoint<F> {
        const OP: &str = "Sgd::adjoint";
        check_slots(OP, state, 0);
        check_slot_cotangents(OP, state_bar, 0);
        let lr = self.lr;
        let mut th = Vec::with_capacity(theta.len());
        let mut gb = Vec::with_capacity(theta.len());
        for (k, t) in theta.iter() {
            let tb = entry(OP, theta_bar, k);
            check_shapes(OP, &[t, entry(OP, g, k), tb]);
            let [g_bar] = elementwise(
                OP,
                [Some(tb)],
                #[inline(always)]
                |[tb]| [-lr * tb],
            );
            th.push((k.to_string(), tb.clone()));
            gb.push((k.to_string(), g_bar));
        }
        Adjoint {
            theta: th.into_iter().collect(),
            state: Vec::new(),
            grad: gb.into_iter().collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        Sgd::validate(self)
    }
}
