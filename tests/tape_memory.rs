//! Dropping a tape and all its variables frees everything it recorded: live heap bytes
//! (counted by `CountingAlloc`) return to where they started, for plain tapes, tapes
//! whose backward sweep ran, and the nested tapes of second-order transforms.
//!
//! A binary of its own with a single test, so no other test allocates concurrently.

use datarater::alloc::{CountingAlloc, current_bytes, measure_peak};
use datarater::autodiff::Tape;
use datarater::transforms::{hvp, hvp_rev_fwd, hvp_rev_rev, value_and_grad};
use datarater::{Dual, Params, Tensor, Value, Var};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Allowed drift in live bytes (the harness may allocate a little on its own).
const SLACK: usize = 4 * 1024;
const N: usize = 4096;

fn input() -> Tensor<f64> {
    Tensor::from_vec(
        &[64, 64],
        (0..N).map(|i| (i % 17) as f64 * 0.05 - 0.4).collect(),
    )
    .unwrap()
}

/// A model that saves plenty: each layer keeps a couple of `N`-element buffers.
fn model<V: Value<F = f64>>(x: &V, w: &V) -> V {
    let mut h = x.clone();
    for _ in 0..8 {
        h = h
            .matmul(w)
            .scale(0.05)
            .tanh()
            .mul(x)
            .add(&h.exp().scale(0.01));
    }
    h.log_softmax(1).mean_all()
}

fn params() -> Params<Tensor<f64>> {
    let mut p = Params::new();
    p.insert("x", input());
    p.insert("w", input().t());
    p
}

/// Runs `work` and asserts live bytes come back to their starting value, and that the
/// work really held at least `min_peak` bytes at its peak (so the check can fail).
fn assert_frees(label: &str, min_peak: usize, work: impl FnOnce()) {
    let before = current_bytes();
    let ((), peak) = measure_peak(work);
    let after = current_bytes();
    assert!(peak >= min_peak, "{label}: peak {peak} < {min_peak}");
    assert!(
        after <= before + SLACK,
        "{label}: {} bytes still live after dropping everything (peak was {peak})",
        after - before
    );
}

#[test]
fn dropping_tapes_frees_everything() {
    let p = params();
    let v = p.map(|t| t.map(|x| 0.5 - x));
    let layer_bytes = N * std::mem::size_of::<f64>();

    // Warm up lazily initialised state (thread pools, thread-locals) before measuring.
    let _ = value_and_grad(|q: &Params<Var<Tensor<f64>>>| model(&q["x"], &q["w"]), &p).unwrap();
    let _ = hvp(
        |q: &Params<Var<Dual<Tensor<f64>>>>| model(&q["x"], &q["w"]),
        &p,
        &v,
    )
    .unwrap();

    // A tape and its variables, dropped without a backward sweep.
    assert_frees("recorded, no sweep", 16 * layer_bytes, || {
        let tape = Tape::new();
        let x = tape.var(p["x"].clone());
        let w = tape.var(p["w"].clone());
        let y = model(&x, &w);
        assert!(tape.bytes() >= 16 * layer_bytes, "{}", tape.bytes());
        assert!(current_bytes() >= tape.bytes());
        drop((y, x, w, tape));
    });

    // The variables keep the tape alive after the handle is dropped; the last one
    // dropped frees it.
    let before = current_bytes();
    let tape = Tape::new();
    let x = tape.var(p["x"].clone());
    let w = tape.var(p["w"].clone());
    let y = model(&x, &w);
    let live = current_bytes();
    assert!(
        live >= before + 16 * layer_bytes,
        "the tape holds its saved values"
    );
    drop(tape);
    drop((x, w));
    assert!(
        current_bytes() + SLACK >= live,
        "the output variable still holds the tape and its saved values"
    );
    drop(y);
    assert!(
        current_bytes() <= before + SLACK,
        "freed with the last variable"
    );

    // A full backward sweep, gradients dropped afterwards.
    assert_frees("value_and_grad", 16 * layer_bytes, || {
        let (y, g) =
            value_and_grad(|q: &Params<Var<Tensor<f64>>>| model(&q["x"], &q["w"]), &p).unwrap();
        assert!(y.item().is_finite() && g.first_non_finite().is_none());
    });

    // Second order: forward-over-reverse, reverse-over-reverse, reverse-over-forward.
    assert_frees("hvp (fwd-over-rev)", 16 * layer_bytes, || {
        let r = hvp(
            |q: &Params<Var<Dual<Tensor<f64>>>>| model(&q["x"], &q["w"]),
            &p,
            &v,
        );
        assert!(r.unwrap().2.first_non_finite().is_none());
    });
    assert_frees("hvp_rev_rev", 16 * layer_bytes, || {
        let r = hvp_rev_rev(
            |q: &Params<Var<Var<Tensor<f64>>>>| model(&q["x"], &q["w"]),
            &p,
            &v,
        );
        assert!(r.unwrap().first_non_finite().is_none());
    });
    assert_frees("hvp_rev_fwd", 16 * layer_bytes, || {
        let r = hvp_rev_fwd(
            |q: &Params<Dual<Var<Tensor<f64>>>>| model(&q["x"], &q["w"]),
            &p,
            &v,
        );
        assert!(r.unwrap().first_non_finite().is_none());
    });

    // A recorded backward pass (Var<Var>) dropped before the outer sweep.
    assert_frees("inner sweep on an outer tape", 16 * layer_bytes, || {
        let outer = Tape::new();
        let q = p.map(|t| outer.var(t.clone()));
        let (_, g) = value_and_grad(
            |r: &Params<Var<Var<Tensor<f64>>>>| model(&r["x"], &r["w"]),
            &q,
        )
        .unwrap();
        assert!(outer.bytes() > 0);
        drop((g, q, outer));
    });
}
