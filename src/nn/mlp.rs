//! A multi-layer perceptron.

use super::{insert_linear, linear};
use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `tanh`.
    Tanh,
    /// GELU (tanh form).
    Gelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Applies the nonlinearity.
    pub fn apply<V: Value>(self, x: &V) -> V {
        match self {
            Activation::Tanh => x.tanh(),
            Activation::Gelu => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// An MLP with layer sizes `sizes[0] -> sizes[1] -> .. -> sizes[n]`; parameters
/// `l{i}.w`, `l{i}.b`.
///
/// ```
/// use datarater::nn::{Activation, Mlp};
/// use datarater::{Rng, Tensor};
/// let mlp = Mlp::new(&[3, 8, 1], Activation::Tanh).unwrap();
/// let p = mlp.init::<f64>(&mut Rng::new(0));
/// let y = mlp.forward(&p, &Tensor::zeros(&[5, 3]).unwrap()).unwrap();
/// assert_eq!(y.shape(), &[5, 1]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    sizes: Vec<usize>,
    activation: Activation,
}

impl Mlp {
    /// Checks the sizes (at least input and output, all non-zero).
    pub fn new(sizes: &[usize], activation: Activation) -> Result<Self> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(Error::Config {
                field: "sizes",
                reason: format!("need >= 2 non-zero sizes, got {sizes:?}"),
            });
        }
        Ok(Mlp {
            sizes: sizes.to_vec(),
            activation,
        })
    }
    /// Layer sizes.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
    /// Random initial parameters (scaled normal weights, zero biases).
    pub fn init<F: Float>(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        let mut p = Params::new();
        for (i, w) in self.sizes.windows(2).enumerate() {
            insert_linear(
                &mut p,
                &format!("l{i}"),
                rng,
                w[0],
                w[1],
                1.0 / (w[0] as f64).sqrt(),
            );
        }
        p
    }
    /// `[batch, in] -> [batch, out]`.
    pub fn forward<V: Value>(&self, p: &Params<V>, x: &V) -> Result<V> {
        let s = x.shape();
        if s.len() != 2 || s[1] != self.sizes[0] {
            return Err(Error::Shape {
                op: "Mlp::forward",
                lhs: s,
                rhs: vec![self.sizes[0]],
            });
        }
        let n = self.sizes.len() - 1;
        let mut h = x.clone();
        for i in 0..n {
            h = linear(&h, &p[&format!("l{i}.w")], &p[&format!("l{i}.b")]);
            if i + 1 < n {
                h = self.activation.apply(&h);
            }
        }
        Ok(h)
    }
}
