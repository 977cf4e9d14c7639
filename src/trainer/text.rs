//! The byte-level text setting: a causal transformer language model as the inner loop
//! and a bidirectional transformer as the rater, both over [`TextBatch`]es drawn from a
//! [`TextPool`] of byte sequences.

use crate::autodiff::{Float, Indices, Params, Tensor, Value};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::meta::{InnerLoop, Rater, Sampler, slices};
use crate::nn::{CausalLm, SequenceScorer};
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::ops::Range;
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
            .map(|&r| {
                pool.get(r).map(AsRef::as_ref).ok_or(Error::Index {
                    op: "TextBatch::from_pool",
                    index: r,
                    size: pool.len(),
                })
            })
            .collect::<Result<_>>()?;
        let b = Batch::from_sequences(&seqs)?;
        let (inputs, targets) = b.lm_inputs_targets()?;
        Ok(TextBatch {
            tokens: b.tokens(),
            inputs,
            targets,
            rows,
        })
    }

    /// The sequences `range` of this batch, as a batch of their own.
    pub fn slice(&self, range: Range<usize>) -> Result<Self> {
        Ok(TextBatch {
            tokens: self.tokens.rows(range.clone())?,
            inputs: self.inputs.rows(range.clone())?,
            targets: self.targets.rows(range.clone())?,
            rows: self.rows[range].to_vec(),
        })
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

/// A pool of equal-length byte sequences from which batches of `batch_size` are drawn
/// (distinct rows, or with replacement when the pool is smaller than a batch): the
/// [`Sampler`] of the text setting, for training and held-out data alike.
#[derive(Clone, Debug)]
pub struct TextPool {
    seqs: Arc<Vec<Vec<u8>>>,
    batch_size: usize,
}

impl TextPool {
    /// Checks the pool is non-empty, its sequences all have one length of at least 2
    /// bytes (an input byte and its next-byte target), and `batch_size > 0`.
    ///
    /// # Errors
    /// [`Error::Config`] naming `pool`, `seq_len` (with the first offending row) or
    /// `batch_size`.
    pub fn new(seqs: Arc<Vec<Vec<u8>>>, batch_size: usize) -> Result<Self> {
        let Some(first) = seqs.first() else {
            return Err(Error::Config {
                field: "pool",
                reason: "no sequences".into(),
            });
        };
        let len = first.len();
        if len < 2 {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!("sequences of {len} bytes; at least 2 are needed"),
            });
        }
        if let Some((row, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!(
                    "sequence {row} has {} bytes but sequence 0 has {len}: all must have one length",
                    s.len()
                ),
            });
        }
        if batch_size == 0 {
            return Err(Error::Config {
                field: "batch_size",
                reason: "must be positive".into(),
            });
        }
        Ok(TextPool { seqs, batch_size })
    }

    /// The sequences.
    pub fn seqs(&self) -> &Arc<Vec<Vec<u8>>> {
        &self.seqs
    }

    /// Sequences per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Bytes per sequence.
    pub fn seq_len(&self) -> usize {
        self.seqs[0].len()
    }

    /// A batch of the given rows.
    ///
    /// # Errors
    /// [`Error::Index`] for a row past the end.
    pub fn batch(&self, rows: Vec<usize>) -> Result<TextBatch> {
        TextBatch::from_pool(&self.seqs, rows)
    }
}

impl Sampler<TextBatch> for TextPool {
    fn sample(&self, rng: &mut Rng) -> Result<TextBatch> {
        self.batch(draw_rows(self.seqs.len(), self.batch_size, rng))
    }
}

/// The inner loop: a byte-level causal LM trained by `opt`. Its batches come from a
/// [`TextPool`]; sequences longer than the model's `max_len + 1` are reported as
/// [`Error::Shape`] by the model.
#[derive(Clone, Debug)]
pub struct TextLm<O> {
    /// The model.
    pub lm: CausalLm,
    /// Its optimiser.
    pub opt: O,
}

impl<O> TextLm<O> {
    /// Checks the optimiser's settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the optimiser's first invalid setting.
    pub fn new<F: Float>(lm: CausalLm, opt: O) -> Result<Self>
    where
        O: Optimizer<F>,
    {
        opt.validate()?;
        Ok(TextLm { lm, opt })
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
    fn split_batch(&self, b: &TextBatch, size: usize) -> Option<Vec<TextBatch>> {
        slices(b.len(), size).map(|r| b.slice(r).ok()).collect()
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

/// Scores sequences with a rater in chunks of `chunk` (no gradients); sequences must all
/// have the same length.
pub fn score_sequences<F: Float, S: AsRef<[u8]>>(
    rater: &TextRater,
    eta: &Params<Tensor<F>>,
    seqs: &[S],
    chunk: usize,
) -> Result<Vec<f64>> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    let mut out = Vec::with_capacity(seqs.len());
    for start in (0..seqs.len()).step_by(chunk.max(1)) {
        let rows: Vec<usize> = (start..(start + chunk.max(1)).min(seqs.len())).collect();
        let b = TextBatch::from_pool(seqs, rows)?;
        out.extend(
            rater
                .scores(eta, &b)?
                .to_vec()
                .into_iter()
                .map(|s: F| s.f64()),
        );
    }
    Ok(out)
}

/// One plain (uniformly weighted) training step: `theta, state <- U(theta, state,
/// grad mean_i l_i)`. Returns the batch's mean loss.
pub fn train_step<F: Float, I: InnerLoop<F>>(
    inner: &I,
    theta: &mut Params<Tensor<F>>,
    state: &mut crate::optim::OptState<Tensor<F>>,
    batch: &I::Batch,
) -> Result<f64> {
    let (loss, g) = crate::transforms::value_and_grad(
        |th| inner.per_example_loss(th, batch).map(|l| l.mean_all()),
        theta,
    )?;
    if let Some(name) = g.first_non_finite() {
        return Err(Error::NonFinite {
            step: state.step,
            quantity: format!("gradient `{name}`"),
        });
    }
    let (th, st) = inner.optimizer().update(theta, state, &g);
    (*theta, *state) = (th, st);
    Ok(loss.item().f64())
}

/// Mean per-example loss of `theta` over `seqs`, in chunks of `chunk` sequences.
///
/// # Errors
/// [`Error::Config`] when `seqs` is empty (there is no mean to report); the model's
/// errors otherwise.
pub fn evaluate<F: Float, O, S: AsRef<[u8]>>(
    lm: &TextLm<O>,
    theta: &Params<Tensor<F>>,
    seqs: &[S],
    chunk: usize,
) -> Result<f64> {
    let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
    if seqs.is_empty() {
        return Err(Error::Config {
            field: "seqs",
            reason: "cannot evaluate on an empty set".into(),
        });
    }
    let (mut total, mut n) = (0.0, 0usize);
    for start in (0..seqs.len()).step_by(chunk.max(1)) {
        let rows: Vec<usize> = (start..(start + chunk.max(1)).min(seqs.len())).collect();
        let b = TextBatch::from_pool(seqs, rows)?;
        let l = lm.lm.per_example_loss(theta, &b.inputs, &b.targets)?;
        total += l.to_vec().into_iter().map(|x: F| x.f64()).sum::<f64>();
        n += b.len();
    }
    Ok(total / n as f64)
}
