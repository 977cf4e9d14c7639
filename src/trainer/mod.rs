//! Meta-training a DataRater (Algorithm 1 of Calian et al. 2025), and the ready-made
//! text inner loop and rater it is usually run with.

pub mod text;

pub use text::{TextBatch, TextLm, TextRater};
