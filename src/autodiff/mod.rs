//! The mixed-mode autodiff engine.
//!
//! One algebra ([`Value`]), three implementations: [`Tensor`] (numbers), [`Dual`]
//! (forward mode over any algebra) and [`Var`] on a [`Tape`] (reverse mode over any
//! algebra). They nest, so `Var<Dual<Tensor>>` is forward-over-reverse (Hessian-vector
//! and mixed products in one pass) and `Var<Var<Tensor>>` is reverse-over-reverse
//! (a recorded, differentiable backward pass).

pub mod check;
pub mod checkpoint;
pub mod dual;
pub mod float;
pub mod flops;
pub(crate) mod kernels;
pub mod ops;
pub mod params;
pub(crate) mod pool;
pub mod tape;
pub mod tensor;
pub mod transforms;
pub mod value;

pub use checkpoint::Block;
pub use dual::Dual;
pub use float::Float;
pub use ops::index::{Indices, Mask};
pub use params::Params;
pub use tape::{Tape, Var};
pub use tensor::Tensor;
pub use value::{Ctx, Op, Saves, Value};
