//! Binary arithmetic with numpy broadcasting. VJPs sum broadcast axes back with `sum_to`.

use super::super::float::Float;
use super::super::kernels;
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

/// `f(a, b)` elementwise with numpy broadcasting (a panic naming `op` on a mismatch).
/// When both are contiguous and one is the other's shape or repeats whole over it (a
/// scalar, a bias over rows) this is a slice loop over rows of the smaller one
/// ([`kernels::par_rows_overwrite`]: it vectorises, and large outputs are split over threads);
/// otherwise ndarray's broadcasting `Zip` (slow on dynamic-rank arrays) does it. Same
/// arithmetic, element for element, either way.
fn zip_with<F: Float>(
    op: &'static str,
    xs: &[&Tensor<F>],
    f: impl Fn(F, F) -> F + Sync,
) -> Tensor<F> {
    let (a, b) = (xs[0], xs[1]);
    let shape = broadcast_shape(op, a.shape(), b.shape());
    let n: usize = shape.iter().product();
    if let Some(a_is_full) = full_and_repeated(a, b, &shape) {
        let (x, y) = (contiguous(a), contiguous(b));
        // The full-size operand and the one repeated over it.
        let (full, rep) = if a_is_full { (x, y) } else { (y, x) };
        let m = rep.len();
        let out = kernels::par_rows_overwrite(
            n,
            m,
            #[inline(always)]
            |first, rows| {
                let fulls = full[first * m..].chunks_exact(m);
                for (o, p) in rows.chunks_exact_mut(m).zip(fulls) {
                    for ((o, &p), &q) in o.iter_mut().zip(p).zip(rep) {
                        *o = if a_is_full { f(p, q) } else { f(q, p) };
                    }
                }
            },
        );
        return Tensor::from_vec(&shape, out).expect("broadcast size");
    }
    let dims = IxDyn(&shape);
    let (a, b) = (broadcast_view(a, &dims), broadcast_view(b, &dims));
    Tensor::overwritten(&shape, |out| {
        Zip::from(out)
            .and(&a)
            .and(&b)
            .for_each(|o, &a, &b| *o = f(a, b))
    })
}

/// When both operands are contiguous and one of them has the broadcast `shape` while
/// the other repeats whole over it (a scalar, a bias over rows): whether `a` is the
/// full-size one. `None` otherwise, or when `shape` is empty.
fn full_and_repeated<F: Float>(a: &Tensor<F>, b: &Tensor<F>, shape: &[usize]) -> Option<bool> {
    let (x, y) = (a.array().as_slice()?, b.array().as_slice()?);
    let n: usize = shape.iter().product();
    if n > 0 && x.len() == n && repeats_whole(b.shape(), shape) {
        Some(true)
    } else if n > 0 && y.len() == n && repeats_whole(a.shape(), shape) {
        Some(false)
    } else {
        None
    }
}

/// The data of a tensor in standard layout.
fn contiguous<F: Float>(t: &Tensor<F>) -> &[F] {
    t.array().as_slice().expect("standard layout")
}

/// Whether an operand of shape `s` broadcast to `out` is its data repeated whole: `s`
/// without its leading 1s is a suffix of `out`.
fn repeats_whole(s: &[usize], out: &[usize]) -> bool {
    let lead = s.iter().take_while(|&&d| d == 1).count();
    out.ends_with(&s[lead..])
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
        zip_with("add", xs, |a, b| a + b)
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
        zip_with("sub", xs, |a, b| a - b)
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
        zip_with("mul", xs, |a, b| a * b)
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
        let y = zip_with("mul", xs, |a, b| a * b);
        let dims = y.shape().to_vec();
        let standard = |t: Option<&Tensor<F>>| t.is_none_or(|t| t.array().as_slice().is_some());
        if let (Some(a_is_full), true, true) = (
            full_and_repeated(xs[0], xs[1], &dims),
            standard(dxs[0]),
            standard(dxs[1]),
        ) {
            return Some((y, product_tangent_rows(xs, dxs, a_is_full, &dims)));
        }
        let shape = IxDyn(&dims);
        let view = |t| broadcast_view(t, &shape);
        let (a, b) = (view(xs[0]), view(xs[1]));
        let t = Tensor::overwritten(&dims, |t| {
            let t = Zip::from(t);
            match (dxs[0].map(view), dxs[1].map(view)) {
                (Some(da), Some(db)) => t
                    .and(&a)
                    .and(&b)
                    .and(&da)
                    .and(&db)
                    .for_each(|t, &a, &b, &da, &db| *t = da * b + a * db),
                (Some(da), None) => t.and(&da).and(&b).for_each(|t, &da, &b| *t = da * b),
                (None, Some(db)) => t.and(&a).and(&db).for_each(|t, &a, &db| *t = a * db),
                (None, None) => unreachable!("jvp called without tangents"),
            }
        });
        Some((y, t))
    }
}

/// [`Mul`]'s tangent `da b + a db`, of the broadcast `shape`, row by row as
/// [`zip_with`]'s fast path computes its value (every operand and tangent contiguous,
/// `a` full-size when `a_is_full`, else `b`). Written `dp q + p dq`, `p` being the
/// full-size operand and `q` the repeated one: the same bits, as IEEE products and sums
/// commute.
fn product_tangent_rows<F: Float>(
    xs: &[&Tensor<F>],
    dxs: &[Option<&Tensor<F>>],
    a_is_full: bool,
    shape: &[usize],
) -> Tensor<F> {
    let (full, rep) = if a_is_full { (0, 1) } else { (1, 0) };
    let (p, q) = (contiguous(xs[full]), contiguous(xs[rep]));
    let (dp, dq) = (dxs[full].map(contiguous), dxs[rep].map(contiguous));
    let m = q.len();
    let t = kernels::par_rows_overwrite(
        p.len(),
        m,
        #[inline(always)]
        |first, rows| {
            for (r, t) in rows.chunks_exact_mut(m).enumerate() {
                let i = (first + r) * m;
                let p = &p[i..i + m];
                match (dp, dq) {
                    (Some(dp), Some(dq)) => {
                        let dp = &dp[i..i + m];
                        for (((t, &p), &dp), (&q, &dq)) in
                            t.iter_mut().zip(p).zip(dp).zip(q.iter().zip(dq))
                        {
                            *t = dp * q + p * dq;
                        }
                    }
                    (Some(dp), None) => {
                        for ((t, &dp), &q) in t.iter_mut().zip(&dp[i..i + m]).zip(q) {
                            *t = dp * q;
                        }
                    }
                    (None, Some(dq)) => {
                        for ((t, &p), &dq) in t.iter_mut().zip(p).zip(dq) {
                            *t = p * dq;
                        }
                    }
                    (None, None) => unreachable!("jvp called without tangents"),
                }
            }
        },
    );
    Tensor::from_vec(shape, t).expect("the broadcast size")
}

/// `a / b`.
#[derive(Clone, Copy, Debug)]
pub struct Div;
impl<F: Float> Op<F> for Div {
    fn name(&self) -> &'static str {
        "div"
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        zip_with("div", xs, |a, b| a / b)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The fused tangent of a product (row by row when one operand repeats over the
    /// other, else ndarray's broadcasting) is bitwise `da b + a db` computed op by op,
    /// for either operand repeated, leading 1s, a scalar, no broadcast at all, a
    /// non-repeating broadcast, and one tangent or both.
    #[test]
    fn fused_product_tangent_is_bitwise_the_product_rule() {
        let mut rng = Rng::new(5);
        let shapes: [(&[usize], &[usize]); 7] = [
            (&[3, 4, 5], &[5]),
            (&[5], &[3, 4, 5]),
            (&[4, 5], &[1, 1, 5]),
            (&[1, 4, 5], &[4, 5]),
            (&[3, 4, 5], &[]),
            (&[3, 4, 5], &[3, 4, 5]),
            (&[3, 1, 5], &[4, 1]),
        ];
        for (sa, sb) in shapes {
            let r = |s: &[usize], rng: &mut Rng| Tensor::<f64>::randn(s, rng).unwrap();
            let (a, b, da, db) = (
                r(sa, &mut rng),
                r(sb, &mut rng),
                r(sa, &mut rng),
                r(sb, &mut rng),
            );
            for (ta, tb) in [(Some(&da), Some(&db)), (Some(&da), None), (None, Some(&db))] {
                let (y, t) = Mul.forward_jvp(&[&a, &b], &[ta, tb]).unwrap();
                let want = match (ta, tb) {
                    (Some(da), Some(db)) => da.mul(&b).add(&a.mul(db)),
                    (Some(da), None) => da.mul(&b),
                    (None, Some(db)) => a.mul(db),
                    (None, None) => unreachable!(),
                };
                assert_eq!(y.to_vec(), a.mul(&b).to_vec(), "{sa:?} {sb:?}");
                assert_eq!(t.shape(), want.shape(), "{sa:?} {sb:?}");
                let bits =
                    |t: &Tensor<f64>| t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&t),
                    bits(&want),
                    "{sa:?} {sb:?} {:?}",
                    (ta.is_some(), tb.is_some())
                );
            }
        }
    }
}
