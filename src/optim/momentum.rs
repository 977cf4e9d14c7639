//! Heavy-ball and Nesterov momentum (PyTorch / optax convention, no dampening).

use super::{
    Adjoint, OptState, Optimizer, check_decay, check_positive, check_shapes, check_slot_cotangents,
    check_slots, elementwise, entry,
};
use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::Result;

/// SGD with momentum. One slot, the buffer `buf` (zeros at init):
///
/// ```text
/// buf'   = beta * buf + g
/// theta' = theta - lr * buf'                    (heavy ball)
/// theta' = theta - lr * (g + beta * buf')       (Nesterov)
/// ```
///
/// Adjoint, with `c = 1` (heavy ball) or `c = beta` (Nesterov) and
/// `b = buf_bar' - lr * c * theta_bar'` the total cotangent of `buf'`:
/// `theta_bar = theta_bar'`, `buf_bar = beta * b`, `g_bar = b` (heavy ball) or
/// `g_bar = b - lr * theta_bar'` (Nesterov).
///
/// ```
/// use datarater::optim::{Momentum, Optimizer};
/// use datarater::{Params, Tensor};
/// let mut p = Params::new();
/// p.insert("w", Tensor::<f64>::from_vec(&[1], vec![0.0]).unwrap());
/// let g = p.map(|_| Tensor::from_vec(&[1], vec![1.0]).unwrap());
/// let opt = Momentum::new(0.1, 0.5);
/// let (p1, s1) = opt.update(&p, &opt.init(&p), &g);
/// let (p2, _) = opt.update(&p1, &s1, &g);
/// // buf = 1 then 1.5: theta = -0.1 then -0.25.
/// assert!((p2["w"].item() + 0.25).abs() < 1e-15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Momentum<F> {
    /// Learning rate (finite, `> 0`).
    pub lr: F,
    /// Momentum coefficient, in `[0, 1)`.
    pub beta: F,
    /// Use the Nesterov look-ahead form.
    pub nesterov: bool,
}

impl<F: Float> Momentum<F> {
    /// Heavy-ball momentum.
    pub fn new(lr: F, beta: F) -> Self {
        Momentum {
            lr,
            beta,
            nesterov: false,
        }
    }

    /// Nesterov momentum.
    pub fn nesterov(lr: F, beta: F) -> Self {
        Momentum {
            lr,
            beta,
            nesterov: true,
        }
    }

    /// Checks `lr > 0` and `beta` in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr)?;
        check_decay("beta", self.beta)
    }
}

impl<F: Float> Optimizer<F> for Momentum<F> {
    fn per_tensor(&self) -> bool {
        true
    }
    fn init(&self, params: &Params<Tensor<F>>) -> OptState<Tensor<F>> {
        OptState {
            step: 0,
            slots: vec![params.zeros_like()],
        }
    }

    fn update<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        state: &OptState<V>,
        g: &Params<V>,
    ) -> (Params<V>, OptState<V>) {
        const OP: &str = "Momentum::update";
        check_slots(OP, state, 1);
        let (lr, beta) = (self.lr, self.beta);
        let mut th = Vec::with_capacity(theta.len());
        let mut bufs = Vec::with_capacity(theta.len());
        for (k, t) in theta.iter() {
            let gk = entry(OP, g, k);
            let buf = entry(OP, &state.slots[0], k);
            let buf2 = buf.scale(beta).add(gk);
            let dir = if self.nesterov {
                gk.add(&buf2.scale(beta))
            } else {
                buf2.clone()
            };
            th.push((k.to_string(), t.sub(&dir.scale(lr))));
            bufs.push((k.to_string(), buf2));
        }
        let state2 = OptState {
            step: state.step + 1,
            slots: vec![bufs.into_iter().collect()],
        };
        (th.into_iter().collect(), state2)
    }

    fn adjoint(
        &self,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        g: &Params<Tensor<F>>,
        theta_bar: &Params<Tensor<F>>,
        state_bar: &[Params<Tensor<F>>],
    ) -> Adjoint<F> {
        const OP: &str = "Momentum::adjoint";
        check_slots(OP, state, 1);
        check_slot_cotangents(OP, state_bar, 1);
        let (lr, beta, nesterov) = (self.lr, self.beta, self.nesterov);
        // d theta' / d buf' = -lr * c.
        let lr_c = if nesterov { lr * beta } else { lr };
        let n = theta.len();
        let (mut th, mut bb, mut gb) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, t) in theta.iter() {
            let tb = entry(OP, theta_bar, k);
            check_shapes(OP, &[t, entry(OP, g, k), entry(OP, &state.slots[0], k), tb]);
            let buf_bar2 = state_bar.first().map(|s| entry(OP, s, k));
            let [buf_bar, g_bar] = elementwise(
                OP,
                [Some(tb), buf_bar2],
                #[inline(always)]
                |[tb, bb2]| {
                    let b = bb2 - lr_c * tb;
                    let g_bar = if nesterov { b - lr * tb } else { b };
                    [beta * b, g_bar]
                },
            );
            th.push((k.to_string(), tb.clone()));
            bb.push((k.to_string(), buf_bar));
            gb.push((k.to_string(), g_bar));
        }
        Adjoint {
            theta: th.into_iter().collect(),
            state: vec![bb.into_iter().collect()],
            grad: gb.into_iter().collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        Momentum::validate(self)
    }
}
