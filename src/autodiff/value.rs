//! The tensor algebra every model is written against, and the `Op` trait that gives
//! each primitive its forward, JVP and VJP rules in one place.

use super::checkpoint::Block;
use super::float::Float;
use super::ops::{
    Scale, Shift,
    binary::{Add, Div, Mul, Sub},
    index::{GatherRows, Indices, Mask, MaskedFill, PickLast},
    linalg::MatMul,
    pointwise::{Exp, Gelu, Ln, Pointwise, Powi, Sigmoid, Sqrt, Square, Tanh},
    reduce::{BroadcastTo, SumTo},
    shape::{Concat, Permute, Reshape, Slice},
    softmax::{LogSoftmax, LogSumExp, Softmax},
};
use super::tensor::Tensor;
use crate::error::Result;
use num_traits::{Float as _, One as _, Zero as _};

/// Which values an op's derivative rules read; the tape keeps only these alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saves {
    /// The rules read the inputs.
    pub inputs: bool,
    /// The rules read the output.
    pub output: bool,
}

impl Saves {
    /// Inputs and output.
    pub const ALL: Saves = Saves {
        inputs: true,
        output: true,
    };
    /// Only the inputs.
    pub const INPUTS: Saves = Saves {
        inputs: true,
        output: false,
    };
    /// Only the output.
    pub const OUTPUT: Saves = Saves {
        inputs: false,
        output: true,
    };
    /// Nothing (linear ops whose rules need only shapes).
    pub const NONE: Saves = Saves {
        inputs: false,
        output: false,
    };
}

/// What an op's derivative rules may read: input shapes always; input and output
/// values when the op declared it saves them.
pub struct Ctx<V: Value> {
    pub(crate) xs: Vec<Option<V>>,
    pub(crate) y: Option<V>,
    pub(crate) shapes: Vec<Vec<usize>>,
    pub(crate) out_shape: Vec<usize>,
    pub(crate) needs: Vec<bool>,
    pub(crate) tangent_only: Vec<bool>,
}

impl<V: Value> Ctx<V> {
    /// Input `i`.
    ///
    /// # Panics
    /// If the op did not declare that it saves its inputs (a bug in the op).
    pub fn x(&self, i: usize) -> &V {
        self.xs[i]
            .as_ref()
            .expect("op rule read an input it did not declare in `saves`")
    }
    /// The output.
    ///
    /// # Panics
    /// If the op did not declare that it saves its output (a bug in the op).
    pub fn y(&self) -> &V {
        self.y
            .as_ref()
            .expect("op rule read the output it did not declare in `saves`")
    }
    /// Shape of input `i`.
    pub fn shape(&self, i: usize) -> &[usize] {
        &self.shapes[i]
    }
    /// Shape of the output.
    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }
    /// Whether input `i` needs a cotangent (it depends on a variable being differentiated).
    pub fn needs(&self, i: usize) -> bool {
        self.needs[i]
    }
    /// Whether only the tangent of input `i`'s cotangent will be read: `i` is a leaf of a
    /// forward-over-reverse pass that wants the gradient's tangents alone
    /// ([`grad_tangents_with`](crate::transforms::grad_tangents_with)).
    pub fn tangent_only(&self, i: usize) -> bool {
        self.tangent_only[i]
    }
    /// `op` on `xs`, computing input `i`'s cotangent: [`Value::apply_for_tangent`] when
    /// only its tangent will be read ([`tangent_only`](Self::tangent_only)), else
    /// [`Value::apply`]. For the rules of ops whose cotangents are large products.
    pub fn cotangent<O: Op<V::F>>(&self, i: usize, op: O, xs: &[&V]) -> V {
        match self.tangent_only(i) {
            true => V::apply_for_tangent(op, xs),
            false => V::apply(op, xs),
        }
    }
}

/// A primitive operation: its concrete forward rule and its JVP and VJP rules, the
/// latter written with the algebra's own operations so they can be differentiated again.
pub trait Op<F: Float>: Clone + 'static {
    /// Name used in error messages.
    fn name(&self) -> &'static str;
    /// Which values the derivative rules read.
    fn saves(&self) -> Saves {
        Saves::ALL
    }
    /// The output on concrete arrays. Checks shapes and panics with the op name and
    /// both shapes on mismatch.
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F>;
    /// The output tangent given input tangents (`None` = zero); at least one is `Some`.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dxs: &[Option<&V>]) -> V;
    /// Input cotangents given the output cotangent; entry `i` may be `None` when
    /// `ctx.needs(i)` is false.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>>;
    /// Optional fused kernel for forward mode on numbers: the output and its tangent
    /// (given input tangents, `None` = zero, at least one `Some`) in one go, for ops where
    /// that saves array passes or allocations over `forward` followed by `jvp` on
    /// numbers. `None` (the default) means "no fused kernel": `forward` then `jvp` run.
    /// A kernel must agree with those two rules (up to rounding) and check shapes as
    /// `forward` does.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let _ = (xs, dxs);
        None
    }
    /// Optional kernel for the tangent alone, when the output itself will not be read
    /// ([`Value::apply_for_tangent`]): bitwise the tangent of
    /// [`forward_jvp`](Self::forward_jvp) without computing the output. `None` (the
    /// default): the output is computed and dropped.
    fn forward_tangent(&self, xs: &[&Tensor<F>], dxs: &[Option<&Tensor<F>>]) -> Option<Tensor<F>> {
        let _ = (xs, dxs);
        None
    }
}

/// `op` on values `xs` with tangents `dxs`: the output, then its tangent by the op's JVP
/// rule (the default of [`Value::apply_jvp`]).
pub(crate) fn apply_then_jvp<V: Value, O: Op<V::F>>(
    op: O,
    xs: &[&V],
    dxs: &[Option<&V>],
) -> (V, V) {
    let y = V::apply(op.clone(), xs);
    let ctx = Ctx {
        xs: xs.iter().map(|&p| Some(p.clone())).collect(),
        out_shape: y.shape(),
        y: Some(y.clone()),
        shapes: xs.iter().map(|p| p.shape()).collect(),
        needs: dxs.iter().map(Option::is_some).collect(),
        tangent_only: vec![false; xs.len()],
    };
    let t = op.jvp(&ctx, dxs);
    (y, t)
}

/// The tensor algebra. Implemented by [`Tensor`] (numbers), [`Dual`](super::Dual)
/// (forward mode over any algebra) and [`Var`](super::Var) (reverse mode over any
/// algebra), so a model written once as `fn f<V: Value>(..) -> V` runs in every mode
/// and every nesting of modes.
///
/// Shape errors in these methods panic with the op name and both shapes; methods that
/// take integer user data (`gather_rows`, `cross_entropy`) return a [`Result`].
///
/// ```
/// use datarater::{Tensor, Value};
/// fn f<V: Value>(x: &V) -> V { x.square().sum_all() }
/// let x = Tensor::<f64>::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap();
/// assert_eq!(f(&x).item(), 14.0);
/// ```
pub trait Value: Clone + 'static {
    /// Element type.
    type F: Float;

    /// The shape.
    fn shape(&self) -> Vec<usize>;
    /// The concrete numbers at the bottom of any nesting.
    fn primal(&self) -> Tensor<Self::F>;
    /// Lifts concrete numbers to a constant (zero tangent, not recorded).
    fn constant(t: Tensor<Self::F>) -> Self;
    /// Applies a primitive op.
    fn apply<O: Op<Self::F>>(op: O, xs: &[&Self]) -> Self;
    /// Applies a primitive op to the primal parts `xs` of dual numbers with tangents
    /// `dxs` (`None` = zero, at least one `Some`): the output and its tangent. By default
    /// `apply` then the op's JVP rule; [`Tensor`] runs the op's fused
    /// [`forward_jvp`](Op::forward_jvp) kernel when it has one.
    fn apply_jvp<O: Op<Self::F>>(op: O, xs: &[&Self], dxs: &[Option<&Self>]) -> (Self, Self) {
        apply_then_jvp(op, xs, dxs)
    }
    /// The tangent of [`apply_jvp`](Self::apply_jvp) alone (its output is not read). By
    /// default computed with the output; [`Tensor`] runs the op's
    /// [`forward_tangent`](Op::forward_tangent) kernel when it has one.
    fn apply_jvp_tangent<O: Op<Self::F>>(op: O, xs: &[&Self], dxs: &[Option<&Self>]) -> Self {
        Self::apply_jvp(op, xs, dxs).1
    }
    /// [`apply`](Self::apply) when only the result's tangent will be read (see
    /// [`Ctx::tangent_only`]): a [`Dual`](super::Dual) computes its tangent alone
    /// ([`apply_jvp_tangent`](Self::apply_jvp_tangent)) and holds zeros as its primal;
    /// other algebras apply the op.
    fn apply_for_tangent<O: Op<Self::F>>(op: O, xs: &[&Self]) -> Self {
        Self::apply(op, xs)
    }
    /// `self + other` for cotangent accumulation (in place where the algebra allows).
    fn accumulate(self, other: &Self) -> Self {
        self.add(other)
    }
    /// Reports each distinct buffer held as `(address, bytes)`.
    fn visit_buffers(&self, f: &mut dyn FnMut(usize, usize));
    /// True when values of this algebra are themselves recorded on a tape (so
    /// rematerialising at this level would save nothing).
    const RECORDED: bool;
    /// Runs `block` on `xs`. On a tape over unrecorded values this records one node that
    /// keeps only the inputs and recomputes the inside in the backward sweep; elsewhere
    /// it just runs the block.
    fn checkpoint<B: Block<Self::F>>(block: &B, xs: &[&Self]) -> Self {
        block.apply(xs)
    }

    // ---- convenience -------------------------------------------------------------

    /// Number of axes.
    fn ndim(&self) -> usize {
        self.shape().len()
    }
    /// The primal's single element.
    fn item(&self) -> Self::F {
        self.primal().item()
    }
    /// A constant of zeros with this shape.
    fn zeros_like(&self) -> Self {
        Self::constant(Tensor::filled(&self.shape(), num_traits::Zero::zero()))
    }
    /// A constant scalar.
    fn scalar(x: Self::F) -> Self {
        Self::constant(Tensor::scalar(x))
    }

    // ---- elementwise -------------------------------------------------------------

    /// `self + other` with numpy broadcasting.
    fn add(&self, other: &Self) -> Self {
        Self::apply(Add, &[self, other])
    }
    /// `self - other` with numpy broadcasting.
    fn sub(&self, other: &Self) -> Self {
        Self::apply(Sub, &[self, other])
    }
    /// `self * other` with numpy broadcasting.
    fn mul(&self, other: &Self) -> Self {
        Self::apply(Mul, &[self, other])
    }
    /// `self / other` with numpy broadcasting.
    fn div(&self, other: &Self) -> Self {
        Self::apply(Div, &[self, other])
    }
    /// `-self`.
    fn neg(&self) -> Self {
        self.scale(Self::F::c(-1.0))
    }
    /// `c * self`.
    fn scale(&self, c: Self::F) -> Self {
        Self::apply(Scale(c), &[self])
    }
    /// `self + c`.
    fn add_scalar(&self, c: Self::F) -> Self {
        Self::apply(Shift(c), &[self])
    }
    /// `exp(self)`.
    fn exp(&self) -> Self {
        Self::apply(Pointwise(Exp), &[self])
    }
    /// Natural logarithm.
    fn ln(&self) -> Self {
        Self::apply(Pointwise(Ln), &[self])
    }
    /// Hyperbolic tangent.
    fn tanh(&self) -> Self {
        Self::apply(Pointwise(Tanh), &[self])
    }
    /// Logistic sigmoid.
    fn sigmoid(&self) -> Self {
        Self::apply(Pointwise(Sigmoid), &[self])
    }
    /// Square root.
    fn sqrt(&self) -> Self {
        Self::apply(Pointwise(Sqrt), &[self])
    }
    /// Integer power.
    fn powi(&self, n: i32) -> Self {
        Self::apply(Pointwise(Powi(n)), &[self])
    }
    /// `self * self`.
    fn square(&self) -> Self {
        Self::apply(Pointwise(Square), &[self])
    }
    /// `1 / self`.
    fn recip(&self) -> Self {
        self.powi(-1)
    }
    /// GELU, tanh approximation.
    fn gelu(&self) -> Self {
        Self::apply(Pointwise(Gelu), &[self])
    }
    /// `max(self, 0)`; the mask is read from the primal and treated as a constant.
    fn relu(&self) -> Self {
        let mask = self.primal().map(|x| {
            if x > Self::F::zero() {
                Self::F::one()
            } else {
                Self::F::zero()
            }
        });
        self.mul(&Self::constant(mask))
    }

    // ---- linear algebra and shapes -------------------------------------------------

    /// Matrix product `[.., m, k] x [.., k, n]` (2-D, or batched with equal batch axes).
    fn matmul(&self, other: &Self) -> Self {
        self.matmul_t(other, false, false)
    }
    /// `op(self) x op(other)` where `op` transposes the last two axes when its flag is set
    /// (no copy: the transposed view goes straight to gemm).
    fn matmul_t(&self, other: &Self, ta: bool, tb: bool) -> Self {
        Self::apply(MatMul { ta, tb }, &[self, other])
    }
    /// Reorders axes (`perm[i]` is the source axis of output axis `i`).
    fn permute(&self, perm: &[usize]) -> Self {
        Self::apply(Permute(perm.to_vec()), &[self])
    }
    /// Swaps the last two axes.
    fn t(&self) -> Self {
        let n = self.ndim();
        let mut perm: Vec<usize> = (0..n).collect();
        perm.swap(n - 2, n - 1);
        self.permute(&perm)
    }
    /// Reshapes (same element count).
    fn reshape(&self, shape: &[usize]) -> Self {
        if self.shape() == shape {
            return self.clone();
        }
        Self::apply(Reshape(shape.to_vec()), &[self])
    }
    /// Broadcasts to `shape` (numpy rules).
    fn broadcast_to(&self, shape: &[usize]) -> Self {
        if self.shape() == shape {
            return self.clone();
        }
        Self::apply(BroadcastTo(shape.to_vec()), &[self])
    }
    /// Sums broadcast axes away so the result has `shape` (the transpose of `broadcast_to`).
    fn sum_to(&self, shape: &[usize]) -> Self {
        if self.shape() == shape {
            return self.clone();
        }
        Self::apply(SumTo(shape.to_vec()), &[self])
    }
    /// Slice `start..end` along `axis`.
    fn slice(&self, axis: usize, start: usize, end: usize) -> Self {
        Self::apply(Slice { axis, start, end }, &[self])
    }
    /// Concatenates along `axis`.
    fn concat(parts: &[&Self], axis: usize) -> Self {
        Self::apply(Concat(axis), parts)
    }

    // ---- reductions --------------------------------------------------------------

    /// Sum over `axis`.
    fn sum_axis(&self, axis: usize, keepdim: bool) -> Self {
        let mut shape = self.shape();
        shape[axis] = 1;
        let s = self.sum_to(&shape);
        if keepdim {
            s
        } else {
            shape.remove(axis);
            s.reshape(&shape)
        }
    }
    /// Mean over `axis`.
    fn mean_axis(&self, axis: usize, keepdim: bool) -> Self {
        let n = self.shape()[axis];
        self.sum_axis(axis, keepdim)
            .scale(Self::F::c(1.0 / n as f64))
    }
    /// Sum of all elements (rank 0).
    fn sum_all(&self) -> Self {
        self.sum_to(&[])
    }
    /// Mean of all elements (rank 0).
    fn mean_all(&self) -> Self {
        let n = self.shape().iter().product::<usize>();
        self.sum_all().scale(Self::F::c(1.0 / n as f64))
    }
    /// Max over `axis` (kept as size 1), as a constant: used only to stabilise, its
    /// derivative cancels exactly.
    fn max_axis_const(&self, axis: usize) -> Self {
        let p = self.primal();
        let m = p
            .array()
            .fold_axis(ndarray::Axis(axis), Self::F::neg_infinity(), |&a, &b| {
                a.max(b)
            })
            .insert_axis(ndarray::Axis(axis));
        Self::constant(Tensor::from_array(m))
    }
    /// Softmax along `axis`.
    fn softmax(&self, axis: usize) -> Self {
        Self::apply(Softmax { axis, mask: None }, &[self])
    }
    /// Softmax along `axis` over the entries where `mask` (broadcast to this shape) is
    /// false; masked entries get probability exactly 0 (e.g. a causal attention mask).
    fn masked_softmax(&self, axis: usize, mask: &Mask) -> Self {
        Self::apply(
            Softmax {
                axis,
                mask: Some(mask.clone()),
            },
            &[self],
        )
    }
    /// Log-softmax along `axis`.
    fn log_softmax(&self, axis: usize) -> Self {
        Self::apply(LogSoftmax(axis), &[self])
    }
    /// `log(sum(exp(self)))` along `axis`.
    fn logsumexp(&self, axis: usize, keepdim: bool) -> Self {
        let l = Self::apply(LogSumExp(axis), &[self]);
        if keepdim { l } else { l.sum_axis(axis, false) }
    }

    // ---- indexing ----------------------------------------------------------------

    /// Rows of a `[rows, d]` table at `idx`: output shape `idx.shape() + [d]` (embedding lookup).
    fn gather_rows(&self, idx: &Indices) -> Result<Self> {
        let op = GatherRows::new(idx, &self.shape())?;
        Ok(Self::apply(op, &[self]))
    }
    /// Picks `self[.., idx[..]]` along the last axis; `idx` has the leading shape.
    fn pick_last(&self, idx: &Indices) -> Result<Self> {
        let op = PickLast::new(idx, &self.shape())?;
        Ok(Self::apply(op, &[self]))
    }
    /// Per-example cross-entropy of logits `[.., classes]` against integer targets `[..]`.
    fn cross_entropy(&self, targets: &Indices) -> Result<Self> {
        let picked = self
            .pick_last(targets)
            .map_err(|e| e.in_op("cross_entropy"))?;
        Ok(self.logsumexp(self.ndim() - 1, false).sub(&picked))
    }
    /// Replaces elements where `mask` (broadcast to this shape) is true by `value`.
    fn masked_fill(&self, mask: &Mask, value: Self::F) -> Self {
        Self::apply(MaskedFill::new(mask, value, &self.shape()), &[self])
    }
    /// `cond ? a : b` elementwise (`cond` broadcast to the common shape of `a` and `b`).
    fn select(cond: &Mask, a: &Self, b: &Self) -> Self {
        let zero = Self::F::zero();
        let shape = super::ops::binary::broadcast_shape("select", &a.shape(), &b.shape());
        a.broadcast_to(&shape)
            .masked_fill(&cond.not(), zero)
            .add(&b.broadcast_to(&shape).masked_fill(cond, zero))
    }

    // ---- normalisation -----------------------------------------------------------

    /// Normalises over the last axis to zero mean and unit variance (no affine part).
    /// One primitive ([`LayerNorm`](super::ops::norm::LayerNorm)), with the composed
    /// formula's exact derivatives at every order.
    fn layer_norm(&self, eps: Self::F) -> Self {
        Self::apply(super::ops::norm::LayerNorm { eps }, &[self])
    }
}
