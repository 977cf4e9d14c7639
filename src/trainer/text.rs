//! The byte-level text setting: a causal transformer language model as the inner loop
//! and a bidirectional transformer as the rater, both over [`TextBatch`]es drawn from a
//! pool of byte sequences.

use crate::autodiff::{Float, Indices, Params, Tensor, Value};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::meta::{InnerLoop, Rater};
use crate::nn::{CausalLm, SequenceScorer};
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::sync::Arc;

/// A batch of byte sequences prepared for both models: the full sequences for the
/// rater, and next-byte inputs/targets for the language model.
#[derive(Clone, Debug, PartialEq)]
pub struct TextBatch {
    /// `[B, L]` tokens, what the rater reads.
    pub tokens: Indices,
    /// `[B, L-1]` language-model inputs.
    pub inputs: Indices,
    /// `[B, L-1]` next-byte targets.
    pub targets: Indices,
    /// Which pool entries the rows came from.
    pub rows: Vec<usize>,
}

impl TextBatch {
    /// Builds a batch from rows of `pool`.
    pub fn from_pool<S: AsRef<[u8]>>(pool: &[S], rows: Vec<usize>) -> Result<Self> {
        let seqs: Vec<&[u8]> = rows
            .iter()
            .map(|&r| pool.get(r).map(AsRef::as_ref).ok_or(Error::Index { op: "TextBatch::from_pool", index: r, size: pool.len() }))
            .collect::<Result<_>>()?;
        let b = Batch::from_sequences(&seqs)?;
        let (inputs, targets) = b.lm_inputs_targets()?;
        Ok(TextBatch { tokens: b.tokens(), inputs, targets, rows })
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Draws `n` distinct rows (or with replacement when the pool is smaller than `n`).
fn draw_rows(pool: usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    if pool >= n {
        let mut rows: Vec<usize> = Vec::with_capacity(n);
        while rows.len() < n {
            let r = rng.below(pool);
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        rows
    } else {
        (0..n).map(|_| rng.below(pool)).collect()
    }
}

/// The inner loop: a byte-level causal LM trained by `opt` on batches of `batch_size`
/// sequences drawn uniformly from `pool`.
#[derive(Clone, Debug)]
pub struct TextLm<O> {
    /// The model.
    pub lm: CausalLm,
    /// Its optimiser.
    pub opt: O,
    /// Training sequences (all of one length, at most `max_len + 1` bytes).
    pub pool: Arc<Vec<Vec<u8>>>,
    /// Sequences per inner batch.
    pub batch_size: usize,
}

impl<O> TextLm<O> {
    /// Checks the pool is non-empty and its sequences fit the model's context.
    pub fn new(lm: CausalLm, opt: O, pool: Arc<Vec<Vec<u8>>>, batch_size: usize) -> Result<Self> {
        let Some(first) = pool.first() else {
            return Err(Error::Config { field: "pool", reason: "no training sequences".into() });
        };
        if first.len() < 2 || first.len() > lm.cfg.max_len + 1 {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!("sequences of {} bytes need 2..={} for max_len {}", first.len(), lm.cfg.max_len + 1, lm.cfg.max_len),
            });
        }
        if batch_size == 0 {
            return Err(Error::Config { field: "batch_size", reason: "must be positive".into() });
        }
        Ok(TextLm { lm, opt, pool, batch_size })
    }

    /// A batch of rows of the pool.
    pub fn batch(&self, rows: Vec<usize>) -> Result<TextBatch> {
        TextBatch::from_pool(&self.pool, rows)
    }
}

impl<F: Float, O: Optimizer<F>> InnerLoop<F> for TextLm<O> {
    type Batch = TextBatch;
    type Opt = O;
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        self.lm.init(rng)
    }
    fn optimizer(&self) -> &O {
        &self.opt
    }
    fn per_example_loss<V: Value<F = F>>(&self, theta: &Params<V>, b: &TextBatch) -> Result<V> {
        self.lm.per_example_loss(theta, &b.inputs, &b.targets)
    }
    fn sample_batch(&self, rng: &mut Rng) -> TextBatch {
        let rows = draw_rows(self.pool.len(), self.batch_size, rng);
        self.batch(rows).expect("pool validated in TextLm::new")
    }
}

/// The rater: a bidirectional transformer over the whole sequence, mean-pooled to one
/// score per sequence.
#[derive(Clone, Debug)]
pub struct TextRater {
    /// The model.
    pub scorer: SequenceScorer,
}

impl<F: Float> Rater<F, TextBatch> for TextRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        self.scorer.init(rng)
    }
    fn scores<V: Value<F = F>>(&self, eta: &Params<V>, b: &TextBatch) -> Result<V> {
        self.scorer.scores(eta, &b.tokens)
    }
}
