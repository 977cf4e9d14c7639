//! Elementwise unary functions: one forward and one derivative per function; the JVP
//! and VJP are both "multiply by the derivative".

use super::super::float::Float;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};

/// A scalar function with its derivative written in the algebra (so it can be
/// differentiated again).
pub trait Elementwise: Clone + 'static {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Whether the derivative reads the input, the output, or both.
    const SAVES: Saves;
    /// The function on one number.
    fn f<F: Float>(&self, x: F) -> F;
    /// `f'(x)` elementwise, given the input and/or output as declared in `SAVES`.
    fn df<V: Value>(&self, x: Option<&V>, y: Option<&V>) -> V;
}

/// Adapter turning an [`Elementwise`] function into an [`Op`].
#[derive(Clone, Copy, Debug)]
pub struct Pointwise<E>(pub E);

impl<F: Float, E: Elementwise> Op<F> for Pointwise<E> {
    fn name(&self) -> &'static str {
        E::NAME
    }
    fn saves(&self) -> Saves {
        E::SAVES
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        xs[0].map(|x| self.0.f(x))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dxs: &[Option<&V>]) -> V {
        dxs[0]
            .expect("one tangent")
            .mul(&self.0.df(ctx.xs[0].as_ref(), ctx.y.as_ref()))
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.mul(&self.0.df(ctx.xs[0].as_ref(), ctx.y.as_ref())))]
    }
}

fn c<V: Value>(x: f64) -> V::F {
    V::F::c(x)
}

/// `exp`: `f' = y`.
#[derive(Clone, Copy, Debug)]
pub struct Exp;
impl Elementwise for Exp {
    const NAME: &'static str = "exp";
    const SAVES: Saves = Saves::OUTPUT;
    fn f<F: Float>(&self, x: F) -> F {
        x.exp()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output").clone()
    }
}

/// `ln`: `f' = 1/x`.
#[derive(Clone, Copy, Debug)]
pub struct Ln;
impl Elementwise for Ln {
    const NAME: &'static str = "ln";
    const SAVES: Saves = Saves::INPUTS;
    fn f<F: Float>(&self, x: F) -> F {
        x.ln()
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        x.expect("saved input").recip()
    }
}

/// `tanh`: `f' = 1 - y^2`.
#[derive(Clone, Copy, Debug)]
pub struct Tanh;
impl Elementwise for Tanh {
    const NAME: &'static str = "tanh";
    const SAVES: Saves = Saves::OUTPUT;
    fn f<F: Float>(&self, x: F) -> F {
        x.tanh()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output")
            .square()
            .neg()
            .add_scalar(c::<V>(1.0))
    }
}

/// Logistic sigmoid: `f' = y (1 - y)`.
#[derive(Clone, Copy, Debug)]
pub struct Sigmoid;
impl Elementwise for Sigmoid {
    const NAME: &'static str = "sigmoid";
    const SAVES: Saves = Saves::OUTPUT;
    fn f<F: Float>(&self, x: F) -> F {
        F::one() / (F::one() + (-x).exp())
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        let y = y.expect("saved output");
        y.mul(&y.neg().add_scalar(c::<V>(1.0)))
    }
}

/// `sqrt`: `f' = 1 / (2 y)`.
#[derive(Clone, Copy, Debug)]
pub struct Sqrt;
impl Elementwise for Sqrt {
    const NAME: &'static str = "sqrt";
    const SAVES: Saves = Saves::OUTPUT;
    fn f<F: Float>(&self, x: F) -> F {
        x.sqrt()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output").recip().scale(c::<V>(0.5))
    }
}

/// `x^n`: `f' = n x^(n-1)`.
#[derive(Clone, Copy, Debug)]
pub struct Powi(pub i32);
impl Elementwise for Powi {
    const NAME: &'static str = "powi";
    const SAVES: Saves = Saves::INPUTS;
    fn f<F: Float>(&self, x: F) -> F {
        x.powi(self.0)
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        let x = x.expect("saved input");
        match self.0 {
            0 => x.zeros_like(),
            1 => V::constant(super::super::tensor::Tensor::full(&x.shape(), c::<V>(1.0))),
            n => x.powi(n - 1).scale(c::<V>(n as f64)),
        }
    }
}

/// `x^2`: `f' = 2 x`.
#[derive(Clone, Copy, Debug)]
pub struct Square;
impl Elementwise for Square {
    const NAME: &'static str = "square";
    const SAVES: Saves = Saves::INPUTS;
    fn f<F: Float>(&self, x: F) -> F {
        x * x
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        x.expect("saved input").scale(c::<V>(2.0))
    }
}

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

/// GELU, tanh form: `0.5 x (1 + tanh(k (x + a x^3)))`.
#[derive(Clone, Copy, Debug)]
pub struct Gelu;
impl Elementwise for Gelu {
    const NAME: &'static str = "gelu";
    const SAVES: Saves = Saves::INPUTS;
    fn f<F: Float>(&self, x: F) -> F {
        let t = (F::c(GELU_K) * (x + F::c(GELU_A) * x * x * x)).tanh();
        F::c(0.5) * x * (F::one() + t)
    }
    /// `0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2)`.
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        let x = x.expect("saved input");
        let x2 = x.square();
        let t = x
            .mul(&x2.scale(c::<V>(GELU_A)).add_scalar(c::<V>(1.0)))
            .scale(c::<V>(GELU_K))
            .tanh();
        let inner = x2
            .scale(c::<V>(3.0 * GELU_A * GELU_K))
            .add_scalar(c::<V>(GELU_K));
        let sech2 = t.square().neg().add_scalar(c::<V>(1.0));
        t.add_scalar(c::<V>(1.0))
            .add(&x.mul(&sech2).mul(&inner))
            .scale(c::<V>(0.5))
    }
}
