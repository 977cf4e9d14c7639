//! Typed errors for everything that takes user input.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the crate reports instead of panicking.
///
/// Non-exhaustive: new variants may be added in minor releases, so a `match` needs a
/// wildcard arm.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that an operation needs to agree do not.
    #[error("{op}: incompatible shapes {lhs:?} and {rhs:?}")]
    Shape {
        /// The operation that was given the shapes.
        op: &'static str,
        /// The first shape.
        lhs: Vec<usize>,
        /// The second shape.
        rhs: Vec<usize>,
    },
    /// A shape is not of the kind an operation needs, where the need is a rule rather
    /// than a second shape (for example `[batch]`, or an element count that fits in
    /// memory).
    #[error("{op}: got shape {shape:?}, expected {expected}")]
    ShapeExpected {
        /// The operation that was given the shape.
        op: &'static str,
        /// The shape it was given.
        shape: Vec<usize>,
        /// What it needs, in words (e.g. `"[batch] with batch > 0"`).
        expected: String,
    },
    /// An integer index (token, class or row) is out of range.
    #[error("{op}: index {index} out of range for size {size}")]
    Index {
        /// The operation that was given the index.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// The size of the indexed axis.
        size: usize,
    },
    /// Two parameter groups that must have the same names and shapes do not.
    #[error("parameter mismatch at `{name}`: {reason}")]
    Params {
        /// The parameter name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid config field `{field}`: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A non-finite value appeared during a meta-gradient computation.
    #[error("non-finite {quantity} at inner step {step}")]
    NonFinite {
        /// The inner step (0-based) at which the value appeared.
        step: usize,
        /// Which quantity was non-finite (e.g. `"meta-gradient"`, `"inner gradient"`).
        quantity: String,
    },
    /// A meta-gradient computation passed its memory budget
    /// ([`MetaRequest::memory_budget`](crate::meta::MetaRequest::memory_budget)); what it
    /// had allocated has been freed.
    #[error(
        "memory budget of {budget} bytes exceeded: {in_use} bytes (held, and predicted or \
         measured for the next step) in {mode} mode at inner step {step}"
    )]
    MemoryBudget {
        /// The budget, in bytes.
        budget: usize,
        /// The bytes held plus the step's predicted (or, for the first step of its kind,
        /// measured) working set.
        in_use: usize,
        /// The engine that was running.
        mode: crate::meta::Mode,
        /// The inner step (0-based) at which it was passed.
        step: usize,
    },
    /// Reading or parsing a file failed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong, naming the field where applicable.
        reason: String,
    },
    /// Another process of a distributed run failed ([`crate::distributed`]); every
    /// process reports the failing one's message.
    #[error("rank {rank}: {message}")]
    Rank {
        /// The failing process's rank.
        rank: usize,
        /// Its error message.
        message: String,
    },
    /// A caller used an API in an unsupported way (for example a second backward pass on a tape).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The same error attributed to `op` (for composite ops that fail in a primitive).
    pub fn in_op(self, op: &'static str) -> Self {
        match self {
            Error::Shape { lhs, rhs, .. } => Error::Shape { op, lhs, rhs },
            Error::ShapeExpected {
                shape, expected, ..
            } => Error::ShapeExpected {
                op,
                shape,
                expected,
            },
            Error::Index { index, size, .. } => Error::Index { op, index, size },
            other => other,
        }
    }
}
