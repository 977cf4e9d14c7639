//! The two products of multi-head attention, read and written in the `[batch, seq,
//! heads * head_dim]` layout the projections produce: head `h` of `x` is the column
//! block `x[.., .., h dh .. (h + 1) dh]`, a strided view that goes straight to gemm. So
//! attention needs no permute copies (of the queries, keys, values and output, nor of
//! their tangents and cotangents), where `reshape` + `permute` + `matmul` made four.
//!
//! - [`HeadScores`]: `(a [b, t, d], c [b, s, d]) -> [b, heads, t, s]`, head by head
//!   `a_h c_h^T` (attention scores from queries and keys).
//! - [`HeadMix`]: `(p [b, heads, t, s], v [b, s, d]) -> [b, t, d]`, head by head
//!   `p_h v_h` (the attention-weighted sum of values), or `p_h^T v_h` with `tp` (`p`
//!   then `[b, heads, s, t]`).
//!
//! They are each other's derivatives: the rules of each are written with the two
//! ops, so every mode and nesting of modes stays in this layout.
//!
//! - [`Attention`]: `(q [b, t, d], k, v [b, s, d]) -> [b, t, d]`, the two products and
//!   the (causal) softmax between them, fused in its forward (no `[b, heads, t, s]`
//!   tensor); its derivative rules are the composition's, written with the ops above.

use super::super::float::Float;
use super::super::flops::{self, GemmShape};
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::index::Mask;
use super::linalg::{GemmKernel, any, gemm_batch, product_buffer};
use super::shape_panic;
use super::softmax::{Keep, Softmax, SoftmaxJvp, softmax_lane};
use ndarray::{
    ArrayD, ArrayView, ArrayView2, ArrayViewD, ArrayViewMut, ArrayViewMut2, ArrayViewMutD, Axis,
    Ix4, IxDyn, RemoveAxis,
};

/// The subviews along the first axis, each borrowing what `x` borrowed.
fn outer<F: Float, D: RemoveAxis>(x: ArrayView<'_, F, D>) -> Vec<ArrayView<'_, F, D::Smaller>> {
    (0..x.len_of(Axis(0)))
        .map(|i| x.clone().index_axis_move(Axis(0), i))
        .collect()
}

/// As [`outer`], writable.
fn outer_mut<F: Float, D: RemoveAxis>(
    mut x: ArrayViewMut<'_, F, D>,
) -> Vec<ArrayViewMut<'_, F, D::Smaller>> {
    let mut out = Vec::with_capacity(x.len_of(Axis(0)));
    while x.len_of(Axis(0)) > 0 {
        let (first, rest) = x.split_at(Axis(0), 1);
        out.push(first.index_axis_move(Axis(0), 0));
        x = rest;
    }
    out
}

/// Head `h`'s `[rows, dh]` block of each item of a `[b, rows, heads * dh]` array, in
/// `(batch, head)` order.
fn heads_of<'a, F: Float>(x: ArrayViewD<'a, F>, heads: usize) -> Vec<ArrayView2<'a, F>> {
    let (b, rows, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let x = x
        .into_shape_with_order((b, rows, heads, d / heads))
        .expect("standard layout")
        .permuted_axes([0, 2, 1, 3]);
    outer(x).into_iter().flat_map(outer).collect()
}

/// As [`heads_of`], writable.
fn heads_of_mut<'a, F: Float>(x: ArrayViewMutD<'a, F>, heads: usize) -> Vec<ArrayViewMut2<'a, F>> {
    let (b, rows, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let x = x
        .into_shape_with_order((b, rows, heads, d / heads))
        .expect("standard layout")
        .permuted_axes([0, 2, 1, 3]);
    outer_mut(x).into_iter().flat_map(outer_mut).collect()
}

/// The `[t, s]` matrices of a `[b, heads, t, s]` array, in `(batch, head)` order.
fn mats_of<F: Float>(x: ArrayViewD<'_, F>) -> Vec<ArrayView2<'_, F>> {
    let x = x.into_dimensionality::<Ix4>().expect("4 axes");
    outer(x).into_iter().flat_map(outer).collect()
}

/// As [`mats_of`], writable.
fn mats_of_mut<F: Float>(x: ArrayViewMutD<'_, F>) -> Vec<ArrayViewMut2<'_, F>> {
    let x = x.into_dimensionality::<Ix4>().expect("4 axes");
    outer_mut(x).into_iter().flat_map(outer_mut).collect()
}

/// Checks `x` is `[b, rows, heads * dh]` with the given batch, returning `(rows, d)`.
fn check_headed(
    op: &'static str,
    x: &[usize],
    other: &[usize],
    b: usize,
    heads: usize,
) -> (usize, usize) {
    if x.len() != 3 || x[0] != b || heads == 0 || x[2] % heads != 0 {
        shape_panic(op, x, other);
    }
    (x[1], x[2])
}

/// Runs `c = beta c + a b` over the `(batch, head)` items and counts the work.
fn products<F: Float>(
    items: Vec<(ArrayViewMut2<'_, F>, ArrayView2<'_, F>, ArrayView2<'_, F>)>,
    (ta, tb): (bool, bool),
    beta: F,
) {
    if let Some((c, a, _)) = items.first() {
        flops::add_gemm(GemmShape {
            batch: items.len(),
            m: c.nrows(),
            k: a.ncols(),
            n: c.ncols(),
            ta,
            tb,
        });
    }
    gemm_batch(GemmKernel::best(), items, beta);
}

/// Attention scores head by head: `(a [b, t, d], c [b, s, d]) -> [b, heads, t, s]`,
/// `out[b, h] = a_h c_h^T` with `a_h` the `h`-th block of `d / heads` columns.
#[derive(Clone, Copy, Debug)]
pub struct HeadScores {
    /// Number of heads (divides `d`).
    pub heads: usize,
}

impl HeadScores {
    /// The op's name.
    pub const NAME: &'static str = "head_scores";
}

impl Bilinear for HeadScores {
    fn out_shape(&self, a: &[usize], c: &[usize]) -> Vec<usize> {
        let b = a.first().copied().unwrap_or(0);
        let (t, d) = check_headed("head_scores", a, c, b, self.heads);
        let (s, d2) = check_headed("head_scores", c, a, b, self.heads);
        if d != d2 {
            shape_panic("head_scores", a, c);
        }
        vec![b, self.heads, t, s]
    }

    /// `out = beta out + a_h c_h^T` for each head.
    fn run<F: Float>(&self, out: &mut ArrayD<F>, a: &Tensor<F>, c: &Tensor<F>, beta: F) {
        let (a, c) = (
            a.array().as_standard_layout(),
            c.array().as_standard_layout(),
        );
        let items = mats_of_mut(out.view_mut())
            .into_iter()
            .zip(heads_of(a.view(), self.heads))
            .zip(heads_of(c.view(), self.heads))
            .map(|((o, a), c)| (o, a, c.reversed_axes()))
            .collect();
        products(items, (false, true), beta);
    }
}

impl<F: Float> Op<F> for HeadScores {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        bilinear_forward(self, xs)
    }
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        Some(bilinear_forward_jvp(self, xs, dxs))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        bilinear_jvp(*self, ctx, d)
    }
    /// `da_h = g_h c_h`, `dc_h = g_h^T a_h`.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (a, c) = (ctx.x(0), ctx.x(1));
        let heads = self.heads;
        let da = ctx
            .needs(0)
            .then(|| V::apply(HeadMix { heads, tp: false }, &[g, c]));
        let dc = ctx
            .needs(1)
            .then(|| V::apply(HeadMix { heads, tp: true }, &[g, a]));
        vec![da, dc]
    }
}

/// The attention-weighted sum head by head: `(p [b, heads, t, s], v [b, s, d]) -> [b, t,
/// d]`, block `h` of the output `p[b, h] v_h`; with `tp`, `p` is `[b, heads, s, t]` and
/// block `h` is `p[b, h]^T v_h`.
#[derive(Clone, Copy, Debug)]
pub struct HeadMix {
    /// Number of heads (`p`'s second axis; divides `d`).
    pub heads: usize,
    /// Transpose each of `p`'s matrices.
    pub tp: bool,
}

impl HeadMix {
    /// The op's name.
    pub const NAME: &'static str = "head_mix";
}

impl Bilinear for HeadMix {
    fn out_shape(&self, p: &[usize], v: &[usize]) -> Vec<usize> {
        if p.len() != 4 || p[1] != self.heads {
            shape_panic("head_mix", p, v);
        }
        let (s, d) = check_headed("head_mix", v, p, p[0], self.heads);
        let (t, s2) = if self.tp { (p[3], p[2]) } else { (p[2], p[3]) };
        if s != s2 {
            shape_panic("head_mix", p, v);
        }
        vec![p[0], t, d]
    }

    /// `out = beta out + op(p_h) v_h` for each head.
    fn run<F: Float>(&self, out: &mut ArrayD<F>, p: &Tensor<F>, v: &Tensor<F>, beta: F) {
        let (p, v) = (
            p.array().as_standard_layout(),
            v.array().as_standard_layout(),
        );
        let tp = self.tp;
        let items = heads_of_mut(out.view_mut(), self.heads)
            .into_iter()
            .zip(mats_of(p.view()))
            .zip(heads_of(v.view(), self.heads))
            .map(|((o, p), v)| (o, if tp { p.reversed_axes() } else { p }, v))
            .collect();
        products(items, (tp, false), beta);
    }
}

impl<F: Float> Op<F> for HeadMix {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        bilinear_forward(self, xs)
    }
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        Some(bilinear_forward_jvp(self, xs, dxs))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        bilinear_jvp(*self, ctx, d)
    }
    /// Without `tp`: `dp_h = g_h v_h^T`, `dv_h = p_h^T g_h`; with it, `dp_h = v_h g_h^T`,
    /// `dv_h = p_h g_h`.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (p, v) = (ctx.x(0), ctx.x(1));
        let heads = self.heads;
        let dp = ctx.needs(0).then(|| {
            let (l, r) = if self.tp { (v, g) } else { (g, v) };
            V::apply(HeadScores { heads }, &[l, r])
        });
        let dv = ctx.needs(1).then(|| {
            V::apply(
                HeadMix {
                    heads,
                    tp: !self.tp,
                },
                &[p, g],
            )
        });
        vec![dp, dv]
    }
}

/// What the two products share: each is bilinear in its two inputs, so its forward,
/// fused forward JVP and JVP rules follow from its shape and its product.
trait Bilinear: Copy {
    /// The output shape, or a shape panic.
    fn out_shape(&self, x: &[usize], y: &[usize]) -> Vec<usize>;
    /// `out = beta out + product(x, y)`.
    fn run<F: Float>(&self, out: &mut ArrayD<F>, x: &Tensor<F>, y: &Tensor<F>, beta: F);
}

fn bilinear_forward<F: Float>(op: &impl Bilinear, xs: &[&Tensor<F>]) -> Tensor<F> {
    let shape = op.out_shape(xs[0].shape(), xs[1].shape());
    // Written by products with `beta = 0`, which never read it: not zeroed first unless
    // the products are empty (an input has no elements).
    let mut out = product_array(&shape, xs, true);
    op.run(&mut out, xs[0], xs[1], F::zero());
    Tensor::from_array(out)
}

/// An output of `shape` for products of `xs` ([`product_buffer`]).
fn product_array<F: Float>(shape: &[usize], xs: &[&Tensor<F>], written: bool) -> ArrayD<F> {
    let data = product_buffer(shape.iter().product(), xs, written);
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("as many elements as the shape")
}

/// `(x y, dx y + x dy)`, the second tangent term accumulated into the first.
fn bilinear_forward_jvp<F: Float>(
    op: &impl Bilinear,
    xs: &[&Tensor<F>],
    dxs: &[Option<&Tensor<F>>],
) -> (Tensor<F>, Tensor<F>) {
    let y = bilinear_forward(op, xs);
    let mut t = product_array(y.shape(), xs, any(dxs));
    let mut beta = F::zero();
    if let Some(dx) = dxs[0] {
        op.run(&mut t, dx, xs[1], beta);
        beta = F::one();
    }
    if let Some(dy) = dxs[1] {
        op.run(&mut t, xs[0], dy, beta);
    }
    (y, Tensor::from_array(t))
}

/// `dx y + x dy` in any value type; either term may be absent.
fn bilinear_jvp<F: Float, V: Value<F = F>, O: Bilinear + Op<F>>(
    op: O,
    ctx: &Ctx<V>,
    d: &[Option<&V>],
) -> V {
    let (x, y) = (ctx.x(0), ctx.x(1));
    let left = d[0].map(|dx| V::apply(op, &[dx, y]));
    let right = d[1].map(|dy| V::apply(op, &[x, dy]));
    sum_of(left, right)
}

/// The sum of a tangent's two terms, either of which may be absent.
fn sum_of<V: Value>(left: Option<V>, right: Option<V>) -> V {
    match (left, right) {
        (Some(l), Some(r)) => l.add(&r),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => unreachable!("jvp called without tangents"),
    }
}

/// A zeroed output, zeroed in parallel when large (as the matmul's).
fn zeros<F: Float>(shape: &[usize]) -> ArrayD<F> {
    let data = kernels::par_rows_new(shape.iter().product(), 1, |_, _| {});
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("as many elements as the shape")
}

/// Multi-head attention in one op: `(q [b, t, d], k [b, s, d], v [b, s, d]) -> o [b, t,
/// d]`, block `h` of `o` being `softmax(q_h k_h^T) v_h` (rows of the softmax along `s`;
/// with `causal`, `s = t` and row `i` keeps only its first `i + 1` scores). The same
/// function as [`HeadScores`], softmax (or the causal masked softmax) along axis 3 and
/// [`HeadMix`], but its forward never builds the `[b, heads, t, s]` scores: each
/// `(batch, head)` item computes its `t x s` block in a per-thread scratch buffer,
/// softmaxes it in place and writes `P v_h` straight into the output.
///
/// Only the inputs are saved; the derivative rules recompute `P` from them and are the
/// composition's own, written with the unfused ops (so every mode and nesting works).
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    /// Number of heads (divides `d`).
    pub heads: usize,
    /// Row `i` attends to positions `..= i` only.
    pub causal: bool,
}

impl Attention {
    /// The op's name.
    pub const NAME: &'static str = "attention";

    /// `(b, t, s, d)`, or a shape panic.
    fn dims(&self, q: &[usize], k: &[usize], v: &[usize]) -> (usize, usize, usize, usize) {
        let b = q.first().copied().unwrap_or(0);
        let (t, d) = check_headed(Self::NAME, q, k, b, self.heads);
        let (s, dk) = check_headed(Self::NAME, k, q, b, self.heads);
        if d != dk || k != v || (self.causal && s != t) {
            shape_panic(Self::NAME, k, v);
        }
        (b, t, s, d)
    }

    /// The probabilities `P = softmax(q_h k_h^T)` (masked when causal), `[b, heads, t,
    /// s]`, in any value type: what the derivative rules differentiate through.
    fn probs<V: Value>(&self, q: &V, k: &V) -> V {
        let scores = V::apply(HeadScores { heads: self.heads }, &[q, k]);
        if self.causal {
            scores.masked_softmax(3, &Mask::causal(q.shape()[1]))
        } else {
            scores.softmax(3)
        }
    }
}

/// Work (multiply-adds) above which the `(batch, head)` items run over rayon's threads
/// (as [`gemm_batch`]'s batches).
const ATTN_PAR_WORK: usize = 1 << 18;

impl<F: Float> Op<F> for Attention {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        use rayon::prelude::*;
        let (b, t, s, d) = self.dims(xs[0].shape(), xs[1].shape(), xs[2].shape());
        let (heads, dh) = (self.heads, d / self.heads);
        if b * t * d == 0 || s == 0 {
            return Tensor::from_array(zeros(&[b, t, d]));
        }
        let (q, k, v) = (
            xs[0].array().as_standard_layout(),
            xs[1].array().as_standard_layout(),
            xs[2].array().as_standard_layout(),
        );
        let mut out = ArrayD::from_shape_vec(IxDyn(&[b, t, d]), kernels::overwritten(b * t * d))
            .expect("as many elements as the shape");
        // The two products of every item, counted as HeadScores and HeadMix count them.
        let batch = b * heads;
        flops::add_gemm(GemmShape {
            batch,
            m: t,
            k: dh,
            n: s,
            ta: false,
            tb: true,
        });
        flops::add_gemm(GemmShape {
            batch,
            m: t,
            k: s,
            n: dh,
            ta: false,
            tb: false,
        });
        flops::add_other(batch * t * s);
        let kernel = GemmKernel::best();
        let causal = self.causal;
        let items: Vec<_> = heads_of_mut(out.view_mut(), heads)
            .into_iter()
            .zip(heads_of(q.view(), heads))
            .zip(heads_of(k.view(), heads))
            .zip(heads_of(v.view(), heads))
            .map(|(((o, q), k), v)| (o, q, k, v))
            .collect();
        // One item, start to end, on one thread with its scratch: the same operations
        // whatever the thread count.
        let one = |scratch: &mut Vec<F>,
                   (o, q, k, v): (
            ArrayViewMut2<'_, F>,
            ArrayView2<'_, F>,
            ArrayView2<'_, F>,
            ArrayView2<'_, F>,
        )| {
            // The scores, then the probabilities: `t x s` each.
            scratch.resize(2 * t * s, F::zero());
            let (scores, p) = scratch.split_at_mut(t * s);
            let mut sv = ArrayViewMut2::from_shape((t, s), &mut scores[..]).expect("t * s");
            gemm_batch(
                kernel,
                vec![(sv.view_mut(), q, k.reversed_axes())],
                F::zero(),
            );
            kernels::with_simd(
                #[inline(always)]
                || {
                    let rows = scores.chunks_exact(s).zip(p.chunks_exact_mut(s));
                    for (i, (x, row)) in rows.enumerate() {
                        let keep = if causal {
                            Keep::Prefix(i + 1)
                        } else {
                            Keep::All
                        };
                        softmax_lane(x, row, keep);
                    }
                },
            );
            let p = ArrayView2::from_shape((t, s), &p[..]).expect("t * s");
            gemm_batch(kernel, vec![(o, p, v)], F::zero());
        };
        if items.len() > 1 && batch * t * s * dh >= ATTN_PAR_WORK {
            items.into_par_iter().for_each_init(Vec::new, one);
        } else {
            let mut scratch = Vec::new();
            items.into_iter().for_each(|item| one(&mut scratch, item));
        }
        Tensor::from_array(out)
    }
    /// Forward mode on numbers: the unfused ops' own fused forward JVPs in turn (the
    /// tangent needs `P` and `dP` whole, so nothing is saved by fusing here; this keeps
    /// forward mode as fast as the unfused composition instead of a forward plus a JVP
    /// that recomputes `P`).
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        self.dims(xs[0].shape(), xs[1].shape(), xs[2].shape());
        let heads = self.heads;
        let (q, k, v) = (xs[0], xs[1], xs[2]);
        let mix = HeadMix { heads, tp: false };
        if !any(&dxs[..2]) {
            let p = self.probs(q, k);
            let o = Tensor::apply(mix, &[&p, v]);
            let t = Tensor::apply(mix, &[&p, dxs[2]?]);
            return Some((o, t));
        }
        let (s, ds) = Tensor::apply_jvp(HeadScores { heads }, &[q, k], &dxs[..2]);
        let mask = self.causal.then(|| Mask::causal(q.shape()[1]));
        let (p, dp) = Tensor::apply_jvp(Softmax { axis: 3, mask }, &[&s], &[Some(&ds)]);
        Some(Tensor::apply_jvp(mix, &[&p, v], &[Some(&dp), dxs[2]]))
    }
    /// The composition's JVP: `dS = HeadScores(dq, k) + HeadScores(q, dk)`, `dP` the
    /// softmax Jacobian (symmetric, masked entries 0) applied to `dS`, then `dO =
    /// HeadMix(dP, v) + HeadMix(P, dv)`.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (q, k, v) = (ctx.x(0), ctx.x(1), ctx.x(2));
        let heads = self.heads;
        let p = self.probs(q, k);
        // `dS`, HeadScores' own JVP (q and k are inputs 0 and 1 here too).
        let ds = any(&d[..2]).then(|| bilinear_jvp(HeadScores { heads }, ctx, d));
        let mix = HeadMix { heads, tp: false };
        let from_p = ds.map(|ds| {
            let dp = V::apply(SoftmaxJvp(3), &[&p, &ds]);
            V::apply(mix, &[&dp, v])
        });
        let from_v = d[2].map(|dv| V::apply(mix, &[&p, dv]));
        sum_of(from_p, from_v)
    }
    /// The composition's VJP, each step the VJP of the unfused op: through HeadMix,
    /// `dP = HeadScores(g, v)` and `dv = HeadMix{tp}(P, g)`; through softmax, `dS =
    /// P (dP - sum(P dP))` (its Jacobian is symmetric); through HeadScores, `dq =
    /// HeadMix(dS, k)` and `dk = HeadMix{tp}(dS, q)`.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (q, k, v) = (ctx.x(0), ctx.x(1), ctx.x(2));
        let heads = self.heads;
        let p = self.probs(q, k);
        let ds = (ctx.needs(0) || ctx.needs(1)).then(|| {
            let dp = V::apply(HeadScores { heads }, &[g, v]);
            V::apply(SoftmaxJvp(3), &[&p, &dp])
        });
        let (mix, mix_t) = (HeadMix { heads, tp: false }, HeadMix { heads, tp: true });
        let dq = ctx
            .needs(0)
            .then(|| V::apply(mix, &[ds.as_ref().expect("needed"), k]));
        let dk = ctx
            .needs(1)
            .then(|| V::apply(mix_t, &[ds.as_ref().expect("needed"), q]));
        let dv = ctx.needs(2).then(|| V::apply(mix_t, &[&p, g]));
        vec![dq, dk, dv]
    }
}
