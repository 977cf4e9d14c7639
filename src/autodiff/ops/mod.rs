//! Primitive ops. Each op's forward, JVP and VJP rules sit together in one `impl Op`.

pub mod attention;
pub mod binary;
pub mod index;
pub mod linalg;
pub mod norm;
pub mod pointwise;
pub mod reduce;
pub mod shape;
pub mod softmax;

use super::float::Float;
use super::tensor::Tensor;
use super::value::{Ctx, Op, Saves, Value};
use crate::error::Error;

/// Panics with a typed shape error naming the op and both shapes.
pub(crate) fn shape_panic(op: &'static str, lhs: &[usize], rhs: &[usize]) -> ! {
    panic!(
        "{}",
        Error::Shape {
            op,
            lhs: lhs.to_vec(),
            rhs: rhs.to_vec()
        }
    )
}

/// `c * x`.
#[derive(Clone, Copy, Debug)]
pub struct Scale<F>(pub F);

impl<F: Float> Op<F> for Scale<F> {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        Tensor::from_array(xs[0].array() * self.0)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, dxs: &[Option<&V>]) -> V {
        dxs[0].expect("one tangent").scale(self.0)
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.scale(self.0))]
    }
}

/// `x + c`.
#[derive(Clone, Copy, Debug)]
pub struct Shift<F>(pub F);

impl<F: Float> Op<F> for Shift<F> {
    fn name(&self) -> &'static str {
        "add_scalar"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        Tensor::from_array(xs[0].array() + self.0)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, dxs: &[Option<&V>]) -> V {
        dxs[0].expect("one tangent").clone()
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.clone())]
    }
}
