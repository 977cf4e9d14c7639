//! Adam and AdamW with bias correction and `eps_root` inside the square root.

use super::{
    Adjoint, OptState, Optimizer, check_decay, check_non_negative, check_positive, check_shapes,
    check_slot_cotangents, check_slots, elementwise, entry,
};
use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::{Error, Result};

/// Default `eps_root` for [`Adam`]: keeps the adjoint finite where the second moment is
/// zero, in both `f32` and `f64` (see the [module docs](super) for the choice).
pub const DEFAULT_EPS_ROOT: f64 = 1e-12;

/// Adam with optional decoupled weight decay (AdamW). Two slots: the first moment `m`,
/// then the second moment `v` (zeros at init). With `t = step + 1`:
///
/// ```text
/// m'     = beta1 * m + (1 - beta1) * g
/// v'     = beta2 * v + (1 - beta2) * g^2
/// m_hat  = m' / (1 - beta1^t),   v_hat = v' / (1 - beta2^t)
/// theta' = theta - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * theta)
/// ```
///
/// `eps_root > 0` bounds the derivative of the square root where `v_hat = 0` (a
/// coordinate whose gradients have all been exactly zero), so the
/// [adjoint](Optimizer::adjoint) stays finite; see the [module docs](super).
///
/// ```
/// use datarater::optim::{Adam, Optimizer};
/// use datarater::{Params, Tensor};
/// let mut p = Params::new();
/// p.insert("w", Tensor::<f64>::from_vec(&[2], vec![1.0, 1.0]).unwrap());
/// let g = p.map(|_| Tensor::from_vec(&[2], vec![3.0, -0.2]).unwrap());
/// let opt = Adam::new(0.01);
/// let (p1, _) = opt.update(&p, &opt.init(&p), &g);
/// // The first step moves each coordinate by about lr * sign(g).
/// let w = p1["w"].to_vec();
/// assert!((w[0] - 0.99).abs() < 1e-8 && (w[1] - 1.01).abs() < 1e-8);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Adam<F> {
    /// Learning rate (finite, `> 0`).
    pub lr: F,
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: F,
    /// Decay of the second moment, in `[0, 1)`.
    pub beta2: F,
    /// Added to the denominator outside the square root (finite, `>= 0`).
    pub eps: F,
    /// Added to `v_hat` inside the square root (finite, `>= 0`; `0` gives textbook Adam,
    /// whose adjoint is NaN where `v_hat = 0`).
    pub eps_root: F,
    /// Decoupled weight decay coefficient (finite, `>= 0`; `0` is plain Adam).
    pub weight_decay: F,
}

impl<F: Float> Adam<F> {
    /// Adam with `beta1 = 0.9`, `beta2 = 0.999`, `eps = 1e-8`,
    /// `eps_root = `[`DEFAULT_EPS_ROOT`] and no weight decay.
    pub fn new(lr: F) -> Self {
        Adam {
            lr,
            beta1: F::c(0.9),
            beta2: F::c(0.999),
            eps: F::c(1e-8),
            eps_root: F::c(DEFAULT_EPS_ROOT),
            weight_decay: F::zero(),
        }
    }

    /// AdamW: [`Adam::new`] with decoupled weight decay `weight_decay`.
    pub fn adamw(lr: F, weight_decay: F) -> Self {
        Adam {
            weight_decay,
            ..Self::new(lr)
        }
    }

    /// The same optimiser with `eps_root` (added to `v_hat` inside the square root).
    ///
    /// **Differs from optax:** `optax.adam` defaults `eps_root` to `0`, ours to
    /// [`DEFAULT_EPS_ROOT`] `= 1e-12`, because with `0` the adjoint is NaN wherever
    /// `v_hat = 0` (see the [module docs](super)). To reproduce an optax run, either set a
    /// tiny `eps_root` (exactly `0` fails only where `v_hat = 0`) or accept the
    /// difference, which is small: on the f64 meta-gradient problem of
    /// `tests/optim.rs::eps_root_default_barely_moves_a_meta_gradient` (3 Adam steps,
    /// lr 0.1, one dead feature) the meta-gradient with `eps_root = 1e-12` differs from
    /// the one with `eps_root = 1e-30` by a relative `2.4e-12` in max norm
    /// (`cargo test --release --test optim eps_root -- --nocapture` prints it). The
    /// forward update moves by at most a relative `eps_root / (2 v_hat)` per coordinate,
    /// so the difference grows where gradients are tiny but not exactly zero.
    ///
    /// ```
    /// use datarater::optim::Adam;
    /// let optax_like = Adam::new(1e-3).with_eps_root(1e-30);
    /// assert_eq!(optax_like.eps_root, 1e-30);
    /// assert!(optax_like.validate().is_ok());
    /// ```
    #[must_use]
    pub fn with_eps_root(self, eps_root: F) -> Self {
        Adam { eps_root, ..self }
    }

    /// The same optimiser with decoupled weight decay `weight_decay` (AdamW).
    #[must_use]
    pub fn with_weight_decay(self, weight_decay: F) -> Self {
        Adam {
            weight_decay,
            ..self
        }
    }

    /// The same optimiser with moment decays `beta1` and `beta2`.
    ///
    /// ```
    /// use datarater::optim::Adam;
    /// let opt = Adam::new(3e-4f32).with_betas(0.9, 0.95).with_weight_decay(0.1).with_eps(1e-6);
    /// assert_eq!((opt.beta1, opt.beta2, opt.weight_decay, opt.eps), (0.9, 0.95, 0.1, 1e-6));
    /// // Builders do not validate; `validate` names a bad field.
    /// assert!(Adam::new(1e-3f32).with_betas(0.9, 1.0).validate().is_err());
    /// ```
    #[must_use]
    pub fn with_betas(self, beta1: F, beta2: F) -> Self {
        Adam {
            beta1,
            beta2,
            ..self
        }
    }

    /// The same optimiser with `eps` (added to the denominator outside the square root).
    #[must_use]
    pub fn with_eps(self, eps: F) -> Self {
        Adam { eps, ..self }
    }

    /// Checks every hyper-parameter: `lr > 0`, betas in `[0, 1)`, `eps`, `eps_root` and
    /// `weight_decay` finite and `>= 0`, and `eps` and `eps_root` not both zero (the
    /// update would divide zero by zero where `g = v = 0`).
    pub fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr)?;
        check_decay("beta1", self.beta1)?;
        check_decay("beta2", self.beta2)?;
        check_non_negative("eps", self.eps)?;
        check_non_negative("eps_root", self.eps_root)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if self.eps == F::zero() && self.eps_root == F::zero() {
            return Err(Error::Config {
                field: "eps",
                reason: "eps and eps_root cannot both be zero".into(),
            });
        }
        Ok(())
    }

    /// Bias-correction factors `(1 / (1 - beta1^t), 1 / (1 - beta2^t))` for `t = step + 1`
    /// (computed in `f64`).
    pub fn bias_corrections(&self, step: usize) -> (F, F) {
        let t = i32::try_from(step.saturating_add(1)).unwrap_or(i32::MAX);
        let c = |b: F| F::c(1.0 / (1.0 - b.f64().powi(t)));
        (c(self.beta1), c(self.beta2))
    }
}

impl<F: Float> Optimizer<F> for Adam<F> {
    fn per_tensor(&self) -> bool {
        true
    }
    fn init(&self, params: &Params<Tensor<F>>) -> OptState<Tensor<F>> {
        OptState {
            step: 0,
            slots: vec![params.zeros_like(), params.zeros_like()],
        }
    }

    fn update<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        state: &OptState<V>,
        g: &Params<V>,
    ) -> (Params<V>, OptState<V>) {
        const OP: &str = "Adam::update";
        check_slots(OP, state, 2);
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = self.bias_corrections(state.step);
        let one = F::one();
        let n = theta.len();
        let (mut th, mut ms, mut vs) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, t) in theta.iter() {
            let gk = entry(OP, g, k);
            let m = entry(OP, &state.slots[0], k);
            let v = entry(OP, &state.slots[1], k);
            let m2 = m.scale(b1).add(&gk.scale(one - b1));
            let v2 = v.scale(b2).add(&gk.square().scale(one - b2));
            let denom = v2
                .scale(c2)
                .add_scalar(self.eps_root)
                .sqrt()
                .add_scalar(self.eps);
            let mut dir = m2.scale(c1).div(&denom);
            if self.weight_decay != F::zero() {
                dir = dir.add(&t.scale(self.weight_decay));
            }
            th.push((k.to_string(), t.sub(&dir.scale(self.lr))));
            ms.push((k.to_string(), m2));
            vs.push((k.to_string(), v2));
        }
        let state2 = OptState {
            step: state.step + 1,
            slots: vec![ms.into_iter().collect(), vs.into_iter().collect()],
        };
        (th.into_iter().collect(), state2)
    }

    /// The VJP of one Adam step, in one fused pass per tensor. With `u = m_hat`,
    /// `s = sqrt(v_hat + eps_root)`, `d = s + eps`, the totals of the outputs' moment
    /// cotangents are
    /// `M = m_bar' - theta_bar' * lr * c1 / d` and
    /// `W = v_bar' + theta_bar' * lr * u * c2 / (2 s d^2)`; then
    /// `theta_bar = (1 - lr * weight_decay) * theta_bar'`, `m_bar = beta1 * M`,
    /// `v_bar = beta2 * W` and `g_bar = (1 - beta1) * M + 2 (1 - beta2) * g * W`.
    fn adjoint(
        &self,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        g: &Params<Tensor<F>>,
        theta_bar: &Params<Tensor<F>>,
        state_bar: &[Params<Tensor<F>>],
    ) -> Adjoint<F> {
        const OP: &str = "Adam::adjoint";
        check_slots(OP, state, 2);
        check_slot_cotangents(OP, state_bar, 2);
        let (b1, b2, lr, eps, eps_root) =
            (self.beta1, self.beta2, self.lr, self.eps, self.eps_root);
        let (c1, c2) = self.bias_corrections(state.step);
        let (one, two) = (F::one(), F::c(2.0));
        let (lr_c1, lr_c2) = (lr * c1, lr * c2);
        let lr_wd = lr * self.weight_decay;
        let n = theta.len();
        let (mut th, mut mb, mut vb, mut gb) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (k, t) in theta.iter() {
            let tb = entry(OP, theta_bar, k);
            let (gk, m, v) = (
                entry(OP, g, k),
                entry(OP, &state.slots[0], k),
                entry(OP, &state.slots[1], k),
            );
            check_shapes(OP, &[t, gk, m, v, tb]);
            let mb2 = state_bar.first().map(|s| entry(OP, s, k));
            let vb2 = state_bar.get(1).map(|s| entry(OP, s, k));
            let [m_bar, v_bar, g_bar] = elementwise(
                OP,
                [Some(gk), Some(m), Some(v), Some(tb), mb2, vb2],
                #[inline(always)]
                |[g, m, v, tb, mb2, vb2]| {
                    // Recompute the forward quantities of this element.
                    let m2 = b1 * m + (one - b1) * g;
                    let v2 = b2 * v + (one - b2) * (g * g);
                    let u = m2 * c1;
                    let s = (v2 * c2 + eps_root).sqrt();
                    let d = s + eps;
                    // Total cotangents of m' and v' (direct + through theta').
                    let mt = mb2 - tb * lr_c1 / d;
                    let vt = vb2 + tb * lr_c2 * u / (two * s * d * d);
                    [
                        b1 * mt,
                        b2 * vt,
                        (one - b1) * mt + two * (one - b2) * g * vt,
                    ]
                },
            );
            let theta_bar = if lr_wd == F::zero() {
                tb.clone()
            } else {
                let [x] = elementwise(
                    OP,
                    [Some(tb)],
                    #[inline(always)]
                    |[tb]| [tb - lr_wd * tb],
                );
                x
            };
            th.push((k.to_string(), theta_bar));
            mb.push((k.to_string(), m_bar));
            vb.push((k.to_string(), v_bar));
            gb.push((k.to_string(), g_bar));
        }
        Adjoint {
            theta: th.into_iter().collect(),
            state: vec![mb.into_iter().collect(), vb.into_iter().collect()],
            grad: gb.into_iter().collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        Adam::validate(self)
    }
}
