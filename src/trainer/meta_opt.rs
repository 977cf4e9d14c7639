//! The meta-optimiser of Algorithm 1: Adam with decoupled weight decay, linear warm-up
//! and global-norm clipping, with one state per inner model.

use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use crate::meta::MetaOptimizer;
use ndarray::Zip;

/// Adam on the rater's parameters with decoupled weight decay, linear learning-rate
/// warm-up and global-norm gradient clipping. Build it from [`Default`] with the
/// `with_*` methods:
///
/// ```
/// use datarater::trainer::MetaAdam;
/// let opt = MetaAdam::default().with_lr(1e-3).with_warmup_steps(0);
/// assert_eq!((opt.lr, opt.clip_norm), (1e-3, 1.0));
/// assert!(opt.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MetaAdam {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator offset.
    pub eps: f64,
    /// Decoupled weight decay (`eta -= lr * weight_decay * eta`).
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// Meta-gradients with a larger global L2 norm are scaled down to it (`0` = off).
    pub clip_norm: f64,
}

impl Default for MetaAdam {
    fn default() -> Self {
        MetaAdam {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 20,
            clip_norm: 1.0,
        }
    }
}

with_fields!(MetaAdam {
    /// Sets the peak learning rate [`lr`](MetaAdam::lr).
    with_lr => lr: f64,
    /// Sets [`beta1`](MetaAdam::beta1).
    with_beta1 => beta1: f64,
    /// Sets [`beta2`](MetaAdam::beta2).
    with_beta2 => beta2: f64,
    /// Sets [`eps`](MetaAdam::eps).
    with_eps => eps: f64,
    /// Sets [`weight_decay`](MetaAdam::weight_decay).
    with_weight_decay => weight_decay: f64,
    /// Sets [`warmup_steps`](MetaAdam::warmup_steps).
    with_warmup_steps => warmup_steps: usize,
    /// Sets [`clip_norm`](MetaAdam::clip_norm) (`0` = off).
    with_clip_norm => clip_norm: f64,
});

/// Per-model state of [`MetaAdam`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetaAdamState<F: Float> {
    /// First moments.
    pub m: Params<Tensor<F>>,
    /// Second moments.
    pub v: Params<Tensor<F>>,
    /// Updates applied.
    pub t: usize,
}

impl MetaAdam {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(Error::Config {
                field,
                reason: reason.into(),
            })
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("meta lr", "must be positive and finite");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("meta betas", "must be in [0, 1)");
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return bad("meta eps", "must be positive");
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad("meta weight_decay", "must be non-negative");
        }
        if self.clip_norm.is_nan() || self.clip_norm < 0.0 {
            return bad(
                "meta clip_norm",
                "must be non-negative (0 disables clipping)",
            );
        }
        Ok(())
    }

    /// Learning rate at outer step `step` (0-based): linear warm-up, then constant.
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup_steps == 0 {
            self.lr
        } else {
            self.lr * ((step + 1) as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}

impl<F: Float> MetaOptimizer<F> for MetaAdam {
    type State = MetaAdamState<F>;

    fn init_state(&self, eta: &Params<Tensor<F>>) -> MetaAdamState<F> {
        MetaAdamState {
            m: eta.zeros_like(),
            v: eta.zeros_like(),
            t: 0,
        }
    }

    /// One update of `eta` with meta-gradient `g` (clipped first); `state` is advanced
    /// only when the update succeeds.
    fn update(
        &self,
        eta: &Params<Tensor<F>>,
        g: &Params<Tensor<F>>,
        state: &mut MetaAdamState<F>,
        step: usize,
    ) -> Result<Params<Tensor<F>>> {
        eta.check_like(g)?;
        eta.check_like(&state.m)?;
        eta.check_like(&state.v)?;
        let norm = g.norm().f64();
        let scale = if self.clip_norm > 0.0 && norm > self.clip_norm {
            self.clip_norm / norm
        } else {
            1.0
        };
        state.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let t = i32::try_from(state.t).unwrap_or(i32::MAX);
        let c1 = 1.0 / (1.0 - b1.powi(t));
        let c2 = 1.0 / (1.0 - b2.powi(t));
        let lr = self.lr_at(step);
        let f = F::c;
        let mut out = Params::new();
        for (name, e) in eta.iter() {
            // Names and shapes were checked above.
            let gk = &g[name];
            let mut m = state.m[name].to_owned_array();
            let mut v = state.v[name].to_owned_array();
            let mut new = e.to_owned_array();
            Zip::from(&mut new)
                .and(&mut m)
                .and(&mut v)
                .and(gk.array())
                .for_each(|x, m, v, &g| {
                    let g = g * f(scale);
                    *m = f(b1) * *m + f(1.0 - b1) * g;
                    *v = f(b2) * *v + f(1.0 - b2) * g * g;
                    let step = *m * f(c1) / ((*v * f(c2)).sqrt() + f(self.eps));
                    *x = *x - f(lr) * (step + f(self.weight_decay) * *x);
                });
            state.m.insert(name, Tensor::from_array(m));
            state.v.insert(name, Tensor::from_array(v));
            out.insert(name, Tensor::from_array(new));
        }
        Ok(out)
    }

    fn validate(&self) -> Result<()> {
        MetaAdam::validate(self)
    }
}

/// Plain gradient descent on the rater, `eta <- eta - lr * g`: a stateless
/// meta-optimiser, for experiments and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct MetaSgd {
    /// Learning rate (finite, `> 0`).
    pub lr: f64,
}

impl MetaSgd {
    /// Gradient descent with learning rate `lr` (checked by
    /// [`MetaOptimizer::validate`]).
    pub fn new(lr: f64) -> Self {
        MetaSgd { lr }
    }
}

impl<F: Float> MetaOptimizer<F> for MetaSgd {
    type State = ();

    fn init_state(&self, _: &Params<Tensor<F>>) {}

    fn update(
        &self,
        eta: &Params<Tensor<F>>,
        g: &Params<Tensor<F>>,
        _: &mut (),
        _: usize,
    ) -> Result<Params<Tensor<F>>> {
        eta.add_scaled(g, F::c(-self.lr))
    }

    fn validate(&self) -> Result<()> {
        crate::optim::check_positive("meta lr", self.lr)
    }
}
