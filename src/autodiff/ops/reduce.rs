//! Broadcasting and its transpose, summing to a shape. Every reduction (sum over
//! axes, over everything, mean) is built on `SumTo`.

use super::super::float::Float;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::binary::broadcast_shape;
use super::shape_panic;
use ndarray::{Axis, IxDyn};

/// Broadcast to a shape (numpy rules).
#[derive(Clone, Debug)]
pub struct BroadcastTo(pub Vec<usize>);

impl<F: Float> Op<F> for BroadcastTo {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let x = xs[0];
        if broadcast_shape("broadcast_to", x.shape(), &self.0) != self.0 {
            shape_panic("broadcast_to", x.shape(), &self.0);
        }
        let view = x
            .array()
            .broadcast(IxDyn(&self.0))
            .expect("checked broadcast");
        Tensor::from_array(view.to_owned())
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").broadcast_to(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.sum_to(ctx.shape(0)))]
    }
}

/// Sum over the axes that broadcasting `shape` to the input's shape would create or
/// stretch; the result has exactly `shape`.
#[derive(Clone, Debug)]
pub struct SumTo(pub Vec<usize>);

impl<F: Float> Op<F> for SumTo {
    fn name(&self) -> &'static str {
        "sum_to"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let x = xs[0];
        let (src, dst) = (x.shape(), &self.0[..]);
        if dst.len() > src.len() || broadcast_shape("sum_to", src, dst) != src {
            shape_panic("sum_to", src, dst);
        }
        let lead = src.len() - dst.len();
        let stretched = dst
            .iter()
            .enumerate()
            .filter(|&(i, &d)| d == 1 && src[i + lead] != 1);
        let axes: Vec<usize> = (0..lead).chain(stretched.map(|(i, _)| i + lead)).collect();
        let mut out: Option<ndarray::ArrayD<F>> = None;
        for &ax in axes.iter().rev() {
            out = Some(match out {
                None => x.array().sum_axis(Axis(ax)),
                Some(a) => a.sum_axis(Axis(ax)),
            });
        }
        let out = out.unwrap_or_else(|| x.to_owned_array());
        Tensor::from_array(
            out.into_shape_with_order(IxDyn(dst))
                .expect("same element count"),
        )
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").sum_to(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.broadcast_to(ctx.shape(0)))]
    }
}
