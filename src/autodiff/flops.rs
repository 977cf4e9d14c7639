//! Floating-point work counters, and the gemm peak that achieved throughput is compared
//! with.
//!
//! Every matrix product the engine runs, in any mode (a forward pass, a JVP's extra
//! products on dual numbers, a VJP's two products), goes through one gemm routine,
//! which adds `2 m n k` per product to a process-wide counter and records the product's
//! shape. Every other primitive adds the number of elements it writes to a second
//! counter (a proxy for its work: an `exp`, a layer norm or a softmax costs a few
//! operations per element). Both are atomics, so work done on rayon's threads counts.
//!
//! ```
//! use datarater::autodiff::flops;
//! use datarater::{Tensor, Value};
//! let a = Tensor::<f32>::full(&[4, 3], 1.0)?;
//! let b = Tensor::<f32>::full(&[3, 5], 1.0)?;
//! let (_, work) = flops::count(|| a.matmul(&b).exp());
//! assert_eq!(work.matmul, 2 * 4 * 5 * 3); // 2 m n k
//! assert_eq!(work.other, 4 * 5);          // the exp's outputs
//! # Ok::<(), datarater::Error>(())
//! ```
//!
//! The counters are global: concurrent work elsewhere in the process is counted too.
//! [`gemm_peak`] replays the recorded products on fresh operands, with nothing else in
//! between, to give the throughput the machine's gemm reaches on exactly those shapes
//! with the calling thread pool: the roof a model's passes are measured against.

use super::float::Float;
use super::ops::attention::{HeadMix, HeadScores};
pub use super::ops::linalg::GemmKernel;
use super::ops::linalg::MatMul;
use super::tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static MATMUL: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);
static SHAPES: Mutex<BTreeMap<GemmShape, u64>> = Mutex::new(BTreeMap::new());

/// Work counted since the last [`reset`] (or between two snapshots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlopCount {
    /// Floating-point operations of matrix products, `2 m n k` each.
    pub matmul: u64,
    /// Elements written by every other primitive.
    pub other: u64,
}

impl std::ops::Sub for FlopCount {
    type Output = FlopCount;
    fn sub(self, rhs: FlopCount) -> FlopCount {
        FlopCount {
            matmul: self.matmul - rhs.matmul,
            other: self.other - rhs.other,
        }
    }
}

/// One matrix product's shape: `batch` products `op_a(A) [m, k] x op_b(B) [k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GemmShape {
    /// Number of products (1 for a 2-D matmul).
    pub batch: usize,
    /// Rows of the output.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of the output.
    pub n: usize,
    /// The left operand is transposed.
    pub ta: bool,
    /// The right operand is transposed.
    pub tb: bool,
}

impl GemmShape {
    /// `2 batch m n k`.
    pub fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }
}

/// The ops whose work is all matrix products: they count FLOPs in the gemm routine and
/// write no "other" elements.
pub(crate) const GEMM_OPS: [&str; 3] = [MatMul::NAME, HeadScores::NAME, HeadMix::NAME];

pub(crate) fn add_gemm(shape: GemmShape) {
    MATMUL.fetch_add(shape.flops(), Ordering::Relaxed);
    *SHAPES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(shape)
        .or_insert(0) += 1;
}

pub(crate) fn add_other(elements: usize) {
    OTHER.fetch_add(elements as u64, Ordering::Relaxed);
}

/// The counters now.
pub fn snapshot() -> FlopCount {
    FlopCount {
        matmul: MATMUL.load(Ordering::Relaxed),
        other: OTHER.load(Ordering::Relaxed),
    }
}

/// Sets both counters to zero and forgets the recorded gemm shapes.
pub fn reset() {
    MATMUL.store(0, Ordering::Relaxed);
    OTHER.store(0, Ordering::Relaxed);
    SHAPES.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Runs `f` and returns its result with the work counted while it ran.
pub fn count<T>(f: impl FnOnce() -> T) -> (T, FlopCount) {
    let before = snapshot();
    let out = f();
    (out, snapshot() - before)
}

/// The gemm shapes recorded since the last [`reset`], with how often each ran.
pub fn gemm_shapes() -> Vec<(GemmShape, u64)> {
    SHAPES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(&s, &c)| (s, c))
        .collect()
}

/// What [`gemm_peak`] measured.
#[derive(Clone, Copy, Debug)]
pub struct GemmPeak {
    /// FLOPs of one replay.
    pub flops: u64,
    /// Seconds of the fastest replay.
    pub secs: f64,
}

impl GemmPeak {
    /// Achieved GFLOP/s of the fastest replay.
    pub fn gflops(&self) -> f64 {
        self.flops as f64 / self.secs / 1e9
    }
}

/// Times the crate's own gemm ([`GemmKernel::best`]) on `shapes`; see [`gemm_peak_on`].
pub fn gemm_peak<F: Float>(shapes: &[(GemmShape, u64)], min_secs: f64) -> GemmPeak {
    gemm_peak_on::<F>(GemmKernel::best(), shapes, min_secs)
}

/// The fastest of [`gemm_peak_on`] over every kernel the process can run
/// ([`GemmKernel::available`]), each replaying all of `shapes`: the best gemm this
/// machine offers the process, with the engine's own splitting over threads.
pub fn gemm_roof<F: Float>(shapes: &[(GemmShape, u64)], min_secs: f64) -> GemmPeak {
    GemmKernel::available()
        .into_iter()
        .map(|k| gemm_peak_on::<F>(k, shapes, min_secs))
        .min_by(|a, b| a.secs.total_cmp(&b.secs))
        .expect("at least the portable kernel")
}

/// Times a gemm kernel on `shapes` (each run as often as its count says, on
/// fresh operands, output allocation included), repeating the whole replay until
/// `min_secs` have passed (at least twice), and returns the fastest replay. Run it in
/// the thread pool the measured work used. The replay's own work is counted by the
/// counters like any other.
pub fn gemm_peak_on<F: Float>(
    kernel: GemmKernel,
    shapes: &[(GemmShape, u64)],
    min_secs: f64,
) -> GemmPeak {
    let operands: Vec<(MatMul, Tensor<F>, Tensor<F>, u64)> = shapes
        .iter()
        .map(|&(s, c)| {
            let a = if s.ta {
                [s.batch, s.k, s.m]
            } else {
                [s.batch, s.m, s.k]
            };
            let b = if s.tb {
                [s.batch, s.n, s.k]
            } else {
                [s.batch, s.k, s.n]
            };
            let op = MatMul { ta: s.ta, tb: s.tb };
            (
                op,
                Tensor::filled(&a, F::c(0.5)),
                Tensor::filled(&b, F::c(0.25)),
                c,
            )
        })
        .collect();
    let flops = shapes.iter().map(|(s, c)| s.flops() * c).sum();
    let (start, mut best, mut runs) = (Instant::now(), f64::INFINITY, 0);
    while runs < 2 || start.elapsed().as_secs_f64() < min_secs {
        let t = Instant::now();
        for (op, a, b, c) in &operands {
            for _ in 0..*c {
                std::hint::black_box(op.forward_on(kernel, &[a, b]));
            }
        }
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    GemmPeak { flops, secs: best }
}
