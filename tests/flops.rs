//! The FLOP counter against hand counts. The counters are process-wide, so the tests
//! of this file take a lock and run one at a time (no other test binary shares them).

use datarater::autodiff::flops::{self, FlopCount, GemmShape};
use datarater::nn::{CausalLm, TransformerConfig};
use datarater::transforms::{grad_tangents_with, jvp, jvp_grad_with, value_and_grad};
use datarater::{Dual, Indices, Params, Rng, Tensor, Value, Var};
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn counted<T>(f: impl FnOnce() -> T) -> (T, FlopCount) {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    flops::count(f)
}

fn ab() -> Params<Tensor<f64>> {
    let mut p = Params::new();
    p.insert("a", Tensor::full(&[6, 4], 0.5).unwrap());
    p.insert("b", Tensor::full(&[4, 3], 0.25).unwrap());
    p
}

#[test]
fn one_matmul_forward_gradient_and_jvp() {
    let p = ab();
    let mm = 2 * 6 * 3 * 4;
    let (y, w) = counted(|| p["a"].matmul(&p["b"]));
    assert_eq!(y.shape(), &[6, 3]);
    assert_eq!(w.matmul, mm);
    // Gradient: the forward product, then dA = dC B^T and dB = A^T dC.
    let (_, w) = counted(|| value_and_grad(|q| q["a"].matmul(&q["b"]).sum_all(), &p).unwrap());
    assert_eq!(w.matmul, 3 * mm);
    // Forward mode with tangents on both operands: A B, dA B and A dB.
    let (_, w) = counted(|| jvp(|q| q["a"].matmul(&q["b"]).sum_all(), &p, &p).unwrap());
    assert_eq!(w.matmul, 3 * mm);
    // A batched product counts every slice, and elementwise work goes to `other`.
    let a = Tensor::<f32>::full(&[5, 2, 7], 1.0).unwrap();
    let b = Tensor::<f32>::full(&[5, 3, 7], 1.0).unwrap();
    let (_, w) = counted(|| a.matmul_t(&b, false, true).tanh());
    assert_eq!(w.matmul, 5 * 2 * 2 * 3 * 7);
    assert_eq!(w.other, 5 * 2 * 3);
}

#[test]
fn forward_over_reverse_without_the_gradient_skips_its_products() {
    let p = ab();
    let mm = 2 * 6 * 3 * 4;
    let f =
        |q: &[Params<Var<Dual<Tensor<f64>>>>]| Ok(q[0]["a"].matmul(&q[0]["b"]).square().sum_all());
    // C = A B and its tangent dA B + A dB; then G B^T and A^T G (G = 2 C) with their
    // tangents, two products each.
    let (both, w) = counted(|| jvp_grad_with(f, &[&p], &[Some(&p)], false).unwrap());
    assert_eq!(w.matmul, 9 * mm);
    // Without the gradient, the leaves' cotangents are their tangents alone.
    let (only, w) = counted(|| grad_tangents_with(f, &[&p], &[Some(&p)], false).unwrap());
    assert_eq!(w.matmul, 7 * mm);
    assert!(only.grads.is_empty());
    for k in ["a", "b"] {
        let bits = |t: &Tensor<f64>| t.array().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&only.tangents[0][k]),
            bits(&both.tangents[0][k]),
            "{k}"
        );
    }
}

#[test]
fn gemm_shapes_are_recorded_and_replayed() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    flops::reset();
    let a = Tensor::<f32>::full(&[8, 16], 1.0).unwrap();
    let b = Tensor::<f32>::full(&[8, 4], 1.0).unwrap();
    a.matmul_t(&b, true, false);
    a.matmul_t(&b, true, false);
    let shapes = flops::gemm_shapes();
    let want = GemmShape {
        batch: 1,
        m: 16,
        k: 8,
        n: 4,
        ta: true,
        tb: false,
    };
    assert_eq!(shapes, vec![(want, 2)]);
    let peak = flops::gemm_peak::<f32>(&shapes, 0.0);
    assert_eq!(peak.flops, 2 * 2 * 16 * 4 * 8);
    assert!(peak.secs > 0.0 && peak.gflops() > 0.0);
}

/// The small transformer of the tests below: width `D`, 2 layers of `H` heads, MLP `FF`,
/// vocabulary `VOCAB`, run on batches of `B` sequences of `T` tokens.
const B: u64 = 3;
const T: u64 = 5;
const D: u64 = 8;
const FF: u64 = 12;
const H: u64 = 2;
const VOCAB: u64 = 11;

fn small_lm() -> CausalLm {
    let cfg = TransformerConfig::new(D as usize, 2, H as usize, 6)
        .with_vocab(VOCAB as usize)
        .with_d_ff(FF as usize);
    CausalLm::new(cfg).unwrap()
}

fn tokens(rng: &mut Rng) -> Indices {
    let n = (B * T) as usize;
    let ids = (0..n).map(|_| rng.below(VOCAB as usize)).collect();
    Indices::new(&[B as usize, T as usize], ids).unwrap()
}

/// FLOPs of the dense layers' products in one forward pass, by hand: per layer the q,
/// k, v and output projections and the MLP's two; then the head.
fn dense_forward() -> u64 {
    let rows = B * T;
    2 * (4 * 2 * rows * D * D + 2 * 2 * rows * D * FF) + 2 * rows * D * VOCAB
}

#[test]
fn small_transformer_forward_and_gradient() {
    let lm = small_lm();
    let mut rng = Rng::new(1);
    let p: Params<Tensor<f64>> = lm.init(&mut rng);
    let (x, y) = (tokens(&mut rng), tokens(&mut rng));
    // The dense layers, and the two attention products per (example, head) and layer.
    let forward = dense_forward() + 2 * 2 * B * H * 2 * T * T * (D / H);
    let (_, w) = counted(|| lm.logits(&p, &x).unwrap());
    assert_eq!(w.matmul, forward);
    assert!(w.other > 0);
    // Every product's operands depend on the parameters, so the gradient adds both
    // VJP products of each: three times the forward pass. Attention is one fused op that
    // saves only q, k and v, so its VJP also recomputes the scores `q k^T` (one product
    // per (example, head) and layer) before the four products of its rule.
    let (_, w) =
        counted(|| value_and_grad(|q| Ok(lm.per_example_loss(q, &x, &y)?.mean_all()), &p).unwrap());
    let scores = B * H * 2 * T * T * (D / H);
    assert_eq!(w.matmul, 3 * forward + 2 * scores);
}

#[test]
fn small_transformer_hessian_vector_products_skip_the_weight_gradients() {
    let lm = small_lm();
    let mut rng = Rng::new(1);
    let (p, dir): (Params<Tensor<f64>>, Params<Tensor<f64>>) =
        (lm.init(&mut rng), lm.init(&mut rng));
    let x = tokens(&mut rng);
    let f =
        |q: &[Params<Var<Dual<Tensor<f64>>>>]| Ok(lm.per_example_loss(&q[0], &x, &x)?.mean_all());
    // Each dense layer's weight gradient `x^T dy` is one product of its forward size.
    let weight_grads = dense_forward();
    for remat in [false, true] {
        let (_, both) = counted(|| jvp_grad_with(f, &[&p], &[Some(&dir)], remat).unwrap());
        let (_, only) = counted(|| grad_tangents_with(f, &[&p], &[Some(&dir)], remat).unwrap());
        assert_eq!(both.matmul - only.matmul, weight_grads, "remat {remat}");
    }
}
