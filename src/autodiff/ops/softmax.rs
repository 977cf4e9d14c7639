//! Softmax (optionally masked), log-softmax and logsumexp along an axis, computed
//! stably lane by lane: the lane's max is subtracted and treated as a constant (its
//! derivative cancels exactly).

use super::super::float::Float;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::binary::broadcast_shape;
use super::index::Mask;
use super::shape_panic;
use ndarray::{ArrayD, ArrayViewMut1, Axis, Zip};

fn check<F: Float>(op: &'static str, x: &Tensor<F>, axis: usize) {
    if axis >= x.shape().len() {
        shape_panic(op, x.shape(), &[axis]);
    }
}

/// Rewrites each lane of `x` along `axis` as `x - max - log(sum(exp(x - max)))`.
fn log_softmax_lanes<F: Float>(x: &Tensor<F>, axis: usize) -> ArrayD<F> {
    let mut out = x.array().as_standard_layout().into_owned();
    Zip::from(out.lanes_mut(Axis(axis))).for_each(|mut lane| {
        let m = lane.fold(F::neg_infinity(), |a, &b| a.max(b));
        let m = if m.is_finite() { m } else { F::zero() };
        let l = m + lane.fold(F::zero(), |s, &v| s + (v - m).exp()).ln();
        lane.mapv_inplace(|v| v - l);
    });
    out
}

/// Softmax along an axis; with a mask, masked entries are excluded (probability 0).
/// Its Jacobian is symmetric, so JVP and VJP share one formula,
/// `y * (v - sum(y * v))`, and masked entries (where `y = 0`) get zero derivative.
#[derive(Clone, Debug)]
pub struct Softmax {
    /// The axis normalised over.
    pub axis: usize,
    /// Entries to exclude, broadcast to the input's shape.
    pub mask: Option<Mask>,
}

impl<F: Float> Op<F> for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn saves(&self) -> Saves {
        Saves::OUTPUT
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("softmax", xs[0], self.axis);
        if let Some(m) = &self.mask {
            if broadcast_shape("softmax mask", m.shape(), xs[0].shape()) != xs[0].shape() {
                shape_panic("softmax mask", m.shape(), xs[0].shape());
            }
        }
        let ax = Axis(self.axis);
        let mut out = xs[0].array().as_standard_layout().into_owned();
        let normalise = |lane: &mut ArrayViewMut1<'_, F>, masked: &dyn Fn(usize) -> bool| {
            let m = lane.iter().enumerate().filter(|&(i, _)| !masked(i)).fold(F::neg_infinity(), |a, (_, &b)| a.max(b));
            let mut sum = F::zero();
            for (i, v) in lane.iter_mut().enumerate() {
                *v = if masked(i) { F::zero() } else { (*v - m).exp() };
                sum += *v;
            }
            if sum > F::zero() {
                let inv = sum.recip();
                lane.mapv_inplace(|v| v * inv);
            }
        };
        match &self.mask {
            None => Zip::from(out.lanes_mut(ax)).for_each(|mut lane| normalise(&mut lane, &|_| false)),
            Some(mask) => {
                let mb = mask.array().broadcast(out.raw_dim()).expect("checked above");
                Zip::from(out.lanes_mut(ax)).and(mb.lanes(ax)).for_each(|mut lane, ml| normalise(&mut lane, &|i| ml[i]))
            }
        }
        Tensor::from_array(out)
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        softmax_product(ctx.y(), d[0].expect("one tangent"), self.axis)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(softmax_product(ctx.y(), dy, self.axis))]
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
        Tensor::from_array(log_softmax_lanes(xs[0], self.0))
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
        let ax = Axis(self.0);
        let x = xs[0].array();
        let mut shape = x.shape().to_vec();
        shape.remove(self.0);
        let mut out = ArrayD::zeros(shape);
        Zip::from(&mut out).and(x.lanes(ax)).for_each(|o, lane| {
            let m = lane.fold(F::neg_infinity(), |a, &b| a.max(b));
            let m = if m.is_finite() { m } else { F::zero() };
            *o = m + lane.fold(F::zero(), |s, &v| s + (v - m).exp()).ln();
        });
        Tensor::from_array(out.insert_axis(ax))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let p = ctx.x(0).sub(ctx.y()).exp();
        p.mul(d[0].expect("one tangent")).sum_axis(self.0, true)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(ctx.x(0).sub(ctx.y()).exp().mul(dy))]
    }
}
