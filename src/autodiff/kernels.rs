//! Slice kernels the ops share: a switch that compiles a loop for AVX2 when the CPU
//! has it, and reductions with eight independent accumulators, so that they vectorise.
//!
//! A sequential `fold` of floats cannot vectorise (each add waits for the previous one
//! and reordering would change the result); eight running sums, combined at the end,
//! are a fixed, deterministic order that does. AVX2 without FMA gives the same bits as
//! SSE2 for the same operations, so [`with_avx2`] never changes a result.

use super::float::Float;

/// Independent accumulators in the reductions: one AVX2 register of `f32`, two of `f64`.
const LANES: usize = 8;

/// Runs `f` compiled for AVX2 when the CPU has it (detected once; std caches it). FMA
/// stays off, so every result bit is the same either way. Only code that inlines into
/// `f` (closures, `#[inline(always)]` helpers) is compiled for AVX2.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(f) };
    }
    f()
}

/// Elements below which a kernel runs on the calling thread: splitting costs more.
const PAR_MIN: usize = 1 << 16;

/// Runs `f(first_row, rows)` over `out` cut into chunks of whole `n`-element rows, each
/// chunk compiled for AVX2 ([`with_avx2`]), spread over rayon's threads when `out` is
/// large (one chunk on the calling thread otherwise). Every row is computed the same
/// way whatever the split, so results do not depend on the thread count. `f` should be
/// `#[inline(always)]` so that it is compiled for AVX2 too. Nothing runs when `out` is
/// empty; otherwise `n` must divide its length.
pub(crate) fn par_rows<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    let (len, threads) = (out.len(), rayon::current_num_threads());
    if len == 0 {
        return;
    }
    debug_assert!(n > 0 && len % n == 0, "rows of {n} in {len} elements");
    if len < PAR_MIN || threads == 1 {
        return with_avx2(
            #[inline(always)]
            || f(0, out),
        );
    }
    // A few chunks per thread (for balance), each at least PAR_MIN / 4 elements.
    let rows = (len / n)
        .div_ceil(4 * threads)
        .max((PAR_MIN / 4).div_ceil(n));
    out.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, chunk)| {
            with_avx2(
                #[inline(always)]
                || f(i * rows, chunk),
            )
        });
}

/// A new vector of `len` elements whose rows of `n` are computed by `f` as in
/// [`par_rows`], starting from zeros. Each chunk is zeroed by the thread that computes
/// it, just before: in cache and in parallel, where a zeroed allocation would be one
/// serial `memset`. The buffer is a pooled one when a pass has one of that length free
/// (see [`pool`](super::pool)).
pub(crate) fn par_rows_new<F: Float>(
    len: usize,
    n: usize,
    f: impl Fn(usize, &mut [F]) + Sync,
) -> Vec<F> {
    new_rows(len, n, true, f)
}

/// [`par_rows_new`] for an `f` that writes every element of its rows: a pooled buffer
/// is not zeroed first (it holds values left from its last use until `f` overwrites
/// them), so `f` must not read its rows before writing them.
pub(crate) fn par_rows_overwrite<F: Float>(
    len: usize,
    n: usize,
    f: impl Fn(usize, &mut [F]) + Sync,
) -> Vec<F> {
    new_rows(len, n, false, f)
}

/// A vector of `len` zeros, pooled when a pass has one free ([`par_rows_new`]).
pub(crate) fn zeros<F: Float>(len: usize) -> Vec<F> {
    par_rows_new(len, 1, |_, _| {})
}

#[inline(always)]
fn new_rows<F: Float>(
    len: usize,
    n: usize,
    zero: bool,
    f: impl Fn(usize, &mut [F]) + Sync,
) -> Vec<F> {
    if let Some(mut out) = super::pool::take::<F>(len) {
        par_rows(
            &mut out,
            n,
            #[inline(always)]
            |first, rows| {
                if zero {
                    rows.fill(F::zero());
                }
                f(first, rows)
            },
        );
        return out;
    }
    let mut out: Vec<F> = Vec::with_capacity(len);
    par_rows(
        &mut out.spare_capacity_mut()[..len],
        n,
        #[inline(always)]
        |first, rows| {
            for v in rows.iter_mut() {
                v.write(F::zero());
            }
            // SAFETY: every element of `rows` was initialised just above.
            let rows =
                unsafe { std::slice::from_raw_parts_mut(rows.as_mut_ptr().cast(), rows.len()) };
            f(first, rows)
        },
    );
    // SAFETY: `par_rows` ran the closure above, which initialises its rows, over all
    // `len` elements.
    unsafe { out.set_len(len) };
    super::pool::adopt(&out);
    out
}

/// `f` of each element of `x`, into a new vector, through [`par_rows_overwrite`].
pub(crate) fn map<F: Float>(x: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
    par_rows_overwrite(
        x.len(),
        1,
        #[inline(always)]
        |first, out| {
            for (o, &x) in out.iter_mut().zip(&x[first..]) {
                *o = f(x);
            }
        },
    )
}

/// `sum(f(a_i, b_i))` over two equally long slices, eight accumulators wide.
#[inline(always)]
pub(crate) fn sum_zip<F: Float>(a: &[F], b: &[F], f: impl Fn(F, F) -> F) -> F {
    debug_assert_eq!(a.len(), b.len());
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [F::zero(); LANES];
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i]);
        }
    }
    let mut s = acc.iter().fold(F::zero(), |s, &a| s + a);
    for (&x, &y) in ra.iter().zip(rb) {
        s += f(x, y);
    }
    s
}

/// `sum(f(a_i))`, eight accumulators wide.
#[inline(always)]
pub(crate) fn sum_map<F: Float>(a: &[F], f: impl Fn(F) -> F) -> F {
    sum_zip(a, a, |x, _| f(x))
}

/// `sum(a)`.
#[inline(always)]
pub(crate) fn sum<F: Float>(a: &[F]) -> F {
    sum_map(a, |x| x)
}

/// `sum(a_i b_i)`.
#[inline(always)]
pub(crate) fn dot<F: Float>(a: &[F], b: &[F]) -> F {
    sum_zip(a, b, |x, y| x * y)
}

/// The largest of `f(a_i, b_i)` over two equally long slices (`-inf` when empty). NaNs
/// are passed over, as by `f32::max`; of two zeros of either sign, either may be
/// returned.
#[inline(always)]
pub(crate) fn max_zip<F: Float, B: Copy>(a: &[F], b: &[B], f: impl Fn(F, B) -> F) -> F {
    debug_assert_eq!(a.len(), b.len());
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [F::neg_infinity(); LANES];
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let v = f(x[i], y[i]);
            acc[i] = if v > acc[i] { v } else { acc[i] };
        }
    }
    let mut m = acc.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
    for (&x, &y) in ra.iter().zip(rb) {
        m = m.max(f(x, y));
    }
    m
}

/// The largest element (`-inf` when empty), as [`max_zip`].
#[inline(always)]
pub(crate) fn max<F: Float>(a: &[F]) -> F {
    max_zip(a, a, |x, _| x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_sequential_folds() {
        for n in [0usize, 1, 7, 8, 9, 31, 64, 100] {
            let a: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
            let seq_sum: f64 = a.iter().sum();
            let seq_dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((sum(&a) - seq_sum).abs() <= 1e-12, "sum, n = {n}");
            assert!((dot(&a, &b) - seq_dot).abs() <= 1e-12, "dot, n = {n}");
            let seq_max = a.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&a), seq_max, "max, n = {n}");
            let odd: Vec<bool> = (0..n).map(|i| i % 2 == 1).collect();
            let masked = max_zip(&a, &odd, |x, k| if k { f64::NEG_INFINITY } else { x });
            let seq_masked = a
                .iter()
                .step_by(2)
                .fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(masked, seq_masked, "masked max, n = {n}");
            assert_eq!(
                map(&a, |x| 2.0 * x),
                a.iter().map(|x| 2.0 * x).collect::<Vec<_>>()
            );
        }
        let with_nan = [1.0, f64::NAN, 3.0, 2.0, 0.5, -1.0, 7.0, 4.0, f64::NAN, 6.5];
        assert_eq!(max(&with_nan), 7.0);
    }

    #[test]
    fn with_avx2_runs_the_closure_unchanged() {
        let x: Vec<f32> = (0..100).map(|i| i as f32 * 0.25).collect();
        let plain: Vec<f32> = x.iter().map(|v| v.vexp()).collect();
        assert_eq!(
            with_avx2(|| x.iter().map(|v| v.vexp()).collect::<Vec<_>>()),
            plain
        );
    }

    #[test]
    fn par_rows_visits_every_row_once_on_any_pool() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (len, n) in [
                (0, 3),
                (0, 0),
                (10, 1),
                (12, 4),
                (PAR_MIN * 3 + 7, 1),
                (PAR_MIN * 2, 64),
            ] {
                let mut out = vec![usize::MAX; len];
                pool.install(|| {
                    par_rows(&mut out, n, |first, rows| {
                        assert_eq!(rows.len() % n, 0, "whole rows");
                        for (i, v) in rows.iter_mut().enumerate() {
                            assert_eq!(*v, usize::MAX, "visited twice");
                            *v = first * n + i;
                        }
                    })
                });
                assert!(out.iter().enumerate().all(|(i, &v)| v == i), "len {len}");
            }
            let x: Vec<f64> = (0..PAR_MIN + 5).map(|i| i as f64).collect();
            let y = pool.install(|| map(&x, |v| v * 0.5));
            assert!(y.iter().zip(&x).all(|(&y, &x)| y == x * 0.5));
        }
    }
}
