//! Models as pure generic functions over the algebra: parameters live in a
//! [`Params`] group, the forward pass is `fn f<V: Value>(..) -> V`, so the
//! same code gives values, gradients, JVPs, HVPs and grad-of-grad.

pub mod mlp;
pub mod transformer;

pub use mlp::{Activation, Mlp};
pub use transformer::{CausalLm, SequenceScorer, TransformerConfig};

use crate::autodiff::ops::linalg::MatMulBias;
use crate::autodiff::ops::norm::AffineLayerNorm;
use crate::autodiff::{Float, Params, Tensor, Value};
use crate::rng::Rng;

/// `x @ w + b` over the last axis of `x` (any leading shape). A bias of shape
/// `[d_out]` is added as the product is written ([`MatMulBias`]); any other shape
/// broadcasts as in [`Value::add`].
pub fn linear<V: Value>(x: &V, w: &V, b: &V) -> V {
    let s = x.shape();
    let (d_in, d_out) = (s[s.len() - 1], w.shape()[1]);
    let lead: usize = s[..s.len() - 1].iter().product();
    let x = x.reshape(&[lead, d_in]);
    let y = if b.shape() == [d_out] {
        V::apply(MatMulBias, &[&x, w, b])
    } else {
        x.matmul(w).add(b)
    };
    let mut out = s[..s.len() - 1].to_vec();
    out.push(d_out);
    y.reshape(&out)
}

/// Layer norm over the last axis with gain and bias: `x.layer_norm(eps).mul(g).add(b)`.
/// A gain and bias of the lane's length (a model's) go through one fused op
/// ([`AffineLayerNorm`], the same bits); any other shapes broadcast as in
/// [`Value::mul`] and [`Value::add`].
pub fn layer_norm<V: Value>(x: &V, g: &V, b: &V, eps: V::F) -> V {
    let lane = x.shape().last().map(|&n| vec![n]);
    if lane.is_some_and(|n| g.shape() == n && b.shape() == n) {
        V::apply(AffineLayerNorm { eps }, &[x, g, b])
    } else {
        x.layer_norm(eps).mul(g).add(b)
    }
}

/// A tensor of independent normal draws with standard deviation `std` (for a
/// model's parameters; [`Tensor::randn`] is the checked form for standard normals).
///
/// # Panics
/// If the shape is too large to allocate (a model config bug).
pub fn normal<F: Float>(rng: &mut Rng, shape: &[usize], std: f64) -> Tensor<F> {
    Tensor::from_draws("nn::normal", shape, || rng.normal() * std).unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn insert_linear<F: Float>(
    p: &mut Params<Tensor<F>>,
    name: &str,
    rng: &mut Rng,
    d_in: usize,
    d_out: usize,
    std: f64,
) {
    p.insert(format!("{name}.w"), normal(rng, &[d_in, d_out], std));
    p.insert(format!("{name}.b"), Tensor::filled(&[d_out], F::zero()));
}

pub(crate) fn insert_layer_norm<F: Float>(p: &mut Params<Tensor<F>>, name: &str, d: usize) {
    p.insert(format!("{name}.g"), Tensor::filled(&[d], F::one()));
    p.insert(format!("{name}.b"), Tensor::filled(&[d], F::zero()));
}
