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

//!
//! # Imports
//!
//! [`prelude`] brings the traits and the types most programs use. It deliberately does
//! not export [`Result`], the crate's alias `Result<T, E = Error>`, so a glob import
//! never shadows `std::result::Result`; name it as `datarater::Result` where wanted.
//!
//! ```
//! use datarater::prelude::*;
//! fn sum_of_squares(x: &Tensor<f64>) -> datarater::Result<f64> {
//!     let (_, g) = datarater::transforms::value_and_grad(|p| p["x"].square().sum_all(), &{
//!         let mut p = Params::new();
//!         p.insert("x", x.clone());
//!         p
//!     })?;
//!     Ok(g["x"].dot_all(x) / 2.0)
//! }
//! let x = Tensor::from_vec(&[2], vec![3.0, 4.0])?;
//! assert_eq!(sum_of_squares(&x)?, 25.0);
//! # Ok::<(), datarater::Error>(())
//! ```

#![warn(missing_docs)]

/// Builder methods for a `#[non_exhaustive]` config struct, one per listed field:
/// `with_x(self, x) -> Self` sets field `x` and keeps the others, so callers outside the
/// crate can build it from `Default` or a constructor without a struct literal (which
/// `#[non_exhaustive]` forbids them, so fields can be added without breaking them).
macro_rules! with_fields {
    ($ty:ident$(<$g:ident: $b:path>)? { $($(#[doc = $doc:literal])* $method:ident => $field:ident: $t:ty),* $(,)? }) => {
        impl$(<$g: $b>)? $ty$(<$g>)? {
            $(
                $(#[doc = $doc])*
                #[must_use]
                pub fn $method(self, $field: $t) -> Self {
                    Self { $field, ..self }
                }
            )*
        }
    };
}

pub mod alloc;
pub mod autodiff;
pub mod checkpoint;
pub mod curate;
pub mod data;
pub mod distributed;
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

/// The Rust examples of the guides in docs/, compiled and run as doctests (so a
/// newcomer can copy any of them).
#[cfg(doctest)]
pub mod docs_doctests {
    /// docs/guide.md.
    #[doc = include_str!("../docs/guide.md")]
    pub struct Guide;
    /// docs/autodiff.md.
    #[doc = include_str!("../docs/autodiff.md")]
    pub struct Autodiff;
    /// docs/meta-gradients.md.
    #[doc = include_str!("../docs/meta-gradients.md")]
    pub struct MetaGradients;
    /// docs/distributed.md.
    #[doc = include_str!("../docs/distributed.md")]
    pub struct Distributed;
    /// docs/cli.md.
    #[doc = include_str!("../docs/cli.md")]
    pub struct Cli;
}

pub use autodiff::{Dual, Float, Indices, Mask, Params, Tape, Tensor, Value, Var, transforms};
pub use error::{Error, Result};
pub use rng::Rng;

/// The traits and types most programs use: `use datarater::prelude::*;`. Does not export
/// the crate's `Result` alias (see the [crate docs](crate#imports)).
pub mod prelude {
    pub use crate::autodiff::{Float, Indices, Params, Tensor, Value};
    pub use crate::error::Error;
    pub use crate::meta::{
        DataRaterProblem, InnerLoop, MeanLoss, MetaOptimizer, MetaProblem, MetaRequest, Mode,
        OuterLoop, Rater, Sampler,
    };
    pub use crate::optim::{Adam, Momentum, OptState, Optimizer, Sgd};
    pub use crate::rng::Rng;
    pub use crate::trainer::{MetaAdam, MetaSgd, Setup, Trainer, TrainerConfig, TrainerState};
}
