//! Layer normalisation over the last axis (no affine part) as a primitive, with its
//! Jacobian-vector product as a second primitive: each is one pass per lane instead of
//! the eight array passes (and, on duals, their tangents) of the composed formula.
//!
//! With `m(.)` the mean over the lane, `xc = x - m(x)`, `r = 1/sqrt(m(xc^2) + eps)` and
//! `h = xc r` (the output), the Jacobian is symmetric:
//! `J v = r (v - m(v) - h m(h v))`, so the JVP and the VJP are both [`LayerNormJvp`].
//! `LayerNormJvp`'s derivative in `x` along `dx` is
//! `-r m(h dx) J v - r (dh m(h v) + h m(dh v))`, `dh = J dx`: its fused forward-mode
//! kernel (the hot path of forward-over-reverse) and its VJP are written out; its JVP
//! rule for other algebras differentiates the composed definition ([`ln_jvp_composed`])
//! in forward mode on the spot.
//!
//! [`AffineLayerNorm`] is `LN(x) g + b`, the gain and bias of a model's layer norm, as
//! one primitive: its rules are the composition's, written with the two above.

use super::super::dual::Dual;
use super::super::float::Float;
use super::super::kernels;
use super::super::tape::{Tape, Var};
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::{CowArray, IxDyn};

/// `(x - m(x)) / sqrt(m((x - m(x))^2) + eps)` over the last axis.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm<F> {
    /// Added to the variance.
    pub eps: F,
}

/// `(x [.., n], g [n], b [n]) -> LN(x) g + b`: [`LayerNorm`] with its gain and bias, in
/// one pass over `x` where the composition `x.layer_norm(eps).mul(g).add(b)` made three,
/// and the same bits (each element is rounded as there: `h g`, then `+ b`). The tape
/// keeps `x`, `g` and `b`; the composition also kept the normalised `h` for the
/// product's rule, which this op's rules recompute. Its rules are the composition's
/// rules in the same order, so values, gradients and Hessian-vector products are
/// bitwise those of the composition.
#[derive(Clone, Copy, Debug)]
pub struct AffineLayerNorm<F> {
    /// Added to the variance.
    pub eps: F,
}

/// `(x, v) -> J(x) v`, the layer norm's (symmetric) Jacobian at `x` applied to `v`.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormJvp<F> {
    /// Added to the variance.
    pub eps: F,
}

/// The lane statistics at one lane of `x`: `(r, h)` with `h` written into `h`.
#[inline(always)]
fn lane_stats<F: Float>(x: &[F], eps: F, h: &mut [F]) -> F {
    let inv_n = F::c(1.0 / x.len() as f64);
    let m = kernels::sum(x) * inv_n;
    let var = kernels::sum_map(x, |v| (v - m) * (v - m)) * inv_n;
    let r = (var + eps).sqrt().recip();
    for (h, &x) in h.iter_mut().zip(x) {
        *h = (x - m) * r;
    }
    r
}

/// `out = r (v - m(v) - h m(h v))` over one lane.
#[inline(always)]
fn lane_jvp<F: Float>(h: &[F], r: F, v: &[F], out: &mut [F]) {
    let inv_n = F::c(1.0 / h.len() as f64);
    let mv = kernels::sum(v) * inv_n;
    let mhv = kernels::dot(h, v) * inv_n;
    for ((o, &h), &v) in out.iter_mut().zip(h).zip(v) {
        *o = r * (v - mv - h * mhv);
    }
}

#[inline(always)]
fn mean_prod<F: Float>(a: &[F], b: &[F]) -> F {
    kernels::dot(a, b) * F::c(1.0 / a.len() as f64)
}

/// `(x, v, g) -> -r (m(g J v) h + m(h v) J g + m(g h) J v)`: the cotangent of `x` in
/// [`LayerNormJvp`] for output cotangent `g` (the transpose of its `x`-derivative).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormJvpVjpX<F> {
    /// Added to the variance.
    pub eps: F,
}

/// The lane length, or a shape panic for rank 0.
fn lane_len<F: Float>(op: &'static str, x: &Tensor<F>) -> usize {
    match x.shape().last() {
        Some(&n) => n,
        None => shape_panic(op, x.shape(), &[]),
    }
}

/// `t` in standard layout, borrowed when it already is (read with [`flat`]).
fn lanes<F: Float>(t: &Tensor<F>) -> CowArray<'_, F, IxDyn> {
    t.array().as_standard_layout()
}

fn flat<'a, F: Float>(a: &'a CowArray<'_, F, IxDyn>) -> &'a [F] {
    a.as_slice().expect("standard layout")
}

/// The layer norm of each `n`-lane of `x`, each lane then finished in place by `then`
/// (`#[inline(always)]`, so that it is compiled for the vector unit too), in a new
/// tensor of `x`'s shape.
fn normalised<F: Float>(
    x: &Tensor<F>,
    n: usize,
    eps: F,
    then: impl Fn(&mut [F]) + Sync,
) -> Tensor<F> {
    let xa = lanes(x);
    let xs = flat(&xa);
    let out = kernels::par_rows_overwrite(
        xs.len(),
        n,
        #[inline(always)]
        |first, rows| {
            for (xl, ol) in xs[first * n..]
                .chunks_exact(n)
                .zip(rows.chunks_exact_mut(n))
            {
                lane_stats(xl, eps, ol);
                then(ol);
            }
        },
    );
    Tensor::from_vec(x.shape(), out).expect("same size")
}

/// The composed definition of `J(x) v` in the algebra's own ops (what
/// [`LayerNormJvp`]'s derivative rules differentiate).
pub fn ln_jvp_composed<V: Value>(x: &V, v: &V, eps: V::F) -> V {
    let ax = x.ndim() - 1;
    let xc = x.sub(&x.mean_axis(ax, true));
    let r = xc
        .square()
        .mean_axis(ax, true)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let h = xc.mul(&r);
    let vc = v.sub(&v.mean_axis(ax, true));
    vc.sub(&h.mul(&h.mul(v).mean_axis(ax, true))).mul(&r)
}

/// The composed definition of [`LayerNormJvpVjpX`].
pub fn ln_vjp_x_composed<V: Value>(x: &V, v: &V, g: &V, eps: V::F) -> V {
    let ax = x.ndim() - 1;
    let xc = x.sub(&x.mean_axis(ax, true));
    let r = xc
        .square()
        .mean_axis(ax, true)
        .add_scalar(eps)
        .sqrt()
        .recip();
    let h = xc.mul(&r);
    let (jv, jg) = (ln_jvp_composed(x, v, eps), ln_jvp_composed(x, g, eps));
    let a = g.mul(&jv).mean_axis(ax, true);
    let b = h.mul(v).mean_axis(ax, true);
    let c = g.mul(&h).mean_axis(ax, true);
    h.mul(&a).add(&jg.mul(&b)).add(&jv.mul(&c)).mul(&r).neg()
}

impl<F: Float> Op<F> for LayerNorm<F> {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let n = lane_len("layer_norm", xs[0]);
        normalised(xs[0], n, self.eps, |_| {})
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let jvp = LayerNormJvp { eps: self.eps };
        V::apply(jvp, &[ctx.x(0), d[0].expect("one tangent")])
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(V::apply(
            LayerNormJvp { eps: self.eps },
            &[ctx.x(0), dy],
        ))]
    }
    /// Fused: output and tangent `J dx` lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let n = lane_len("layer_norm", xs[0]);
        let (xa, dxa) = (lanes(xs[0]), lanes(dxs[0]?));
        let (x, dx) = (flat(&xa), flat(&dxa));
        let (mut out, mut tan) = (kernels::overwritten(x.len()), kernels::overwritten(x.len()));
        if n > 0 {
            let chunks = x.chunks_exact(n).zip(dx.chunks_exact(n));
            let outs = out.chunks_exact_mut(n).zip(tan.chunks_exact_mut(n));
            kernels::with_simd(
                #[inline(always)]
                || {
                    for ((xl, dl), (ol, tl)) in chunks.zip(outs) {
                        let r = lane_stats(xl, self.eps, ol);
                        lane_jvp(ol, r, dl, tl);
                    }
                },
            );
        }
        let shape = xs[0].shape();
        Some((
            Tensor::from_vec(shape, out).expect("same size"),
            Tensor::from_vec(shape, tan).expect("same size"),
        ))
    }
}

/// The lane length of `x`, after checking that the gain and the bias are `[n]`.
fn affine_lane_len<F: Float>(xs: &[&Tensor<F>]) -> usize {
    let n = lane_len("affine_layer_norm", xs[0]);
    for p in &xs[1..] {
        if p.shape() != [n] {
            shape_panic("affine_layer_norm", xs[0].shape(), p.shape());
        }
    }
    n
}

impl<F: Float> Op<F> for AffineLayerNorm<F> {
    fn name(&self) -> &'static str {
        "affine_layer_norm"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let n = affine_lane_len(xs);
        let (ga, ba) = (lanes(xs[1]), lanes(xs[2]));
        let (g, b) = (flat(&ga), flat(&ba));
        normalised(
            xs[0],
            n,
            self.eps,
            #[inline(always)]
            |h| {
                for ((o, &g), &b) in h.iter_mut().zip(g).zip(b) {
                    *o = *o * g + b;
                }
            },
        )
    }
    /// `(J dx) g + h dg + db`, as the composition's product and sum rules add them.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (x, g) = (ctx.x(0), ctx.x(1));
        let dh = d[0].map(|dx| V::apply(LayerNormJvp { eps: self.eps }, &[x, dx]));
        let h = || V::apply(LayerNorm { eps: self.eps }, &[x]);
        let scaled = match (dh, d[1]) {
            (Some(dh), Some(dg)) => Some(dh.mul(g).add(&h().mul(dg))),
            (Some(dh), None) => Some(dh.mul(g)),
            (None, Some(dg)) => Some(h().mul(dg)),
            (None, None) => None,
        };
        match (scaled, d[2]) {
            (Some(t), Some(db)) => t.add(db),
            (Some(t), None) => t,
            (None, Some(db)) => db.broadcast_to(ctx.out_shape()),
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    /// `x`: `J (dy g)` (`J` is symmetric); `g`: `sum(dy h)`; `b`: `sum(dy)`, the sums
    /// over every lane.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let (x, g) = (ctx.x(0), ctx.x(1));
        let eps = self.eps;
        let dx = ctx
            .needs(0)
            .then(|| V::apply(LayerNormJvp { eps }, &[x, &dy.mul(g)]));
        let dg = ctx.needs(1).then(|| {
            let h = V::apply(LayerNorm { eps }, &[x]);
            dy.mul(&h).sum_to(ctx.shape(1))
        });
        let db = ctx.needs(2).then(|| dy.sum_to(ctx.shape(2)));
        vec![dx, dg, db]
    }
    /// Fused: the output and its tangent lane by lane, each element rounded as by
    /// [`LayerNorm`]'s and the product's fused kernels and the sum.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let n = affine_lane_len(xs);
        let (xa, ga, ba) = (lanes(xs[0]), lanes(xs[1]), lanes(xs[2]));
        let (x, g, b) = (flat(&xa), flat(&ga), flat(&ba));
        let tangents: Vec<_> = dxs.iter().map(|d| d.map(lanes)).collect();
        let [dx, dg, db] = [0, 1, 2].map(|i| tangents[i].as_ref().map(flat));
        let (mut out, mut tan) = (kernels::overwritten(x.len()), kernels::overwritten(x.len()));
        let mut h = vec![F::zero(); n];
        if n > 0 {
            let lanes = x.chunks_exact(n).zip(out.chunks_exact_mut(n));
            kernels::with_simd(
                #[inline(always)]
                || {
                    for (i, ((xl, ol), tl)) in lanes.zip(tan.chunks_exact_mut(n)).enumerate() {
                        let r = lane_stats(xl, self.eps, &mut h);
                        for (((o, &h), &g), &b) in ol.iter_mut().zip(&h).zip(g).zip(b) {
                            *o = h * g + b;
                        }
                        // `(J dx) g + h dg`, then `+ db`, as in `jvp`.
                        let scaled = match (dx, dg) {
                            (Some(dx), dg) => {
                                lane_jvp(&h, r, &dx[i * n..][..n], tl);
                                match dg {
                                    Some(dg) => {
                                        for (((t, &h), &g), &dg) in
                                            tl.iter_mut().zip(&h).zip(g).zip(dg)
                                        {
                                            *t = *t * g + h * dg;
                                        }
                                    }
                                    None => tl.iter_mut().zip(g).for_each(|(t, &g)| *t *= g),
                                }
                                true
                            }
                            (None, Some(dg)) => {
                                for ((t, &h), &dg) in tl.iter_mut().zip(&h).zip(dg) {
                                    *t = h * dg;
                                }
                                true
                            }
                            (None, None) => false,
                        };
                        match (scaled, db) {
                            (true, Some(db)) => tl.iter_mut().zip(db).for_each(|(t, &db)| *t += db),
                            (false, Some(db)) => tl.copy_from_slice(db),
                            (true, None) => {}
                            (false, None) => unreachable!("forward_jvp called without tangents"),
                        }
                    }
                },
            );
        }
        let shape = xs[0].shape();
        Some((
            Tensor::from_vec(shape, out).expect("same size"),
            Tensor::from_vec(shape, tan).expect("same size"),
        ))
    }
}

impl<F: Float> Op<F> for LayerNormJvp<F> {
    fn name(&self) -> &'static str {
        "layer_norm_jvp"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let n = lane_len("layer_norm_jvp", xs[0]);
        if xs[0].shape() != xs[1].shape() {
            shape_panic("layer_norm_jvp", xs[0].shape(), xs[1].shape());
        }
        let (xa, va) = (lanes(xs[0]), lanes(xs[1]));
        let (x, v) = (flat(&xa), flat(&va));
        let (mut h, mut out) = (vec![F::zero(); n], kernels::overwritten(x.len()));
        if n > 0 {
            let lanes = x.chunks_exact(n).zip(v.chunks_exact(n));
            kernels::with_simd(
                #[inline(always)]
                || {
                    for ((xl, vl), ol) in lanes.zip(out.chunks_exact_mut(n)) {
                        let r = lane_stats(xl, self.eps, &mut h);
                        lane_jvp(&h, r, vl, ol);
                    }
                },
            );
        }
        Tensor::from_vec(xs[0].shape(), out).expect("same size")
    }
    /// The tangent of the composed definition, by forward mode on the spot.
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let x = Dual {
            primal: ctx.x(0).clone(),
            tangent: d[0].cloned(),
        };
        let v = Dual {
            primal: ctx.x(1).clone(),
            tangent: d[1].cloned(),
        };
        ln_jvp_composed(&x, &v, self.eps).tangent_or_zeros()
    }
    /// `v`: `J g` (symmetric). `x`: [`LayerNormJvpVjpX`].
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (x, v) = (ctx.x(0), ctx.x(1));
        let dx = ctx
            .needs(0)
            .then(|| V::apply(LayerNormJvpVjpX { eps: self.eps }, &[x, v, g]));
        let dv = ctx.needs(1).then(|| V::apply(*self, &[x, g]));
        vec![dx, dv]
    }
    /// Fused: `J v` and its tangent `J dv - r m(h dx) J v - r (dh m(h v) + h m(dh v))`,
    /// `dh = J dx`, lane by lane.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let n = lane_len("layer_norm_jvp", xs[0]);
        if xs[0].shape() != xs[1].shape() {
            shape_panic("layer_norm_jvp", xs[0].shape(), xs[1].shape());
        }
        let (xa, va) = (lanes(xs[0]), lanes(xs[1]));
        let (x, v) = (flat(&xa), flat(&va));
        let (dxa, dva) = (dxs[0].map(lanes), dxs[1].map(lanes));
        let (dx, dv) = (dxa.as_ref().map(flat), dva.as_ref().map(flat));
        let (mut out, mut tan) = (kernels::overwritten(x.len()), kernels::overwritten(x.len()));
        let (mut h, mut dh) = (vec![F::zero(); n], vec![F::zero(); n]);
        kernels::with_simd(
            #[inline(always)]
            || {
                for (i, (xl, vl)) in x.chunks(n.max(1)).zip(v.chunks(n.max(1))).enumerate() {
                    let lane = i * n..(i + 1) * n;
                    let r = lane_stats(xl, self.eps, &mut h);
                    let ol = &mut out[lane.clone()];
                    lane_jvp(&h, r, vl, ol);
                    let tl = &mut tan[lane.clone()];
                    match dv {
                        Some(dv) => lane_jvp(&h, r, &dv[lane.clone()], tl),
                        None => tl.fill(F::zero()), // in cache, not a separate pass
                    }
                    if let Some(dx) = dx {
                        let dxl = &dx[lane];
                        lane_jvp(&h, r, dxl, &mut dh);
                        let dr_over_r = -r * mean_prod(&h, dxl);
                        let (mhv, mdhv) = (mean_prod(&h, vl), mean_prod(&dh, vl));
                        for (((t, &jv), &h), &dh) in tl.iter_mut().zip(ol.iter()).zip(&h).zip(&dh) {
                            *t += dr_over_r * jv - r * (dh * mhv + h * mdhv);
                        }
                    }
                }
            },
        );
        let shape = xs[0].shape();
        Some((
            Tensor::from_vec(shape, out).expect("same size"),
            Tensor::from_vec(shape, tan).expect("same size"),
        ))
    }
}

impl<F: Float> Op<F> for LayerNormJvpVjpX<F> {
    fn name(&self) -> &'static str {
        "layer_norm_jvp_vjp_x"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let n = lane_len("layer_norm_jvp_vjp_x", xs[0]);
        for other in &xs[1..] {
            if xs[0].shape() != other.shape() {
                shape_panic("layer_norm_jvp_vjp_x", xs[0].shape(), other.shape());
            }
        }
        let (xa, va, ga) = (lanes(xs[0]), lanes(xs[1]), lanes(xs[2]));
        let (x, v, g) = (flat(&xa), flat(&va), flat(&ga));
        let mut out = kernels::overwritten(x.len());
        let (mut h, mut jv, mut jg) = (vec![F::zero(); n], vec![F::zero(); n], vec![F::zero(); n]);
        if n > 0 {
            let lanes = x
                .chunks_exact(n)
                .zip(v.chunks_exact(n))
                .zip(g.chunks_exact(n));
            kernels::with_simd(
                #[inline(always)]
                || {
                    for (((xl, vl), gl), ol) in lanes.zip(out.chunks_exact_mut(n)) {
                        let r = lane_stats(xl, self.eps, &mut h);
                        lane_jvp(&h, r, vl, &mut jv);
                        lane_jvp(&h, r, gl, &mut jg);
                        let (a, b, c) = (mean_prod(gl, &jv), mean_prod(&h, vl), mean_prod(gl, &h));
                        for ((o, &h), (&jv, &jg)) in ol.iter_mut().zip(&h).zip(jv.iter().zip(&jg)) {
                            *o = -r * (h * a + jg * b + jv * c);
                        }
                    }
                },
            );
        }
        Tensor::from_vec(xs[0].shape(), out).expect("same size")
    }
    /// The tangent of the composed definition, by forward mode on the spot (reached
    /// only at fourth order).
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let dual = |i: usize| Dual {
            primal: ctx.x(i).clone(),
            tangent: d[i].cloned(),
        };
        ln_vjp_x_composed(&dual(0), &dual(1), &dual(2), self.eps).tangent_or_zeros()
    }
    /// The cotangents of the composed definition, by a local reverse pass.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let tape = Tape::<V>::with_checkpointing(false);
        let leaf = |i: usize| {
            let x = ctx.x(i).clone();
            if ctx.needs(i) {
                tape.var(x)
            } else {
                Var::constant_of(x)
            }
        };
        let (x, v, g) = (leaf(0), leaf(1), leaf(2));
        let y = ln_vjp_x_composed(&x, &v, &g, self.eps);
        let grads = tape
            .backward(&y, dy.clone(), &[&x, &v, &g])
            .expect("cotangent has the output's shape");
        grads
            .into_iter()
            .enumerate()
            .map(|(i, gi)| ctx.needs(i).then_some(gi))
            .collect()
    }
}
