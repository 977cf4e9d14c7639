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
    ///
    /// # Errors
    /// [`Error::Index`] for a row past the end; [`Error::Config`] when the rows differ
    /// in length.
    pub fn from_pool<P: Rows + ?Sized>(pool: &P, rows: Vec<usize>) -> Result<Self> {
        let seqs: Vec<&[u8]> = rows
            .iter()
            .map(|&r| {
                pool.row(r).ok_or(Error::Index {
                    op: "TextBatch::from_pool",
                    index: r,
                    size: pool.count(),
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

/// Rows of bytes that batches are built from ([`TextBatch::from_pool`],
/// [`score_sequences`], [`evaluate`]): a slice or `Vec` of byte strings, or
/// [`Sequences`] in one buffer.
pub trait Rows {
    /// Number of rows.
    fn count(&self) -> usize;
    /// Row `i`, if there is one.
    fn row(&self, i: usize) -> Option<&[u8]>;
}

impl<S: AsRef<[u8]>> Rows for [S] {
    fn count(&self) -> usize {
        self.len()
    }
    fn row(&self, i: usize) -> Option<&[u8]> {
        self.get(i).map(AsRef::as_ref)
    }
}

impl<S: AsRef<[u8]>> Rows for Vec<S> {
    fn count(&self) -> usize {
        self.len()
    }
    fn row(&self, i: usize) -> Option<&[u8]> {
        self.get(i).map(AsRef::as_ref)
    }
}

/// Equal-length byte sequences held in one contiguous buffer (row `i` is bytes
/// `i * seq_len .. (i + 1) * seq_len`): one allocation for a whole training set, with
/// no per-row header or allocator overhead, so its memory is exactly
/// `len() * seq_len()` bytes.
///
/// ```
/// use datarater::trainer::Sequences;
///
/// let mut s = Sequences::from_rows(&[b"abcd", b"efgh"])?;
/// s.push(b"ijkl")?;
/// assert_eq!((s.len(), s.seq_len()), (3, 4));
/// assert_eq!(s.get(2), Some(&b"ijkl"[..]));
/// assert!(s.push(b"too long").is_err());
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequences {
    bytes: Vec<u8>,
    seq_len: usize,
}

impl Sequences {
    /// No sequences yet, each to be `seq_len` bytes long.
    ///
    /// # Errors
    /// [`Error::Config`] (`seq_len`) when `seq_len` is 0.
    pub fn new(seq_len: usize) -> Result<Self> {
        if seq_len == 0 {
            return Err(Error::Config {
                field: "seq_len",
                reason: "sequences of 0 bytes".into(),
            });
        }
        Ok(Sequences {
            bytes: Vec::new(),
            seq_len,
        })
    }

    /// The rows of `rows`, copied into one buffer.
    ///
    /// # Errors
    /// [`Error::Config`] (`pool`) for no rows; (`seq_len`) for rows of 0 bytes or of
    /// different lengths, naming the first row that differs from row 0.
    pub fn from_rows<S: AsRef<[u8]>>(rows: &[S]) -> Result<Self> {
        let Some(first) = rows.first() else {
            return Err(Error::Config {
                field: "pool",
                reason: "no sequences".into(),
            });
        };
        let mut s = Sequences::new(first.as_ref().len())?;
        s.reserve_exact(rows.len());
        for r in rows {
            s.push(r.as_ref())?;
        }
        Ok(s)
    }

    /// Appends a row.
    ///
    /// # Errors
    /// [`Error::Config`] (`seq_len`) when `row` is not `seq_len()` bytes long.
    pub fn push(&mut self, row: &[u8]) -> Result<()> {
        if row.len() != self.seq_len {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!(
                    "sequence {} has {} bytes but sequence 0 has {}: all must have one length",
                    self.len(),
                    row.len(),
                    self.seq_len
                ),
            });
        }
        self.bytes.extend_from_slice(row);
        Ok(())
    }

    /// Rows this buffer holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity() / self.seq_len
    }

    /// Makes room for exactly `rows` more rows (no more), so a caller that knows its
    /// bound keeps the buffer within it.
    pub fn reserve_exact(&mut self, rows: usize) {
        self.bytes.reserve_exact(rows.saturating_mul(self.seq_len));
    }

    /// Row `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let start = i.checked_mul(self.seq_len)?;
        self.bytes.get(start..start + self.seq_len)
    }

    /// Row `i`, to overwrite in place, if there is one.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let start = i.checked_mul(self.seq_len)?;
        self.bytes.get_mut(start..start + self.seq_len)
    }

    /// The rows in order.
    pub fn iter(&self) -> std::slice::ChunksExact<'_, u8> {
        self.bytes.chunks_exact(self.seq_len)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.seq_len
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes per row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Every row's bytes, row after row.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Rows for Sequences {
    fn count(&self) -> usize {
        self.len()
    }
    fn row(&self, i: usize) -> Option<&[u8]> {
        self.get(i)
    }
}

/// A pool of equal-length byte sequences from which batches of `batch_size` are drawn
/// (distinct rows, or with replacement when the pool is smaller than a batch): the
/// [`Sampler`] of the text setting, for training and held-out data alike.
#[derive(Clone, Debug)]
pub struct TextPool {
    seqs: Arc<Sequences>,
    batch_size: usize,
}

impl TextPool {
    /// Checks the pool is non-empty, its sequences are at least 2 bytes long (an input
    /// byte and its next-byte target), and `batch_size > 0`. Takes [`Sequences`] or an
    /// `Arc` of them (to share one buffer between pools).
    ///
    /// # Errors
    /// [`Error::Config`] naming `pool`, `seq_len` or `batch_size`.
    pub fn new(seqs: impl Into<Arc<Sequences>>, batch_size: usize) -> Result<Self> {
        let seqs = seqs.into();
        if seqs.is_empty() {
            return Err(Error::Config {
                field: "pool",
                reason: "no sequences".into(),
            });
        }
        let len = seqs.seq_len();
        if len < 2 {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!("sequences of {len} bytes; at least 2 are needed"),
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
    pub fn seqs(&self) -> &Arc<Sequences> {
        &self.seqs
    }

    /// Sequences per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Bytes per sequence.
    pub fn seq_len(&self) -> usize {
        self.seqs.seq_len()
    }

    /// A batch of the given rows.
    ///
    /// # Errors
    /// [`Error::Index`] for a row past the end.
    pub fn batch(&self, rows: Vec<usize>) -> Result<TextBatch> {
        TextBatch::from_pool(&*self.seqs, rows)
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
pub fn score_sequences<F: Float, P: Rows + Sync + ?Sized>(
    rater: &TextRater,
    eta: &Params<Tensor<F>>,
    seqs: &P,
    chunk: usize,
) -> Result<Vec<f64>> {
    crate::autodiff::kernels::on_worker(|| {
        let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
        let mut out = Vec::with_capacity(seqs.count());
        for start in (0..seqs.count()).step_by(chunk.max(1)) {
            let rows: Vec<usize> = (start..(start + chunk.max(1)).min(seqs.count())).collect();
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
    })
}

/// One plain (uniformly weighted) training step: `theta, state <- U(theta, state,
/// grad mean_i l_i)`. Returns the batch's mean loss.
pub fn train_step<F: Float, I: InnerLoop<F>>(
    inner: &I,
    theta: &mut Params<Tensor<F>>,
    state: &mut crate::optim::OptState<Tensor<F>>,
    batch: &I::Batch,
) -> Result<f64> {
    crate::autodiff::kernels::on_worker(|| {
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
        let (th, st) = crate::optim::update_by_tensor(inner.optimizer(), theta, state, &g);
        (*theta, *state) = (th, st);
        Ok(loss.item().f64())
    })
}

/// Mean per-example loss of `theta` over `seqs`, in chunks of `chunk` sequences.
///
/// # Errors
/// [`Error::Config`] when `seqs` is empty (there is no mean to report); the model's
/// errors otherwise.
pub fn evaluate<F: Float, O: Sync, P: Rows + Sync + ?Sized>(
    lm: &TextLm<O>,
    theta: &Params<Tensor<F>>,
    seqs: &P,
    chunk: usize,
) -> Result<f64> {
    crate::autodiff::kernels::on_worker(|| {
        let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
        if seqs.count() == 0 {
            return Err(Error::Config {
                field: "seqs",
                reason: "cannot evaluate on an empty set".into(),
            });
        }
        let (mut total, mut n) = (0.0, 0usize);
        for start in (0..seqs.count()).step_by(chunk.max(1)) {
            let rows: Vec<usize> = (start..(start + chunk.max(1)).min(seqs.count())).collect();
            let b = TextBatch::from_pool(seqs, rows)?;
            let l = lm.lm.per_example_loss(theta, &b.inputs, &b.targets)?;
            total += l.to_vec().into_iter().map(|x: F| x.f64()).sum::<f64>();
            n += b.len();
        }
        Ok(total / n as f64)
    })
}
