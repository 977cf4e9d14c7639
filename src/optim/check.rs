//! Checking a hand-written [`Optimizer::adjoint`] against the VJP of the optimiser's own
//! [`Optimizer::update`], recorded on a tape.

use super::{Adjoint, OptState, Optimizer};
use crate::autodiff::check::compare;
use crate::autodiff::{Params, Tape, Tensor, Value, Var};
use crate::error::{Error, Result};

/// The VJP of `opt.update` at `(theta, state, g)` applied to the output cotangents
/// `(theta_bar, state_bar)`, by reverse-mode autodiff: `update` runs on
/// `Var<Tensor<f64>>` and the tape is swept once. This is what
/// [`Optimizer::adjoint`] must return, to rounding; unrolled mode differentiates
/// `update` exactly this way. `state_bar` may be empty (all slot cotangents zero), as
/// for `adjoint`.
///
/// # Errors
/// [`Error::Params`] naming the first tensor of `g`, a slot, `theta_bar` or
/// `state_bar` whose name or shape differs from `theta`'s, or a wrong number of slot
/// cotangents; the tape's errors otherwise.
pub fn taped_adjoint<O: Optimizer<f64>>(
    opt: &O,
    theta: &Params<Tensor<f64>>,
    state: &OptState<Tensor<f64>>,
    g: &Params<Tensor<f64>>,
    theta_bar: &Params<Tensor<f64>>,
    state_bar: &[Params<Tensor<f64>>],
) -> Result<Adjoint<f64>> {
    check_inputs(theta, state, g, theta_bar, state_bar)?;
    let tape = Tape::new();
    let var = |p: &Params<Tensor<f64>>| p.map(|t| tape.var(t.clone()));
    let theta_v = var(theta);
    let state_v = OptState {
        step: state.step,
        slots: state.slots.iter().map(var).collect(),
    };
    let g_v = var(g);
    let (theta2, state2) = opt.update(&theta_v, &state_v, &g_v);
    // <theta_bar, theta'> + sum_j <state_bar_j, s'_j>: its gradient is the VJP.
    let mut pairs = vec![(&theta2, theta_bar)];
    pairs.extend(state2.slots.iter().zip(state_bar));
    let mut total: Option<Var<Tensor<f64>>> = None;
    for (out, bar) in pairs {
        for (k, v) in out.iter() {
            let c = bar.get(k).ok_or_else(|| Error::Params {
                name: k.to_string(),
                reason: "returned by `update` but not a parameter".into(),
            })?;
            let term = v.mul(&Var::constant(c.clone())).sum_all();
            total = Some(match total {
                Some(t) => t.add(&term),
                None => term,
            });
        }
    }
    let wrt: Vec<&Var<Tensor<f64>>> = theta_v
        .values()
        .chain(state_v.slots.iter().flat_map(|s| s.values()))
        .chain(g_v.values())
        .collect();
    let mut flat = match total {
        Some(total) => tape.backward(&total, Tensor::scalar(1.0), &wrt)?,
        // No parameters: every cotangent is empty.
        None => Vec::new(),
    }
    .into_iter();
    let mut take = |like: &Params<Tensor<f64>>| -> Params<Tensor<f64>> {
        like.names()
            .map(|k| (k.to_string(), flat.next().expect("one per input")))
            .collect()
    };
    let theta_out = take(theta);
    let state_out = state.slots.iter().map(&mut take).collect();
    let grad = take(g);
    Ok(Adjoint {
        theta: theta_out,
        state: state_out,
        grad,
    })
}

/// Compares `opt`'s hand-written [`adjoint`](Optimizer::adjoint) with the VJP of its
/// taped [`update`](Optimizer::update) ([`taped_adjoint`]) at `(theta, state, g)` and
/// the output cotangents `(theta_bar, state_bar)`, in `f64`, and returns the largest
/// relative error.
///
/// The cotangents are compared in groups: `theta`, each slot `state[j]`, and `grad`.
/// A group's error is the largest absolute difference over its tensors divided by the
/// largest magnitude of the taped group (so a tensor whose values are tiny next to the
/// rest of its group is not judged by its own rounding). Check at several states (a
/// fresh one and one after a few updates, with random cotangents) and with gradients
/// that have exact zeros, where `sqrt`-like terms have their kinks.
///
/// ```
/// use datarater::optim::{Adam, Optimizer, check_adjoint};
/// use datarater::{Params, Rng, Tensor};
/// let mut rng = Rng::new(0);
/// let mut draw = |shape: &[usize]| Tensor::<f64>::randn(shape, &mut rng);
/// let theta = Params::from_iter([("w".to_string(), draw(&[3, 2])?)]);
/// let g = Params::from_iter([("w".to_string(), draw(&[3, 2])?)]);
/// let opt = Adam::new(1e-2);
/// let (theta, state) = opt.update(&theta, &opt.init(&theta), &g); // a non-trivial state
/// let bar = |p: &Params<Tensor<f64>>| p.map(|t| t.map(|x| 1.0 - x));
/// let slot_bars = vec![bar(&theta), bar(&g)];
/// let err = check_adjoint(&opt, &theta, &state, &g, &bar(&theta), &slot_bars, 1e-10)?;
/// assert!(err < 1e-10);
/// # Ok::<(), datarater::Error>(())
/// ```
///
/// # Errors
/// [`Error::Params`] naming the group and tensor (e.g. `state[1].w`) with the worst
/// element when a group's relative error exceeds `tol` or is not finite (a NaN or
/// infinity in either the hand-written or the taped VJP), or when `adjoint` returns
/// other names, shapes or a wrong number of slots; as [`taped_adjoint`] for the
/// inputs.
pub fn check_adjoint<O: Optimizer<f64>>(
    opt: &O,
    theta: &Params<Tensor<f64>>,
    state: &OptState<Tensor<f64>>,
    g: &Params<Tensor<f64>>,
    theta_bar: &Params<Tensor<f64>>,
    state_bar: &[Params<Tensor<f64>>],
    tol: f64,
) -> Result<f64> {
    let tape = taped_adjoint(opt, theta, state, g, theta_bar, state_bar)?;
    let hand = opt.adjoint(theta, state, g, theta_bar, state_bar);
    if hand.state.len() != tape.state.len() {
        return Err(Error::Params {
            name: "state".into(),
            reason: format!(
                "the hand-written adjoint returned {} slot cotangents, the state has {} slots",
                hand.state.len(),
                tape.state.len()
            ),
        });
    }
    let mut groups = vec![("theta".to_string(), &hand.theta, &tape.theta)];
    for (j, (h, t)) in hand.state.iter().zip(&tape.state).enumerate() {
        groups.push((format!("state[{j}]"), h, t));
    }
    groups.push(("grad".to_string(), &hand.grad, &tape.grad));
    let mut worst = 0.0f64;
    for (group, h, t) in groups {
        let in_group = |e: Error| match e {
            Error::Params { name, reason } => Error::Params {
                name: format!("{group}.{name}"),
                reason: format!("hand-written adjoint vs taped update: {reason}"),
            },
            other => other,
        };
        let r = compare(h, t).map_err(in_group)?;
        let finite = h.first_non_finite().is_none() && t.first_non_finite().is_none();
        if !finite || r.rel > tol {
            return Err(Error::Params {
                name: format!("{group}.{}", r.worst),
                reason: format!(
                    "the hand-written adjoint differs from the VJP of the taped update: \
                     relative error {:e} (tolerance {tol:e}, largest absolute difference {:e})",
                    r.rel, r.max_abs
                ),
            });
        }
        worst = worst.max(r.rel);
    }
    Ok(worst)
}

/// Every group must have `theta`'s names and shapes.
fn check_inputs(
    theta: &Params<Tensor<f64>>,
    state: &OptState<Tensor<f64>>,
    g: &Params<Tensor<f64>>,
    theta_bar: &Params<Tensor<f64>>,
    state_bar: &[Params<Tensor<f64>>],
) -> Result<()> {
    let named = |group: String| {
        move |e: Error| match e {
            Error::Params { name, reason } => Error::Params {
                name: format!("{group}.{name}"),
                reason,
            },
            other => other,
        }
    };
    theta.check_like(g).map_err(named("g".into()))?;
    theta
        .check_like(theta_bar)
        .map_err(named("theta_bar".into()))?;
    for (j, s) in state.slots.iter().enumerate() {
        theta.check_like(s).map_err(named(format!("state[{j}]")))?;
    }
    if !state_bar.is_empty() && state_bar.len() != state.slots.len() {
        return Err(Error::Params {
            name: "state_bar".into(),
            reason: format!(
                "{} slot cotangents for {} slots (give one per slot, or none for all zero)",
                state_bar.len(),
                state.slots.len()
            ),
        });
    }
    for (j, s) in state_bar.iter().enumerate() {
        theta
            .check_like(s)
            .map_err(named(format!("state_bar[{j}]")))?;
    }
    Ok(())
}
