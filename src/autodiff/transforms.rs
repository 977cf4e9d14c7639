//! The function-style front door: `value_and_grad`, `grad`, `vjp`, `jvp`, `hvp`,
//! `jvp_grad` (gradient and its tangent for several parameter groups in one
//! forward-over-reverse pass) and the reverse-over-reverse / reverse-over-forward HVPs.
//!
//! First-order transforms (`value_and_grad`, `grad`, `vjp`) record checkpointed blocks
//! op by op (one pass's activations are cheap to keep); the forward-over-reverse ones
//! (`jvp_grad`, `hvp`) rematerialise them, since there the working set of dual values
//! is what bounds memory. Build a [`Tape`] directly to choose otherwise.
//!
//! Every transform is generic over the algebra `V` it runs on, so they compose:
//! `value_and_grad` with `V = Var<Tensor>` is a recorded backward pass that an outer
//! `value_and_grad` differentiates again.

use super::dual::Dual;
use super::params::Params;
use super::tape::{Tape, Var};
use super::tensor::Tensor;
use super::value::Value;
use crate::error::{Error, Result};

/// What a transformed function may return: a value, or a `Result` of one (so model code
/// that validates its input can be differentiated with `?`).
pub trait Output<T> {
    /// The value, or the function's own error.
    fn into_result(self) -> Result<T>;
}

impl<V: Value> Output<Var<V>> for Var<V> {
    fn into_result(self) -> Result<Var<V>> {
        Ok(self)
    }
}

impl<V: Value> Output<Var<V>> for Result<Var<V>> {
    fn into_result(self) -> Result<Var<V>> {
        self
    }
}

impl<V: Value> Output<Dual<V>> for Dual<V> {
    fn into_result(self) -> Result<Dual<V>> {
        Ok(self)
    }
}

impl<V: Value> Output<Dual<V>> for Result<Dual<V>> {
    fn into_result(self) -> Result<Dual<V>> {
        self
    }
}

fn ones_like<V: Value>(shape: &[usize]) -> V {
    V::constant(Tensor::filled(shape, <V::F as num_traits::One>::one()))
}

fn scalar_check(op: &'static str, shape: &[usize]) -> Result<()> {
    if shape.iter().product::<usize>() != 1 {
        return Err(Error::Shape {
            op,
            lhs: shape.to_vec(),
            rhs: vec![],
        });
    }
    Ok(())
}

/// The value of a scalar function and its gradient with respect to `params`.
///
/// ```
/// use datarater::{Params, Tensor, Value, transforms::value_and_grad};
/// let mut p = Params::new();
/// p.insert("x", Tensor::<f64>::from_vec(&[2], vec![1.0, 2.0]).unwrap());
/// let (y, g) = value_and_grad(|q| q["x"].square().sum_all(), &p).unwrap();
/// assert_eq!(y.item(), 5.0);
/// assert_eq!(g["x"].to_vec(), vec![2.0, 4.0]);
/// ```
pub fn value_and_grad<V: Value, R: Output<Var<V>>>(
    f: impl FnOnce(&Params<Var<V>>) -> R,
    params: &Params<V>,
) -> Result<(V, Params<V>)> {
    value_and_grad_measured(f, params).map(|(y, g, _)| (y, g))
}

/// [`value_and_grad`] and its working set: the tape's bytes at the end of the forward
/// pass plus the most cotangent bytes alive at once in the backward sweep.
pub(crate) fn value_and_grad_measured<V: Value, R: Output<Var<V>>>(
    f: impl FnOnce(&Params<Var<V>>) -> R,
    params: &Params<V>,
) -> Result<(V, Params<V>, usize)> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    let tape = Tape::with_checkpointing(false);
    let vars = params.map(|v| tape.var(v.clone()));
    let y = f(&vars).into_result()?;
    scalar_check("value_and_grad: output must be a scalar", &y.shape())?;
    let seed = ones_like::<V>(&y.shape());
    let wrt: Vec<&Var<V>> = vars.values().collect();
    let tape_bytes = tape.held_bytes();
    let (grads, cot_bytes) = tape.backward_within(&y, seed, &wrt, None)?;
    let out = vars.names().map(str::to_string).zip(grads).collect();
    Ok((y.into_value(), out, tape_bytes + cot_bytes))
}

/// The gradient of a scalar function.
pub fn grad<V: Value, R: Output<Var<V>>>(
    f: impl FnOnce(&Params<Var<V>>) -> R,
    params: &Params<V>,
) -> Result<Params<V>> {
    value_and_grad(f, params).map(|(_, g)| g)
}

/// The output of `f` and the vector-Jacobian product `cot^T J`.
pub fn vjp<V: Value, R: Output<Var<V>>>(
    f: impl FnOnce(&Params<Var<V>>) -> R,
    params: &Params<V>,
    cot: &V,
) -> Result<(V, Params<V>)> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    vjp_measured(f, params, cot).map(|(y, g, _)| (y, g))
}

/// [`vjp`] and its working set (as in [`value_and_grad_measured`]).
pub(crate) fn vjp_measured<V: Value, R: Output<Var<V>>>(
    f: impl FnOnce(&Params<Var<V>>) -> R,
    params: &Params<V>,
    cot: &V,
) -> Result<(V, Params<V>, usize)> {
    let tape = Tape::with_checkpointing(false);
    let vars = params.map(|v| tape.var(v.clone()));
    let y = f(&vars).into_result()?;
    let wrt: Vec<&Var<V>> = vars.values().collect();
    let tape_bytes = tape.held_bytes();
    let (grads, cot_bytes) = tape.backward_within(&y, cot.clone(), &wrt, None)?;
    Ok((
        y.into_value(),
        vars.names().map(str::to_string).zip(grads).collect(),
        tape_bytes + cot_bytes,
    ))
}

/// The output of `f` and the Jacobian-vector product `J t`.
pub fn jvp<V: Value, R: Output<Dual<V>>>(
    f: impl FnOnce(&Params<Dual<V>>) -> R,
    params: &Params<V>,
    tangent: &Params<V>,
) -> Result<(V, V)> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    let duals = params.zip_map(tangent, |p, t| Dual::new(p.clone(), t.clone()))?;
    let y = f(&duals).into_result()?;
    let t = y.tangent_or_zeros();
    Ok((y.primal, t))
}

/// Result of [`jvp_grad`]: value, gradient per group, and the gradient's tangent per group.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct JvpGrad<V> {
    /// The function value.
    pub value: V,
    /// `grad_k f` for each group `k`.
    pub grads: Vec<Params<V>>,
    /// `d/de grad_k f(p + e t)` for each group `k`: with a tangent on group `j` only, this
    /// is the Hessian block `H_kj t_j` (the HVP for `k = j`, the mixed product otherwise).
    pub tangents: Vec<Params<V>>,
    /// Bytes the tape held at the end of the forward pass (see [`Tape::bytes`]).
    pub tape_bytes: usize,
    /// The most bytes of cotangents alive at once during the backward sweep: with
    /// `tape_bytes`, the pass's working set.
    pub cotangent_bytes: usize,
}

/// Gradient of a scalar function with respect to several parameter groups, and the
/// tangent of that gradient along `tangents` (`None` = zero for that group), in ONE
/// forward-over-reverse pass. Checkpointed blocks are rematerialised (see
/// [`jvp_grad_with`] to trade memory for speed).
pub fn jvp_grad<V: Value, R: Output<Var<Dual<V>>>>(
    f: impl FnOnce(&[Params<Var<Dual<V>>>]) -> R,
    groups: &[&Params<V>],
    tangents: &[Option<&Params<V>>],
) -> Result<JvpGrad<V>> {
    jvp_grad_with(f, groups, tangents, true)
}

/// [`jvp_grad`] choosing whether checkpointed blocks are rematerialised
/// (`checkpointing = true`: a block's inside is kept only while it is the most recent
/// one, and recomputed in the backward sweep otherwise) or recorded op by op like any
/// other code (`false`: no block runs twice, every block's activations are alive at
/// the start of the backward sweep).
pub fn jvp_grad_with<V: Value, R: Output<Var<Dual<V>>>>(
    f: impl FnOnce(&[Params<Var<Dual<V>>>]) -> R,
    groups: &[&Params<V>],
    tangents: &[Option<&Params<V>>],
    checkpointing: bool,
) -> Result<JvpGrad<V>> {
    forward_over_reverse(f, groups, tangents, checkpointing, true)
}

/// [`jvp_grad_with`] when only the gradient's tangents are wanted (Hessian-vector and
/// mixed products, as the meta-gradient's backward sweep needs): the gradient itself is
/// not computed where that saves work, so a dense layer's weight gradient `x^T dy`
/// costs two products (its tangent `dx^T dy + x^T d(dy)`) instead of three, one product
/// in nine of the layer's pass. The tangents are bitwise those of [`jvp_grad_with`];
/// `grads` is empty.
///
/// ```
/// use datarater::{Dual, Params, Tensor, Value, Var};
/// use datarater::transforms::{grad_tangents_with, jvp_grad_with};
/// let t = |v: Vec<f64>| Tensor::from_vec(&[2, 2], v).unwrap();
/// let p = Params::from_iter([("w".to_string(), t(vec![1.0, 2.0, 3.0, 4.0]))]);
/// let v = Params::from_iter([("w".to_string(), t(vec![0.5, -1.0, 2.0, 0.0]))]);
/// let f = |g: &[Params<Var<Dual<Tensor<f64>>>>]| {
///     Ok(g[0]["w"].matmul(&g[0]["w"]).square().sum_all())
/// };
/// let hv = grad_tangents_with(f, &[&p], &[Some(&v)], false).unwrap();
/// let both = jvp_grad_with(f, &[&p], &[Some(&v)], false).unwrap();
/// assert!(hv.grads.is_empty());
/// assert_eq!(hv.tangents[0]["w"], both.tangents[0]["w"]);
/// ```
pub fn grad_tangents_with<V: Value, R: Output<Var<Dual<V>>>>(
    f: impl FnOnce(&[Params<Var<Dual<V>>>]) -> R,
    groups: &[&Params<V>],
    tangents: &[Option<&Params<V>>],
    checkpointing: bool,
) -> Result<JvpGrad<V>> {
    forward_over_reverse(f, groups, tangents, checkpointing, false)
}

/// [`jvp_grad_with`], with the gradients (`grads`) or without them.
fn forward_over_reverse<V: Value, R: Output<Var<Dual<V>>>>(
    f: impl FnOnce(&[Params<Var<Dual<V>>>]) -> R,
    groups: &[&Params<V>],
    tangents: &[Option<&Params<V>>],
    checkpointing: bool,
    want_grads: bool,
) -> Result<JvpGrad<V>> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    if groups.len() != tangents.len() {
        return Err(Error::Usage(format!(
            "jvp_grad: {} groups but {} tangents",
            groups.len(),
            tangents.len()
        )));
    }
    let tape = Tape::<Dual<V>>::with_checkpointing(checkpointing);
    let leaf = |v| match want_grads {
        true => tape.var(v),
        false => tape.var_for_tangent(v),
    };
    let mut vars = Vec::with_capacity(groups.len());
    for (g, t) in groups.iter().zip(tangents) {
        vars.push(match t {
            Some(t) => g.zip_map(*t, |p, t| leaf(Dual::new(p.clone(), t.clone())))?,
            None => g.map(|p| leaf(Dual::constant_of(p.clone()))),
        });
    }
    let y = f(&vars).into_result()?;
    scalar_check("jvp_grad: output must be a scalar", &y.shape())?;
    let tape_bytes = tape.bytes();
    let seed = ones_like::<Dual<V>>(&y.shape());
    let wrt: Vec<&Var<Dual<V>>> = vars.iter().flat_map(|g| g.values()).collect();
    let (flat, cotangent_bytes) = tape.backward_within(&y, seed, &wrt, None)?;
    let mut flat = flat.into_iter();
    let (mut grads, mut tans) = (Vec::new(), Vec::new());
    for g in &vars {
        let d: Vec<(String, Dual<V>)> = g
            .names()
            .map(|k| (k.to_string(), flat.next().expect("one per var")))
            .collect();
        tans.push(
            d.iter()
                .map(|(k, d)| (k.clone(), d.tangent_or_zeros()))
                .collect(),
        );
        if want_grads {
            grads.push(d.into_iter().map(|(k, d)| (k, d.primal)).collect());
        }
    }
    Ok(JvpGrad {
        value: y.into_value().primal,
        grads,
        tangents: tans,
        tape_bytes,
        cotangent_bytes,
    })
}

/// Value, gradient and Hessian-vector product `H v`, by forward-over-reverse.
pub fn hvp<V: Value, R: Output<Var<Dual<V>>>>(
    f: impl FnOnce(&Params<Var<Dual<V>>>) -> R,
    params: &Params<V>,
    v: &Params<V>,
) -> Result<(V, Params<V>, Params<V>)> {
    let r = jvp_grad(|g| f(&g[0]).into_result(), &[params], &[Some(v)])?;
    let (g, hv) = (r.grads.into_iter().next(), r.tangents.into_iter().next());
    Ok((r.value, g.expect("one group"), hv.expect("one group")))
}

/// `H v` by reverse-over-reverse: the gradient is computed on a tape whose values are
/// themselves recorded on an outer tape, then `<grad, v>` is differentiated again.
pub fn hvp_rev_rev<V: Value, R: Output<Var<Var<V>>>>(
    f: impl FnOnce(&Params<Var<Var<V>>>) -> R,
    params: &Params<V>,
    v: &Params<V>,
) -> Result<Params<V>> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    params.check_like(v)?;
    grad(
        |p: &Params<Var<V>>| -> Result<Var<V>> {
            let g = grad(f, p)?;
            let terms = g
                .iter()
                .map(|(k, gk)| gk.mul(&Var::constant_of(v[k].clone())).sum_all());
            Ok(terms
                .reduce(|s, t| s.add(&t))
                .unwrap_or_else(|| Var::scalar(<V::F as num_traits::Zero>::zero())))
        },
        params,
    )
}

/// `H v` by reverse-over-forward: the gradient of the directional derivative `J v`.
pub fn hvp_rev_fwd<V: Value, R: Output<Dual<Var<V>>>>(
    f: impl FnOnce(&Params<Dual<Var<V>>>) -> R,
    params: &Params<V>,
    v: &Params<V>,
) -> Result<Params<V>> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    params.check_like(v)?;
    grad(
        |p: &Params<Var<V>>| {
            let duals = p
                .zip_map(v, |x, t| Dual::new(x.clone(), Var::constant_of(t.clone())))
                .expect("checked");
            f(&duals).into_result().map(|y| y.tangent_or_zeros())
        },
        params,
    )
}
