//! Binary arithmetic with numpy broadcasting. VJPs sum broadcast axes back with `sum_to`.

use super::super::float::Float;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::{ArrayViewD, IxDyn, Zip};

/// The numpy broadcast of two shapes, or a panic naming `op` and both shapes.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < n - s.len() {
            1
        } else {
            s[i - (n - s.len())]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => shape_panic(op, a, b),
        })
        .collect()
}

fn check<F: Float>(op: &'static str, xs: &[&Tensor<F>]) {
    broadcast_shape(op, xs[0].shape(), xs[1].shape());
}

/// Cotangent of a broadcast operand: reduce the output-shaped `g` to the operand's shape.
fn unbroadcast<V: Value>(ctx: &Ctx<V>, i: usize, g: impl FnOnce() -> V) -> Option<V> {
    ctx.needs(i).then(|| g().sum_to(ctx.shape(i)))
}

/// `t` broadcast to `shape` (already checked to be a valid broadcast).
fn broadcast_view<'a, F: Float>(t: &'a Tensor<F>, shape: &IxDyn) -> ArrayViewD<'a, F> {
    t.array()
        .broadcast(shape.clone())
        .expect("checked broadcast")
}

/// `a + b`.
#[derive(Clone, Copy, Debug)]
pub struct Add;
impl<F: Float> Op<F> for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("add", xs);
        Tensor::from_array(xs[0].array() + xs[1].array())
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        match (d[0], d[1]) {
            (Some(a), Some(b)) => a.add(b),
            (Some(t), None) | (None, Some(t)) => t.broadcast_to(ctx.out_shape()),
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![
            unbroadcast(ctx, 0, || dy.clone()),
            unbroadcast(ctx, 1, || dy.clone()),
        ]
    }
}

/// `a - b`.
#[derive(Clone, Copy, Debug)]
pub struct Sub;
impl<F: Float> Op<F> for Sub {
    fn name(&self) -> &'static str {
        "sub"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("sub", xs);
        Tensor::from_array(xs[0].array() - xs[1].array())
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        match (d[0], d[1]) {
            (Some(a), Some(b)) => a.sub(b),
            (Some(a), None) => a.broadcast_to(ctx.out_shape()),
            (None, Some(b)) => b.neg().broadcast_to(ctx.out_shape()),
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![
            unbroadcast(ctx, 0, || dy.clone()),
            unbroadcast(ctx, 1, || dy.neg()),
        ]
    }
}

/// `a * b`.
#[derive(Clone, Copy, Debug)]
pub struct Mul;
impl<F: Float> Op<F> for Mul {
    fn name(&self) -> &'static str {
        "mul"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("mul", xs);
        Tensor::from_array(xs[0].array() * xs[1].array())
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (a, b) = (ctx.x(0), ctx.x(1));
        match (d[0], d[1]) {
            (Some(da), Some(db)) => da.mul(b).add(&a.mul(db)),
            (Some(da), None) => da.mul(b),
            (None, Some(db)) => a.mul(db),
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![
            unbroadcast(ctx, 0, || dy.mul(ctx.x(1))),
            unbroadcast(ctx, 1, || dy.mul(ctx.x(0))),
        ]
    }
    /// Fused: the tangent `da b + a db` in one pass, no temporaries.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let shape = IxDyn(&broadcast_shape("mul", xs[0].shape(), xs[1].shape()));
        let view = |t| broadcast_view(t, &shape);
        let (a, b) = (view(xs[0]), view(xs[1]));
        let y = Zip::from(&a).and(&b).map_collect(|&a, &b| a * b);
        let t = match (dxs[0].map(view), dxs[1].map(view)) {
            (Some(da), Some(db)) => Zip::from(&a)
                .and(&b)
                .and(&da)
                .and(&db)
                .map_collect(|&a, &b, &da, &db| da * b + a * db),
            (Some(da), None) => Zip::from(&da).and(&b).map_collect(|&da, &b| da * b),
            (None, Some(db)) => Zip::from(&a).and(&db).map_collect(|&a, &db| a * db),
            (None, None) => unreachable!("jvp called without tangents"),
        };
        Some((Tensor::from_array(y), Tensor::from_array(t)))
    }
}

/// `a / b`.
#[derive(Clone, Copy, Debug)]
pub struct Div;
impl<F: Float> Op<F> for Div {
    fn name(&self) -> &'static str {
        "div"
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        check("div", xs);
        Tensor::from_array(xs[0].array() / xs[1].array())
    }
    /// `d(a/b) = (da - y db) / b`.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (b, y) = (ctx.x(1), ctx.y());
        match (d[0], d[1]) {
            (Some(da), Some(db)) => da.sub(&y.mul(db)).div(b),
            (Some(da), None) => da.div(b),
            (None, Some(db)) => y.mul(db).div(b).neg(),
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let (b, y) = (ctx.x(1), ctx.y());
        vec![
            unbroadcast(ctx, 0, || dy.div(b)),
            unbroadcast(ctx, 1, || dy.mul(y).div(b).neg()),
        ]
    }
}
