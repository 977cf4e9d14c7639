//! Matrix products through ndarray's gemm (matrixmultiply): 2-D, or batched with equal
//! batch axes. Transposed operands are passed as strided views, never copied.

use super::super::float::Float;
use super::super::flops::{self, GemmShape};
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::linalg::general_mat_mul;
use ndarray::parallel::prelude::*;
use ndarray::{Array3, ArrayView2, Axis, IxDyn};

/// `op_a(a) x op_b(b)`, where `op` transposes the last two axes when its flag is set.
#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    /// Transpose the left operand.
    pub ta: bool,
    /// Transpose the right operand.
    pub tb: bool,
}

/// Work (multiply-adds) above which a batched product is spread over rayon's threads.
const PAR_WORK: usize = 1 << 18;

/// Work (multiply-adds) above which ONE product is split by output rows over rayon's
/// threads. Below it a band finishes before another thread picks up its half (the
/// reference workload's largest products, `[2032, 64] x [64, 256]`, are 2^25 and got
/// slower split); the scale workload's (`[2048, 256] x [256, 1024]` and the like, from
/// 2^27) run close to twice as fast.
const SPLIT_WORK: usize = 1 << 26;

fn op2<F>(v: ArrayView2<'_, F>, t: bool) -> ArrayView2<'_, F> {
    if t { v.reversed_axes() } else { v }
}

impl MatMul {
    /// The op's name (what [`flops`] tells it apart by).
    pub const NAME: &'static str = "matmul";

    /// `(batch, m, k, n)` of `op_a(a) x op_b(b)` and the output shape, or a shape panic.
    fn dims(&self, sa: &[usize], sb: &[usize]) -> ((usize, usize, usize, usize), Vec<usize>) {
        let nd = sa.len();
        if nd < 2 || sb.len() != nd || sa[..nd - 2] != sb[..nd - 2] {
            shape_panic("matmul", sa, sb);
        }
        let (m, k) = if self.ta {
            (sa[nd - 1], sa[nd - 2])
        } else {
            (sa[nd - 2], sa[nd - 1])
        };
        let (k2, n) = if self.tb {
            (sb[nd - 1], sb[nd - 2])
        } else {
            (sb[nd - 2], sb[nd - 1])
        };
        if k != k2 {
            shape_panic("matmul", sa, sb);
        }
        let batch: usize = sa[..nd - 2].iter().product();
        let mut out = sa[..nd - 2].to_vec();
        out.extend([m, n]);
        ((batch, m, k, n), out)
    }

    /// `c = beta c + op_a(a) op_b(b)` for `c` of shape `[batch, m, n]` (shapes checked by
    /// [`dims`](Self::dims)); `beta = 1` accumulates a second product in place.
    fn gemm_into<F: Float>(&self, c: &mut Array3<F>, a: &Tensor<F>, b: &Tensor<F>, beta: F) {
        let (sa, sb) = (a.shape(), b.shape());
        let nd = sa.len();
        let (batch, m, n) = c.dim();
        let k = if self.ta { sa[nd - 2] } else { sa[nd - 1] };
        flops::add_gemm(GemmShape {
            batch,
            m,
            k,
            n,
            ta: self.ta,
            tb: self.tb,
        });
        let a = a.array().as_standard_layout();
        let b = b.array().as_standard_layout();
        let a3 = a
            .view()
            .into_shape_with_order((batch, sa[nd - 2], sa[nd - 1]))
            .expect("contiguous");
        let b3 = b
            .view()
            .into_shape_with_order((batch, sb[nd - 2], sb[nd - 1]))
            .expect("contiguous");
        let one = |(mut c, a, b): (ndarray::ArrayViewMut2<F>, ArrayView2<F>, ArrayView2<F>)| {
            let (a, b) = (op2(a, self.ta), op2(b, self.tb));
            let threads = rayon::current_num_threads();
            if threads > 1 && m * n * k >= SPLIT_WORK && m >= 2 * threads {
                // One large product: its output rows in one band per thread (each band
                // repacks `b`, a small cost at this size).
                let rows = m.div_ceil(threads);
                c.axis_chunks_iter_mut(Axis(0), rows)
                    .into_par_iter()
                    .zip(a.axis_chunks_iter(Axis(0), rows).into_par_iter())
                    .for_each(|(mut c, a)| general_mat_mul(F::one(), &a, &b, beta, &mut c));
            } else {
                general_mat_mul(F::one(), &a, &b, beta, &mut c)
            }
        };
        if batch > 1 && batch * m * n * k >= PAR_WORK {
            c.axis_iter_mut(Axis(0))
                .into_par_iter()
                .zip(a3.axis_iter(Axis(0)).into_par_iter())
                .zip(b3.axis_iter(Axis(0)).into_par_iter())
                .for_each(|((c, a), b)| one((c, a, b)));
        } else {
            c.axis_iter_mut(Axis(0))
                .zip(a3.axis_iter(Axis(0)))
                .zip(b3.axis_iter(Axis(0)))
                .for_each(|((c, a), b)| one((c, a, b)));
        }
    }
}

/// A zeroed `[batch, m, n]` output, zeroed by several threads when it is large (a
/// serial `memset` of the scale workload's outputs was a visible slice of a 2-thread
/// forward pass).
fn zeros<F: Float>(batch: usize, m: usize, n: usize) -> Array3<F> {
    let data = kernels::zeros(batch * m * n);
    Array3::from_shape_vec((batch, m, n), data).expect("batch * m * n elements")
}

fn to_tensor<F: Float>(c: Array3<F>, shape: &[usize]) -> Tensor<F> {
    Tensor::from_array(c.into_shape_with_order(IxDyn(shape)).expect("same size"))
}

impl<F: Float> Op<F> for MatMul {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let ((batch, m, _, n), out) = self.dims(xs[0].shape(), xs[1].shape());
        let mut c = zeros(batch, m, n);
        self.gemm_into(&mut c, xs[0], xs[1], F::zero());
        to_tensor(c, &out)
    }
    /// Fused: the tangent `dA B + A dB` is accumulated by the second gemm into the
    /// first one's output (no separate sum, one buffer).
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let (a, b) = (xs[0], xs[1]);
        let ((batch, m, _, n), out) = self.dims(a.shape(), b.shape());
        let mut c = zeros(batch, m, n);
        self.gemm_into(&mut c, a, b, F::zero());
        let mut t = zeros(batch, m, n);
        let mut beta = F::zero();
        if let Some(da) = dxs[0] {
            self.gemm_into(&mut t, da, b, beta);
            beta = F::one();
        }
        if let Some(db) = dxs[1] {
            self.gemm_into(&mut t, a, db, beta);
        }
        Some((to_tensor(c, &out), to_tensor(t, &out)))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (a, b) = (ctx.x(0), ctx.x(1));
        let left = d[0].map(|da| da.matmul_t(b, self.ta, self.tb));
        let right = d[1].map(|db| a.matmul_t(db, self.ta, self.tb));
        match (left, right) {
            (Some(l), Some(r)) => l.add(&r),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    /// With `C = op_a(A) op_b(B)`: `dA = dC op_b(B)^T` (transposed back when `ta`), and
    /// `dB = op_a(A)^T dC` (transposed back when `tb`), each again a flagged matmul.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dc: &V) -> Vec<Option<V>> {
        let (a, b) = (ctx.x(0), ctx.x(1));
        let da = ctx.needs(0).then(|| {
            if self.ta {
                b.matmul_t(dc, self.tb, true)
            } else {
                dc.matmul_t(b, false, !self.tb)
            }
        });
        let db = ctx.needs(1).then(|| {
            if self.tb {
                dc.matmul_t(a, true, self.ta)
            } else {
                a.matmul_t(dc, !self.ta, false)
            }
        });
        vec![da, db]
    }
}
