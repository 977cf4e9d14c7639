//! Elementwise unary functions: one forward and one derivative per function; the JVP
//! and VJP are both "multiply by the derivative".

use super::super::float::Float;
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};

/// A scalar function with its derivative written in the algebra (so it can be
/// differentiated again).
pub trait Elementwise: Clone + Send + Sync + 'static {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Whether the derivative reads the input, the output, or both.
    const SAVES: Saves;
    /// The function on one number. Implementations should be `#[inline(always)]`
    /// (as should [`f_df`](Self::f_df)): the kernels call them in loops compiled for
    /// the CPU's vector unit, and a call that is not inlined runs one number at a time.
    fn f<F: Float>(&self, x: F) -> F;
    /// `f'(x)` elementwise, given the input and/or output as declared in `SAVES`.
    fn df<V: Value>(&self, x: Option<&V>, y: Option<&V>) -> V;
    /// `(f(x), f'(x))` on one number: enables the fused forward-mode kernel (output and
    /// tangent in one pass, shared subexpressions computed once, no temporaries). `None`
    /// (the default) for functions that do not provide it; it must then be `None` for
    /// every input, and `Some` for every input otherwise.
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let _ = x;
        None
    }
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
    /// Fused (when the function has [`f_df`](Elementwise::f_df)): `y = f(x)` and
    /// `dx f'(x)` in one pass.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        self.0.f_df(F::one())?;
        let x = xs[0].array().as_standard_layout();
        let dx = dxs[0].expect("one tangent").array().as_standard_layout();
        let (x, dx) = (
            x.as_slice().expect("standard"),
            dx.as_slice().expect("standard"),
        );
        let (mut y, mut t) = (kernels::overwritten(x.len()), kernels::overwritten(x.len()));
        kernels::with_simd(
            #[inline(always)]
            || {
                for (((y, t), &x), &dx) in y.iter_mut().zip(&mut t).zip(x).zip(dx) {
                    let (f, df) = self.0.f_df(x).expect("f_df is Some for every input");
                    (*y, *t) = (f, dx * df);
                }
            },
        );
        let shape = xs[0].shape();
        let (y, t) = (Tensor::from_vec(shape, y), Tensor::from_vec(shape, t));
        Some((y.expect("same size"), t.expect("same size")))
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
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x.vexp()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output").clone()
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let y = x.vexp();
        Some((y, y))
    }
}

/// `ln`: `f' = 1/x`.
#[derive(Clone, Copy, Debug)]
pub struct Ln;
impl Elementwise for Ln {
    const NAME: &'static str = "ln";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x.ln()
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        x.expect("saved input").recip()
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        Some((x.ln(), x.recip()))
    }
}

/// `tanh`: `f' = 1 - y^2`.
#[derive(Clone, Copy, Debug)]
pub struct Tanh;
impl Elementwise for Tanh {
    const NAME: &'static str = "tanh";
    const SAVES: Saves = Saves::OUTPUT;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x.tanh()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output")
            .square()
            .neg()
            .add_scalar(c::<V>(1.0))
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let y = x.tanh();
        Some((y, F::one() - y * y))
    }
}

/// Logistic sigmoid: `f' = y (1 - y)`.
#[derive(Clone, Copy, Debug)]
pub struct Sigmoid;
impl Elementwise for Sigmoid {
    const NAME: &'static str = "sigmoid";
    const SAVES: Saves = Saves::OUTPUT;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        F::one() / (F::one() + (-x).vexp())
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        let y = y.expect("saved output");
        y.mul(&y.neg().add_scalar(c::<V>(1.0)))
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let y = self.f(x);
        Some((y, y * (F::one() - y)))
    }
}

/// `sqrt`: `f' = 1 / (2 y)`.
#[derive(Clone, Copy, Debug)]
pub struct Sqrt;
impl Elementwise for Sqrt {
    const NAME: &'static str = "sqrt";
    const SAVES: Saves = Saves::OUTPUT;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x.sqrt()
    }
    fn df<V: Value>(&self, _: Option<&V>, y: Option<&V>) -> V {
        y.expect("saved output").recip().scale(c::<V>(0.5))
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let y = x.sqrt();
        Some((y, y.recip() * F::c(0.5)))
    }
}

/// `x^n`: `f' = n x^(n-1)`.
#[derive(Clone, Copy, Debug)]
pub struct Powi(pub i32);
impl Elementwise for Powi {
    const NAME: &'static str = "powi";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x.powi(self.0)
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        let x = x.expect("saved input");
        match self.0 {
            0 => x.zeros_like(),
            1 => V::constant(super::super::tensor::Tensor::filled(
                &x.shape(),
                c::<V>(1.0),
            )),
            n => x.powi(n - 1).scale(c::<V>(n as f64)),
        }
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let df = match self.0 {
            0 => F::zero(),
            1 => F::one(),
            n => x.powi(n - 1) * F::c(n as f64),
        };
        Some((x.powi(self.0), df))
    }
}

/// `x^2`: `f' = 2 x`.
#[derive(Clone, Copy, Debug)]
pub struct Square;
impl Elementwise for Square {
    const NAME: &'static str = "square";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x * x
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        x.expect("saved input").scale(c::<V>(2.0))
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        Some((x * x, x * F::c(2.0)))
    }
}

const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

/// The GELU pieces at one point: `u' = k (1 + 3 a x^2)`, `s = sigmoid(2u)` with
/// `u = k (x + a x^3)`, `p = s (1 - s)`, `q = 1 - 2 s`.
#[inline(always)]
fn gelu_parts<F: Float>(x: F) -> (F, F, F, F) {
    let (k, a) = (F::c(GELU_K), F::c(GELU_A));
    let u = k * (x + a * x * x * x);
    let s = F::one() / (F::one() + (-(u + u)).vexp());
    let du = k * (F::one() + F::c(3.0) * a * x * x);
    (du, s, s * (F::one() - s), F::one() - s - s)
}

/// GELU, tanh form: `0.5 x (1 + tanh(u)) = x sigmoid(2u)`, `u = k (x + a x^3)`.
///
/// GELU and its first two derivatives are primitives ([`GeluD1`], [`GeluD2`]), each
/// one fused pass: the forward-over-reverse backward pass evaluates `f'` on duals and
/// so `f''` on numbers, which would otherwise be a dozen separate array passes.
#[derive(Clone, Copy, Debug)]
pub struct Gelu;
impl Elementwise for Gelu {
    const NAME: &'static str = "gelu";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        x * gelu_parts(x).1
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        V::apply(Pointwise(GeluD1), &[x.expect("saved input")])
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let (du, s, p, _) = gelu_parts(x);
        Some((x * s, s + F::c(2.0) * x * p * du))
    }
}

/// The first derivative of GELU: `s + 2 x p u'`.
#[derive(Clone, Copy, Debug)]
pub struct GeluD1;
impl Elementwise for GeluD1 {
    const NAME: &'static str = "gelu_d1";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        let (du, s, p, _) = gelu_parts(x);
        s + F::c(2.0) * x * p * du
    }
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        V::apply(Pointwise(GeluD2), &[x.expect("saved input")])
    }
    #[inline(always)]
    fn f_df<F: Float>(&self, x: F) -> Option<(F, F)> {
        let (du, s, p, q) = gelu_parts(x);
        let ak = F::c(GELU_A * GELU_K);
        let d2 = p * (F::c(4.0) * du + F::c(4.0) * x * q * du * du + F::c(12.0) * ak * x * x);
        Some((s + F::c(2.0) * x * p * du, d2))
    }
}

/// The second derivative of GELU: `p B` with `B = 4u' + 4 x q u'^2 + 12 a k x^2`.
#[derive(Clone, Copy, Debug)]
pub struct GeluD2;
impl Elementwise for GeluD2 {
    const NAME: &'static str = "gelu_d2";
    const SAVES: Saves = Saves::INPUTS;
    #[inline(always)]
    fn f<F: Float>(&self, x: F) -> F {
        let (du, _, p, q) = gelu_parts(x);
        let ak = F::c(GELU_A * GELU_K);
        p * (F::c(4.0) * du + F::c(4.0) * x * q * du * du + F::c(12.0) * ak * x * x)
    }
    /// The third derivative, `p (2 q u' B + B')` with
    /// `B' = 48 a k x + 4 q u'^2 - 16 x p u'^3 + 48 a k x^2 q u'`, written with the
    /// algebra's ops (only third and higher orders reach it).
    fn df<V: Value>(&self, x: Option<&V>, _: Option<&V>) -> V {
        let x = x.expect("saved input");
        let (k, a) = (GELU_K, GELU_A);
        let x2 = x.square();
        let s = x
            .mul(&x2.scale(c::<V>(a)).add_scalar(c::<V>(1.0)))
            .scale(c::<V>(2.0 * k))
            .sigmoid();
        let p = s.mul(&s.neg().add_scalar(c::<V>(1.0)));
        let q = s.scale(c::<V>(-2.0)).add_scalar(c::<V>(1.0));
        let du = x2.scale(c::<V>(3.0 * a * k)).add_scalar(c::<V>(k));
        let du2 = du.square();
        let b = du
            .scale(c::<V>(4.0))
            .add(&x.mul(&q).mul(&du2).scale(c::<V>(4.0)))
            .add(&x2.scale(c::<V>(12.0 * a * k)));
        let db = x
            .scale(c::<V>(48.0 * a * k))
            .add(&q.mul(&du2).scale(c::<V>(4.0)))
            .sub(&x.mul(&p).mul(&du2).mul(&du).scale(c::<V>(16.0)))
            .add(&x2.mul(&q).mul(&du).scale(c::<V>(48.0 * a * k)));
        p.mul(&q.mul(&du).mul(&b).scale(c::<V>(2.0)).add(&db))
    }
}
