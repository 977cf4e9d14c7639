//! Differentiable inner optimisers: an update rule generic over the algebra (so it can
//! be recorded on a tape for the unrolled baseline) and its exact, hand-written adjoint
//! (for the mixed-mode backward sweep).
//!
//! # The update and its adjoint
//!
//! One optimiser step is a map `(theta', s') = U(theta, s, g)` from the parameters, the
//! optimiser slots `s` (momentum buffer, Adam moments) and the gradient `g` to the new
//! parameters and slots. [`Optimizer::update`] writes `U` once with [`Value`] ops, so the
//! same code runs on concrete [`Tensor`]s, on duals, and on tape variables (the unrolled
//! reverse-over-reverse baseline differentiates it like any other model code).
//!
//! The mixed-mode meta-gradient runs the inner loop forward on concrete arrays and then
//! sweeps backward through it, calling [`Optimizer::adjoint`] at every step. Given the
//! cotangents `(theta_bar', s_bar')` of the outputs, `adjoint` returns the vector-Jacobian
//! product `(theta_bar, s_bar, g_bar) = (theta_bar', s_bar')^T dU/d(theta, s, g)`. Every
//! rule here is elementwise, so the adjoint is a single fused pass over the arrays per
//! parameter tensor: no tape, no intermediate graph, and it reproduces what a tape would
//! compute for `update` to rounding error. The step counter is not differentiable (it
//! only sets Adam's bias-correction constants).
//!
//! # Why Adam takes `sqrt(v_hat + eps_root)`
//!
//! With the textbook denominator `sqrt(v_hat) + eps`, the derivative of `sqrt` at
//! `v_hat = 0` is unbounded. This is not a corner case: any coordinate whose gradient
//! has been exactly zero so far (embedding rows of tokens not yet seen, masked units)
//! has `v = 0`, and the chain rule then evaluates `0 * inf = NaN`, which poisons the
//! whole meta-gradient. Following optax, [`Adam`] adds `eps_root` *inside* the root, so
//! `sqrt(v_hat + eps_root) >= sqrt(eps_root)` and every factor of the adjoint is finite.
//! The default, [`DEFAULT_EPS_ROOT`] `= 1e-12`, is chosen to work in both `f32` and `f64`:
//! it is a normal `f32`, its root `1e-6` bounds the largest local factor of the adjoint,
//! `1 / (2 sqrt(eps_root) (sqrt(eps_root) + eps)^2)`, by about `5e17` (far from `f32`
//! overflow, `3.4e38`, with room for the products of a backward sweep), and it changes
//! the forward update only where `v_hat` is itself tiny: the denominator moves by a
//! relative `eps_root / (2 v_hat)` at most, below `5e-5` once `v_hat > 1e-8` (gradients
//! of size above about `1e-4`). Setting `eps_root = 0` recovers textbook Adam, whose
//! adjoint is NaN wherever `v_hat = 0`.

mod adam;
mod check;
mod momentum;
mod sgd;

use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::{Error, Result};

/// Optimiser state: a step counter and zero or more slots shaped like the parameters
/// (momentum buffer; Adam's first and second moments).
#[derive(Clone, Debug, PartialEq)]
pub struct OptState<V> {
    /// Number of updates applied so far.
    pub step: usize,
    /// Per-parameter slots, in an order fixed by the optimiser.
    pub slots: Vec<Params<V>>,
}

/// Cotangents of one update's inputs, returned by [`Optimizer::adjoint`].
#[derive(Clone, Debug)]
pub struct Adjoint<F: Float> {
    /// Cotangent of the parameters before the update.
    pub theta: Params<Tensor<F>>,
    /// Cotangent of the state before the update (same slots).
    pub state: Vec<Params<Tensor<F>>>,
    /// Cotangent of the gradient fed to the update.
    pub grad: Params<Tensor<F>>,
}

/// A differentiable optimiser: `(theta', s') = U(theta, s, g)`.
///
/// All parameter groups passed to one call (`theta`, every slot, `g`, and the
/// cotangents) must have the same names and shapes; a mismatch is a bug in the calling
/// code and panics, naming the tensor.
///
/// # Rules for an implementation
///
/// * [`update`](Optimizer::update) must be a **pure function** of `self`, `theta`,
///   `state` and `g`: no interior mutability, no randomness, no clock. The engines call
///   it again on the same inputs and rely on getting the same bits: mixed mode replays
///   it on stored gradients to recover states it did not keep, checkpointed mode
///   recomputes inner steps from snapshots, and unrolled mode records it on a tape.
///   Anything an update needs to remember goes into [`OptState`].
/// * [`adjoint`](Optimizer::adjoint) must be the exact VJP of `update`. Only unrolled
///   mode differentiates `update` itself; mixed and checkpointed modes (the ones that
///   save memory) call `adjoint`, so a wrong adjoint gives a silently wrong
///   meta-gradient. Test it with [`check_adjoint`], which compares it with the VJP of
///   the taped `update` ([`taped_adjoint`]) in `f64`, at several states and with
///   gradients that have exact zeros:
///
/// ```
/// use datarater::optim::{Momentum, Optimizer, check_adjoint};
/// use datarater::{Params, Rng, Tensor};
/// let mut rng = Rng::new(1);
/// let mut draw = || -> datarater::Result<Params<Tensor<f64>>> {
///     Ok(Params::from_iter([("w".to_string(), Tensor::randn(&[4], &mut rng)?)]))
/// };
/// let opt = Momentum::nesterov(0.1, 0.9);
/// let (mut theta, mut state) = (draw()?, opt.init(&draw()?));
/// for _ in 0..3 {
///     let (g, theta_bar, buf_bar) = (draw()?, draw()?, draw()?);
///     let err = check_adjoint(&opt, &theta, &state, &g, &theta_bar, &[buf_bar], 1e-12)?;
///     assert!(err <= 1e-12);
///     (theta, state) = opt.update(&theta, &state, &g);
/// }
/// # Ok::<(), datarater::Error>(())
/// ```
pub trait Optimizer<F: Float>: Clone + Send + Sync {
    /// Fresh state for `params`.
    fn init(&self, params: &Params<Tensor<F>>) -> OptState<Tensor<F>>;
    /// One update, in any algebra. The returned state has `step + 1`.
    fn update<V: Value<F = F>>(
        &self,
        theta: &Params<V>,
        state: &OptState<V>,
        g: &Params<V>,
    ) -> (Params<V>, OptState<V>);
    /// The VJP of [`update`](Optimizer::update) at `(theta, state, g)` applied to the
    /// cotangents of its outputs.
    ///
    /// `state_bar` holds one cotangent per slot, in slot order; an empty slice means all
    /// slot cotangents are zero (e.g. at the last step, when the outer loss reads only
    /// the parameters).
    fn adjoint(
        &self,
        theta: &Params<Tensor<F>>,
        state: &OptState<Tensor<F>>,
        g: &Params<Tensor<F>>,
        theta_bar: &Params<Tensor<F>>,
        state_bar: &[Params<Tensor<F>>],
    ) -> Adjoint<F>;
    /// Checks the hyper-parameters, returning [`Error::Config`] naming the first bad one.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// Whether each parameter tensor's update reads only that tensor's parameter,
    /// gradient, state slots and cotangents (true for [`Sgd`], [`Momentum`] and
    /// [`Adam`]). The default, `false`, suits an update that couples tensors (clipping
    /// by the global norm, for example). When it is true the meta-gradient engines run
    /// [`update`](Self::update) and [`adjoint`](Self::adjoint) on numbers one tensor per
    /// call, the calls spread over rayon's threads: each tensor gets the numbers it gets
    /// in one call on all of them, so the result is bitwise the same.
    fn per_tensor(&self) -> bool {
        false
    }
}

/// [`Optimizer::update`] on numbers, one call per tensor over rayon's threads when the
/// optimiser allows it ([`Optimizer::per_tensor`]): bitwise one call's result. Small
/// elementwise updates of many tensors otherwise run on one thread while the others
/// wait.
pub(crate) fn update_by_tensor<F: Float, O: Optimizer<F>>(
    opt: &O,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
    g: &Params<Tensor<F>>,
) -> (Params<Tensor<F>>, OptState<Tensor<F>>) {
    let groups: Vec<_> = [theta, g].into_iter().chain(&state.slots).collect();
    let Some(parts) = by_tensor(opt.per_tensor(), &groups, |one| {
        let slots = one[2..].to_vec();
        opt.update(
            &one[0],
            &OptState {
                step: state.step,
                slots,
            },
            &one[1],
        )
    }) else {
        return opt.update(theta, state, g);
    };
    let step = parts[0].1.1.step;
    let slots = (0..parts[0].1.1.slots.len())
        .map(|i| gather(&parts, |(_, s)| &s.slots[i]))
        .collect();
    (gather(&parts, |(th, _)| th), OptState { step, slots })
}

/// [`Optimizer::adjoint`], one call per tensor as in [`update_by_tensor`].
pub(crate) fn adjoint_by_tensor<F: Float, O: Optimizer<F>>(
    opt: &O,
    theta: &Params<Tensor<F>>,
    state: &OptState<Tensor<F>>,
    g: &Params<Tensor<F>>,
    theta_bar: &Params<Tensor<F>>,
    state_bar: &[Params<Tensor<F>>],
) -> Adjoint<F> {
    let n = state.slots.len();
    let groups: Vec<_> = [theta, g, theta_bar]
        .into_iter()
        .chain(&state.slots)
        .chain(state_bar)
        .collect();
    let Some(parts) = by_tensor(opt.per_tensor(), &groups, |one| {
        let st = OptState {
            step: state.step,
            slots: one[3..3 + n].to_vec(),
        };
        opt.adjoint(&one[0], &st, &one[1], &one[2], &one[3 + n..])
    }) else {
        return opt.adjoint(theta, state, g, theta_bar, state_bar);
    };
    Adjoint {
        theta: gather(&parts, |a| &a.theta),
        state: (0..parts[0].1.state.len())
            .map(|i| gather(&parts, |a| &a.state[i]))
            .collect(),
        grad: gather(&parts, |a| &a.grad),
    }
}

/// `f` of each tensor's one-tensor groups (the tensor of that name in each of `groups`),
/// in parallel, with the tensor's name; `None` (run one call instead) unless `per_tensor`,
/// there are two tensors or more, and every group has the first one's names and shapes
/// ([`Params::check_like`]; else the one call reports the mismatch).
fn by_tensor<F: Float, R: Send>(
    per_tensor: bool,
    groups: &[&Params<Tensor<F>>],
    f: impl Fn(Vec<Params<Tensor<F>>>) -> R + Sync,
) -> Option<Vec<(String, R)>> {
    use rayon::prelude::*;
    let first = groups[0];
    let like = |p: &&Params<Tensor<F>>| first.check_like(*p).is_ok();
    if !per_tensor || first.len() < 2 || !groups.iter().all(like) {
        return None;
    }
    let names: Vec<&str> = first.names().collect();
    Some(
        names
            .par_iter()
            .map(|&k| {
                let one = groups
                    .iter()
                    .map(|p| Params::from_iter([(k.to_string(), p[k].clone())]))
                    .collect();
                (k.to_string(), f(one))
            })
            .collect(),
    )
}

/// One group from the per-tensor results: tensor `k` of `part(result_k)` for each `k`.
fn gather<F: Float, R>(
    parts: &[(String, R)],
    part: impl Fn(&R) -> &Params<Tensor<F>>,
) -> Params<Tensor<F>> {
    parts
        .iter()
        .map(|(k, r)| (k.clone(), part(r)[k.as_str()].clone()))
        .collect()
}

// ---- helpers shared by the optimisers ----------------------------------------------

/// `x` must be finite and strictly positive.
pub(crate) fn check_positive<F: Float>(field: &'static str, x: F) -> Result<()> {
    if !(x.is_finite() && x > F::zero()) {
        return Err(Error::Config {
            field,
            reason: format!("must be finite and > 0, got {x}"),
        });
    }
    Ok(())
}

/// `x` must be finite and non-negative.
pub(crate) fn check_non_negative<F: Float>(field: &'static str, x: F) -> Result<()> {
    if !(x.is_finite() && x >= F::zero()) {
        return Err(Error::Config {
            field,
            reason: format!("must be finite and >= 0, got {x}"),
        });
    }
    Ok(())
}

/// `x` must lie in `[0, 1)` (a decay rate).
pub(crate) fn check_decay<F: Float>(field: &'static str, x: F) -> Result<()> {
    if !(x >= F::zero() && x < F::one()) {
        return Err(Error::Config {
            field,
            reason: format!("must be in [0, 1), got {x}"),
        });
    }
    Ok(())
}

/// Panics unless `state` has exactly `n` slots.
pub(crate) fn check_slots<V>(op: &'static str, state: &OptState<V>, n: usize) {
    assert_eq!(
        state.slots.len(),
        n,
        "{op}: optimiser state has {} slots, expected {n}",
        state.slots.len()
    );
}

/// Panics unless `state_bar` is empty (all zero) or has exactly `n` entries.
pub(crate) fn check_slot_cotangents<F: Float>(
    op: &'static str,
    state_bar: &[Params<Tensor<F>>],
    n: usize,
) {
    assert!(
        state_bar.is_empty() || state_bar.len() == n,
        "{op}: {} slot cotangents given, expected {n} (or none for all-zero)",
        state_bar.len()
    );
}

/// The tensor called `name` in `p`, panicking with the op and the name when missing.
pub(crate) fn entry<'a, V>(op: &'static str, p: &'a Params<V>, name: &str) -> &'a V {
    p.get(name)
        .unwrap_or_else(|| panic!("{op}: no tensor named `{name}` in a parameter group"))
}

/// Panics unless all `ts` have the shape of the first.
pub(crate) fn check_shapes<F: Float>(op: &'static str, ts: &[&Tensor<F>]) {
    if let Some((first, rest)) = ts.split_first() {
        for t in rest {
            if t.shape() != first.shape() {
                crate::autodiff::ops::shape_panic(op, first.shape(), t.shape());
            }
        }
    }
}

/// Runs `f` elementwise over same-shaped tensors into `O` new tensors, in one pass over
/// contiguous data (non-standard layouts are copied first). `None` inputs read as zero.
/// The shape is taken from the first input, which must be `Some`. The pass is compiled
/// for the CPU's vector unit ([`kernels::with_simd`](crate::autodiff::kernels)), and a
/// `None` input reads a zeroed buffer rather than being tested per element; `f` should
/// be `#[inline(always)]` so that it is compiled for it too.
///
/// # Panics
/// If the first input is `None` or the shapes differ.
pub(crate) fn elementwise<F: Float, const I: usize, const O: usize>(
    op: &'static str,
    inputs: [Option<&Tensor<F>>; I],
    f: impl Fn([F; I]) -> [F; O],
) -> [Tensor<F>; O] {
    use crate::autodiff::kernels;
    let shape = inputs[0]
        .unwrap_or_else(|| panic!("{op}: first input must be present"))
        .shape()
        .to_vec();
    let data = inputs.map(|t| {
        t.map(|t| {
            if t.shape() != shape.as_slice() {
                crate::autodiff::ops::shape_panic(op, &shape, t.shape());
            }
            t.array().as_standard_layout()
        })
    });
    let n: usize = shape.iter().product();
    let zeros = data.iter().any(Option::is_none).then(|| vec![F::zero(); n]);
    let slices: [&[F]; I] = std::array::from_fn(|j| match &data[j] {
        Some(a) => &a.as_slice().expect("standard layout is contiguous")[..n],
        None => &zeros.as_ref().expect("a `None` input")[..n],
    });
    let mut outs: [Vec<F>; O] = std::array::from_fn(|_| kernels::overwritten(n));
    let mut out: [&mut [F]; O] = outs.each_mut().map(|o| &mut o[..n]);
    kernels::with_simd(
        #[inline(always)]
        || {
            for i in 0..n {
                let y = f(std::array::from_fn(|j| slices[j][i]));
                for (o, y) in out.iter_mut().zip(y) {
                    o[i] = y;
                }
            }
        },
    );
    outs.map(|v| Tensor::from_vec(&shape, v).expect("one element per input element"))
}

pub use adam::{Adam, DEFAULT_EPS_ROOT};
pub use check::{check_adjoint, taped_adjoint};
pub use momentum::Momentum;
pub use sgd::Sgd;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::kernels::{Simd, cap_simd};

    /// One call per tensor, over threads, gives one call's bits, for every optimiser
    /// here, with and without state cotangents; an optimiser that is not per-tensor, or
    /// groups whose names differ, get the one call.
    #[test]
    fn by_tensor_calls_give_one_calls_bits() {
        fn bits(groups: &[&Params<Tensor<f32>>]) -> Vec<u32> {
            let values = groups.iter().flat_map(|p| p.values());
            values.flat_map(|t| t.to_vec()).map(f32::to_bits).collect()
        }
        fn check<O: Optimizer<f32>>(opt: &O, label: &str) {
            let mut rng = crate::Rng::new(5);
            let mut p = Params::new();
            for (name, shape) in [
                ("a", &[3, 4][..]),
                ("b", &[7]),
                ("c", &[2, 2, 2]),
                ("d", &[1]),
            ] {
                p.insert(name, Tensor::<f32>::randn(shape, &mut rng).unwrap());
            }
            let draw = |rng: &mut crate::Rng| p.map(|t| Tensor::randn(t.shape(), rng).unwrap());
            let (g0, g1, bar) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
            let (_, state) = opt.update(&p, &opt.init(&p), &g0);
            let whole = opt.update(&p, &state, &g1);
            let split = update_by_tensor(opt, &p, &state, &g1);
            let of = |(th, st): &(Params<_>, OptState<_>)| {
                let groups: Vec<_> = std::iter::once(th).chain(&st.slots).collect();
                (bits(&groups), st.step, st.slots.len())
            };
            assert_eq!(of(&split), of(&whole), "{label}");
            let slot_bars: Vec<_> = state.slots.iter().map(|_| draw(&mut rng)).collect();
            for state_bar in [&[][..], &slot_bars] {
                let one = opt.adjoint(&p, &state, &g1, &bar, state_bar);
                let split = adjoint_by_tensor(opt, &p, &state, &g1, &bar, state_bar);
                let of = |a: &Adjoint<f32>| {
                    let groups: Vec<_> = [&a.theta, &a.grad].into_iter().chain(&a.state).collect();
                    (bits(&groups), a.state.len())
                };
                assert_eq!(of(&split), of(&one), "{label}");
            }
        }
        check(&Adam::adamw(1e-2, 0.1), "adamw");
        check(&Momentum::nesterov(0.1, 0.9), "nesterov");
        check(&Sgd::new(0.1), "sgd");
        let mut p = Params::new();
        p.insert("a", Tensor::<f32>::filled(&[2], 0.0));
        p.insert("b", Tensor::<f32>::filled(&[2], 0.0));
        assert!(by_tensor(false, &[&p], |_| ()).is_none());
        assert!(by_tensor(true, &[&p], |_| ()).is_some());
        let mut q = p.clone();
        q.insert("c", Tensor::<f32>::filled(&[2], 0.0));
        assert!(by_tensor(true, &[&p, &q], |_| ()).is_none());
    }

    /// The optimisers' fused adjoint passes run in `with_simd`: every vector level gives
    /// the same bits, with and without the state cotangents (a `None` input reads zeros).
    #[test]
    fn adjoints_give_the_same_bits_on_every_simd_level() {
        fn run(with_state_bar: bool) -> Vec<Vec<u64>> {
            let mut rng = crate::Rng::new(3);
            let mut p = Params::new();
            p.insert("w", Tensor::<f32>::randn(&[37, 5], &mut rng).unwrap());
            let adam = Adam::new(1e-2f32).with_weight_decay(0.1);
            let g = p.map(|t| Tensor::randn(t.shape(), &mut rng).unwrap());
            let (_, state) = adam.update(&p, &adam.init(&p), &g);
            let bar = p.map(|t| Tensor::randn(t.shape(), &mut rng).unwrap());
            let state_bar = if with_state_bar {
                vec![bar.clone(), bar.map(|t| t.scale(0.5))]
            } else {
                Vec::new()
            };
            let a = adam.adjoint(&p, &state, &g, &bar, &state_bar);
            let sgd = Sgd::new(0.1f32);
            let sgd = sgd.adjoint(&p, &sgd.init(&p), &g, &bar, &[]);
            [&a.theta, &a.state[0], &a.state[1], &a.grad, &sgd.grad]
                .iter()
                .map(|q| {
                    q["w"]
                        .to_vec()
                        .iter()
                        .map(|v| u64::from(v.to_bits()))
                        .collect()
                })
                .collect()
        }
        let was = cap_simd(Simd::Avx512);
        for with_state_bar in [false, true] {
            let levels = [Simd::Scalar, Simd::Avx2, Simd::Avx512].map(|level| {
                cap_simd(level);
                run(with_state_bar)
            });
            assert_eq!(levels[1], levels[0], "AVX2 against scalar");
            assert_eq!(levels[2], levels[0], "AVX-512 against scalar");
        }
        cap_simd(was);
    }
}
