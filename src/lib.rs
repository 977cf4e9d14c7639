//! # datarater
//!
//! Meta-learned dataset curation (DataRater, Calian et al. 2025) on a from-scratch
//! mixed-mode autodiff engine (MixFlow-MG, Kemaev et al. 2025).
//!
//! The engine ([`autodiff`]) has one tensor algebra, [`Value`], with three
//! implementations that nest: [`Tensor`] (numbers), [`Dual`] (forward mode) and
//! [`Var`] on a [`Tape`] (reverse mode). Models are written once as generic functions
//! and run in every mode: `Var<Dual<Tensor>>` gives Hessian-vector and mixed products
//! in one forward-over-reverse pass; `Var<Var<Tensor>>` differentiates a recorded
//! backward pass.
//!
//! ```
//! use datarater::{Params, Tensor, Value, transforms::hvp};
//! let mut p = Params::new();
//! p.insert("x", Tensor::<f64>::from_vec(&[2], vec![1.0, 2.0]).unwrap());
//! let v = p.clone();
//! // f(x) = sum(x^3): H = diag(6 x), so H v = 6 x * x.
//! let (_, _, hv) = hvp(|q| q["x"].powi(3).sum_all(), &p, &v).unwrap();
//! assert_eq!(hv["x"].to_vec(), vec![6.0, 24.0]);
//! ```

#![warn(missing_docs)]

pub mod alloc;
pub mod autodiff;
pub mod curate;
pub mod data;
pub mod error;
pub mod io;
pub mod meta;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod trainer;

pub use ndarray;

/// README.md's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use autodiff::{Dual, Float, Indices, Mask, Params, Tape, Tensor, Value, Var, transforms};
pub use error::{Error, Result};
pub use rng::Rng;
