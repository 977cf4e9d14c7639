//! A public finite-difference checker (central differences, f64) for gradients, JVPs
//! and HVPs, so downstream crates can test their own models the way this crate does.
//!
//! Implement [`ScalarFn`] once for a loss written generically over the algebra, then
//! call [`check_gradient`], [`check_jvp`] or [`check_hvp`].

use super::dual::Dual;
use super::params::Params;
use super::tape::Var;
use super::tensor::Tensor;
use super::transforms::{hvp, jvp, value_and_grad};
use super::value::Value;
use crate::error::Result;

/// A scalar function of a parameter group, generic over the algebra.
pub trait ScalarFn {
    /// Evaluates the function in algebra `V`.
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V;
}

/// How far a derivative is from its finite-difference estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Largest absolute difference divided by the largest magnitude of the reference.
    pub rel: f64,
    /// Where the largest difference is (`name[flat index]`).
    pub worst: String,
}

impl Report {
    /// True when `rel <= tol`.
    pub fn ok(&self, tol: f64) -> bool {
        self.rel <= tol
    }
}

/// Norm-wise relative comparison of two parameter groups (`b` is the reference).
pub fn compare(a: &Params<Tensor<f64>>, b: &Params<Tensor<f64>>) -> Result<Report> {
    a.check_like(b)?;
    let (mut max_abs, mut scale, mut worst) = (0.0f64, 0.0f64, String::new());
    for (k, ta) in a.iter() {
        for (i, (x, y)) in ta.array().iter().zip(b[k].array().iter()).enumerate() {
            scale = scale.max(y.abs());
            let d = (x - y).abs();
            if d > max_abs || d.is_nan() {
                max_abs = d;
                worst = format!("{k}[{i}]");
            }
        }
    }
    Ok(Report {
        max_abs,
        rel: max_abs / scale.max(f64::MIN_POSITIVE),
        worst,
    })
}

/// Norm-wise relative comparison of two tensors.
pub fn compare_tensors(a: &Tensor<f64>, b: &Tensor<f64>) -> Result<Report> {
    let wrap = |t: &Tensor<f64>| Params::from_iter([("t".to_string(), t.clone())]);
    compare(&wrap(a), &wrap(b))
}

/// `(f(p + eps d) - f(p - eps d)) / (2 eps)` for a tensor-valued `f`.
pub fn fd_directional(
    f: impl Fn(&Params<Tensor<f64>>) -> Tensor<f64>,
    p: &Params<Tensor<f64>>,
    dir: &Params<Tensor<f64>>,
    eps: f64,
) -> Result<Tensor<f64>> {
    let hi = f(&p.add_scaled(dir, eps)?);
    let lo = f(&p.add_scaled(dir, -eps)?);
    Ok(Tensor::from_array((hi.array() - lo.array()) / (2.0 * eps)))
}

/// The full central-difference gradient of a scalar function (one pair of evaluations
/// per scalar parameter: meant for small test problems).
pub fn fd_gradient(
    f: impl Fn(&Params<Tensor<f64>>) -> f64,
    p: &Params<Tensor<f64>>,
    eps: f64,
) -> Params<Tensor<f64>> {
    p.iter()
        .map(|(k, t)| {
            let mut g = t.to_owned_array();
            for i in 0..t.len() {
                let shifted = |d: f64| {
                    let mut q = p.clone();
                    let mut a = t.to_owned_array();
                    let x = a.iter_mut().nth(i).expect("in range");
                    *x += d;
                    q.insert(k, Tensor::from_array(a));
                    f(&q)
                };
                *g.iter_mut().nth(i).expect("in range") =
                    (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            }
            (k.to_string(), Tensor::from_array(g))
        })
        .collect()
}

/// Reverse-mode gradient vs. [`fd_gradient`].
pub fn check_gradient(f: &impl ScalarFn, p: &Params<Tensor<f64>>, eps: f64) -> Result<Report> {
    let (_, g) = value_and_grad(|q: &Params<Var<Tensor<f64>>>| f.eval(q), p)?;
    compare(&g, &fd_gradient(|q| f.eval(q).item(), p, eps))
}

/// Forward-mode JVP vs. a central difference along `dir`.
pub fn check_jvp(
    f: &impl ScalarFn,
    p: &Params<Tensor<f64>>,
    dir: &Params<Tensor<f64>>,
    eps: f64,
) -> Result<Report> {
    let (_, t) = jvp(|q: &Params<Dual<Tensor<f64>>>| f.eval(q), p, dir)?;
    compare_tensors(&t, &fd_directional(|q| f.eval(q), p, dir, eps)?)
}

/// Forward-over-reverse HVP vs. a central difference of reverse-mode gradients along `v`.
pub fn check_hvp(
    f: &impl ScalarFn,
    p: &Params<Tensor<f64>>,
    v: &Params<Tensor<f64>>,
    eps: f64,
) -> Result<Report> {
    let (_, _, hv) = hvp(|q: &Params<Var<Dual<Tensor<f64>>>>| f.eval(q), p, v)?;
    let g = |q: &Params<Tensor<f64>>| {
        value_and_grad(|r: &Params<Var<Tensor<f64>>>| f.eval(r), q).map(|(_, g)| g)
    };
    let (hi, lo) = (g(&p.add_scaled(v, eps)?)?, g(&p.add_scaled(v, -eps)?)?);
    let fd = hi.zip_map(&lo, |a, b| {
        Tensor::from_array((a.array() - b.array()) / (2.0 * eps))
    })?;
    compare(&hv, &fd)
}
