//! Softmax, log-softmax and logsumexp along an axis, computed stably (the max is
//! subtracted and treated as a constant; its derivative cancels exactly).

use super::super::float::Float;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::{ArrayD, Axis};

fn check<F: Float>(op: &'static str, x: &Tensor<F>, axis: usize) {
    if axis >= x.shape().len() {
        shape_panic(op, x.shape(), &[axis]);
    }
}

/// `log(sum(exp(x)))` along `axis`, kept as size 1.
fn lse<F: Float>(x: &Tensor<F>, axis: usize) -> ArrayD<F> {
    let ax = Axis(axis);
    let m = x
        .array()
        .fold_axis(ax, F::neg_infinity(), |&a, &b| a.max(b))
        .insert_axis(ax);
    let m = m.mapv(|v| if v.is_finite() { v } else { F::zero() });
    let s = (x.array() - &m).mapv(F::exp).sum_axis(ax).insert_axis(ax);
    s.mapv(F::ln) + m
}

/// Softmax along an axis. Its Jacobian is symmetric, so JVP and VJP share one formula:
/// `y * (v - sum(y * v))`.
#[derive(Clone, Copy, Debug)]
pub struct Softmax(pub usize);

impl<F: Float> Op<F> for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn saves(&self) -> Saves {
        Saves::OUTPUT
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("softmax", xs[0], self.0);
        let l = lse(xs[0], self.0);
        Tensor::from_array((xs[0].array() - &l).mapv(F::exp))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        softmax_product(ctx.y(), d[0].expect("one tangent"), self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(softmax_product(ctx.y(), dy, self.0))]
    }
}

fn softmax_product<V: Value>(y: &V, v: &V, axis: usize) -> V {
    let yv = y.mul(v);
    yv.sub(&y.mul(&yv.sum_axis(axis, true)))
}

/// Log-softmax along an axis: `x - lse(x)`.
#[derive(Clone, Copy, Debug)]
pub struct LogSoftmax(pub usize);

impl<F: Float> Op<F> for LogSoftmax {
    fn name(&self) -> &'static str {
        "log_softmax"
    }
    fn saves(&self) -> Saves {
        Saves::OUTPUT
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("log_softmax", xs[0], self.0);
        Tensor::from_array(xs[0].array() - &lse(xs[0], self.0))
    }
    /// `dx - sum(softmax * dx)`.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let dx = d[0].expect("one tangent");
        dx.sub(&ctx.y().exp().mul(dx).sum_axis(self.0, true))
    }
    /// `dy - softmax * sum(dy)`.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.sub(&ctx.y().exp().mul(&dy.sum_axis(self.0, true))))]
    }
}

/// `log(sum(exp(x)))` along an axis, kept as size 1. Derivative: `softmax(x) = exp(x - y)`.
#[derive(Clone, Copy, Debug)]
pub struct LogSumExp(pub usize);

impl<F: Float> Op<F> for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp"
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("logsumexp", xs[0], self.0);
        Tensor::from_array(lse(xs[0], self.0))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let p = ctx.x(0).sub(ctx.y()).exp();
        p.mul(d[0].expect("one tangent")).sum_axis(self.0, true)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(ctx.x(0).sub(ctx.y()).exp().mul(dy))]
    }
}
