//! Meta-training a DataRater (Algorithm 1 of Calian et al. 2025), and the ready-made
//! text inner loop, rater and held-out objective it is usually run with.

pub mod algorithm;
pub mod meta_opt;
pub mod text;
pub mod vector;

pub use algorithm::{Advanced, Member, Setup, StepReport, Trainer, TrainerConfig, TrainerState};
pub use meta_opt::{MetaAdam, MetaAdamState, MetaSgd};
pub use text::{
    Rows, Sequences, TextBatch, TextLm, TextPool, TextRater, evaluate, score_sequences, train_step,
};
pub use vector::{MlpRater, VectorBatch};
