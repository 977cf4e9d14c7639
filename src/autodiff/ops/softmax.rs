//! Softmax (optionally masked), log-softmax and logsumexp along an axis, computed
//! stably lane by lane: the lane's max is subtracted and treated as a constant (its
//! derivative cancels exactly).

use super::super::float::Float;
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::binary::broadcast_shape;
use super::index::Mask;
use super::shape_panic;
use ndarray::{ArrayD, Axis, CowArray, IxDyn, Zip};

fn check<F: Float>(op: &'static str, x: &Tensor<F>, axis: usize) {
    if axis >= x.shape().len() {
        shape_panic(op, x.shape(), &[axis]);
    }
}

/// `x - max - log(sum(exp(x - max)))` over one contiguous lane, in place.
fn log_softmax_lane<F: Float>(lane: &mut [F]) {
    let l = logsumexp_lane(lane);
    for v in lane {
        *v -= l;
    }
}

/// `log(sum(exp(x)))` of one lane, stabilised by the lane's max (zero when not finite).
#[inline(always)]
fn logsumexp_lane<F: Float>(lane: &[F]) -> F {
    let m = kernels::max(lane);
    let m = if m.is_finite() { m } else { F::zero() };
    m + kernels::sum_zip_blocked(lane, lane, |v, _| (v - m).vexp()).ln()
}

/// Which entries of a lane softmax keeps (the others get probability 0).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keep<'a> {
    /// All of them.
    All,
    /// The first `k`, as in a causal mask's row: the rest are not even exponentiated.
    Prefix(usize),
    /// Those where the mask is false.
    Mask(&'a [bool]),
}

impl<'a> Keep<'a> {
    /// The cheapest description of a mask row (`true` = excluded).
    fn of(row: &'a [bool]) -> Self {
        let k = row.iter().take_while(|&&b| !b).count();
        if row[k..].iter().all(|&b| b) {
            Keep::Prefix(k)
        } else {
            Keep::Mask(row)
        }
    }
}

/// Softmax of one contiguous lane `x` into `out` (of its length; overwritten): one
/// `exp` per kept element; a lane with nothing kept is all 0.
#[inline(always)]
pub(crate) fn softmax_lane<F: Float>(x: &[F], out: &mut [F], keep: Keep<'_>) {
    let (x, kept) = match keep {
        Keep::All => (x, out),
        Keep::Prefix(k) => {
            let (kept, masked) = out.split_at_mut(k);
            masked.fill(F::zero());
            (&x[..k], kept)
        }
        Keep::Mask(mask) => {
            let m = kernels::max_zip(x, mask, |v, k| if k { F::neg_infinity() } else { v });
            for ((o, &v), &k) in out.iter_mut().zip(x).zip(mask) {
                *o = if k { F::zero() } else { (v - m).vexp() };
            }
            let sum = kernels::sum(out);
            return scale_by_sum(out, sum);
        }
    };
    let m = kernels::max(x);
    for (o, &v) in kept.iter_mut().zip(x) {
        *o = (v - m).vexp();
    }
    let sum = kernels::sum(kept);
    scale_by_sum(kept, sum)
}

/// Divides a lane of non-negative numbers by their `sum` (left as is when it is 0).
#[inline(always)]
fn scale_by_sum<F: Float>(lane: &mut [F], sum: F) {
    if sum > F::zero() {
        let inv = sum.recip();
        for v in lane {
            *v *= inv;
        }
    }
}

/// Softmax of each `n`-element row of `x`, row `r` keeping `keep[r mod keep.len()]`,
/// into a new vector through [`kernels::par_rows_overwrite`] (each row written once, from
/// `x`, then normalised in place): attention's scores are most of a transformer's
/// elementwise work.
fn softmax_rows<F: Float>(x: &[F], n: usize, keep: &[Keep<'_>]) -> Vec<F> {
    kernels::par_rows_overwrite(
        x.len(),
        n,
        #[inline(always)]
        |first, rows| {
            let x = &x[first * n..first * n + rows.len()];
            for (r, (x, lane)) in x.chunks_exact(n).zip(rows.chunks_exact_mut(n)).enumerate() {
                softmax_lane(x, lane, keep[(first + r) % keep.len()]);
            }
        },
    )
}

/// Runs `f` on every lane of `out` along `axis`: contiguous slices when `axis` is the
/// last one (the common case), otherwise through a strided copy of each lane. `out`
/// must be in standard layout.
fn for_each_lane<F: Float>(out: &mut ArrayD<F>, axis: usize, mut f: impl FnMut(usize, &mut [F])) {
    let n = out.shape()[axis];
    if n == 0 {
        return;
    }
    if axis + 1 == out.ndim() {
        let data = out.as_slice_mut().expect("standard layout");
        kernels::with_simd(
            #[inline(always)]
            || {
                for (r, lane) in data.chunks_exact_mut(n).enumerate() {
                    f(r, lane);
                }
            },
        );
    } else {
        let mut buf = vec![F::zero(); n];
        for (r, mut lane) in out.lanes_mut(Axis(axis)).into_iter().enumerate() {
            for (b, v) in buf.iter_mut().zip(lane.iter()) {
                *b = *v;
            }
            f(r, &mut buf);
            for (v, b) in lane.iter_mut().zip(&buf) {
                *v = *b;
            }
        }
    }
}

/// Rewrites each lane of `x` along `axis` as `x - max - log(sum(exp(x - max)))`.
fn log_softmax_lanes<F: Float>(x: &Tensor<F>, axis: usize) -> ArrayD<F> {
    let mut out = x.array().as_standard_layout().into_owned();
    for_each_lane(
        &mut out,
        axis,
        #[inline(always)]
        |_, lane| log_softmax_lane(lane),
    );
    out
}

/// Fused forward-mode kernel over the last axis: `y = forward(x)` (already computed,
/// standard layout) and the tangent, lane by lane, `tangent(x_lane, y_lane, dx_lane,
/// out)`. `None` (so the unfused rules run) for other axes or empty lanes.
fn lanes_jvp<F: Float>(
    axis: usize,
    x: &Tensor<F>,
    y: Tensor<F>,
    dx: &Tensor<F>,
    out_lane: usize,
    tangent: impl Fn(&[F], &[F], &[F], &mut [F]),
) -> (Tensor<F>, Tensor<F>) {
    let n = x.shape()[axis];
    let x = x.array().as_standard_layout();
    let dx = dx.array().as_standard_layout();
    let (xs, dxs) = (
        x.as_slice().expect("standard"),
        dx.as_slice().expect("standard"),
    );
    let ys = y.array().as_slice().expect("standard layout output");
    let mut t = kernels::overwritten(ys.len());
    let lanes = xs.chunks_exact(n).zip(dxs.chunks_exact(n));
    let outs = ys.chunks_exact(out_lane).zip(t.chunks_exact_mut(out_lane));
    kernels::with_simd(
        #[inline(always)]
        || {
            for ((xl, dl), (yl, tl)) in lanes.zip(outs) {
                tangent(xl, yl, dl, tl);
            }
        },
    );
    let t = Tensor::from_vec(y.shape(), t).expect("same size");
    (y, t)
}

/// `t` in standard layout, borrowed when it already is.
fn standard<F: Float>(t: &Tensor<F>) -> CowArray<'_, F, IxDyn> {
    t.array().as_standard_layout()
}

/// Whether the fused last-axis kernels apply.
fn last_nonempty<F: Float>(x: &Tensor<F>, axis: usize) -> bool {
    axis + 1 == x.shape().len() && x.shape()[axis] > 0
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
        let shape = xs[0].shape().to_vec();
        let n = shape[self.axis];
        if n == 0 || xs[0].is_empty() {
            return xs[0].clone();
        }
        // The mask's lanes, in the order the output's lanes are visited: a mask
        // covering the trailing axes repeats over the leading ones (e.g. a `[t, t]`
        // causal mask under `[batch, heads, t, t]` scores).
        let mask_lanes: Vec<bool> = match &self.mask {
            None => Vec::new(),
            Some(mask) => {
                let m = mask.shape();
                let trailing =
                    !m.is_empty() && m.len() <= shape.len() && shape[shape.len() - m.len()..] == *m;
                if trailing && self.axis + 1 == shape.len() {
                    mask.array().iter().copied().collect()
                } else {
                    // Move `axis` last, keeping the others in order (the lane order).
                    let perm: Vec<usize> = (0..shape.len())
                        .filter(|&a| a != self.axis)
                        .chain([self.axis])
                        .collect();
                    let mb = mask
                        .array()
                        .broadcast(IxDyn(&shape))
                        .expect("checked above");
                    mb.permuted_axes(IxDyn(&perm)).iter().copied().collect()
                }
            }
        };
        let keep: Vec<Keep> = match self.mask {
            None => vec![Keep::All],
            Some(_) => mask_lanes.chunks_exact(n).map(Keep::of).collect(),
        };
        let x = xs[0].array().as_standard_layout();
        if self.axis + 1 == shape.len() {
            let out = softmax_rows(x.as_slice().expect("standard layout"), n, &keep);
            return Tensor::from_vec(&shape, out).expect("same size");
        }
        let mut out = x.into_owned();
        let mut x = Vec::with_capacity(n);
        for_each_lane(
            &mut out,
            self.axis,
            #[inline(always)]
            |r, lane| {
                x.clear();
                x.extend_from_slice(lane);
                softmax_lane(&x, lane, keep[r % keep.len()])
            },
        );
        Tensor::from_array(out)
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        softmax_product(ctx.y(), d[0].expect("one tangent"), self.axis)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(softmax_product(ctx.y(), dy, self.axis))]
    }
    /// Fused over the last axis: the tangent `y (dx - sum(y dx))` lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        if !last_nonempty(xs[0], self.axis) {
            return None;
        }
        let y = self.forward(xs);
        let n = xs[0].shape()[self.axis];
        Some(lanes_jvp(
            self.axis,
            xs[0],
            y,
            dxs[0]?,
            n,
            #[inline(always)]
            |_, y, dx, t| {
                let s = kernels::dot(y, dx);
                for ((t, &y), &dx) in t.iter_mut().zip(y).zip(dx) {
                    *t = y * (dx - s);
                }
            },
        ))
    }
}

fn softmax_product<V: Value>(y: &V, v: &V, axis: usize) -> V {
    V::apply(SoftmaxJvp(axis), &[y, v])
}

/// `sum(a * b)` along `axis`, kept as size 1.
fn dot_axis<V: Value>(a: &V, b: &V, axis: usize) -> V {
    a.mul(b).sum_axis(axis, true)
}

/// The softmax Jacobian (symmetric) applied along an axis: `(y, v) -> y (v - sum(y v))`
/// at softmax output `y`. A primitive so that softmax's JVP and VJP, and their own
/// derivatives, are one pass over each lane instead of five array passes.
///
/// It is linear in `v` (derivative `SoftmaxJvp(y, dv)`); its derivative in `y` along
/// `u` is `u (v - sum(y v)) - y sum(u v)`, and the transpose of that map takes `g` to
/// `g (v - sum(y v)) - v sum(g y)`.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxJvp(pub usize);

impl<F: Float> Op<F> for SoftmaxJvp {
    fn name(&self) -> &'static str {
        "softmax_jvp"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let (y, v) = (xs[0], xs[1]);
        if y.shape() != v.shape() {
            shape_panic("softmax_jvp", y.shape(), v.shape());
        }
        check("softmax_jvp", y, self.0);
        if last_nonempty(y, self.0) {
            let n = y.shape()[self.0];
            let (y, v) = (
                y.array().as_standard_layout(),
                v.array().as_standard_layout(),
            );
            let (ys, vs) = (
                y.as_slice().expect("standard"),
                v.as_slice().expect("standard"),
            );
            let mut out = kernels::overwritten(ys.len());
            let lanes = ys.chunks_exact(n).zip(vs.chunks_exact(n));
            kernels::with_simd(
                #[inline(always)]
                || {
                    for ((yl, vl), ol) in lanes.zip(out.chunks_exact_mut(n)) {
                        let s = kernels::dot(yl, vl);
                        for ((o, &y), &v) in ol.iter_mut().zip(yl).zip(vl) {
                            *o = y * (v - s);
                        }
                    }
                },
            );
            return Tensor::from_vec(y.shape(), out).expect("same size");
        }
        let yv = y.array() * v.array();
        let s = yv.sum_axis(Axis(self.0)).insert_axis(Axis(self.0));
        Tensor::from_array(&yv - &(y.array() * &s))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (y, v) = (ctx.x(0), ctx.x(1));
        let via_v = d[1].map(|dv| softmax_product(y, dv, self.0));
        let via_y = d[0].map(|dy| {
            let centred = v.sub(&dot_axis(y, v, self.0));
            dy.mul(&centred).sub(&y.mul(&dot_axis(dy, v, self.0)))
        });
        match (via_y, via_v) {
            (Some(a), Some(b)) => a.add(&b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (y, v) = (ctx.x(0), ctx.x(1));
        let dy = ctx.needs(0).then(|| {
            let centred = v.sub(&dot_axis(y, v, self.0));
            g.mul(&centred).sub(&v.mul(&dot_axis(g, y, self.0)))
        });
        let dv = ctx.needs(1).then(|| softmax_product(y, g, self.0));
        vec![dy, dv]
    }
    /// Fused over the last axis: output and tangent lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let (y, v) = (xs[0], xs[1]);
        if y.shape() != v.shape() || !last_nonempty(y, self.0) {
            return None;
        }
        let n = y.shape()[self.0];
        let (ya, va) = (standard(y), standard(v));
        let (dya, dva) = (dxs[0].map(standard), dxs[1].map(standard));
        let (ys, vs) = (
            ya.as_slice().expect("standard"),
            va.as_slice().expect("standard"),
        );
        let dys = dya.as_ref().map(|a| a.as_slice().expect("standard"));
        let dvs = dva.as_ref().map(|a| a.as_slice().expect("standard"));
        let (mut out, mut tan) = (
            kernels::overwritten(ys.len()),
            kernels::overwritten(ys.len()),
        );
        kernels::with_simd(
            #[inline(always)]
            || {
                for (i, (yl, vl)) in ys.chunks_exact(n).zip(vs.chunks_exact(n)).enumerate() {
                    let lane = i * n..(i + 1) * n;
                    let s = kernels::dot(yl, vl);
                    for ((o, &y), &v) in out[lane.clone()].iter_mut().zip(yl).zip(vl) {
                        *o = y * (v - s);
                    }
                    let tl = &mut tan[lane.clone()];
                    match dvs {
                        Some(dv) => {
                            let dv = &dv[lane.clone()];
                            let sd = kernels::dot(yl, dv);
                            for ((t, &y), &dv) in tl.iter_mut().zip(yl).zip(dv) {
                                *t = y * (dv - sd);
                            }
                        }
                        None => tl.fill(F::zero()), // in cache, not a separate pass
                    }
                    if let Some(dy) = dys {
                        let dy = &dy[lane];
                        let sv = kernels::dot(dy, vl);
                        for (((t, &y), &v), &dy) in tl.iter_mut().zip(yl).zip(vl).zip(dy) {
                            *t += dy * (v - s) - y * sv;
                        }
                    }
                }
            },
        );
        let shape = y.shape();
        let out = Tensor::from_vec(shape, out).expect("same size");
        Some((out, Tensor::from_vec(shape, tan).expect("same size")))
    }
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
    /// Fused over the last axis: the tangent `dx - sum(exp(y) dx)` lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        if !last_nonempty(xs[0], self.0) {
            return None;
        }
        let y = self.forward(xs);
        let n = xs[0].shape()[self.0];
        Some(lanes_jvp(
            self.0,
            xs[0],
            y,
            dxs[0]?,
            n,
            #[inline(always)]
            |_, y, dx, t| {
                let s = kernels::sum_zip_blocked(y, dx, |y, dx| y.vexp() * dx);
                for (t, &dx) in t.iter_mut().zip(dx) {
                    *t = dx - s;
                }
            },
        ))
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
        let n = shape[self.0];
        shape[self.0] = 1;
        if self.0 + 1 == shape.len() && n > 0 {
            let x = x.as_standard_layout();
            let data = x.as_slice().expect("standard layout");
            let out = kernels::par_rows_overwrite(
                data.len() / n,
                1,
                #[inline(always)]
                |first, out| {
                    for (o, lane) in out.iter_mut().zip(data[first * n..].chunks_exact(n)) {
                        *o = logsumexp_lane(lane);
                    }
                },
            );
            return Tensor::from_vec(&shape, out).expect("one per lane");
        }
        shape.remove(self.0);
        let mut out = ArrayD::zeros(shape);
        let mut buf = Vec::with_capacity(n);
        Zip::from(&mut out).and(x.lanes(ax)).for_each(|o, lane| {
            buf.clear();
            buf.extend(lane.iter().copied());
            *o = logsumexp_lane(&buf);
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
    /// Fused over the last axis: the tangent `sum(exp(x - y) dx)` lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        if !last_nonempty(xs[0], self.0) {
            return None;
        }
        let y = self.forward(xs);
        Some(lanes_jvp(
            self.0,
            xs[0],
            y,
            dxs[0]?,
            1,
            #[inline(always)]
            |x, y, dx, t| {
                let l = y[0];
                t[0] = kernels::sum_zip_blocked(x, dx, |x, dx| (x - l).vexp() * dx);
            },
        ))
    }
}
