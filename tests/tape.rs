//! The tape: what it keeps alive (`Tape::bytes`), gradient accumulation when a
//! variable fans out, and zero gradients for variables the output does not reach.

use datarater::autodiff::Tape;
use datarater::transforms::{grad, hvp, hvp_rev_rev, value_and_grad};
use datarater::{Dual, Params, Tensor, Value, Var};

const N: usize = 64;
const F64: usize = std::mem::size_of::<f64>();

fn ramp(n: usize) -> Tensor<f64> {
    Tensor::from_vec(&[n], (0..n).map(|i| 0.01 * i as f64 - 0.3).collect()).unwrap()
}

#[test]
fn bytes_grow_only_for_ops_that_save_values() {
    let tape = Tape::new();
    let x = tape.var(ramp(N));
    assert_eq!(tape.len(), 1);
    assert_eq!(tape.bytes(), 0, "a leaf saves nothing");

    // Linear ops need only shapes: nodes are recorded but no buffer is kept.
    let mut y = x.clone();
    for i in 0..10 {
        y = y
            .add(&x)
            .scale(0.5)
            .add_scalar(i as f64)
            .reshape(&[8, 8])
            .t()
            .reshape(&[N])
            .sub(&x)
            .neg();
    }
    let s = y.slice(0, 1, 5);
    let c = Var::concat(&[&s, &y], 0);
    let r = c.broadcast_to(&[3, N + 4]).sum_to(&[N + 4]).sum_all();
    assert_eq!(tape.len(), 1 + 10 * 8 + 5);
    assert_eq!(tape.bytes(), 0, "linear ops keep nothing alive");

    // exp keeps its output: one new buffer per exp.
    let mut e = x.clone();
    for k in 1..=5 {
        e = e.exp();
        assert_eq!(tape.bytes(), k * N * F64);
    }
    // mul keeps both inputs; a buffer shared by two inputs counts once.
    let before = tape.bytes();
    let sq = x.mul(&x);
    assert_eq!(tape.bytes(), before + N * F64, "x counted once");
    let _ = sq.mul(&e);
    assert_eq!(
        tape.bytes(),
        before + 2 * N * F64,
        "x*x is new, e was already kept by its exp"
    );
    // A reshape shares its input's buffer, so saving it costs nothing new.
    let before = tape.bytes();
    let _ = e.reshape(&[8, 8]).ln();
    assert_eq!(tape.bytes(), before, "reshape of e shares e's buffer");

    // After the sweep the tape has released every node.
    let _ = tape.backward(&r, Tensor::scalar(1.0), &[&x]).unwrap();
    assert_eq!(tape.bytes(), 0);
}

#[test]
fn adds_only_tape_vs_exps_tape() {
    let k = 20;
    let (adds, exps) = (Tape::new(), Tape::new());
    let (xa, xe) = (adds.var(ramp(N)), exps.var(ramp(N)));
    let (mut a, mut e) = (xa.clone(), xe.clone());
    for _ in 0..k {
        a = a.add(&xa);
        e = e.scale(0.1).exp();
    }
    assert_eq!(adds.len(), 1 + k);
    assert_eq!(exps.len(), 1 + 2 * k);
    assert_eq!(adds.bytes(), 0);
    assert_eq!(exps.bytes(), k * N * F64);
    // Both still differentiate correctly.
    let g = adds
        .backward(&a.sum_all(), Tensor::scalar(1.0), &[&xa])
        .unwrap();
    assert!(g[0].to_vec().iter().all(|&v| v == (k + 1) as f64));
}

#[test]
fn nested_tapes_count_tangents_and_inner_values() {
    // Var<Dual>: exp keeps its output, a dual with primal and tangent: two buffers.
    let tape = Tape::new();
    let x = tape.var(Dual::new(ramp(N), Tensor::full(&[N], 1.0).unwrap()));
    let _ = x.exp();
    assert_eq!(tape.bytes(), 2 * N * F64);
    // A dual without a tangent keeps one.
    let tape = Tape::new();
    let x = tape.var(Dual::constant_of(ramp(N)));
    let _ = x.exp();
    assert_eq!(tape.bytes(), N * F64);
}

#[test]
fn fan_out_accumulates() {
    // x used 100 times, each time scaled by a different constant.
    let x0 = ramp(5);
    let mut p = Params::new();
    p.insert("x", x0.clone());
    let g = grad(
        |q: &Params<Var<Tensor<f64>>>| {
            let x = &q["x"];
            let mut s = Var::scalar(0.0);
            for i in 0..100 {
                s = s.add(&x.scale(i as f64).sum_all());
            }
            s
        },
        &p,
    )
    .unwrap();
    assert!(g["x"].to_vec().iter().all(|&v| v == 4950.0), "{g:?}");

    // Fan-out through both operands of one op, and through a chain that reuses x.
    let g = grad(
        |q: &Params<Var<Tensor<f64>>>| {
            let x = &q["x"];
            let mut y = x.mul(x); // 2x
            for _ in 0..30 {
                y = y.add(x); // +1 each
            }
            y.add(&x.exp().mul(x)).sum_all() // + (1 + x) e^x
        },
        &p,
    )
    .unwrap();
    for (gv, xv) in g["x"].to_vec().iter().zip(x0.to_vec()) {
        let want = 2.0 * xv + 30.0 + (1.0 + xv) * xv.exp();
        assert!((gv - want).abs() < 1e-12, "{gv} vs {want}");
    }

    // Broadcast fan-out: a [3] vector added to every row of a [4, 3] matrix.
    let mut p2 = Params::new();
    p2.insert("b", Tensor::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap());
    let m = Tensor::<f64>::full(&[4, 3], 0.5).unwrap();
    let g = grad(
        |q: &Params<Var<Tensor<f64>>>| q["b"].add(&Var::constant(m.clone())).square().sum_all(),
        &p2,
    )
    .unwrap();
    assert_eq!(g["b"].to_vec(), vec![12.0, 20.0, 28.0]);

    // The second derivative accumulates too: f = sum(x^2 * 50 terms) -> H = 100 I.
    let v = p.map(|t| Tensor::full(t.shape(), 1.0).unwrap());
    let f = |x: &Var<Dual<Tensor<f64>>>| {
        let mut s = Var::scalar(0.0);
        for _ in 0..50 {
            s = s.add(&x.square().sum_all());
        }
        s
    };
    let (_, _, hv) = hvp(|q| f(&q["x"]), &p, &v).unwrap();
    assert!(hv["x"].to_vec().iter().all(|&h| (h - 100.0).abs() < 1e-12));
    let hv_rr = hvp_rev_rev(
        |q: &Params<Var<Var<Tensor<f64>>>>| {
            let x = &q["x"];
            let mut s = Var::scalar(0.0);
            for _ in 0..50 {
                s = s.add(&x.mul(x).sum_all());
            }
            s
        },
        &p,
        &v,
    )
    .unwrap();
    assert!(
        hv_rr["x"]
            .to_vec()
            .iter()
            .all(|&h| (h - 100.0).abs() < 1e-12)
    );
}

#[test]
fn unreachable_variables_get_zero_gradients() {
    let mut p = Params::new();
    p.insert("used", ramp(4));
    p.insert("unused", Tensor::from_vec(&[2, 3], vec![1.0; 6]).unwrap());
    p.insert("dead_end", ramp(3));
    p.insert("through_constant", ramp(3));
    let (y, g) = value_and_grad(
        |q: &Params<Var<Tensor<f64>>>| {
            // Computed from but not feeding the output.
            let _dead = q["dead_end"].exp().sum_all();
            // Only its primal is used (max_axis_const is a constant).
            let c = q["through_constant"].max_axis_const(0);
            q["used"].square().sum_all().add(&c.sum_all())
        },
        &p,
    )
    .unwrap();
    assert!(y.item().is_finite());
    for (k, shape) in [
        ("unused", vec![2, 3]),
        ("dead_end", vec![3]),
        ("through_constant", vec![3]),
    ] {
        assert_eq!(g[k].shape(), shape, "{k}");
        assert!(g[k].to_vec().iter().all(|&v| v == 0.0), "{k}: {:?}", g[k]);
    }
    assert_eq!(g["used"].to_vec(), ramp(4).scale(2.0).to_vec());

    // An output that is a constant gives zeros for everything.
    let tape = Tape::new();
    let x = tape.var(ramp(3));
    let c = Var::<Tensor<f64>>::scalar(2.0);
    let g = tape.backward(&c, Tensor::scalar(1.0), &[&x]).unwrap();
    assert_eq!(g[0].to_vec(), vec![0.0; 3]);

    // A variable recorded after the output is unreachable too.
    let tape = Tape::new();
    let x = tape.var(ramp(3));
    let y = x.square().sum_all();
    let late = tape.var(ramp(2));
    let _ = late.exp();
    let g = tape
        .backward(&y, Tensor::scalar(1.0), &[&x, &late])
        .unwrap();
    assert_eq!(g[0].to_vec(), ramp(3).scale(2.0).to_vec());
    assert_eq!(g[1].to_vec(), vec![0.0; 2]);
}

#[test]
fn cotangents_of_recorded_variables() {
    // `backward` returns the cotangent of every variable asked for, recorded
    // intermediates included, not only leaves.
    let tape = Tape::new();
    let x = tape.var(ramp(4));
    let h = x.exp();
    let k = h.scale(3.0);
    let y = k.mul(&h).sum_all(); // 3 h^2
    let g = tape
        .backward(&y, Tensor::scalar(1.0), &[&x, &h, &k])
        .unwrap();
    let (gx, gh, gk) = (g[0].to_vec(), g[1].to_vec(), g[2].to_vec());
    for (i, h) in ramp(4).exp().to_vec().into_iter().enumerate() {
        assert!((gh[i] - 6.0 * h).abs() < 1e-12, "dy/dh");
        assert!((gk[i] - h).abs() < 1e-12, "dy/dk");
        assert!((gx[i] - 6.0 * h * h).abs() < 1e-12, "dy/dx");
    }
}

#[test]
fn output_that_is_a_leaf_gets_the_seed() {
    let tape = Tape::new();
    let x = tape.var(ramp(3));
    let seed = Tensor::from_vec(&[3], vec![1.0, -2.0, 0.5]).unwrap();
    let g = tape.backward(&x, seed.clone(), &[&x]).unwrap();
    assert_eq!(g[0], seed);
}
