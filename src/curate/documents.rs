//! Scoring whole documents with a sequence rater.
//!
//! Users keep or drop *documents*; a rater scores fixed-length byte *sequences*. This
//! module is the bridge:
//!
//! **Chunking rule.** A document of `n` bytes is cut into `k = ceil(n / L)` sequences of
//! exactly `L = seq_len` bytes: sequence `i < k - 1` is bytes `i L .. (i + 1) L`, and the
//! last one is the document's final `L` bytes `n - L .. n` (so when `L` does not divide
//! `n` it overlaps the one before it). Every byte is covered, no sequence is padded, and
//! the chunks of a document do not depend on what surrounds it. A document shorter than
//! `L` bytes is *too short to score*: it has no chunks and no score ([`DocumentScore::score`]
//! is `None`); callers count and report such documents.
//!
//! **Aggregation.** A document's score is the mean ([`Aggregate::Mean`]) or the minimum
//! ([`Aggregate::Min`]) of its chunks' raw rater scores (higher = better data).
//!
//! ```
//! use datarater::curate::documents::chunk_spans;
//! assert_eq!(chunk_spans(10, 4), vec![0..4, 4..8, 6..10]);
//! assert_eq!(chunk_spans(8, 4), vec![0..4, 4..8]);
//! assert!(chunk_spans(3, 4).is_empty()); // too short to score
//! ```

use crate::autodiff::{Float, Indices, Params, Tensor};
use crate::distributed::{Communicator, SingleProcess, share};
use crate::error::{Error, Result};
use crate::nn::SequenceScorer;
use crate::nn::transformer::FirstLayerTable;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// How a document's chunk scores become one score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregate {
    /// The mean of the chunk scores.
    #[default]
    Mean,
    /// The lowest chunk score (a document is as good as its worst part).
    Min,
}

impl Aggregate {
    /// Combines chunk scores (`None` when there are none).
    pub fn apply(self, scores: &[f64]) -> Option<f64> {
        if scores.is_empty() {
            return None;
        }
        Some(match self {
            Aggregate::Mean => scores.iter().sum::<f64>() / scores.len() as f64,
            Aggregate::Min => scores.iter().copied().fold(f64::INFINITY, f64::min),
        })
    }
}

/// The byte ranges of a document of `len` bytes cut into `seq_len`-byte sequences by
/// the chunking rule (see the module docs); empty when `len < seq_len` or `seq_len == 0`.
pub fn chunk_spans(len: usize, seq_len: usize) -> Vec<Range<usize>> {
    if seq_len == 0 || len < seq_len {
        return Vec::new();
    }
    let k = len.div_ceil(seq_len);
    (0..k)
        .map(|i| {
            let start = if i + 1 == k {
                len - seq_len
            } else {
                i * seq_len
            };
            start..start + seq_len
        })
        .collect()
}

/// One document's score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DocumentScore {
    /// Number of sequences the document was cut into (0 if too short).
    pub chunks: usize,
    /// The aggregated score, `None` if the document is too short to score.
    pub score: Option<f64>,
}

/// Scores documents with a trained [`SequenceScorer`], in parallel batches of
/// sequences (rayon), without gradients.
///
/// ```
/// use datarater::Rng;
/// use datarater::curate::documents::{Aggregate, DocumentScorer};
/// use datarater::nn::{SequenceScorer, TransformerConfig};
/// let scorer = SequenceScorer::new(TransformerConfig::new(8, 1, 2, 4).with_d_ff(16))?;
/// let eta = scorer.init::<f32>(&mut Rng::new(0));
/// let ds = DocumentScorer::new(&scorer, &eta, 4, Aggregate::Mean, 16)?;
/// let out = ds.score(&[&b"hello world"[..], b"hi"])?;
/// assert_eq!(out[0].chunks, 3);
/// assert!(out[0].score.is_some());
/// assert_eq!((out[1].chunks, out[1].score), (0, None)); // shorter than 4 bytes
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct DocumentScorer<F: Float> {
    scorer: SequenceScorer,
    eta: Params<Tensor<F>>,
    seq_len: usize,
    aggregate: Aggregate,
    batch_size: usize,
    /// The first layer's input and attention inputs for every (token, position), built by the
    /// first call that scores enough sequences to repay it (`None` when too large).
    table: OnceLock<Option<FirstLayerTable<F>>>,
}

/// Bytes above which a [`FirstLayerTable`] is not built (the default rater's is 8 MiB in
/// `f32`).
const TABLE_MAX_BYTES: usize = 32 << 20;

impl<F: Float> DocumentScorer<F> {
    /// A scorer cutting documents into `seq_len`-byte sequences and running the rater on
    /// `batch_size` sequences at a time. It keeps its own copy of `scorer` and `eta` (the
    /// tensors are reference-counted, so this copies no parameters), so one scorer can
    /// live as long as its owner needs, and with it the table it builds.
    ///
    /// # Errors
    /// [`Error::Config`]: `seq_len` if 0 or longer than the rater's `max_len`;
    /// `batch_size` if 0. [`Error::Params`] if `eta` does not fit the rater.
    pub fn new(
        scorer: &SequenceScorer,
        eta: &Params<Tensor<F>>,
        seq_len: usize,
        aggregate: Aggregate,
        batch_size: usize,
    ) -> Result<Self> {
        if seq_len == 0 || seq_len > scorer.cfg.max_len {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!(
                    "{seq_len} is not in 1..={} (the rater's max_len)",
                    scorer.cfg.max_len
                ),
            });
        }
        if batch_size == 0 {
            return Err(Error::Config {
                field: "batch_size",
                reason: "must be positive".into(),
            });
        }
        scorer.init::<F>(&mut crate::Rng::new(0)).check_like(eta)?;
        Ok(DocumentScorer {
            scorer: scorer.clone(),
            eta: eta.clone(),
            seq_len,
            aggregate,
            batch_size,
            table: OnceLock::new(),
        })
    }

    /// The sequence length documents are cut into.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Raw rater scores of equal-length sequences (`seq_len` bytes each), in order.
    ///
    /// # Errors
    /// [`Error::Shape`] if a sequence is not `seq_len` bytes long.
    pub fn score_sequences(&self, seqs: &[&[u8]]) -> Result<Vec<f64>> {
        let _reuse = crate::autodiff::pool::Scope::enter(); // freed buffers reused within the pass
        let table = self.table_for(seqs.len())?;
        let batches: Vec<Vec<f64>> = seqs
            .par_chunks(self.batch_size)
            .map(|batch| {
                let mut tokens = Vec::with_capacity(batch.len() * self.seq_len);
                for s in batch {
                    if s.len() != self.seq_len {
                        return Err(Error::Shape {
                            op: "DocumentScorer::score_sequences",
                            lhs: vec![self.seq_len],
                            rhs: vec![s.len()],
                        });
                    }
                    tokens.extend(s.iter().map(|&b| b as usize));
                }
                let tokens = Indices::new(&[batch.len(), self.seq_len], tokens)?;
                let s: Tensor<F> = match table {
                    Some(table) => self.scorer.scores_with_table(&self.eta, table, &tokens)?,
                    None => self.scorer.scores(&self.eta, &tokens)?,
                };
                Ok(s.to_vec().into_iter().map(Float::f64).collect())
            })
            .collect::<Result<_>>()?;
        Ok(batches.into_iter().flatten().collect())
    }

    /// The first-layer table when scoring `n` sequences: built once, by the first call
    /// with at least four per (token, position) pair it holds a row for (so that building
    /// it costs at most about a tenth of that call), and only if it fits in
    /// [`TABLE_MAX_BYTES`]. Either way the scores are the same bits.
    fn table_for(&self, n: usize) -> Result<Option<&FirstLayerTable<F>>> {
        let cfg = &self.scorer.cfg;
        if let Some(table) = self.table.get() {
            return Ok(table.as_ref());
        }
        if n < 4 * cfg.vocab {
            return Ok(None);
        }
        let rows = cfg.vocab * self.seq_len;
        let fits = 4 * rows * cfg.d_model * std::mem::size_of::<F>() <= TABLE_MAX_BYTES;
        let table = match fits {
            true => Some(self.scorer.first_layer_table(&self.eta, self.seq_len)?),
            false => None,
        };
        Ok(self.table.get_or_init(|| table).as_ref())
    }

    /// Scores documents: cuts each into sequences by the chunking rule, scores all the
    /// sequences in parallel batches, and aggregates per document. The result is in
    /// the order of `docs`, and depends only on the documents given (not on threads).
    ///
    /// # Errors
    /// As the rater's forward pass; [`Error::File`] naming `document i` if the rater
    /// gives one of document `i`'s sequences a non-finite score.
    pub fn score<D: AsRef<[u8]> + Sync>(&self, docs: &[D]) -> Result<Vec<DocumentScore>> {
        self.score_on(docs, &SingleProcess, |i| format!("document {i}"))
    }

    /// [`score`](Self::score), with the rater batches shared over `comm`'s ranks: every
    /// rank passes the same `docs`, rank `r` of `P` runs batches [`share`]`(r, P, n)` of
    /// the `n` batches of `batch_size` sequences, and every rank receives every score.
    /// The batches are exactly those of one process, so the scores are bitwise those
    /// of [`score`](Self::score) (with the same threads per rank). Collective.
    ///
    /// # Errors
    /// The first failing rank's error on every rank ([`Error::Rank`] when there are
    /// several): as [`score`](Self::score), a non-finite score naming the document as
    /// `name(i)`.
    pub fn score_on<D: AsRef<[u8]> + Sync>(
        &self,
        docs: &[D],
        comm: &dyn Communicator,
        name: impl Fn(usize) -> String,
    ) -> Result<Vec<DocumentScore>> {
        let mut seqs: Vec<&[u8]> = Vec::new();
        let mut owner = Vec::new();
        let mut counts = Vec::with_capacity(docs.len());
        for (i, d) in docs.iter().enumerate() {
            let d = d.as_ref();
            let spans = chunk_spans(d.len(), self.seq_len);
            counts.push(spans.len());
            owner.extend(std::iter::repeat_n(i, spans.len()));
            seqs.extend(spans.into_iter().map(|r| &d[r]));
        }
        let batches = share(
            comm.rank(),
            comm.size(),
            seqs.len().div_ceil(self.batch_size),
        );
        let first_seq = |b: usize| (b * self.batch_size).min(seqs.len());
        let mine = first_seq(batches.start)..first_seq(batches.end);
        let local = self.score_sequences(&seqs[mine.clone()]).and_then(|s| {
            let mut bytes = Vec::with_capacity(8 * s.len());
            for (j, x) in s.into_iter().enumerate() {
                if !x.is_finite() {
                    return Err(Error::File {
                        path: name(owner[mine.start + j]),
                        reason: format!(
                            "the rater gave a non-finite score ({x}); is the rater file damaged?"
                        ),
                    });
                }
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            Ok(bytes)
        });
        let scores: Vec<f64> = comm
            .all_gather_result(local)?
            .concat()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        if scores.len() != seqs.len() {
            return Err(Error::Usage(format!(
                "the ranks scored {} sequences of {} (do they all read the same documents?)",
                scores.len(),
                seqs.len()
            )));
        }
        let mut at = 0;
        Ok(counts
            .into_iter()
            .map(|k| {
                let s = &scores[at..at + k];
                at += k;
                DocumentScore {
                    chunks: k,
                    score: self.aggregate.apply(s),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_every_byte_with_full_length_chunks() {
        for seq_len in 1..6 {
            for len in seq_len..30 {
                let spans = chunk_spans(len, seq_len);
                assert_eq!(spans.len(), len.div_ceil(seq_len));
                let mut covered = vec![false; len];
                for r in &spans {
                    assert_eq!(r.len(), seq_len);
                    covered[r.clone()].iter_mut().for_each(|c| *c = true);
                }
                assert!(covered.iter().all(|&c| c), "len {len} seq_len {seq_len}");
            }
        }
    }

    #[test]
    fn aggregates() {
        assert_eq!(Aggregate::Mean.apply(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(Aggregate::Min.apply(&[1.0, -2.0, 6.0]), Some(-2.0));
        assert_eq!(Aggregate::Min.apply(&[]), None);
    }

    /// Scores through the first-layer table (a call of 4 x 256 sequences or more) are
    /// bitwise those of the plain forward pass (calls below that, on a scorer that has
    /// not built it), in f32 and f64, for one and two layers and sequence lengths from
    /// 1 (one-row products) to the rater's `max_len`; and a table too large for
    /// `TABLE_MAX_BYTES` is not built.
    #[test]
    fn first_layer_table_gives_the_plain_passs_bits() {
        fn check<F: Float>(layers: usize, seq_len: usize, batch: usize) {
            let cfg = crate::nn::TransformerConfig::new(8, layers, 2, 12).with_d_ff(16);
            let scorer = SequenceScorer::new(cfg).unwrap();
            let eta = scorer.init::<F>(&mut crate::Rng::new(layers as u64));
            let mut rng = crate::Rng::new(seq_len as u64);
            let n = 4 * 256 + 37;
            let data: Vec<Vec<u8>> = (0..n)
                .map(|_| (0..seq_len).map(|_| (rng.next_u64() >> 56) as u8).collect())
                .collect();
            let seqs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let new = || DocumentScorer::new(&scorer, &eta, seq_len, Aggregate::Mean, batch);
            let plain = new().unwrap();
            let want: Vec<f64> = seqs
                .chunks(300)
                .flat_map(|c| plain.score_sequences(c).unwrap())
                .collect();
            assert!(plain.table.get().is_none(), "no call was large enough");
            let tabled = new().unwrap();
            let got = tabled.score_sequences(&seqs).unwrap();
            assert!(
                matches!(tabled.table.get(), Some(Some(_))),
                "the table was built"
            );
            let same = |a: &[f64], b: &[f64]| {
                let bad = a
                    .iter()
                    .zip(b)
                    .position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(
                    a.len() == b.len() && bad.is_none(),
                    "{layers} layers, seq_len {seq_len}: sequence {bad:?} differs"
                );
            };
            same(&got, &want);
            // Later calls of any size use it, with the same bits.
            same(&tabled.score_sequences(&seqs[..5]).unwrap(), &want[..5]);
        }
        for (layers, seq_len, batch) in [(1, 12, 16), (2, 5, 3), (1, 1, 1), (2, 1, 7)] {
            check::<f32>(layers, seq_len, batch);
            check::<f64>(layers, seq_len, batch);
        }
        // Too large: 256 x 512 rows of 4 x 64 f32 is 128 MiB.
        let cfg = crate::nn::TransformerConfig::new(64, 1, 2, 512).with_d_ff(16);
        let scorer = SequenceScorer::new(cfg).unwrap();
        let eta = scorer.init::<f32>(&mut crate::Rng::new(0));
        let ds = DocumentScorer::new(&scorer, &eta, 512, Aggregate::Mean, 16).unwrap();
        assert!(ds.table_for(4 * 256).unwrap().is_none());
    }
}
