//! Op-level derivative tests, in f64: for every public op of `Value`, the forward-mode
//! JVP (through `Dual`) and the reverse-mode VJP (through `Var` on a `Tape`) are checked
//! against central finite differences on random shapes and values, and the three HVP
//! compositions (forward-over-reverse, reverse-over-reverse, reverse-over-forward) are
//! checked against each other, against finite differences of gradients, and for
//! symmetry.
//!
//! Each random case is a scalar function `f(x..) = sum(w * y + 0.5 * w2 * y^2)` with
//! `y = op(x..)` and fixed random weights `w`, `w2`: its gradient is `J^T (w + w2 y)`,
//! and its Hessian has the Gauss-Newton part `J^T diag(w2) J` plus the op's own
//! curvature, so even linear ops get a non-zero Hessian that every mode has to agree on.
//! Some inputs are random constants (zero tangent, no cotangent needed) and some
//! binary cases feed the same variable twice, to reach the `None` and fan-out paths.

use datarater::autodiff::Op as _;
use datarater::autodiff::check::{self, Report, ScalarFn, compare, compare_tensors};
use datarater::autodiff::ops::attention::{Attention, HeadMix, HeadScores};
use datarater::autodiff::ops::linalg::MatMulBias;
use datarater::autodiff::ops::norm::AffineLayerNorm;
use datarater::transforms::{grad, hvp, hvp_rev_fwd, hvp_rev_rev, jvp, value_and_grad, vjp};
use datarater::{Dual, Indices, Mask, Params, Rng, Tensor, Value, Var};
use proptest::prelude::*;

/// Central-difference step for first-order checks.
const EPS: f64 = 1e-5;
/// Relative tolerance, first order vs. finite differences.
const TOL_FD1: f64 = 1e-6;
/// Relative tolerance, HVP vs. finite differences of gradients.
const TOL_FD2: f64 = 1e-5;
/// Relative tolerance, third-order contraction vs. finite differences of HVPs.
const TOL_FD3: f64 = 1e-5;
/// Relative tolerance between exact modes (they differ only by rounding).
const TOL_EXACT: f64 = 1e-10;
/// Random cases per op.
const CASES: u32 = 48;

// ---- the ops under test ------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Neg,
    Scale(f64),
    AddScalar(f64),
    Exp,
    Ln,
    Tanh,
    Sigmoid,
    Sqrt,
    Powi(i32),
    Square,
    Recip,
    Gelu,
    Relu,
    /// `a.matmul(b)`.
    MatMul,
    /// `a.matmul_t(b, ta, tb)`.
    MatMulT(bool, bool),
    /// `MatMulBias` on `(x, w, b)`.
    MatMulBias,
    /// `HeadScores { heads }` on `(a, c)`.
    HeadScores(usize),
    /// `HeadMix { heads, tp }` on `(p, v)`.
    HeadMix(usize, bool),
    /// `Attention { heads, causal }` on `(q, k, v)`.
    Attention(usize, bool),
    Permute(Vec<usize>),
    T,
    Reshape(Vec<usize>),
    BroadcastTo(Vec<usize>),
    SumTo(Vec<usize>),
    Slice(usize, usize, usize),
    Concat(usize),
    SumAxis(usize, bool),
    MeanAxis(usize, bool),
    SumAll,
    MeanAll,
    Softmax(usize),
    MaskedSoftmax(usize, Mask),
    LogSoftmax(usize),
    LogSumExp(usize, bool),
    GatherRows(Indices),
    PickLast(Indices),
    CrossEntropy(Indices),
    MaskedFill(Mask, f64),
    Select(Mask),
    LayerNorm(f64),
    /// `AffineLayerNorm { eps }` on `(x, g, b)`.
    AffineLayerNorm(f64),
}

impl Op {
    fn apply<V: Value<F = f64>>(&self, x: &[V]) -> V {
        match self {
            Op::Add => x[0].add(&x[1]),
            Op::Sub => x[0].sub(&x[1]),
            Op::Mul => x[0].mul(&x[1]),
            Op::Div => x[0].div(&x[1]),
            Op::Neg => x[0].neg(),
            Op::Scale(c) => x[0].scale(*c),
            Op::AddScalar(c) => x[0].add_scalar(*c),
            Op::Exp => x[0].exp(),
            Op::Ln => x[0].ln(),
            Op::Tanh => x[0].tanh(),
            Op::Sigmoid => x[0].sigmoid(),
            Op::Sqrt => x[0].sqrt(),
            Op::Powi(n) => x[0].powi(*n),
            Op::Square => x[0].square(),
            Op::Recip => x[0].recip(),
            Op::Gelu => x[0].gelu(),
            Op::Relu => x[0].relu(),
            Op::MatMul => x[0].matmul(&x[1]),
            Op::MatMulT(ta, tb) => x[0].matmul_t(&x[1], *ta, *tb),
            Op::MatMulBias => V::apply(MatMulBias, &[&x[0], &x[1], &x[2]]),
            Op::HeadScores(heads) => V::apply(HeadScores { heads: *heads }, &[&x[0], &x[1]]),
            Op::HeadMix(heads, tp) => V::apply(
                HeadMix {
                    heads: *heads,
                    tp: *tp,
                },
                &[&x[0], &x[1]],
            ),
            Op::Attention(heads, causal) => V::apply(
                Attention {
                    heads: *heads,
                    causal: *causal,
                },
                &[&x[0], &x[1], &x[2]],
            ),
            Op::Permute(p) => x[0].permute(p),
            Op::T => x[0].t(),
            Op::Reshape(s) => x[0].reshape(s),
            Op::BroadcastTo(s) => x[0].broadcast_to(s),
            Op::SumTo(s) => x[0].sum_to(s),
            Op::Slice(axis, start, end) => x[0].slice(*axis, *start, *end),
            Op::Concat(axis) => V::concat(&x.iter().collect::<Vec<_>>(), *axis),
            Op::SumAxis(axis, keep) => x[0].sum_axis(*axis, *keep),
            Op::MeanAxis(axis, keep) => x[0].mean_axis(*axis, *keep),
            Op::SumAll => x[0].sum_all(),
            Op::MeanAll => x[0].mean_all(),
            Op::Softmax(axis) => x[0].softmax(*axis),
            Op::MaskedSoftmax(axis, mask) => x[0].masked_softmax(*axis, mask),
            Op::LogSoftmax(axis) => x[0].log_softmax(*axis),
            Op::LogSumExp(axis, keep) => x[0].logsumexp(*axis, *keep),
            Op::GatherRows(idx) => x[0].gather_rows(idx).expect("valid rows"),
            Op::PickLast(idx) => x[0].pick_last(idx).expect("valid classes"),
            Op::CrossEntropy(idx) => x[0].cross_entropy(idx).expect("valid classes"),
            Op::MaskedFill(mask, value) => x[0].masked_fill(mask, *value),
            Op::Select(cond) => V::select(cond, &x[0], &x[1]),
            Op::LayerNorm(eps) => x[0].layer_norm(*eps),
            Op::AffineLayerNorm(eps) => {
                V::apply(AffineLayerNorm { eps: *eps }, &[&x[0], &x[1], &x[2]])
            }
        }
    }
}

// ---- a test case: an op, its inputs, and the scalarising weights --------------------

#[derive(Clone, Debug)]
enum Input {
    /// A parameter (differentiated).
    Var(String),
    /// A constant (zero tangent, no cotangent).
    Const(Tensor<f64>),
}

#[derive(Clone, Debug)]
struct Case {
    op: Op,
    inputs: Vec<Input>,
    w: Tensor<f64>,
    w2: Tensor<f64>,
}

impl Case {
    /// `op(inputs)`, tensor-valued.
    fn output<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let xs: Vec<V> = self
            .inputs
            .iter()
            .map(|i| match i {
                Input::Var(k) => p[k].clone(),
                Input::Const(t) => V::constant(t.clone()),
            })
            .collect();
        self.op.apply(&xs)
    }
}

impl ScalarFn for Case {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let y = self.output(p);
        let w = V::constant(self.w.clone());
        let w2 = V::constant(self.w2.clone());
        y.mul(&w).add(&y.square().mul(&w2).scale(0.5)).sum_all()
    }
}

/// How a generated input enters the case.
enum Arg {
    Var(Tensor<f64>),
    Const(Tensor<f64>),
    /// The same input as argument `i` (fan-out of one variable).
    Same(usize),
}

fn finish(op: Op, args: Vec<Arg>, rng: &mut Rng) -> (Case, Params<Tensor<f64>>) {
    let mut p = Params::new();
    let mut inputs: Vec<Input> = Vec::new();
    for (i, a) in args.into_iter().enumerate() {
        let input = match a {
            Arg::Var(t) => {
                let k = format!("x{i}");
                p.insert(k.clone(), t);
                Input::Var(k)
            }
            Arg::Const(t) => Input::Const(t),
            Arg::Same(j) => inputs[j].clone(),
        };
        inputs.push(input);
    }
    assert!(!p.is_empty(), "a case needs at least one variable");
    let mut case = Case {
        op,
        inputs,
        w: Tensor::scalar(0.0),
        w2: Tensor::scalar(0.0),
    };
    let shape = case.output(&p).shape().to_vec();
    case.w = normal(rng, &shape);
    case.w2 = normal(rng, &shape);
    (case, p)
}

// ---- random shapes and values -------------------------------------------------------

fn pick(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below(hi - lo + 1)
}

fn coin(rng: &mut Rng) -> bool {
    rng.below(2) == 1
}

fn rand_shape(rng: &mut Rng, ranks: (usize, usize), dims: (usize, usize)) -> Vec<usize> {
    let r = pick(rng, ranks.0, ranks.1);
    (0..r).map(|_| pick(rng, dims.0, dims.1)).collect()
}

/// A shape that broadcasts to `out`: some leading axes dropped, some axes set to 1.
fn broadcast_src(rng: &mut Rng, out: &[usize]) -> Vec<usize> {
    let drop = rng.below(out.len() + 1);
    out[drop..]
        .iter()
        .map(|&d| if rng.below(3) == 0 { 1 } else { d })
        .collect()
}

/// Like [`broadcast_src`] but never equal to `out` (whose dims must all be > 1).
fn strict_broadcast_src(rng: &mut Rng, out: &[usize]) -> Vec<usize> {
    loop {
        let s = broadcast_src(rng, out);
        if s != out {
            return s;
        }
    }
}

fn tensor(rng: &mut Rng, shape: &[usize], mut f: impl FnMut(&mut Rng) -> f64) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| f(rng)).collect()).expect("sized")
}

fn normal(rng: &mut Rng, shape: &[usize]) -> Tensor<f64> {
    tensor(rng, shape, Rng::normal)
}

fn uniform(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    tensor(rng, shape, |r| lo + (hi - lo) * r.uniform())
}

/// Magnitude in `[lo, hi]`, random sign.
fn away_from_zero(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    tensor(rng, shape, |r| {
        let m = lo + (hi - lo) * r.uniform();
        if r.below(2) == 0 { m } else { -m }
    })
}

fn indices(rng: &mut Rng, shape: &[usize], below: usize) -> Indices {
    let n = shape.iter().product();
    Indices::new(shape, (0..n).map(|_| rng.below(below)).collect()).expect("sized")
}

fn mask(rng: &mut Rng, shape: &[usize]) -> Mask {
    let n = shape.iter().product();
    Mask::new(shape, (0..n).map(|_| coin(rng)).collect()).expect("sized")
}

/// Two operands, both variables, one a constant, or the same variable twice.
fn binary_args(rng: &mut Rng, a: Tensor<f64>, b: Tensor<f64>) -> Vec<Arg> {
    match rng.below(5) {
        0 => vec![Arg::Var(a), Arg::Const(b)],
        1 => vec![Arg::Const(a), Arg::Var(b)],
        2 if a.shape() == b.shape() => vec![Arg::Var(a), Arg::Same(0)],
        _ => vec![Arg::Var(a), Arg::Var(b)],
    }
}

/// The op families, each with its own shape and domain generator.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
    Neg,
    Scale,
    AddScalar,
    Exp,
    Ln,
    Tanh,
    Sigmoid,
    Sqrt,
    Powi,
    Square,
    Recip,
    Gelu,
    Relu,
    MatMul,
    /// `matmul_t(ta, tb)`, 2-D when `batched` is false, else rank 3 or 4.
    MatMulT {
        ta: bool,
        tb: bool,
        batched: bool,
    },
    MatMulBias,
    HeadScores,
    HeadMix {
        tp: bool,
    },
    Attention {
        causal: bool,
    },
    Permute,
    T,
    Reshape,
    BroadcastTo,
    SumTo,
    Slice,
    Concat,
    SumAxis,
    MeanAxis,
    SumAll,
    MeanAll,
    Softmax,
    MaskedSoftmax,
    LogSoftmax,
    LogSumExp {
        keep: bool,
    },
    GatherRows,
    PickLast,
    CrossEntropy,
    MaskedFill,
    Select,
    LayerNorm,
    AffineLayerNorm,
}

fn build(kind: Kind, rng: &mut Rng) -> (Case, Params<Tensor<f64>>) {
    let unary_shape = |rng: &mut Rng| rand_shape(rng, (0, 4), (1, 4));
    let (op, args) = match kind {
        Kind::Add | Kind::Sub | Kind::Mul | Kind::Div => {
            let out = rand_shape(rng, (0, 3), (1, 4));
            let (sa, sb) = (broadcast_src(rng, &out), broadcast_src(rng, &out));
            let a = normal(rng, &sa);
            let b = match kind {
                Kind::Div => away_from_zero(rng, &sb, 0.5, 2.0),
                _ => normal(rng, &sb),
            };
            let op = match kind {
                Kind::Add => Op::Add,
                Kind::Sub => Op::Sub,
                Kind::Mul => Op::Mul,
                _ => Op::Div,
            };
            (op, binary_args(rng, a, b))
        }
        Kind::Neg | Kind::Scale | Kind::AddScalar | Kind::Exp | Kind::Tanh | Kind::Sigmoid => {
            let s = unary_shape(rng);
            let c = 3.0 * rng.normal();
            let op = match kind {
                Kind::Neg => Op::Neg,
                Kind::Scale => Op::Scale(c),
                Kind::AddScalar => Op::AddScalar(c),
                Kind::Exp => Op::Exp,
                Kind::Tanh => Op::Tanh,
                _ => Op::Sigmoid,
            };
            (op, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Square | Kind::Gelu => {
            let s = unary_shape(rng);
            let op = if matches!(kind, Kind::Square) {
                Op::Square
            } else {
                Op::Gelu
            };
            (op, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Ln | Kind::Sqrt => {
            let s = unary_shape(rng);
            let op = if matches!(kind, Kind::Ln) {
                Op::Ln
            } else {
                Op::Sqrt
            };
            (op, vec![Arg::Var(uniform(rng, &s, 0.5, 2.0))])
        }
        Kind::Powi | Kind::Recip => {
            let s = unary_shape(rng);
            let op = if matches!(kind, Kind::Recip) {
                Op::Recip
            } else {
                Op::Powi(pick(rng, 0, 7) as i32 - 3)
            };
            (op, vec![Arg::Var(away_from_zero(rng, &s, 0.7, 1.5))])
        }
        Kind::Relu => {
            let s = unary_shape(rng);
            (Op::Relu, vec![Arg::Var(away_from_zero(rng, &s, 0.05, 2.0))])
        }
        Kind::MatMul | Kind::MatMulT { .. } => {
            let (ta, tb, batched) = match kind {
                Kind::MatMulT { ta, tb, batched } => (ta, tb, batched),
                _ => (false, false, coin(rng)),
            };
            let batch = if batched {
                rand_shape(rng, (1, 2), (1, 3))
            } else {
                vec![]
            };
            let (m, k, n) = (pick(rng, 1, 4), pick(rng, 1, 4), pick(rng, 1, 4));
            let mut sa = batch.clone();
            sa.extend(if ta { [k, m] } else { [m, k] });
            let mut sb = batch;
            sb.extend(if tb { [n, k] } else { [k, n] });
            let (a, b) = (normal(rng, &sa), normal(rng, &sb));
            let op = match kind {
                Kind::MatMul => Op::MatMul,
                _ => Op::MatMulT(ta, tb),
            };
            (op, binary_args(rng, a, b))
        }
        Kind::MatMulBias => {
            let (m, k, n) = (pick(rng, 1, 4), pick(rng, 1, 4), pick(rng, 1, 4));
            let (x, w) = (normal(rng, &[m, k]), normal(rng, &[k, n]));
            let mut args = binary_args(rng, x, w);
            let b = normal(rng, &[n]);
            args.push(if coin(rng) {
                Arg::Var(b)
            } else {
                Arg::Const(b)
            });
            (Op::MatMulBias, args)
        }
        Kind::HeadScores | Kind::HeadMix { .. } => {
            let (b, heads, dh) = (pick(rng, 1, 3), pick(rng, 1, 3), pick(rng, 1, 3));
            let (t, s) = (pick(rng, 1, 4), pick(rng, 1, 4));
            match kind {
                Kind::HeadMix { tp } => {
                    let p = normal(
                        rng,
                        &if tp {
                            [b, heads, s, t]
                        } else {
                            [b, heads, t, s]
                        },
                    );
                    let v = normal(rng, &[b, s, heads * dh]);
                    (Op::HeadMix(heads, tp), binary_args(rng, p, v))
                }
                _ => {
                    let a = normal(rng, &[b, t, heads * dh]);
                    let c = normal(rng, &[b, s, heads * dh]);
                    (Op::HeadScores(heads), binary_args(rng, a, c))
                }
            }
        }
        Kind::Attention { causal } => {
            let (b, heads, dh) = (pick(rng, 1, 3), pick(rng, 1, 3), pick(rng, 1, 3));
            let t = pick(rng, 1, 5);
            let s = if causal { t } else { pick(rng, 1, 5) };
            let d = heads * dh;
            // Scores of order 1 or more, so the softmax is far from uniform.
            let q = normal(rng, &[b, t, d]).scale(1.5);
            let (k, v) = (normal(rng, &[b, s, d]), normal(rng, &[b, s, d]));
            // Each input a variable, a constant, or (self-attention) the same as q.
            let mut args = vec![Arg::Var(q)];
            for x in [k, v] {
                args.push(match pick(rng, 0, 4) {
                    0 => Arg::Const(x),
                    1 if s == t => Arg::Same(0),
                    _ => Arg::Var(x),
                });
            }
            if coin(rng) && args.iter().skip(1).any(|a| matches!(a, Arg::Var(_))) {
                let Arg::Var(q) = std::mem::replace(&mut args[0], Arg::Same(0)) else {
                    unreachable!()
                };
                args[0] = Arg::Const(q);
            }
            (Op::Attention(heads, causal), args)
        }
        Kind::Permute => {
            let s = rand_shape(rng, (1, 4), (1, 4));
            let mut perm: Vec<usize> = (0..s.len()).collect();
            rng.shuffle(&mut perm);
            (Op::Permute(perm), vec![Arg::Var(normal(rng, &s))])
        }
        Kind::T => {
            let s = rand_shape(rng, (2, 4), (1, 4));
            (Op::T, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Reshape => {
            let s = rand_shape(rng, (1, 4), (1, 4));
            // Regroup the prime factors of the element count into a random new shape.
            let mut primes: Vec<usize> = s
                .iter()
                .flat_map(|&d| match d {
                    4 => vec![2, 2],
                    1 => vec![],
                    d => vec![d],
                })
                .collect();
            rng.shuffle(&mut primes);
            let mut target = Vec::new();
            let mut acc = 1;
            for q in primes {
                acc *= q;
                if coin(rng) {
                    target.push(acc);
                    acc = 1;
                }
            }
            if acc > 1 || target.is_empty() || coin(rng) {
                target.push(acc);
            }
            if coin(rng) {
                let at = rng.below(target.len() + 1);
                target.insert(at, 1);
            }
            (Op::Reshape(target), vec![Arg::Var(normal(rng, &s))])
        }
        Kind::BroadcastTo => {
            let out = rand_shape(rng, (1, 4), (2, 4));
            let src = strict_broadcast_src(rng, &out);
            (Op::BroadcastTo(out), vec![Arg::Var(normal(rng, &src))])
        }
        Kind::SumTo => {
            let src = rand_shape(rng, (1, 4), (2, 4));
            let dst = strict_broadcast_src(rng, &src);
            (Op::SumTo(dst), vec![Arg::Var(normal(rng, &src))])
        }
        Kind::Slice => {
            let s = rand_shape(rng, (1, 4), (1, 5));
            let axis = rng.below(s.len());
            let start = rng.below(s[axis]);
            let end = pick(rng, start + 1, s[axis]);
            (Op::Slice(axis, start, end), vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Concat => {
            let base = rand_shape(rng, (1, 3), (1, 4));
            let axis = rng.below(base.len());
            let parts = pick(rng, 1, 3);
            let mut args: Vec<Arg> = (0..parts)
                .map(|_| {
                    let mut s = base.clone();
                    s[axis] = pick(rng, 1, 3);
                    let t = normal(rng, &s);
                    if rng.below(3) == 0 {
                        Arg::Const(t)
                    } else {
                        Arg::Var(t)
                    }
                })
                .collect();
            if !args.iter().any(|a| matches!(a, Arg::Var(_))) {
                let mut s = base.clone();
                s[axis] = 2;
                args.push(Arg::Var(normal(rng, &s)));
            }
            (Op::Concat(axis), args)
        }
        Kind::SumAxis | Kind::MeanAxis => {
            let s = rand_shape(rng, (1, 4), (1, 4));
            let (axis, keep) = (rng.below(s.len()), coin(rng));
            let op = if matches!(kind, Kind::SumAxis) {
                Op::SumAxis(axis, keep)
            } else {
                Op::MeanAxis(axis, keep)
            };
            (op, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::SumAll | Kind::MeanAll => {
            let s = unary_shape(rng);
            let op = if matches!(kind, Kind::SumAll) {
                Op::SumAll
            } else {
                Op::MeanAll
            };
            (op, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Softmax | Kind::MaskedSoftmax | Kind::LogSoftmax | Kind::LogSumExp { .. } => {
            let s = rand_shape(rng, (1, 3), (1, 5));
            let axis = rng.below(s.len());
            let op = match kind {
                Kind::Softmax => Op::Softmax(axis),
                Kind::MaskedSoftmax => {
                    // Any mask that broadcasts, fully masked lanes included.
                    let ms = broadcast_src(rng, &s);
                    Op::MaskedSoftmax(axis, mask(rng, &ms))
                }
                Kind::LogSoftmax => Op::LogSoftmax(axis),
                Kind::LogSumExp { keep } => Op::LogSumExp(axis, keep),
                _ => unreachable!(),
            };
            (op, vec![Arg::Var(tensor(rng, &s, |r| 2.0 * r.normal()))])
        }
        Kind::GatherRows => {
            let (rows, d) = (pick(rng, 1, 5), pick(rng, 1, 4));
            let idx_shape = rand_shape(rng, (0, 2), (1, 4));
            let idx = indices(rng, &idx_shape, rows);
            (Op::GatherRows(idx), vec![Arg::Var(normal(rng, &[rows, d]))])
        }
        Kind::PickLast | Kind::CrossEntropy => {
            let lead = rand_shape(rng, (0, 2), (1, 4));
            let classes = pick(rng, 1, 5);
            let idx = indices(rng, &lead, classes);
            let mut s = lead;
            s.push(classes);
            let op = if matches!(kind, Kind::PickLast) {
                Op::PickLast(idx)
            } else {
                Op::CrossEntropy(idx)
            };
            (op, vec![Arg::Var(normal(rng, &s))])
        }
        Kind::MaskedFill => {
            let s = rand_shape(rng, (1, 3), (1, 4));
            let ms = broadcast_src(rng, &s);
            let m = mask(rng, &ms);
            let value = rng.normal();
            (Op::MaskedFill(m, value), vec![Arg::Var(normal(rng, &s))])
        }
        Kind::Select => {
            // `a` and `b` broadcast against each other; `cond` against their common shape.
            let s = rand_shape(rng, (0, 3), (1, 4));
            let (sa, sb) = (broadcast_src(rng, &s), broadcast_src(rng, &s));
            let common = datarater::autodiff::ops::binary::broadcast_shape("test", &sa, &sb);
            let cs = broadcast_src(rng, &common);
            let cond = mask(rng, &cs);
            let (a, b) = (normal(rng, &sa), normal(rng, &sb));
            (Op::Select(cond), binary_args(rng, a, b))
        }
        Kind::LayerNorm => {
            let mut s = rand_shape(rng, (0, 2), (1, 4));
            s.push(pick(rng, 2, 5));
            (Op::LayerNorm(1e-2), vec![Arg::Var(normal(rng, &s))])
        }
        Kind::AffineLayerNorm => {
            let mut s = rand_shape(rng, (0, 2), (1, 4));
            let n = pick(rng, 2, 5);
            s.push(n);
            // Each input a variable or a constant, so every subset of tangents occurs.
            let mut args: Vec<Arg> = [normal(rng, &s), normal(rng, &[n]), normal(rng, &[n])]
                .into_iter()
                .map(|t| {
                    if coin(rng) {
                        Arg::Var(t)
                    } else {
                        Arg::Const(t)
                    }
                })
                .collect();
            if !args.iter().any(|a| matches!(a, Arg::Var(_))) {
                let Arg::Const(x) = args.remove(0) else {
                    unreachable!("all constants")
                };
                args.insert(0, Arg::Var(x));
            }
            (Op::AffineLayerNorm(1e-2), args)
        }
    };
    finish(op, args, rng)
}

// ---- the checks -------------------------------------------------------------------

/// Absolute error accepted whatever the reference, as a fraction of `tol`: finite
/// differences of O(1) quantities cannot resolve derivatives much below this, and a
/// wrong rule is off by O(1).
const FLOOR: f64 = 1e-2;

/// `rel <= tol`, or an absolute error below `tol * FLOOR` (for references that are
/// zero or nearly so).
fn close(r: &Report, tol: f64) -> bool {
    r.ok(tol) || r.max_abs <= tol * FLOOR
}

/// A fourth-order (five-point) central-difference gradient: the plain central
/// difference of [`check::fd_gradient`] is not accurate enough for third derivatives.
fn fd5_gradient(
    f: impl Fn(&Params<Tensor<f64>>) -> f64,
    p: &Params<Tensor<f64>>,
    h: f64,
) -> Params<Tensor<f64>> {
    p.iter()
        .map(|(k, t)| {
            let at = |i: usize, d: f64| {
                let mut a = t.to_owned_array();
                *a.iter_mut().nth(i).expect("in range") += d;
                let mut q = p.clone();
                q.insert(k, Tensor::from_array(a));
                f(&q)
            };
            let g = (0..t.len())
                .map(|i| {
                    (8.0 * (at(i, h) - at(i, -h)) - (at(i, 2.0 * h) - at(i, -2.0 * h))) / (12.0 * h)
                })
                .collect();
            (
                k.to_string(),
                Tensor::from_vec(t.shape(), g).expect("sized"),
            )
        })
        .collect()
}

fn norm(t: &Tensor<f64>) -> f64 {
    t.dot_all(t).sqrt()
}

/// Runs every first- and second-order check on one case.
fn check_case(case: &Case, p: &Params<Tensor<f64>>, rng: &mut Rng) -> Result<(), TestCaseError> {
    let dir = p.map(|t| normal(rng, t.shape()));
    let (u, v) = (
        p.map(|t| normal(rng, t.shape())),
        p.map(|t| normal(rng, t.shape())),
    );

    // VJP (tape) of the scalarised op vs. central differences.
    let r = check::check_gradient(case, p, EPS)?;
    prop_assert!(close(&r, TOL_FD1), "gradient vs FD: {r:?}\n{case:?}");

    // JVP (dual) of the scalarised op vs. a central difference. A directional
    // derivative can be small by cancellation, so it is judged against the size of the
    // terms it sums, sum_i |g_i d_i|, as well as against itself.
    let r = check::check_jvp(case, p, &dir, EPS)?;
    let (_, g) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| case.eval(q), p)?;
    let terms = g
        .zip_map(&dir, |a, b| {
            Tensor::from_array((a.array() * b.array()).mapv(f64::abs))
        })?
        .values()
        .map(|t| t.to_vec().iter().sum::<f64>())
        .sum::<f64>();
    prop_assert!(
        close(&r, TOL_FD1) || r.max_abs <= TOL_FD1 * terms,
        "scalar JVP vs FD: {r:?} (sum |g d| = {terms})\n{case:?}"
    );

    // JVP of the op itself: the whole output tangent vs. a central difference.
    let (y, t) = jvp(|q: &Params<Dual<Tensor<f64>>>| case.output(q), p, &dir)?;
    prop_assert_eq!(t.shape(), y.shape());
    let fd = check::fd_directional(|q| case.output(q), p, &dir, EPS)?;
    let r = compare_tensors(&t, &fd)?;
    prop_assert!(close(&r, TOL_FD1), "output JVP vs FD: {r:?}\n{case:?}");

    // VJP of the op itself against its JVP: <c, J d> == <J^T c, d>.
    let cot = normal(rng, y.shape());
    let (_, g) = vjp(|q: &Params<Var<Tensor<f64>>>| case.output(q), p, &cot)?;
    g.check_like(p)?;
    let (lhs, rhs) = (cot.dot_all(&t), g.dot(&dir)?);
    let scale = norm(&cot) * norm(&t) + g.norm() * dir.norm() + 1e-300;
    prop_assert!(
        (lhs - rhs).abs() <= TOL_EXACT * scale,
        "<c, J d> = {lhs} but <J^T c, d> = {rhs}\n{case:?}"
    );

    // Second order: three modes agree with each other and with FD of gradients.
    let (val, g_fr, h_fr) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| case.eval(q), p, &v)?;
    let (val0, g0) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| case.eval(q), p)?;
    prop_assert!((val.item() - val0.item()).abs() <= 1e-12 * (1.0 + val0.item().abs()));
    let r = compare(&g_fr, &g0)?;
    prop_assert!(close(&r, TOL_EXACT), "hvp's gradient: {r:?}\n{case:?}");
    let h_rr = hvp_rev_rev(|q: &Params<Var<Var<Tensor<f64>>>>| case.eval(q), p, &v)?;
    let r = compare(&h_rr, &h_fr)?;
    prop_assert!(
        close(&r, TOL_EXACT),
        "rev-rev vs fwd-rev HVP: {r:?}\n{case:?}"
    );
    let h_rf = hvp_rev_fwd(|q: &Params<Dual<Var<Tensor<f64>>>>| case.eval(q), p, &v)?;
    let r = compare(&h_rf, &h_fr)?;
    prop_assert!(
        close(&r, TOL_EXACT),
        "rev-fwd vs fwd-rev HVP: {r:?}\n{case:?}"
    );
    let r = check::check_hvp(case, p, &v, EPS)?;
    prop_assert!(
        close(&r, TOL_FD2),
        "HVP vs FD of gradients: {r:?}\n{case:?}"
    );

    // Symmetry: u.Hv == v.Hu.
    let (_, _, h_u) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| case.eval(q), p, &u)?;
    let (uhv, vhu) = (u.dot(&h_fr)?, v.dot(&h_u)?);
    let scale = u.norm() * h_fr.norm() + v.norm() * h_u.norm() + 1e-300;
    prop_assert!(
        (uhv - vhu).abs() <= TOL_EXACT * scale,
        "u.Hv = {uhv} but v.Hu = {vhu}\n{case:?}"
    );

    // Third order: grad_x (u . H(x) v), by forward-over-reverse on a tape over an outer
    // tape, vs. central differences of u . H(x) v.
    let third = grad(
        |q: &Params<Var<Tensor<f64>>>| {
            let vq = v.map(|t| Var::constant_of(t.clone()));
            let (_, _, hv) = hvp(
                |r: &Params<Var<Dual<Var<Tensor<f64>>>>>| case.eval(r),
                q,
                &vq,
            )?;
            let mut acc = Var::scalar(0.0);
            for (k, h) in hv.iter() {
                acc = acc.add(&h.mul(&Var::constant_of(u[k].clone())).sum_all());
            }
            Ok(acc)
        },
        p,
    )?;
    let uhv = |q: &Params<Tensor<f64>>| {
        let (_, _, hv) =
            hvp(|r: &Params<Var<Dual<Tensor<f64>>>>| case.eval(r), q, &v).expect("hvp");
        u.dot(&hv).expect("same names")
    };
    let r = compare(&third, &fd5_gradient(uhv, p, 1e-3))?;
    prop_assert!(
        close(&r, TOL_FD3),
        "third order vs FD of HVPs: {r:?}\n{case:?}"
    );
    Ok(())
}

fn run(kind: Kind, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let (case, p) = build(kind, &mut rng);
    check_case(&case, &p, &mut rng)
}

macro_rules! op_tests {
    ($($name:ident => $kind:expr,)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            $(
                #[test]
                fn $name(seed in any::<u64>()) {
                    run($kind, seed)?;
                }
            )*
        }
    };
}

op_tests! {
    add => Kind::Add,
    sub => Kind::Sub,
    mul => Kind::Mul,
    div => Kind::Div,
    neg => Kind::Neg,
    scale => Kind::Scale,
    add_scalar => Kind::AddScalar,
    exp => Kind::Exp,
    ln => Kind::Ln,
    tanh => Kind::Tanh,
    sigmoid => Kind::Sigmoid,
    sqrt => Kind::Sqrt,
    powi => Kind::Powi,
    square => Kind::Square,
    recip => Kind::Recip,
    gelu => Kind::Gelu,
    relu => Kind::Relu,
    matmul => Kind::MatMul,
    matmul_t_nn_2d => Kind::MatMulT { ta: false, tb: false, batched: false },
    matmul_t_nt_2d => Kind::MatMulT { ta: false, tb: true, batched: false },
    matmul_t_tn_2d => Kind::MatMulT { ta: true, tb: false, batched: false },
    matmul_t_tt_2d => Kind::MatMulT { ta: true, tb: true, batched: false },
    matmul_t_nn_batched => Kind::MatMulT { ta: false, tb: false, batched: true },
    matmul_t_nt_batched => Kind::MatMulT { ta: false, tb: true, batched: true },
    matmul_t_tn_batched => Kind::MatMulT { ta: true, tb: false, batched: true },
    matmul_t_tt_batched => Kind::MatMulT { ta: true, tb: true, batched: true },
    matmul_bias => Kind::MatMulBias,
    head_scores => Kind::HeadScores,
    head_mix => Kind::HeadMix { tp: false },
    head_mix_tp => Kind::HeadMix { tp: true },
    attention => Kind::Attention { causal: false },
    attention_causal => Kind::Attention { causal: true },
    permute => Kind::Permute,
    t => Kind::T,
    reshape => Kind::Reshape,
    broadcast_to => Kind::BroadcastTo,
    sum_to => Kind::SumTo,
    slice => Kind::Slice,
    concat => Kind::Concat,
    sum_axis => Kind::SumAxis,
    mean_axis => Kind::MeanAxis,
    sum_all => Kind::SumAll,
    mean_all => Kind::MeanAll,
    softmax => Kind::Softmax,
    masked_softmax => Kind::MaskedSoftmax,
    log_softmax => Kind::LogSoftmax,
    logsumexp_keepdim => Kind::LogSumExp { keep: true },
    logsumexp_no_keepdim => Kind::LogSumExp { keep: false },
    gather_rows => Kind::GatherRows,
    pick_last => Kind::PickLast,
    cross_entropy => Kind::CrossEntropy,
    masked_fill => Kind::MaskedFill,
    select => Kind::Select,
    layer_norm => Kind::LayerNorm,
    affine_layer_norm => Kind::AffineLayerNorm,
}

// ---- fixed cases ------------------------------------------------------------------

/// The broadcasting pairs named in the numpy rules, for every binary op, with both
/// operands variables and with each one constant.
#[test]
fn binary_ops_broadcast_fixed_shapes() {
    let pairs: [(&[usize], &[usize]); 6] = [
        (&[3, 1, 4], &[2, 4]),
        (&[2, 4], &[3, 1, 4]),
        (&[], &[2, 3]),
        (&[2, 3], &[]),
        (&[4, 1], &[1, 5]),
        (&[2, 1, 3], &[2, 4, 1]),
    ];
    let mut rng = Rng::new(7);
    for (sa, sb) in pairs {
        for op in [Op::Add, Op::Sub, Op::Mul, Op::Div] {
            for mode in 0..3 {
                let a = normal(&mut rng, sa);
                let b = away_from_zero(&mut rng, sb, 0.5, 2.0);
                let args = match mode {
                    0 => vec![Arg::Var(a), Arg::Var(b)],
                    1 => vec![Arg::Var(a), Arg::Const(b)],
                    _ => vec![Arg::Const(a), Arg::Var(b)],
                };
                let (case, p) = finish(op.clone(), args, &mut rng);
                let out = case.output(&p).shape().to_vec();
                let want = datarater::autodiff::ops::binary::broadcast_shape("test", sa, sb);
                assert_eq!(out, want, "{op:?} {sa:?} {sb:?}");
                if let Err(e) = check_case(&case, &p, &mut rng) {
                    panic!("{op:?} {sa:?} with {sb:?}, mode {mode}: {e}");
                }
            }
        }
    }
}

/// Forward values of a few ops against hand-computed numbers, so the derivative checks
/// above are checking the right functions.
#[test]
fn forward_values() {
    let x = Tensor::<f64>::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    assert_eq!(x.t().to_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    assert_eq!(x.sum_axis(0, false).to_vec(), vec![5.0, 7.0, 9.0]);
    assert_eq!(x.sum_axis(1, true).shape(), vec![2, 1]);
    assert_eq!(x.mean_all().item(), 3.5);
    assert_eq!(x.slice(1, 1, 3).to_vec(), vec![2.0, 3.0, 5.0, 6.0]);
    assert_eq!(
        x.matmul_t(&x, false, true).to_vec(),
        vec![14.0, 32.0, 32.0, 77.0]
    );
    assert_eq!(x.matmul_t(&x, true, false).shape(), vec![3, 3]);
    let s = x.softmax(1).sum_axis(1, false).to_vec();
    assert!(s.iter().all(|v| (v - 1.0).abs() < 1e-15));
    let lse = x.logsumexp(1, false).to_vec();
    let want = (1.0f64.exp() + 2.0f64.exp() + 3.0f64.exp()).ln();
    assert!((lse[0] - want).abs() < 1e-14);
    let idx = Indices::new(&[2], vec![2, 0]).unwrap();
    assert_eq!(x.pick_last(&idx).unwrap().to_vec(), vec![3.0, 4.0]);
    assert_eq!(
        x.gather_rows(&Indices::new(&[2], vec![1, 1]).unwrap())
            .unwrap()
            .to_vec(),
        vec![4.0, 5.0, 6.0, 4.0, 5.0, 6.0]
    );
    let m = Mask::new(&[3], vec![true, false, true]).unwrap();
    assert_eq!(
        x.masked_fill(&m, -1.0).to_vec(),
        vec![-1.0, 2.0, -1.0, -1.0, 5.0, -1.0]
    );
    let b = Tensor::<f64>::scalar(10.0);
    assert_eq!(
        Tensor::select(&m, &x, &x.add(&b)).to_vec(),
        vec![1.0, 12.0, 3.0, 4.0, 15.0, 6.0]
    );
    // select broadcasts `a` and `b` against each other.
    let row = Tensor::<f64>::from_vec(&[3], vec![7.0, 8.0, 9.0]).unwrap();
    assert_eq!(
        Tensor::select(&m, &x, &row).to_vec(),
        vec![1.0, 8.0, 3.0, 4.0, 8.0, 6.0]
    );
    assert_eq!(Tensor::select(&m, &row, &b).to_vec(), vec![7.0, 10.0, 9.0]);
    // masked_softmax gives masked entries probability exactly 0.
    let ms = x.masked_softmax(1, &m).to_vec();
    assert_eq!(ms, vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    let causal = Mask::causal(3);
    let sq = Tensor::<f64>::zeros(&[3, 3])
        .unwrap()
        .masked_softmax(1, &causal)
        .to_vec();
    let third = 1.0 / 3.0;
    let want = [1.0, 0.0, 0.0, 0.5, 0.5, 0.0, third, third, third];
    assert!(
        sq.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15),
        "{sq:?}"
    );
    let ln = x.layer_norm(0.0);
    assert!(
        ln.mean_axis(1, false)
            .to_vec()
            .iter()
            .all(|v| v.abs() < 1e-12)
    );
    let gelu = Tensor::<f64>::scalar(1.0).gelu().item();
    assert!((gelu - 0.841_191_990_607_477_2).abs() < 1e-12, "{gelu}");
}

/// `max_axis_const` is a constant: its derivative is exactly zero in every mode, and
/// using it to stabilise a hand-written logsumexp leaves all derivatives unchanged.
#[derive(Clone, Debug)]
struct StableLse {
    axis: usize,
    manual: bool,
    w: Tensor<f64>,
}

impl ScalarFn for StableLse {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let x = &p["x"];
        let l = if self.manual {
            let m = x.max_axis_const(self.axis);
            x.sub(&m).exp().sum_axis(self.axis, true).ln().add(&m)
        } else {
            x.logsumexp(self.axis, true)
        };
        l.mul(&V::constant(self.w.clone())).sum_all()
    }
}

#[derive(Clone, Debug)]
struct MaxOnly {
    axis: usize,
    w: Tensor<f64>,
}

impl ScalarFn for MaxOnly {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let x = &p["x"];
        // `x * 0` keeps the output on the tape so the backward pass really runs.
        x.max_axis_const(self.axis)
            .mul(&V::constant(self.w.clone()))
            .sum_all()
            .add(&x.scale(0.0).sum_all())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn max_axis_const(seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let s = rand_shape(&mut rng, (1, 3), (1, 5));
        let axis = rng.below(s.len());
        let x = normal(&mut rng, &s);
        let mut p = Params::new();
        p.insert("x", x.clone());
        let m = x.max_axis_const(axis);
        let mut ms = s.clone();
        ms[axis] = 1;
        prop_assert_eq!(m.shape(), ms.clone());
        // The value is the max along the axis.
        let lanes = x.array().lanes(ndarray::Axis(axis));
        for (mv, lane) in m.to_vec().iter().zip(lanes) {
            prop_assert_eq!(*mv, lane.fold(f64::NEG_INFINITY, |a, &b| a.max(b)));
        }
        let w = normal(&mut rng, &ms);
        let f = MaxOnly { axis, w: w.clone() };
        let dir = p.map(|t| normal(&mut rng, t.shape()));
        let (_, g) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| f.eval(q), &p)?;
        prop_assert!(g["x"].to_vec().iter().all(|&v| v == 0.0));
        let (_, t) = jvp(|q: &Params<Dual<Tensor<f64>>>| f.eval(q), &p, &dir)?;
        prop_assert_eq!(t.item(), 0.0);
        let (_, _, hv) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| f.eval(q), &p, &dir)?;
        prop_assert!(hv["x"].to_vec().iter().all(|&v| v == 0.0));
        // Stabilising with it changes no derivative.
        let exact = StableLse { axis, manual: false, w: w.clone() };
        let manual = StableLse { axis, manual: true, w };
        let (_, g1) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| exact.eval(q), &p)?;
        let (_, g2) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| manual.eval(q), &p)?;
        let r = compare(&g2, &g1)?;
        prop_assert!(close(&r, 1e-12), "{r:?}");
        let (_, _, h1) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| exact.eval(q), &p, &dir)?;
        let (_, _, h2) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| manual.eval(q), &p, &dir)?;
        let r = compare(&h2, &h1)?;
        prop_assert!(close(&r, 1e-10), "{r:?}");
        let r = check::check_gradient(&manual, &p, EPS)?;
        prop_assert!(close(&r, TOL_FD1), "{r:?}");
    }
}

// ---- f32 --------------------------------------------------------------------------

/// A small model written once, generic over the element type.
fn small_model<V: Value>(p: &Params<V>) -> V {
    let c = |shape: &[usize], v: Vec<f64>| {
        V::constant(Tensor::<f64>::from_vec(shape, v).unwrap().cast::<V::F>())
    };
    let h = p["w"].matmul(&p["x"]).add(&p["b"]).tanh();
    let logits = h
        .t()
        .matmul(&c(&[3, 2], vec![0.5, -1.0, 0.25, 0.75, -0.5, 1.5]));
    let idx = Indices::new(&[4], vec![0, 1, 1, 0]).unwrap();
    let ce = logits.cross_entropy(&idx).unwrap().mean_all();
    ce.add(&p["x"].sigmoid().ln().neg().mean_all())
}

#[test]
fn f32_gradient_matches_f64() {
    let mut rng = Rng::new(3);
    let mut p64 = Params::new();
    p64.insert("w", normal(&mut rng, &[3, 5]));
    p64.insert("x", normal(&mut rng, &[5, 4]));
    p64.insert("b", normal(&mut rng, &[3, 1]));
    let p32: Params<Tensor<f32>> = p64.cast();
    let (y64, g64) = value_and_grad(small_model, &p64).unwrap();
    let (y32, g32) = value_and_grad(small_model, &p32).unwrap();
    assert!((y32.item() as f64 - y64.item()).abs() <= 1e-5 * y64.item().abs().max(1.0));
    let r = compare(&g32.cast(), &g64).unwrap();
    assert!(r.rel <= 1e-4, "{r:?}");
    assert!(g64.norm() > 0.1, "the gradient is not trivially small");
    // And the f64 gradient is right.
    let fd = check::fd_gradient(|q| small_model(q).item(), &p64, EPS);
    let r = compare(&g64, &fd).unwrap();
    assert!(r.rel <= TOL_FD1, "{r:?}");
    // Second order in f32 too.
    let v64 = p64.map(|t| normal(&mut rng, t.shape()));
    let (_, _, h64) = hvp(small_model, &p64, &v64).unwrap();
    let (_, _, h32) = hvp(small_model, &p32, &v64.cast()).unwrap();
    let r = compare(&h32.cast(), &h64).unwrap();
    assert!(r.rel <= 1e-3, "{r:?}");
}

// ---- checked helpers on plain tensors ---------------------------------------------------

fn index_err<T: std::fmt::Debug>(r: datarater::Result<T>) -> (&'static str, usize, usize) {
    match r {
        Err(datarater::Error::Index { op, index, size }) => (op, index, size),
        other => panic!("expected an index error, got {other:?}"),
    }
}

#[test]
fn try_concat_matches_the_differentiable_concat_and_checks_shapes() {
    let mut rng = Rng::new(31);
    let a = normal(&mut rng, &[2, 3, 4]);
    let b = normal(&mut rng, &[2, 1, 4]);
    let c = normal(&mut rng, &[2, 5, 4]);
    for (parts, axis) in [(vec![&a, &b, &c], 1), (vec![&a, &a], 0), (vec![&a, &a], 2)] {
        assert_eq!(
            Tensor::try_concat(&parts, axis).unwrap(),
            <Tensor<f64> as Value>::concat(&parts, axis)
        );
    }
    let shape_err = |r: datarater::Result<Tensor<f64>>| match r {
        Err(datarater::Error::Shape { lhs, rhs, .. }) => (lhs, rhs),
        other => panic!("expected a shape error, got {other:?}"),
    };
    assert_eq!(
        shape_err(Tensor::try_concat(&[&a, &b], 0)),
        (vec![2, 3, 4], vec![2, 1, 4])
    );
    let flat = normal(&mut rng, &[24]);
    assert_eq!(
        shape_err(Tensor::try_concat(&[&a, &flat], 0)),
        (vec![2, 3, 4], vec![24])
    );
    assert_eq!(index_err(Tensor::try_concat(&[&a], 3)).1, 3);
    assert!(matches!(
        Tensor::<f64>::try_concat(&[], 0),
        Err(datarater::Error::Usage(_))
    ));
}

#[test]
fn rows_and_select_rows_take_rows_in_order_and_check_indices() {
    let x = Tensor::<f64>::from_vec(&[4, 2, 1], (0..8).map(f64::from).collect()).unwrap();
    assert_eq!(x.rows(1..3).unwrap().shape(), &[2, 2, 1]);
    assert_eq!(x.rows(1..3).unwrap().to_vec(), vec![2.0, 3.0, 4.0, 5.0]);
    assert_eq!(x.rows(4..4).unwrap().shape(), &[0, 2, 1]);
    assert_eq!(x.rows(0..4).unwrap(), x);
    assert_eq!(index_err(x.rows(2..5)), ("Tensor::rows", 5, 4));
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = x.rows(3..1);
    assert_eq!(index_err(reversed), ("Tensor::rows", 3, 4));
    assert_eq!(index_err(Tensor::scalar(1.0f64).rows(0..0)).2, 0);

    let y = x.select_rows(&[3, 0, 3]).unwrap();
    assert_eq!(y.shape(), &[3, 2, 1]);
    assert_eq!(y.to_vec(), vec![6.0, 7.0, 0.0, 1.0, 6.0, 7.0]);
    assert_eq!(x.select_rows(&[]).unwrap().shape(), &[0, 2, 1]);
    assert_eq!(
        index_err(x.select_rows(&[1, 4, 9])),
        ("Tensor::select_rows", 4, 4)
    );
    assert_eq!(index_err(Tensor::scalar(1.0f64).select_rows(&[])).2, 0);
    // Same rows as the differentiable gather for a 2-D table.
    let t = x.reshape(&[4, 2]);
    let idx = Indices::new(&[3], vec![3, 0, 3]).unwrap();
    assert_eq!(
        t.select_rows(&[3, 0, 3]).unwrap(),
        t.gather_rows(&idx).unwrap()
    );
}

#[test]
fn one_hot_puts_one_one_per_row() {
    let t = Tensor::<f64>::one_hot(&[1, 3, 1, 0], 4).unwrap();
    assert_eq!(t.shape(), &[4, 4]);
    for (row, &c) in [1, 3, 1, 0].iter().enumerate() {
        let r = t.rows(row..row + 1).unwrap().to_vec();
        let want: Vec<f64> = (0..4).map(|j| if j == c { 1.0 } else { 0.0 }).collect();
        assert_eq!(r, want, "row {row}");
    }
    assert_eq!(Tensor::<f32>::one_hot(&[], 5).unwrap().shape(), &[0, 5]);
    assert_eq!(
        index_err(Tensor::<f32>::one_hot(&[0, 5, 7], 5)),
        ("Tensor::one_hot", 5, 5)
    );
    assert_eq!(index_err(Tensor::<f32>::one_hot(&[0], 0)).2, 0);
}

/// Distance in units in the last place between two finite `f64`s of the same sign.
fn ulps64(a: f64, b: f64) -> u64 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
}

/// The engine's branch-free `exp` (`Float::vexp`) against the correctly rounded value
/// (libm's `exp` in f64 for f32, and within 1 ulp of it in f64), across its whole range
/// of normal results on a dense grid, plus the edges: overflow to `inf`, underflow to 0,
/// NaN.
#[test]
fn vexp_is_within_two_ulp_of_exp() {
    use datarater::autodiff::Float;
    let mut worst = (0u64, 0u64);
    for i in 0..=400_000 {
        let x = -86.98 + 175.68 * i as f64 / 400_000.0;
        let x32 = x as f32;
        let exact32 = (x32 as f64).exp() as f32;
        let d32 = (x32.vexp().to_bits() as i64 - exact32.to_bits() as i64).unsigned_abs();
        let x64 = -708.04 + 1417.82 * i as f64 / 400_000.0;
        let d64 = ulps64(x64.vexp(), x64.exp());
        worst = (worst.0.max(d32), worst.1.max(d64));
        assert!(d32 <= 2, "f32 exp({x32}): {} vs {exact32}", x32.vexp());
        assert!(d64 <= 2, "f64 exp({x64}): {} vs {}", x64.vexp(), x64.exp());
    }
    // Small arguments, where the reduction does nothing.
    for x in [0.0, 1e-300, -1e-300, 1e-8, -1e-8, 0.5, -0.5, 1.0] {
        assert!(ulps64(f64::vexp(x), x.exp()) <= 1, "exp({x})");
    }
    assert_eq!(f32::vexp(0.0), 1.0);
    assert_eq!(f64::vexp(0.0), 1.0);
    assert_eq!(f32::vexp(89.0), f32::INFINITY);
    assert_eq!(f64::vexp(710.0), f64::INFINITY);
    assert_eq!(f64::vexp(f64::INFINITY), f64::INFINITY);
    assert_eq!(f32::vexp(-104.0), 0.0);
    // Results below 2^-125.5 (2^-1021.5) flush to zero.
    assert_eq!(f32::vexp(-87.0), 0.0);
    assert_eq!(f64::vexp(-708.1), 0.0);
    assert_eq!(f64::vexp(f64::NEG_INFINITY), 0.0);
    assert!(f32::vexp(f32::NAN).is_nan() && f64::vexp(f64::NAN).is_nan());
    println!("worst: f32 {} ulp, f64 {} ulp", worst.0, worst.1);
}

/// Masked softmax on scores big enough to be split over threads: a causal mask (every
/// row a kept prefix, whose masked tail is never exponentiated), a mask with holes and
/// a fully masked row, each against a plain per-row reference, and bitwise the same on
/// one thread and on three.
#[test]
fn masked_softmax_matches_a_reference_on_any_thread_count() {
    let mut rng = Rng::new(11);
    let (lead, t) = (12, 130); // 12 * 130 * 130 = 202800 scores
    let x = normal(&mut rng, &[3, 4, t, t]).scale(4.0);
    let mut holes: Vec<bool> = (0..t * t).map(|_| rng.below(3) == 0).collect();
    holes[5 * t..6 * t].fill(true);
    let causal: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect();
    assert_eq!(Mask::new(&[t, t], causal.clone()).unwrap(), Mask::causal(t));
    for m in [causal, holes] {
        let mask = Mask::new(&[t, t], m.clone()).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| x.masked_softmax(3, &mask).to_vec())
        };
        let got = run(1);
        assert_eq!(run(3), got, "thread count changed a result");
        let xs = x.to_vec();
        for r in 0..lead * t {
            let (row, keep) = (&xs[r * t..(r + 1) * t], &m[(r % t) * t..(r % t + 1) * t]);
            let top = row
                .iter()
                .zip(keep)
                .filter(|&(_, &k)| !k)
                .fold(f64::NEG_INFINITY, |a, (&b, _)| a.max(b));
            let e: Vec<f64> = row
                .iter()
                .zip(keep)
                .map(|(&v, &k)| if k { 0.0 } else { (v - top).exp() })
                .collect();
            let s: f64 = e.iter().sum();
            for (j, &e) in e.iter().enumerate() {
                let want = if s > 0.0 { e / s } else { 0.0 };
                let g = got[r * t + j];
                assert!((g - want).abs() <= 1e-14, "row {r}, col {j}: {g} vs {want}");
                if keep[j] {
                    assert_eq!(g, 0.0, "masked entry");
                }
            }
        }
    }
}

/// Permutes big enough to be copied by several threads (runs split between them at
/// any point of the outer axes) against an element-by-element reference.
#[test]
fn large_permutes_match_a_reference_on_any_thread_count() {
    let shape = [5, 7, 41, 67]; // 96145 elements
    let x = Tensor::from_vec(&shape, (0..96145).map(|i| i as f64).collect()).unwrap();
    for perm in [[0, 2, 1, 3], [3, 1, 0, 2], [2, 3, 0, 1], [0, 1, 2, 3]] {
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let strides = [7 * 41 * 67, 41 * 67, 67, 1];
        let mut want = Vec::with_capacity(96145);
        for i in 0..out_shape[0] {
            for j in 0..out_shape[1] {
                for k in 0..out_shape[2] {
                    for l in 0..out_shape[3] {
                        let at: usize = [i, j, k, l]
                            .iter()
                            .zip(perm)
                            .map(|(&ix, p)| ix * strides[p])
                            .sum();
                        want.push(at as f64);
                    }
                }
            }
        }
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| x.permute(&perm));
            assert_eq!(got.shape(), &out_shape[..]);
            assert_eq!(got.to_vec(), want, "perm {perm:?}, {threads} threads");
        }
    }
}

/// `Tensor::randn` and `Tensor::uniform` draw from the given generator in row-major
/// order, with the right moments and bounds.
#[test]
fn random_tensors_follow_the_generator_and_their_distribution() {
    let mut rng = Rng::new(42);
    let x = Tensor::<f64>::randn(&[100, 100], &mut rng).unwrap();
    let mut same = Rng::new(42);
    let by_hand: Vec<f64> = (0..10_000).map(|_| same.normal()).collect();
    assert_eq!(x.to_vec(), by_hand);
    assert_eq!(
        rng.next_u64(),
        same.next_u64(),
        "the generator advanced once per element"
    );
    let n = x.len() as f64;
    let mean = x.to_vec().iter().sum::<f64>() / n;
    let var = x.to_vec().iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "{mean} {var}"
    );

    let u = Tensor::<f32>::uniform(&[10_000], -2.0, 3.0, &mut rng).unwrap();
    let v = u.to_vec();
    assert!(v.iter().all(|&y| (-2.0..3.0).contains(&y)));
    let mean = v.iter().map(|&y| y as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 0.5).abs() < 0.05, "{mean}");
    assert_eq!(
        Tensor::<f64>::uniform(&[3], 1.0, 1.0, &mut rng)
            .unwrap()
            .to_vec(),
        vec![1.0; 3]
    );
}

/// The fused linear map against the product plus the broadcast bias it replaces, on a
/// product large enough to be cut into bands.
#[test]
fn matmul_bias_matches_matmul_plus_bias() {
    let mut rng = Rng::new(9);
    for (m, k, n) in [(3, 2, 5), (1100, 256, 300)] {
        let (x, w, b) = (
            normal(&mut rng, &[m, k]),
            normal(&mut rng, &[k, n]),
            normal(&mut rng, &[n]),
        );
        let got = MatMulBias.forward(&[&x, &w, &b]);
        let r = compare_tensors(&got, &x.matmul(&w).add(&b)).unwrap();
        assert!(r.ok(1e-13), "{m}x{k}x{n}: {r:?}");
    }
}

/// The head-layout products against the same products through reshape, permute and
/// matmul (what attention did before them), on shapes large enough for the gemm's
/// blocked paths and the parallel batch.
#[test]
fn head_products_match_permuted_matmuls() {
    let mut rng = Rng::new(7);
    let (b, heads, dh, t, s) = (3, 4, 24, 70, 65);
    let d = heads * dh;
    let split =
        |x: &Tensor<f64>, rows: usize| x.reshape(&[b, rows, heads, dh]).permute(&[0, 2, 1, 3]);
    let merge = |x: Tensor<f64>, rows: usize| x.permute(&[0, 2, 1, 3]).reshape(&[b, rows, d]);
    let (a, c) = (normal(&mut rng, &[b, t, d]), normal(&mut rng, &[b, s, d]));
    let want = split(&a, t).matmul_t(&split(&c, s), false, true);
    let got = HeadScores { heads }.forward(&[&a, &c]);
    assert!(compare_tensors(&got, &want).unwrap().ok(1e-13));
    let (p, v) = (
        normal(&mut rng, &[b, heads, t, s]),
        normal(&mut rng, &[b, s, d]),
    );
    let want = merge(p.matmul(&split(&v, s)), t);
    let got = HeadMix { heads, tp: false }.forward(&[&p, &v]);
    assert!(compare_tensors(&got, &want).unwrap().ok(1e-13));
    let pt = normal(&mut rng, &[b, heads, s, t]);
    let want = merge(pt.matmul_t(&split(&v, s), true, false), t);
    let got = HeadMix { heads, tp: true }.forward(&[&pt, &v]);
    assert!(compare_tensors(&got, &want).unwrap().ok(1e-13));
}

/// The attention op's definition: head scores, (causal) softmax along the last axis,
/// head mix.
fn unfused_attention<V: Value>(q: &V, k: &V, v: &V, heads: usize, causal: bool) -> V {
    let scores = V::apply(HeadScores { heads }, &[q, k]);
    let p = if causal {
        scores.masked_softmax(3, &Mask::causal(q.shape()[1]))
    } else {
        scores.softmax(3)
    };
    V::apply(HeadMix { heads, tp: false }, &[&p, v])
}

fn fused_attention<V: Value>(q: &V, k: &V, v: &V, heads: usize, causal: bool) -> V {
    V::apply(Attention { heads, causal }, &[q, k, v])
}

fn qkv(rng: &mut Rng, b: usize, t: usize, s: usize, d: usize) -> Params<Tensor<f64>> {
    let mut p = Params::new();
    p.insert("q", normal(rng, &[b, t, d]).scale(2.0));
    p.insert("k", normal(rng, &[b, s, d]));
    p.insert("v", normal(rng, &[b, s, d]));
    p
}

/// The fused forward is bitwise the composition it fuses, in f64 and f32, on the serial
/// and the parallel paths (the last shapes have more than 2^18 multiply-adds), causal or
/// not, with `t` a multiple of the softmax's column block (16) or not.
#[test]
fn attention_forward_is_bitwise_the_unfused_ops() {
    fn check<F: datarater::Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        heads: usize,
        causal: bool,
    ) {
        let want = unfused_attention(q, k, v, heads, causal);
        let got = fused_attention(q, k, v, heads, causal);
        assert_eq!(got.shape(), want.shape());
        let bits = |x: &Tensor<F>| {
            x.to_vec()
                .iter()
                .map(|v| v.f64().to_bits())
                .collect::<Vec<_>>()
        };
        assert!(
            bits(&got) == bits(&want),
            "shape {:?} heads {heads} causal {causal}: {:?}",
            q.shape(),
            compare_tensors(&got.cast::<f64>(), &want.cast::<f64>()).unwrap()
        );
    }
    let mut rng = Rng::new(21);
    for (b, heads, dh, t, s) in [
        (1, 1, 1, 1, 1),
        (2, 3, 5, 13, 13),
        (3, 2, 4, 7, 11),
        (2, 2, 3, 16, 16),
        (1, 2, 8, 37, 37),
        (2, 1, 4, 20, 45),
        (2, 4, 16, 101, 101),
        (8, 2, 16, 64, 64),
    ] {
        for causal in [false, true] {
            if causal && s != t {
                continue;
            }
            let p = qkv(&mut rng, b, t, s, heads * dh);
            let (q, k, v) = (&p["q"], &p["k"], &p["v"]);
            check(q, k, v, heads, causal);
            check(
                &q.cast::<f32>(),
                &k.cast::<f32>(),
                &v.cast::<f32>(),
                heads,
                causal,
            );
        }
    }
}

/// Gradient and forward-over-reverse H v of a loss through the fused op against the
/// same through the unfused composition (both exact modes: rounding apart, equal).
#[test]
fn attention_gradient_and_hvp_match_the_unfused_ops() {
    let mut rng = Rng::new(22);
    for (b, heads, dh, t, causal) in [(2, 2, 3, 9, false), (2, 3, 2, 9, true), (1, 4, 4, 70, true)]
    {
        let p = qkv(&mut rng, b, t, t, heads * dh);
        let w = normal(&mut rng, &[b, t, heads * dh]);
        let dir = p.map(|x| normal(&mut rng, x.shape()));
        macro_rules! eval {
            ($f:ident) => {
                |q: &Params<_>| {
                    let o = $f(&q["q"], &q["k"], &q["v"], heads, causal);
                    let w = Value::constant(w.clone());
                    o.mul(&w).add(&o.square().scale(0.5)).sum_all()
                }
            };
        }
        let (_, g_un, h_un) = hvp(eval!(unfused_attention), &p, &dir).unwrap();
        let (_, g_fu, h_fu) = hvp(eval!(fused_attention), &p, &dir).unwrap();
        let r = compare(&g_fu, &g_un).unwrap();
        assert!(r.ok(1e-10), "gradient: {r:?}");
        let r = compare(&h_fu, &h_un).unwrap();
        assert!(r.ok(1e-10), "hvp: {r:?}");
        let h_rr = hvp_rev_rev(eval!(fused_attention), &p, &dir).unwrap();
        let r = compare(&h_rr, &h_un).unwrap();
        assert!(r.ok(1e-10), "rev-rev hvp: {r:?}");
        let h_rf = hvp_rev_fwd(eval!(fused_attention), &p, &dir).unwrap();
        let r = compare(&h_rf, &h_un).unwrap();
        assert!(r.ok(1e-10), "rev-fwd hvp: {r:?}");
    }
}

/// `AffineLayerNorm` is bitwise the composition it replaces (`layer_norm`, then the
/// broadcast product with the gain and sum with the bias), in f32 and f64, on lanes with
/// vector bodies and remainders: the value, the forward-mode tangent for every subset of
/// inputs with a tangent, the gradient, and the forward-over-reverse H v.
#[test]
fn affine_layer_norm_is_bitwise_the_composition() {
    use datarater::Float;
    fn bits<F: Float>(t: &Tensor<F>) -> Vec<u64> {
        t.to_vec()
            .into_iter()
            .map(|v: F| v.f64().to_bits())
            .collect()
    }
    /// `sum(w y + y^2)`, `y` the layer norm of `x` with gain `g` and bias `b`, fused or
    /// composed; the inputs outside `vars` constants (no tangent, no cotangent).
    fn loss<V: Value>(
        q: &Params<V>,
        base: &Params<Tensor<V::F>>,
        w: &Tensor<V::F>,
        vars: [bool; 3],
        fused: bool,
    ) -> V {
        let [x, g, b] = [0, 1, 2].map(|i| {
            let k = ["x", "g", "b"][i];
            if vars[i] {
                q[k].clone()
            } else {
                V::constant(base[k].clone())
            }
        });
        let eps = V::F::c(1e-5);
        let y = if fused {
            V::apply(AffineLayerNorm { eps }, &[&x, &g, &b])
        } else {
            x.layer_norm(eps).mul(&g).add(&b)
        };
        y.mul(&V::constant(w.clone())).add(&y.square()).sum_all()
    }
    fn check<F: Float>(shape: &[usize], rng: &mut Rng) {
        let n = *shape.last().unwrap();
        let mut p = Params::new();
        p.insert("x", Tensor::<F>::randn(shape, rng).unwrap());
        p.insert("g", Tensor::<F>::randn(&[n], rng).unwrap());
        p.insert("b", Tensor::<F>::randn(&[n], rng).unwrap());
        let dir = p.map(|t| Tensor::<F>::randn(t.shape(), rng).unwrap());
        let w = Tensor::<F>::randn(shape, rng).unwrap();
        let eps = F::c(1e-5);
        let fused = AffineLayerNorm { eps }.forward(&[&p["x"], &p["g"], &p["b"]]);
        let composed = p["x"].layer_norm(eps).mul(&p["g"]).add(&p["b"]);
        assert_eq!(bits(&fused), bits(&composed), "value {shape:?}");
        for mask in 1..8 {
            let vars = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
            let (yf, tf) = jvp(|q| loss(q, &p, &w, vars, true), &p, &dir).unwrap();
            let (yc, tc) = jvp(|q| loss(q, &p, &w, vars, false), &p, &dir).unwrap();
            assert_eq!(
                (bits(&yf), bits(&tf)),
                (bits(&yc), bits(&tc)),
                "jvp {vars:?}"
            );
        }
        let all = [true; 3];
        let (_, gf, hf) = hvp(|q| loss(q, &p, &w, all, true), &p, &dir).unwrap();
        let (_, gc, hc) = hvp(|q| loss(q, &p, &w, all, false), &p, &dir).unwrap();
        for k in ["x", "g", "b"] {
            assert_eq!(bits(&gf[k]), bits(&gc[k]), "gradient {k} {shape:?}");
            assert_eq!(bits(&hf[k]), bits(&hc[k]), "hvp {k} {shape:?}");
        }
    }
    let mut rng = Rng::new(31);
    for shape in [&[3, 37][..], &[2, 5, 64], &[4, 2]] {
        check::<f32>(shape, &mut rng);
        check::<f64>(shape, &mut rng);
    }
}
