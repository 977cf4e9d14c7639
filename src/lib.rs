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
