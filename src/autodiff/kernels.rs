//! Slice kernels the ops share: a switch that compiles a loop for the widest vector
//! unit the CPU has (AVX-512, else AVX2), and reductions with eight independent
//! accumulators, so that they vectorise.
//!
//! A sequential `fold` of floats cannot vectorise (each add waits for the previous one
//! and reordering would change the result); eight running sums, combined at the end,
//! are a fixed, deterministic order that does. The vector units are used without FMA
//! (Rust never contracts `a * b + c` on its own), and every IEEE operation gives the
//! same bits in any register width, so [`with_simd`] never changes a result: the
//! AVX-512, AVX2 and scalar paths agree bit for bit (tested below).

use super::float::Float;
use std::sync::atomic::{AtomicU8, Ordering};

/// Independent accumulators in the reductions: one AVX2 register of `f32`, two of `f64`.
const LANES: usize = 8;

/// The vector instruction sets [`with_simd`] may compile for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Simd {
    /// Baseline x86-64 (SSE2) or any other architecture.
    Scalar = 1,
    /// AVX2 (256-bit).
    Avx2 = 2,
    /// AVX-512 F, BW, DQ and VL (512-bit registers, mask registers).
    Avx512 = 3,
}

/// The level in use (0: not chosen yet).
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The widest level this CPU has, capped by `DATARATER_SIMD` (`avx512`, `avx2` or
/// `scalar`) when set, so one binary can time its paths against each other.
fn detect() -> Simd {
    #[cfg(target_arch = "x86_64")]
    let found = if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
    {
        Simd::Avx512
    } else if std::is_x86_feature_detected!("avx2") {
        Simd::Avx2
    } else {
        Simd::Scalar
    };
    #[cfg(not(target_arch = "x86_64"))]
    let found = Simd::Scalar;
    let cap = match std::env::var("DATARATER_SIMD").as_deref() {
        Ok("scalar") => Simd::Scalar,
        Ok("avx2") => Simd::Avx2,
        _ => Simd::Avx512,
    };
    found.min(cap)
}

/// The level [`with_simd`] compiles for in this process.
pub(crate) fn simd() -> Simd {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Simd::Scalar,
        2 => Simd::Avx2,
        3 => Simd::Avx512,
        _ => {
            let level = detect();
            LEVEL.store(level as u8, Ordering::Relaxed);
            level
        }
    }
}

/// Caps the level at `level` (never above what the CPU has) and returns the level that
/// was in use: for the tests that hold the paths to each other.
#[cfg(test)]
pub(crate) fn cap_simd(level: Simd) -> Simd {
    let was = simd();
    LEVEL.store(detect().min(level) as u8, Ordering::Relaxed);
    was
}

/// Runs `f` compiled for the widest vector unit the CPU has ([`simd`]). Every result
/// bit is the same on every path. Only code that inlines into `f` (closures,
/// `#[inline(always)]` helpers) is compiled for it.
#[inline(always)]
pub(crate) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        Simd::Avx512 => {
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has these features (`detect`).
            return unsafe { avx512(f) };
        }
        Simd::Avx2 => {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX2 (`detect`).
            return unsafe { avx2(f) };
        }
        Simd::Scalar => {}
    }
    f()
}

/// Runs `f` on one of rayon's threads, the calling thread waiting (inline when it is
/// one already). A pass's ops then start their parallel loops from inside the pool,
/// where handing work to the other threads is cheap, instead of waking a worker and
/// putting the calling thread to sleep for every loop: measured 10% faster on the
/// reference meta-gradient with 2 threads, and 20% with one.
pub(crate) fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Elements below which a kernel runs on the calling thread: splitting costs more.
const PAR_MIN: usize = 1 << 16;

/// Runs `f(first_row, rows)` over `out` cut into chunks of whole `n`-element rows, each
/// chunk compiled for the CPU's vector unit ([`with_simd`]), spread over rayon's
/// threads when `out` is large (one chunk on the calling thread otherwise). Every row is computed the same
/// way whatever the split, so results do not depend on the thread count. `f` should be
/// `#[inline(always)]` so that it is compiled for it too. Nothing runs when `out` is
/// empty; otherwise `n` must divide its length.
pub(crate) fn par_rows<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    let (len, threads) = (out.len(), rayon::current_num_threads());
    if len == 0 {
        return;
    }
    debug_assert!(n > 0 && len % n == 0, "rows of {n} in {len} elements");
    if len < PAR_MIN || threads == 1 {
        return with_simd(
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
            with_simd(
                #[inline(always)]
                || f(i * rows, chunk),
            )
        });
}

/// A new vector of `len` elements whose rows of `n` are computed by `f` as in
/// [`par_rows`], starting from zeros. The buffer is a pooled one when a pass has one
/// of that length free (see [`pool`](super::pool)), each chunk zeroed by the thread
/// that computes it, just before (in cache and in parallel); otherwise a zeroed
/// allocation (`calloc`, which clears only memory it reuses: pages fresh from the
/// system are zero already; measured 3-5% faster on the meta-gradient than zeroing
/// fresh memory ourselves).
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

/// A vector of `len` elements that its user overwrites without reading (a product
/// with `beta = 0`): a pooled buffer keeps its old values, a new one is zeroed
/// ([`par_rows_overwrite`]).
pub(crate) fn overwritten<F: Float>(len: usize) -> Vec<F> {
    par_rows_overwrite(len, 1, |_, _| {})
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
    // A new buffer comes zeroed from the allocator (`calloc`: pages fresh from the
    // system are zero already, so only reused memory is cleared).
    let mut out = vec![F::zero(); len];
    par_rows(&mut out, n, f);
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

/// Sums over the middle axis of `x`, of shape `[outer, rows, n]`, into `[outer, n]`
/// (`n > 0`): each output element adds its `rows` inputs in row order, so the same
/// bits on any thread count; the output is split over threads through
/// [`par_rows_new`]. The bias gradient of a linear layer (`outer = 1`) and the mean
/// over a sequence, where summing row views one by one cost a dozen array operations
/// per row.
pub(crate) fn sum_rows<F: Float>(x: &[F], (outer, rows, n): (usize, usize, usize)) -> Vec<F> {
    let block = rows * n;
    debug_assert_eq!(x.len(), outer * block);
    par_rows_new(
        outer * n,
        1,
        #[inline(always)]
        |first, out| {
            let (mut i, mut out) = (first, out);
            while !out.is_empty() {
                let (o, j) = (i / n, i % n);
                let (seg, rest) = out.split_at_mut((n - j).min(out.len()));
                for row in x[o * block..][..block].chunks_exact(n) {
                    for (s, &v) in seg.iter_mut().zip(&row[j..]) {
                        *s += v;
                    }
                }
                (i, out) = (i + seg.len(), rest);
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

/// [`sum_zip`] for an `f` too costly to vectorise inside the accumulators' loop (one
/// with an `exp`: that loop then ran one element at a time, 5x slower on rows of 64).
/// `f` is evaluated a block at a time by a plain loop into a buffer, which vectorises,
/// and the block is then added into the accumulators in [`sum_zip`]'s order: the same
/// bits. Slower than [`sum_zip`] for a cheap `f` (the round trip through the buffer).
#[inline(always)]
pub(crate) fn sum_zip_blocked<F: Float>(a: &[F], b: &[F], f: impl Fn(F, F) -> F) -> F {
    const BLOCK: usize = 8 * LANES;
    debug_assert_eq!(a.len(), b.len());
    let full = a.len() - a.len() % LANES;
    let mut acc = [F::zero(); LANES];
    let mut buf = [F::zero(); BLOCK];
    for (x, y) in a[..full].chunks(BLOCK).zip(b[..full].chunks(BLOCK)) {
        let buf = &mut buf[..x.len()];
        for ((o, &x), &y) in buf.iter_mut().zip(x).zip(y) {
            *o = f(x, y);
        }
        for c in buf.chunks_exact(LANES) {
            for i in 0..LANES {
                acc[i] += c[i];
            }
        }
    }
    let mut s = acc.iter().fold(F::zero(), |s, &a| s + a);
    for (&x, &y) in a[full..].iter().zip(&b[full..]) {
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

    /// The blocked sum adds in the plain one's order: the same bits, for lengths around
    /// the lane width and the block (64 and more), in f32 and f64.
    #[test]
    fn blocked_sums_are_bitwise_the_plain_ones() {
        fn check<F: Float>() {
            for n in (0..=3 * LANES).chain([63, 64, 65, 127, 128, 129, 200, 1000]) {
                let a: Vec<F> = (0..n)
                    .map(|i| F::c(((i * 37 % 101) as f64 - 50.0) / 7.0))
                    .collect();
                let b: Vec<F> = (0..n).map(|i| F::c((i as f64 * 0.3).sin())).collect();
                let f = |x: F, y: F| x.vexp() * y;
                let (plain, blocked) = (sum_zip(&a, &b, f), sum_zip_blocked(&a, &b, f));
                assert_eq!(plain.f64().to_bits(), blocked.f64().to_bits(), "n = {n}");
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Value, gradient and forward-over-reverse `H v` of a function through every op
    /// that runs in [`with_simd`] (softmax, causal softmax, log-softmax, logsumexp,
    /// layer norm, GELU, tanh, sigmoid, exp, ln), each lane 37 long (vector bodies and
    /// remainders).
    fn every_simd_op<F: Float>() -> Vec<Vec<F>> {
        use crate::autodiff::{Mask, Params, Tensor, Value, transforms::hvp};
        let mut rng = crate::Rng::new(7);
        let mut p = Params::new();
        p.insert("x", Tensor::<F>::randn(&[3, 37, 37], &mut rng).unwrap());
        let mut v = Params::new();
        v.insert("x", Tensor::<F>::randn(&[3, 37, 37], &mut rng).unwrap());
        let causal = Mask::causal(37);
        let (y, g, hv) = hvp(
            |p| {
                let x = &p["x"];
                let a = x.masked_softmax(2, &causal).mul(&x.gelu());
                let b = x.softmax(1).mul(&x.layer_norm(F::c(1e-5)).tanh());
                let c = x.log_softmax(2).scale(F::c(0.1)).add(&x.sigmoid());
                let d = x
                    .logsumexp(2, true)
                    .mul(&x.scale(F::c(0.5)).exp().add_scalar(F::one()).ln());
                let e = x.square().sum_to(&[37, 37]).scale(F::c(0.01)).sum_all();
                a.add(&b).add(&c).add(&d).sum_all().add(&e)
            },
            &p,
            &v,
        )
        .unwrap();
        vec![y.to_vec(), g["x"].to_vec(), hv["x"].to_vec()]
    }

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let was = simd();
        let run = |level| {
            cap_simd(level);
            (every_simd_op::<f32>(), every_simd_op::<f64>())
        };
        let scalar = run(Simd::Scalar);
        let (avx2, avx512) = (run(Simd::Avx2), run(Simd::Avx512));
        cap_simd(was);
        assert!(scalar.0[0][0].is_finite() && scalar.1[0][0].is_finite());
        assert_eq!(avx2, scalar, "AVX2 against scalar");
        assert_eq!(avx512, scalar, "AVX-512 against scalar");
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
