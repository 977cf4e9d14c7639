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

/// `f` of each element of `x`, into a new vector (written once, never zero-filled).
#[inline(always)]
pub(crate) fn map<F: Float>(x: &[F], f: impl Fn(F) -> F) -> Vec<F> {
    let mut out = Vec::with_capacity(x.len());
    for (o, &x) in out.spare_capacity_mut()[..x.len()].iter_mut().zip(x) {
        o.write(f(x));
    }
    // SAFETY: the loop above initialised the first `x.len()` elements.
    unsafe { out.set_len(x.len()) };
    out
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
    fn with_avx2_runs_the_closure() {
        let x: Vec<f32> = (0..100).map(|i| i as f32 * 0.25).collect();
        let plain = map(&x, |v| v.vexp());
        assert_eq!(with_avx2(|| map(&x, |v| v.vexp())), plain);
    }
}
