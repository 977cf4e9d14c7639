//! Matrix products: 2-D, or batched with equal batch axes. Transposed operands are
//! passed as strided views, never copied.
//!
//! Every product runs through one routine, `gemm_batch`, on the process's fastest
//! [`GemmKernel`]: the `gemm` crate's AVX-512 kernels when the CPU has AVX-512F
//! (detected at run time), otherwise ndarray's gemm (matrixmultiply, which picks its
//! own AVX2/FMA, SSE2 or scalar kernels at run time). Both are deterministic, and a
//! large product is cut into bands of a fixed number of rows, so results never depend
//! on the thread count.

use super::super::float::Float;
use super::super::flops::{self, GemmShape};
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::linalg::general_mat_mul;
use ndarray::parallel::prelude::*;
use ndarray::{Array3, ArrayView2, ArrayViewMut2, Axis, IxDyn};
use std::sync::OnceLock;

/// A gemm kernel the process can run (see [`GemmKernel::available`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GemmKernel {
    /// ndarray's gemm (matrixmultiply): AVX2/FMA, SSE2 or scalar microkernels chosen at
    /// run time. Runs everywhere.
    Matrixmultiply,
    /// The `gemm` crate's AVX-512 microkernels (single-threaded calls; the engine
    /// spreads products over threads itself). Only on x86-64 CPUs with AVX-512F.
    Avx512,
}

impl GemmKernel {
    /// The kernels this CPU can run, the portable one first.
    pub fn available() -> Vec<GemmKernel> {
        let mut k = vec![GemmKernel::Matrixmultiply];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            k.push(GemmKernel::Avx512);
        }
        k
    }

    /// The kernel every product uses: the last of [`available`](Self::available)
    /// (AVX-512 when the CPU has it). Detected once per process.
    pub fn best() -> GemmKernel {
        static BEST: OnceLock<GemmKernel> = OnceLock::new();
        *BEST.get_or_init(|| *Self::available().last().expect("matrixmultiply"))
    }

    /// `c = beta c + a b` on one product (strided views; `c` must not overlap `a`, `b`).
    fn run<F: Float>(
        self,
        mut c: ArrayViewMut2<'_, F>,
        a: ArrayView2<'_, F>,
        b: ArrayView2<'_, F>,
        beta: F,
    ) {
        match self {
            GemmKernel::Matrixmultiply => general_mat_mul(F::one(), &a, &b, beta, &mut c),
            GemmKernel::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                if narrow::fits(&c, &b) {
                    // SAFETY: this kernel is only available on CPUs with AVX-512F
                    // (`available`), and `fits` holds.
                    return unsafe { narrow::product(c, a, b, beta) };
                }
                gemm_crate(c, a, b, beta)
            }
        }
    }
}

/// `c = beta c + a b` on the `gemm` crate's AVX-512 kernels (one thread).
fn gemm_crate<F: Float>(
    mut c: ArrayViewMut2<'_, F>,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
) {
    let ((m, k), n) = (a.dim(), b.dim().1);
    let (sc, sa, sb) = ([c.strides()[0], c.strides()[1]], a.strides(), b.strides());
    // SAFETY: the views are valid for their shapes and strides (m x k, k x n,
    // m x n, checked by the caller), and `c` is borrowed mutably, so it
    // overlaps neither operand. `F` is f32 or f64, which the crate supports.
    // The crate computes `dst = alpha dst + beta lhs rhs`, reading `dst`
    // only when asked to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            sc[1],
            sc[0],
            beta != F::zero(),
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            beta,
            F::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Products whose output rows are one 64-byte vector (16 `f32` or 8 `f64` columns):
/// attention's per-head products with 16-wide heads (`p v`, and `ds k`, `ds^T q`,
/// `p^T dy` in its backward pass), which the `gemm` crate runs on its narrowest kernel
/// (16 rows by 6 columns of the transposed problem) after packing an operand. Here each
/// output row stays in one register, [`narrow::ROWS`] rows at a time, and nothing is
/// packed: on `[128, 128] x [128, 16]` in f32, 104-133 GFLOP/s against the crate's 82
/// (`a` transposed or not). Each element is one chain of fused multiply-adds in `k`
/// order starting from zero, then added to `beta c`: the crate's order, so the same
/// bits (tested).
#[cfg(target_arch = "x86_64")]
mod narrow {
    use super::Float;
    use ndarray::{ArrayView2, ArrayViewMut2};

    /// Output rows computed at once: eight accumulators cover the FMA units' latency.
    pub(super) const ROWS: usize = 8;

    /// Whether `c = beta c + a b` runs here: `F` is `f32` or `f64`, rows of `c` one
    /// vector wide, rows of `b` and `c` contiguous.
    pub(super) fn fits<F: Float>(c: &ArrayViewMut2<'_, F>, b: &ArrayView2<'_, F>) -> bool {
        let lanes = match size_of::<F>() {
            4 => 16,
            8 => 8,
            _ => return false,
        };
        c.ncols() == lanes && c.strides()[1] == 1 && b.strides()[1] == 1
    }

    /// `c = beta c + a b`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and [`fits`] holds; `c` overlaps neither operand.
    pub(super) unsafe fn product<F: Float>(
        c: ArrayViewMut2<'_, F>,
        a: ArrayView2<'_, F>,
        b: ArrayView2<'_, F>,
        beta: F,
    ) {
        // SAFETY: as the caller promises; the width is the one `fits` checked (`F` is 4
        // or 8 bytes).
        unsafe {
            if size_of::<F>() == 4 {
                product_w::<F, 16>(c, a, b, beta)
            } else {
                product_w::<F, 8>(c, a, b, beta)
            }
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn product_w<F: Float, const W: usize>(
        mut c: ArrayViewMut2<'_, F>,
        a: ArrayView2<'_, F>,
        b: ArrayView2<'_, F>,
        beta: F,
    ) {
        let (m, k) = a.dim();
        let (sa, sb, sc) = (
            (a.strides()[0], a.strides()[1]),
            b.strides()[0],
            c.strides()[0],
        );
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut i = 0;
        while i < m {
            let step = if i + ROWS <= m { ROWS } else { 1 };
            // SAFETY: rows `i .. i + step` of `a` and `c` are in the views, and `b` is
            // `k` rows of `W` contiguous elements.
            unsafe {
                let (ai, ci) = (a.offset(i as isize * sa.0), c.offset(i as isize * sc));
                if step == ROWS {
                    rows::<F, ROWS, W>(k, ai, sa, b, sb, ci, sc, beta);
                } else {
                    rows::<F, 1, W>(k, ai, sa, b, sb, ci, sc, beta);
                }
            }
            i += step;
        }
    }

    /// `R` rows of `c = beta c + a b`, `W` columns.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn rows<F: Float, const R: usize, const W: usize>(
        k: usize,
        a: *const F,
        (sa_row, sa_col): (isize, isize),
        mut b: *const F,
        sb: isize,
        c: *mut F,
        sc: isize,
        beta: F,
    ) {
        let mut acc = [[F::zero(); W]; R];
        // SAFETY (all three blocks): in bounds, as `product_w` promises.
        let a_rows: [*const F; R] =
            std::array::from_fn(|r| unsafe { a.offset(r as isize * sa_row) });
        let mut off = 0;
        for _ in 0..k {
            let b_row = unsafe { (b as *const [F; W]).read_unaligned() };
            for (acc, a_row) in acc.iter_mut().zip(&a_rows) {
                let x = unsafe { *a_row.offset(off) };
                for (acc, &y) in acc.iter_mut().zip(&b_row) {
                    *acc = x.mul_add(y, *acc);
                }
            }
            off += sa_col;
            b = unsafe { b.offset(sb) };
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = unsafe { c.offset(r as isize * sc) as *mut [F; W] };
            let out = if beta == F::zero() {
                *acc
            } else {
                let old = unsafe { row.read_unaligned() };
                std::array::from_fn(|j| beta.mul_add(old[j], acc[j]))
            };
            unsafe { row.write_unaligned(out) };
        }
    }
}

/// Work (multiply-adds) above which a batch of products is spread over rayon's threads.
const PAR_WORK: usize = 1 << 18;

/// Work (multiply-adds) above which ONE product is cut into bands of [`BAND_ROWS`]
/// output rows (or of [`BAND_COLS`] columns), computed in parallel. Below it a band
/// finishes before another thread picks up its share (the reference workload's largest
/// products, `[2032, 64] x [64, 256]`, are 2^25 and got slower split); the scale
/// workload's (`[2048, 256] x [256, 1024]` and the like, from 2^27) run close to twice
/// as fast on two threads.
const SPLIT_WORK: usize = 1 << 26;

/// Rows per band of a split product. A fixed number, never derived from the thread
/// count, so every output row is computed by the same call on any pool (the `gemm`
/// crate's blocking depends on the product's shape).
const BAND_ROWS: usize = 256;

/// Columns per band of a split product with too few rows to split by rows: weight
/// gradients `x^T dy`, whose rows are the layer's width and whose `k` is every token.
/// Unsplit, a whole-batch gradient pass of the scale workload ran its `[256, 2048] x
/// [2048, 1024]` products on one thread (355 ms on two threads; split, 296). Fixed for
/// the same reason as [`BAND_ROWS`].
const BAND_COLS: usize = 128;

/// `c_i = beta c_i + a_i b_i` for each `(c_i, a_i, b_i)` (all of the same shape), on
/// `kernel`. Large batches run over rayon's threads, large products in bands of
/// [`BAND_ROWS`] rows or [`BAND_COLS`] columns; each output element is computed the
/// same way on any pool.
pub(crate) fn gemm_batch<F: Float>(
    kernel: GemmKernel,
    items: Vec<(ArrayViewMut2<'_, F>, ArrayView2<'_, F>, ArrayView2<'_, F>)>,
    beta: F,
) {
    let Some((c, a, _)) = items.first() else {
        return;
    };
    let ((m, n), k) = (c.dim(), a.dim().1);
    let one = |(mut c, a, b): (ArrayViewMut2<F>, ArrayView2<F>, ArrayView2<F>)| {
        if m * n * k < SPLIT_WORK {
            kernel.run(c, a, b, beta)
        } else if m >= 2 * BAND_ROWS {
            c.axis_chunks_iter_mut(Axis(0), BAND_ROWS)
                .into_par_iter()
                .zip(a.axis_chunks_iter(Axis(0), BAND_ROWS).into_par_iter())
                .for_each(|(c, a)| kernel.run(c, a, b.view(), beta));
        } else if n >= 2 * BAND_COLS {
            c.axis_chunks_iter_mut(Axis(1), BAND_COLS)
                .into_par_iter()
                .zip(b.axis_chunks_iter(Axis(1), BAND_COLS).into_par_iter())
                .for_each(|(c, b)| kernel.run(c, a.view(), b, beta));
        } else {
            kernel.run(c, a, b, beta)
        }
    };
    if items.len() > 1 && items.len() * m * n * k >= PAR_WORK {
        items.into_par_iter().for_each(one);
    } else {
        items.into_iter().for_each(one);
    }
}

/// `op_a(a) x op_b(b)`, where `op` transposes the last two axes when its flag is set.
#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    /// Transpose the left operand.
    pub ta: bool,
    /// Transpose the right operand.
    pub tb: bool,
}

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
        self.gemm_into_on(GemmKernel::best(), c, a, b, beta)
    }

    /// [`gemm_into`](Self::gemm_into) on a given kernel.
    fn gemm_into_on<F: Float>(
        &self,
        kernel: GemmKernel,
        c: &mut Array3<F>,
        a: &Tensor<F>,
        b: &Tensor<F>,
        beta: F,
    ) {
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
        let items = c
            .axis_iter_mut(Axis(0))
            .zip(a3.axis_iter(Axis(0)))
            .zip(b3.axis_iter(Axis(0)))
            .map(|((c, a), b)| (c, op2(a, self.ta), op2(b, self.tb)))
            .collect();
        gemm_batch(kernel, items, beta);
    }
}

/// A buffer of `len` elements for the output of products of `xs` (or of their
/// tangents, `written` telling whether any is present) whose first product has
/// `beta = 0`, which every kernel writes without reading: not zeroed first unless no
/// product runs or they are empty (`k = 0`, when an input has no elements).
pub(super) fn product_buffer<F: Float>(len: usize, xs: &[&Tensor<F>], written: bool) -> Vec<F> {
    match written && !xs.iter().any(|x| x.is_empty()) {
        true => kernels::overwritten(len),
        false => kernels::zeros(len),
    }
}

/// The `[batch, m, n]` output of products of `xs` ([`product_buffer`]).
fn product_out<F: Float>(
    (batch, m, n): (usize, usize, usize),
    xs: &[&Tensor<F>],
    written: bool,
) -> Array3<F> {
    let data = product_buffer(batch * m * n, xs, written);
    Array3::from_shape_vec((batch, m, n), data).expect("batch * m * n elements")
}

/// Input `i`'s cotangent `op_a(l) op_b(r)` in a VJP rule ([`Ctx::cotangent`]: its
/// tangent alone where only that will be read).
fn cotangent_product<V: Value>(ctx: &Ctx<V>, i: usize, l: &V, r: &V, ta: bool, tb: bool) -> V {
    ctx.cotangent(i, MatMul { ta, tb }, &[l, r])
}

/// Whether any tangent is present.
pub(super) fn any<T>(dxs: &[Option<T>]) -> bool {
    dxs.iter().any(Option::is_some)
}

fn to_tensor<F: Float>(c: Array3<F>, shape: &[usize]) -> Tensor<F> {
    Tensor::from_array(c.into_shape_with_order(IxDyn(shape)).expect("same size"))
}

impl MatMul {
    /// The product on a given kernel (what [`flops::gemm_peak_on`] replays).
    pub(crate) fn forward_on<F: Float>(&self, kernel: GemmKernel, xs: &[&Tensor<F>]) -> Tensor<F> {
        let ((batch, m, _, n), out) = self.dims(xs[0].shape(), xs[1].shape());
        let mut c = product_out((batch, m, n), xs, true);
        self.gemm_into_on(kernel, &mut c, xs[0], xs[1], F::zero());
        to_tensor(c, &out)
    }
}

impl<F: Float> Op<F> for MatMul {
    fn name(&self) -> &'static str {
        Self::NAME
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        self.forward_on(GemmKernel::best(), xs)
    }
    /// Fused: the tangent `dA B + A dB` is accumulated by the second gemm into the
    /// first one's output (no separate sum, one buffer).
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let c = self.forward(xs);
        Some((c, self.forward_tangent(xs, dxs)?))
    }
    /// The tangent half of [`forward_jvp`](Op::forward_jvp).
    fn forward_tangent(&self, xs: &[&Tensor<F>], dxs: &[Option<&Tensor<F>>]) -> Option<Tensor<F>> {
        let (a, b) = (xs[0], xs[1]);
        let ((batch, m, _, n), out) = self.dims(a.shape(), b.shape());
        let mut t = product_out((batch, m, n), xs, any(dxs));
        let mut beta = F::zero();
        if let Some(da) = dxs[0] {
            self.gemm_into(&mut t, da, b, beta);
            beta = F::one();
        }
        if let Some(db) = dxs[1] {
            self.gemm_into(&mut t, a, db, beta);
        }
        Some(to_tensor(t, &out))
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
        let da = ctx.needs(0).then(|| match self.ta {
            true => cotangent_product(ctx, 0, b, dc, self.tb, true),
            false => cotangent_product(ctx, 0, dc, b, false, !self.tb),
        });
        let db = ctx.needs(1).then(|| match self.tb {
            true => cotangent_product(ctx, 1, dc, a, true, self.ta),
            false => cotangent_product(ctx, 1, a, dc, !self.ta, false),
        });
        vec![da, db]
    }
}

/// `x w + b` for `x [m, k]`, `w [k, n]` and a bias `b [n]` added to every row: the
/// bias is written into the output first and the product accumulated onto it, one pass
/// over the output instead of a product and then a broadcast sum (a linear layer).
#[derive(Clone, Copy, Debug)]
pub struct MatMulBias;

impl MatMulBias {
    /// `[m, n]` rows each filled with `b`, or a shape panic.
    fn rows_of<F: Float>(x: &Tensor<F>, w: &Tensor<F>, b: &Tensor<F>) -> Array3<F> {
        let (sx, sw, sb) = (x.shape(), w.shape(), b.shape());
        if sx.len() != 2 || sw.len() != 2 || sx[1] != sw[0] {
            shape_panic("matmul_bias", sx, sw);
        }
        if sb != [sw[1]] {
            shape_panic("matmul_bias", sb, sw);
        }
        let (m, n) = (sx[0], sw[1]);
        let b = b.array().as_standard_layout();
        let b = b.as_slice().expect("standard layout");
        let data = kernels::par_rows_overwrite(m * n, n.max(1), |_, rows| {
            // The first row, then the rows so far copied after themselves: a few large
            // copies (a `memcpy` call per short row cost more than the product's pass).
            if let Some(first) = rows.get_mut(..n) {
                first.copy_from_slice(b);
            }
            let mut filled = n;
            while filled < rows.len() {
                let k = filled.min(rows.len() - filled);
                rows.copy_within(..k, filled);
                filled += k;
            }
        });
        Array3::from_shape_vec((1, m, n), data).expect("m * n elements")
    }
}

const PLAIN: MatMul = MatMul {
    ta: false,
    tb: false,
};

impl<F: Float> Op<F> for MatMulBias {
    fn name(&self) -> &'static str {
        "matmul_bias"
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let mut c = Self::rows_of(xs[0], xs[1], xs[2]);
        PLAIN.gemm_into(&mut c, xs[0], xs[1], F::one());
        let shape = [c.dim().1, c.dim().2];
        to_tensor(c, &shape)
    }
    /// Fused: the tangent `dx w + x dw + db` is `db`'s rows (or zeros) with both
    /// products accumulated onto them.
    fn forward_jvp(
        &self,
        xs: &[&Tensor<F>],
        dxs: &[Option<&Tensor<F>>],
    ) -> Option<(Tensor<F>, Tensor<F>)> {
        let (x, w) = (xs[0], xs[1]);
        let y = self.forward(xs);
        let (m, n) = (y.shape()[0], y.shape()[1]);
        let (mut t, mut beta) = match dxs[2] {
            Some(db) => (Self::rows_of(x, w, db), F::one()),
            None => (product_out((1, m, n), xs, any(&dxs[..2])), F::zero()),
        };
        if let Some(dx) = dxs[0] {
            PLAIN.gemm_into(&mut t, dx, w, beta);
            beta = F::one();
        }
        if let Some(dw) = dxs[1] {
            PLAIN.gemm_into(&mut t, x, dw, beta);
        }
        Some((y, to_tensor(t, &[m, n])))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let (x, w) = (ctx.x(0), ctx.x(1));
        let with_bias = match (d[0], d[2]) {
            (Some(dx), Some(db)) => Some(V::apply(MatMulBias, &[dx, w, db])),
            (Some(dx), None) => Some(dx.matmul(w)),
            (None, Some(db)) => Some(db.broadcast_to(ctx.out_shape())),
            (None, None) => None,
        };
        let via_w = d[1].map(|dw| x.matmul(dw));
        match (with_bias, via_w) {
            (Some(l), Some(r)) => l.add(&r),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => unreachable!("jvp called without tangents"),
        }
    }
    /// `dx = g w^T`, `dw = x^T g`, `db` = the column sums of `g`.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, g: &V) -> Vec<Option<V>> {
        let (x, w) = (ctx.x(0), ctx.x(1));
        vec![
            ctx.needs(0)
                .then(|| cotangent_product(ctx, 0, g, w, false, true)),
            ctx.needs(1)
                .then(|| cotangent_product(ctx, 1, x, g, true, false)),
            ctx.needs(2).then(|| g.sum_axis(0, false)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// Deterministic test numbers in [-1, 1).
    fn fill<F: Float>(rows: usize, cols: usize, seed: u64) -> Array2<F> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        Array2::from_shape_fn((rows, cols), |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            F::c((x >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
    }

    /// `beta c + op(a) op(b)` in f64, one dot product at a time.
    fn naive<F: Float>(
        c: &Array2<F>,
        a: ArrayView2<F>,
        b: ArrayView2<F>,
        beta: f64,
    ) -> Array2<f64> {
        Array2::from_shape_fn(c.dim(), |(i, j)| {
            let dot: f64 = (0..a.ncols())
                .map(|p| a[(i, p)].f64() * b[(p, j)].f64())
                .sum();
            beta * c[(i, j)].f64() + dot
        })
    }

    /// Every kernel this CPU has (the portable one always), transposed or not, with and
    /// without accumulation, on shapes across the crate's small- and large-matrix paths.
    fn kernels_match_reference<F: Float>(tol: f64) {
        let shapes = [
            (1, 1, 1),
            (3, 2, 5),
            (7, 1, 70),
            (64, 64, 64),
            (65, 300, 3),
            (130, 33, 97),
            (130, 33, 16),
            (9, 70, 8),
        ];
        for kernel in GemmKernel::available() {
            for &(m, k, n) in &shapes {
                for (ta, tb, beta) in [
                    (false, false, 0.0),
                    (true, false, 1.0),
                    (false, true, 1.0),
                    (true, true, 0.0),
                ] {
                    let a = fill::<F>(if ta { k } else { m }, if ta { m } else { k }, 1);
                    let b = fill::<F>(if tb { n } else { k }, if tb { k } else { n }, 2);
                    let c0 = fill::<F>(m, n, 3);
                    let (av, bv) = (op2(a.view(), ta), op2(b.view(), tb));
                    let want = naive(&c0, av, bv, beta);
                    let mut c = c0.clone();
                    gemm_batch(kernel, vec![(c.view_mut(), av, bv)], F::c(beta));
                    let err = c
                        .iter()
                        .zip(&want)
                        .map(|(&x, &y)| (x.f64() - y).abs() / (1.0 + y.abs()))
                        .fold(0.0, f64::max);
                    assert!(
                        err < tol,
                        "{kernel:?} {m}x{k}x{n} ta {ta} tb {tb} beta {beta}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_match_reference_f32() {
        kernels_match_reference::<f32>(1e-5);
    }

    #[test]
    fn kernels_match_reference_f64() {
        kernels_match_reference::<f64>(1e-13);
    }

    /// Products one vector wide (16 `f32` or 8 `f64` columns) give the `gemm` crate's
    /// bits, `a` transposed or not, with and without accumulation, on whole blocks of
    /// rows and on the rows left over.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn narrow_products_are_bitwise_the_gemm_crate() {
        fn check<F: Float>() {
            let n = 64 / size_of::<F>();
            for (m, k) in [(1, 1), (7, 16), (8, 128), (131, 64), (128, 256)] {
                for (ta, beta) in [(false, 0.0), (true, 0.0), (false, 1.0), (true, 1.0)] {
                    let a = fill::<F>(if ta { k } else { m }, if ta { m } else { k }, 6);
                    let b = fill::<F>(k, n, 7);
                    let c0 = fill::<F>(m, n, 8);
                    let (av, beta) = (op2(a.view(), ta), F::c(beta));
                    assert!(narrow::fits(&c0.clone().view_mut(), &b.view()));
                    let (mut ours, mut theirs) = (c0.clone(), c0.clone());
                    // SAFETY: only run where the CPU has AVX-512F; `fits` holds.
                    unsafe { narrow::product(ours.view_mut(), av, b.view(), beta) };
                    gemm_crate(theirs.view_mut(), av, b.view(), beta);
                    assert!(
                        ours.iter()
                            .zip(&theirs)
                            .all(|(x, y)| x.f64().to_bits() == y.f64().to_bits()),
                        "{m}x{k}x{n} ta {ta} beta {beta}"
                    );
                }
            }
        }
        if GemmKernel::available().contains(&GemmKernel::Avx512) {
            check::<f32>();
            check::<f64>();
        }
    }

    /// A product large enough to be cut into bands gives the same bits on 1, 2 and 3
    /// threads, on every kernel, and (within rounding) what one unsplit call gives.
    #[test]
    fn split_products_are_bitwise_independent_of_threads() {
        // Split by rows; and by columns, `a` transposed as in a weight gradient.
        let row_bands = (4 * BAND_ROWS + 3, 256, 256, false);
        let col_bands = (BAND_ROWS + 44, 1024, 3 * BAND_COLS + 5, true);
        for (m, k, n, ta) in [row_bands, col_bands] {
            assert!(m * k * n >= SPLIT_WORK);
            let a_stored = if ta {
                fill::<f32>(k, m, 4)
            } else {
                fill::<f32>(m, k, 4)
            };
            let a = op2(a_stored.view(), ta);
            let b = fill::<f32>(k, n, 5);
            for kernel in GemmKernel::available() {
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut c = Array2::<f32>::zeros((m, n));
                    pool.install(|| gemm_batch(kernel, vec![(c.view_mut(), a, b.view())], 0.0));
                    c
                };
                let one = run(1);
                for threads in [2, 3] {
                    assert!(
                        one.iter()
                            .zip(&run(threads))
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kernel:?} on {threads} threads, m {m}"
                    );
                }
                let mut whole = Array2::<f32>::zeros((m, n));
                kernel.run(whole.view_mut(), a, b.view(), 0.0);
                let err = (&one - &whole).iter().fold(0f32, |e, d| e.max(d.abs()));
                assert!(err < 1e-3, "{kernel:?}: banded vs whole {err}, m {m}");
            }
        }
    }
}
