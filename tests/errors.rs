//! Error behaviour: shape mismatches panic with a message naming the op and both
//! shapes (in every algebra, since the check is in the op's forward rule); bad integer
//! indices and mismatched parameter groups are typed errors; a tape sweeps once.

use datarater::autodiff::Tape;
use datarater::transforms::{grad, hvp, hvp_rev_rev, jvp, value_and_grad};
use datarater::{Dual, Error, Indices, Mask, Params, Tensor, Value, Var};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The panic message of `f`, or a test failure if it does not panic.
fn panic_message<T>(f: impl FnOnce() -> T) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

/// Asserts `f` panics with exactly the `Error::Shape` message for `op`, `lhs`, `rhs`.
fn expect_shape_panic<T>(op: &str, lhs: &[usize], rhs: &[usize], f: impl FnOnce() -> T) {
    let msg = panic_message(f);
    let want = format!("{op}: incompatible shapes {lhs:?} and {rhs:?}");
    assert_eq!(msg, want, "wrong panic message");
}

/// Every shape check, in the algebra whose values `mk` builds.
fn shape_errors<V: Value<F = f64>>(mk: &dyn Fn(&[usize]) -> V) {
    let (a, b) = (mk(&[2, 3]), mk(&[4]));
    expect_shape_panic("add", &[2, 3], &[4], || a.add(&b));
    expect_shape_panic("sub", &[2, 3], &[4], || a.sub(&b));
    expect_shape_panic("mul", &[2, 3], &[4], || a.mul(&b));
    expect_shape_panic("div", &[2, 3], &[4], || a.div(&b));
    let c = mk(&[3, 1, 4]);
    let d = mk(&[2, 3]);
    expect_shape_panic("add", &[3, 1, 4], &[2, 3], || c.add(&d));
    expect_shape_panic("mul", &[2, 3], &[3, 1, 4], || d.mul(&c));

    // matmul: inner dimension, rank, batch axes, and the transposed forms.
    let (m23, m45) = (mk(&[2, 3]), mk(&[4, 5]));
    expect_shape_panic("matmul", &[2, 3], &[4, 5], || m23.matmul(&m45));
    expect_shape_panic("matmul", &[2, 3], &[2, 3], || m23.matmul(&m23));
    expect_shape_panic("matmul", &[2, 3], &[2, 3], || {
        m23.matmul_t(&m23, true, true)
    });
    expect_shape_panic("matmul", &[2, 3], &[3], || m23.matmul(&mk(&[3])));
    let (b1, b2) = (mk(&[2, 3, 4]), mk(&[3, 4, 5]));
    expect_shape_panic("matmul", &[2, 3, 4], &[3, 4, 5], || b1.matmul(&b2));
    // ... while the flags that make the inner dimensions agree are accepted.
    assert_eq!(m23.matmul_t(&m23, false, true).shape(), vec![2, 2]);
    assert_eq!(m23.matmul_t(&m23, true, false).shape(), vec![3, 3]);

    // Shape ops.
    expect_shape_panic("reshape", &[2, 3], &[4], || m23.reshape(&[4]));
    expect_shape_panic("broadcast_to", &[2, 3], &[3, 3], || {
        m23.broadcast_to(&[3, 3])
    });
    expect_shape_panic("broadcast_to", &[2, 3], &[1, 3], || {
        m23.broadcast_to(&[1, 3])
    });
    expect_shape_panic("sum_to", &[2, 3], &[4], || m23.sum_to(&[4]));
    expect_shape_panic("sum_to", &[2, 3], &[1, 2, 3], || m23.sum_to(&[1, 2, 3]));
    let m34 = mk(&[3, 4]);
    expect_shape_panic("concat", &[2, 3], &[3, 4], || V::concat(&[&m23, &m34], 1));
    expect_shape_panic("concat", &[2, 3], &[3], || V::concat(&[&m23, &mk(&[3])], 0));
    expect_shape_panic("permute", &[2, 3], &[0, 0], || m23.permute(&[0, 0]));
    expect_shape_panic("permute", &[2, 3], &[0], || m23.permute(&[0]));
    expect_shape_panic("slice", &[2, 3], &[1, 2, 4], || m23.slice(1, 2, 4));
    expect_shape_panic("slice", &[2, 3], &[2, 0, 1], || m23.slice(2, 0, 1));

    // Reductions along a missing axis.
    expect_shape_panic("softmax", &[2, 3], &[2], || m23.softmax(2));
    expect_shape_panic("log_softmax", &[2, 3], &[5], || m23.log_softmax(5));
    expect_shape_panic("logsumexp", &[2, 3], &[2], || m23.logsumexp(2, true));

    // select: the two branches must broadcast against each other.
    let cond = Mask::new(&[2, 3], vec![true; 6]).unwrap();
    expect_shape_panic("select", &[2, 3], &[4], || V::select(&cond, &a, &b));

    // Masks must broadcast to the masked tensor.
    let m4 = Mask::new(&[4], vec![true; 4]).unwrap();
    expect_shape_panic("masked_fill", &[4], &[2, 3], || m23.masked_fill(&m4, 0.0));
    let m23mask = Mask::new(&[2, 3], vec![false; 6]).unwrap();
    let v3 = mk(&[3]);
    expect_shape_panic("masked_fill", &[2, 3], &[3], || {
        v3.masked_fill(&m23mask, 0.0)
    });
}

#[test]
fn shape_mismatch_panics_name_op_and_shapes_tensor() {
    shape_errors::<Tensor<f64>>(&|s| Tensor::zeros(s).unwrap());
}

#[test]
fn shape_mismatch_panics_name_op_and_shapes_dual() {
    shape_errors::<Dual<Tensor<f64>>>(&|s| {
        Dual::new(Tensor::zeros(s).unwrap(), Tensor::full(s, 1.0).unwrap())
    });
}

#[test]
fn shape_mismatch_panics_name_op_and_shapes_var() {
    let tape = Tape::new();
    shape_errors::<Var<Tensor<f64>>>(&|s| tape.var(Tensor::zeros(s).unwrap()));
}

#[test]
fn shape_mismatch_panics_name_op_and_shapes_nested() {
    let tape = Tape::new();
    shape_errors::<Var<Dual<Tensor<f64>>>>(&|s| {
        tape.var(Dual::new(
            Tensor::zeros(s).unwrap(),
            Tensor::full(s, 1.0).unwrap(),
        ))
    });
    let outer = Tape::new();
    let inner = Tape::new();
    shape_errors::<Var<Var<Tensor<f64>>>>(&|s| inner.var(outer.var(Tensor::zeros(s).unwrap())));
}

#[test]
#[should_panic(expected = "add: incompatible shapes [2, 3] and [3, 2]")]
fn add_shape_mismatch_should_panic() {
    let _ = Tensor::<f64>::zeros(&[2, 3])
        .unwrap()
        .add(&Tensor::zeros(&[3, 2]).unwrap());
}

#[test]
fn out_of_range_indices_are_index_errors() {
    let table = Tensor::<f64>::zeros(&[3, 2]).unwrap();
    let idx = Indices::new(&[2, 2], vec![0, 2, 5, 1]).unwrap();
    assert_eq!(
        table.gather_rows(&idx).unwrap_err(),
        Error::Index {
            op: "gather_rows",
            index: 5,
            size: 3
        }
    );
    // The edge: `rows` itself is out of range, `rows - 1` is fine.
    let edge = Indices::new(&[1], vec![3]).unwrap();
    assert!(matches!(
        table.gather_rows(&edge),
        Err(Error::Index {
            index: 3,
            size: 3,
            ..
        })
    ));
    assert!(
        table
            .gather_rows(&Indices::new(&[1], vec![2]).unwrap())
            .is_ok()
    );

    let logits = Tensor::<f64>::zeros(&[2, 4]).unwrap();
    let targets = Indices::new(&[2], vec![1, 7]).unwrap();
    assert_eq!(
        logits.pick_last(&targets).unwrap_err(),
        Error::Index {
            op: "pick_last",
            index: 7,
            size: 4
        }
    );
    assert_eq!(
        logits.cross_entropy(&targets).unwrap_err(),
        Error::Index {
            op: "cross_entropy",
            index: 7,
            size: 4
        }
    );
    let edge = Indices::new(&[2], vec![0, 4]).unwrap();
    assert!(matches!(
        logits.cross_entropy(&edge),
        Err(Error::Index {
            index: 4,
            size: 4,
            ..
        })
    ));

    // Same through the tape: an error, and nothing is recorded for the failed op.
    let tape = Tape::new();
    let x = tape.var(logits.clone());
    let before = tape.len();
    assert!(matches!(
        x.cross_entropy(&targets),
        Err(Error::Index { .. })
    ));
    assert!(matches!(
        tape.var(table.clone()).gather_rows(&idx),
        Err(Error::Index { .. })
    ));
    assert_eq!(tape.len(), before + 1, "only the new leaf is recorded");
    // And through a transform, the error comes back as the transform's error.
    let mut p = Params::new();
    p.insert("x", logits);
    let r = value_and_grad(
        |q: &Params<Var<Tensor<f64>>>| Ok(q["x"].cross_entropy(&targets)?.sum_all()),
        &p,
    );
    assert!(matches!(r, Err(Error::Index { index: 7, .. })), "{r:?}");
}

#[test]
fn index_shape_errors_are_shape_errors() {
    let idx = Indices::new(&[2], vec![0, 1]).unwrap();
    // gather_rows needs a 2-D table.
    let t3 = Tensor::<f64>::zeros(&[3, 2, 2]).unwrap();
    assert!(matches!(
        t3.gather_rows(&idx),
        Err(Error::Shape {
            op: "gather_rows",
            ..
        })
    ));
    // pick_last needs the leading shape to match the indices.
    let x = Tensor::<f64>::zeros(&[3, 4]).unwrap();
    assert_eq!(
        x.pick_last(&idx).unwrap_err(),
        Error::Shape {
            op: "pick_last",
            lhs: vec![3, 4],
            rhs: vec![2]
        }
    );
    assert!(matches!(
        x.cross_entropy(&idx),
        Err(Error::Shape {
            op: "cross_entropy",
            ..
        })
    ));
    // Indices and masks with the wrong element count.
    assert!(matches!(
        Indices::new(&[2, 2], vec![0, 1, 2]),
        Err(Error::Shape {
            op: "Indices::new",
            ..
        })
    ));
    assert!(matches!(
        Mask::new(&[2, 2], vec![true]),
        Err(Error::Shape {
            op: "Mask::new",
            ..
        })
    ));
    assert!(matches!(
        Tensor::<f64>::from_vec(&[2, 3], vec![1.0; 5]),
        Err(Error::Shape { op: "from_vec", .. })
    ));
}

fn group(entries: &[(&str, &[usize])]) -> Params<Tensor<f64>> {
    entries
        .iter()
        .map(|(k, s)| (k.to_string(), Tensor::zeros(s).unwrap()))
        .collect()
}

#[test]
fn params_mismatches_are_params_errors() {
    let a = group(&[("w", &[2, 3]), ("b", &[3])]);
    assert_eq!(a.check_like(&a), Ok(()));

    // A shape mismatch names the tensor and both shapes.
    let wrong_shape = group(&[("w", &[3, 2]), ("b", &[3])]);
    match a.check_like(&wrong_shape) {
        Err(Error::Params { name, reason }) => {
            assert_eq!(name, "w");
            assert!(
                reason.contains("[2, 3]") && reason.contains("[3, 2]"),
                "{reason}"
            );
        }
        other => panic!("expected Error::Params, got {other:?}"),
    }
    // A missing name and an extra name, each reported by name.
    let missing = group(&[("w", &[2, 3])]);
    assert!(matches!(a.check_like(&missing), Err(Error::Params { name, .. }) if name == "b"));
    assert!(matches!(missing.check_like(&a), Err(Error::Params { name, .. }) if name == "b"));
    let renamed = group(&[("w", &[2, 3]), ("bias", &[3])]);
    assert!(matches!(a.check_like(&renamed), Err(Error::Params { .. })));

    // Everything that combines two groups reports the same error.
    assert!(matches!(
        a.add_scaled(&wrong_shape, 1.0),
        Err(Error::Params { .. })
    ));
    assert!(matches!(a.dot(&missing), Err(Error::Params { .. })));
    let f = |q: &Params<Var<Dual<Tensor<f64>>>>| q["w"].square().sum_all();
    assert!(matches!(
        hvp(f, &a, &wrong_shape),
        Err(Error::Params { .. })
    ));
    let f = |q: &Params<Var<Var<Tensor<f64>>>>| q["w"].square().sum_all();
    assert!(matches!(
        hvp_rev_rev(f, &a, &missing),
        Err(Error::Params { .. })
    ));
    let f = |q: &Params<Dual<Tensor<f64>>>| q["w"].square().sum_all();
    assert!(matches!(jvp(f, &a, &renamed), Err(Error::Params { .. })));
}

#[test]
fn second_backward_on_a_tape_is_a_usage_error() {
    let tape = Tape::new();
    let x = tape.var(Tensor::<f64>::from_vec(&[2], vec![1.0, 2.0]).unwrap());
    let y = x.square().sum_all();
    let g = tape.backward(&y, Tensor::scalar(1.0), &[&x]).unwrap();
    assert_eq!(g[0].to_vec(), vec![2.0, 4.0]);
    match tape.backward(&y, Tensor::scalar(1.0), &[&x]) {
        Err(Error::Usage(msg)) => assert!(msg.contains("backward"), "{msg}"),
        Err(e) => panic!("expected Error::Usage, got {e:?}"),
        Ok(_) => panic!("expected Error::Usage, got gradients"),
    }
}

#[test]
fn other_backward_misuse_is_reported() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let x1 = t1.var(Tensor::<f64>::scalar(1.0));
    let x2 = t2.var(Tensor::<f64>::scalar(2.0));
    let y1 = x1.exp();
    // A variable of another tape.
    assert!(matches!(
        t1.backward(&y1, Tensor::scalar(1.0), &[&x2]),
        Err(Error::Usage(_))
    ));
    // An output of another tape.
    assert!(matches!(
        t2.backward(&y1, Tensor::scalar(1.0), &[&x2]),
        Err(Error::Usage(_))
    ));
    // A seed of the wrong shape.
    assert!(matches!(
        t1.backward(&y1, Tensor::zeros(&[2]).unwrap(), &[&x1]),
        Err(Error::Shape { .. })
    ));
    // The failed calls did not consume the tape.
    let g = t1.backward(&y1, Tensor::scalar(1.0), &[&x1]).unwrap();
    assert!((g[0].item() - 1f64.exp()).abs() < 1e-15);
    // Mixing two tapes in one op panics naming the op.
    let (a, b) = (
        t1.var(Tensor::<f64>::scalar(1.0)),
        t2.var(Tensor::scalar(1.0)),
    );
    let msg = panic_message(|| a.mul(&b));
    assert!(
        msg.starts_with("mul:") && msg.contains("two different tapes"),
        "{msg}"
    );
}

#[test]
fn non_scalar_output_of_grad_is_a_shape_error() {
    let p = group(&[("w", &[2, 3])]);
    let r = grad(|q: &Params<Var<Tensor<f64>>>| q["w"].exp(), &p);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    let r = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| q["w"].exp(), &p, &p);
    assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
}

#[test]
fn indices_rows_selects_rows_and_rejects_ranges_past_the_end() {
    let idx = Indices::new(&[3, 2], vec![0, 1, 2, 3, 4, 5]).unwrap();
    let mid = idx.rows(1..3).unwrap();
    assert_eq!(mid.shape(), &[2, 2]);
    assert_eq!(mid.data(), &[2, 3, 4, 5]);
    assert_eq!(idx.rows(3..3).unwrap().shape(), &[0, 2]);
    assert!(Indices::new(&[], vec![7]).unwrap().rows(0..0).is_err());
    assert_eq!(
        idx.rows(1..4).unwrap_err(),
        Error::Index {
            op: "Indices::rows",
            index: 4,
            size: 3
        }
    );
}

/// Constructors that take a shape refuse one whose buffer could not exist, with a
/// typed error naming the constructor and the shape (they panicked in ndarray or the
/// allocator before).
#[test]
fn shape_constructors_refuse_shapes_that_overflow() {
    let huge: [&[usize]; 4] = [
        &[1 << 40, 1 << 40],
        &[usize::MAX, 2],
        &[0, 1 << 62, 4],       // empty, but ndarray still indexes the non-zero axes
        &[isize::MAX as usize], // fits in isize as a count, not as f64 bytes
    ];
    let mut rng = datarater::Rng::new(0);
    for shape in huge {
        let results = [
            ("Tensor::zeros", Tensor::<f64>::zeros(shape)),
            ("Tensor::full", Tensor::<f64>::full(shape, 1.0)),
            ("Tensor::randn", Tensor::<f64>::randn(shape, &mut rng)),
            (
                "Tensor::uniform",
                Tensor::<f64>::uniform(shape, 0.0, 1.0, &mut rng),
            ),
        ];
        for (op, r) in results {
            match r {
                Err(e @ Error::ShapeExpected { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with(&format!("{op}: got shape {shape:?}, expected")),
                        "{msg}"
                    );
                }
                other => panic!("{op} {shape:?}: {other:?}"),
            }
        }
    }
    // Empty and ordinary shapes are fine.
    assert_eq!(Tensor::<f32>::zeros(&[0, 5]).unwrap().shape(), &[0, 5]);
    assert_eq!(Tensor::<f32>::full(&[], 2.0).unwrap().item(), 2.0);
    assert!(matches!(
        Tensor::<f64>::uniform(&[2], 0.0, f64::NAN, &mut rng),
        Err(Error::Config { field: "hi", .. })
    ));
}
