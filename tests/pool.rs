//! The engine's buffer pool (`datarater::alloc::reuse_buffers`): buffers are reused
//! within and across passes, results stay bitwise those of fresh buffers, the pool
//! stays within the pass's peak and does not grow from pass to pass, and everything
//! is freed when the outermost scope ends.

use datarater::alloc::{
    CountingAlloc, current_bytes, measure_peak, pooled_bytes, reuse_buffers, reused_buffers,
};
use datarater::nn::{CausalLm, TransformerConfig};
use datarater::transforms::{jvp_grad_with, value_and_grad};
use datarater::{Dual, Indices, Params, Rng, Tensor, Value, Var};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

type Grads = (f32, Params<Tensor<f32>>, Params<Tensor<f32>>);

/// One gradient and one forward-over-reverse pass (gradient and Hessian-vector
/// product) of a causal LM whose activations (8 x 64 x 64 floats, 128 KiB) and
/// attention scores are large enough to be pooled.
fn passes(lm: &CausalLm, p: &Params<Tensor<f32>>, v: &Params<Tensor<f32>>, x: &Indices) -> Grads {
    let (loss, g) = value_and_grad(
        |q: &Params<Var<Tensor<f32>>>| Ok(lm.per_example_loss(q, x, x)?.mean_all()),
        p,
    )
    .unwrap();
    let f = |q: &[Params<Var<Dual<Tensor<f32>>>>]| Ok(lm.per_example_loss(&q[0], x, x)?.mean_all());
    let hv = jvp_grad_with(f, &[p], &[Some(v)], false).unwrap();
    (loss.item(), g, hv.tangents.into_iter().next().unwrap())
}

#[test]
fn buffers_are_reused_without_changing_a_bit_and_released() {
    let lm = CausalLm::new(TransformerConfig::new(64, 1, 2, 64)).unwrap();
    let mut rng = Rng::new(3);
    let mut init = || -> Params<Tensor<f32>> { lm.init(&mut rng) };
    let (p, v, other) = (init(), init(), init());
    let x = Indices::new(&[8, 64], (0..8 * 64).map(|_| rng.below(256)).collect()).unwrap();

    // Each pass has its own scope: its backward reuses its forward's buffers.
    let reused = reused_buffers();
    let fresh = passes(&lm, &p, &v, &x);
    assert!(reused_buffers() > reused, "no buffer reused within a pass");
    assert_eq!(pooled_bytes(), 0, "the pool is released when the pass ends");

    reuse_buffers(|| {
        // Fill the pool with buffers of the same lengths holding other values.
        let (_, peak_other) = measure_peak(|| drop(passes(&lm, &other, &v, &x)));
        assert!(pooled_bytes() > 0, "nothing pooled");
        assert!(
            pooled_bytes() <= peak_other,
            "pooled {} B above the pass's own peak {peak_other} B",
            pooled_bytes()
        );
        let mut seen = Vec::new();
        for pass in 0..3 {
            let reused = reused_buffers();
            let again = passes(&lm, &p, &v, &x);
            assert!(reused_buffers() > reused, "pass {pass}: no buffer reused");
            assert_eq!(again.0.to_bits(), fresh.0.to_bits(), "pass {pass}: loss");
            assert_eq!(again.1, fresh.1, "pass {pass}: gradient");
            assert_eq!(again.2, fresh.2, "pass {pass}: Hessian-vector product");
            drop(again);
            seen.push((current_bytes(), pooled_bytes()));
        }
        // Pooled bytes do not grow; live bytes only by small bookkeeping (rayon's and
        // the allocator's own), far below one pooled buffer (64 KiB).
        assert!(
            seen.windows(2)
                .all(|w| w[1].1 <= w[0].1 && w[1].0 <= w[0].0 + 4096),
            "live and pooled bytes grew from pass to pass: {seen:?}"
        );
    });
    assert_eq!(pooled_bytes(), 0, "released when the outermost scope ends");
}
