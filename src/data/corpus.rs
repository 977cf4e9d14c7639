//! Byte-level corpora and their train / held-out split.

use crate::error::{Error, Result};
use crate::rng::Rng;
use std::path::Path;

/// The shipped default corpus (see `data/PROVENANCE.md`), compiled into the library so
/// it is available from a clean clone without any download.
static EMBEDDED: &[u8] = include_bytes!("../../data/devils-dictionary.txt");

/// A byte-level text corpus: any bytes (UTF-8 text or not), modelled one byte per token.
///
/// ```
/// use datarater::data::Corpus;
/// let c = Corpus::from_bytes(b"hello world, hello bytes".to_vec());
/// assert_eq!(c.len(), 24);
/// assert_eq!(c.sequences(8).unwrap().len(), 3); // the 0-byte tail is dropped
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    bytes: Vec<u8>,
}

/// How to cut a corpus into sequences and split them. Build it from [`Default`] with the
/// `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct SplitConfig {
    /// Bytes per sequence (non-overlapping windows; the tail shorter than this is dropped).
    pub seq_len: usize,
    /// Fraction of sequences held out, in `(0, 1)`. The held-out count is
    /// `round(fraction * n)` clamped to `1..=n-1`, so both sets are non-empty.
    pub held_out_fraction: f64,
}

impl Default for SplitConfig {
    /// 128-byte sequences, 10% held out.
    fn default() -> Self {
        SplitConfig {
            seq_len: 128,
            held_out_fraction: 0.1,
        }
    }
}

with_fields!(SplitConfig {
    /// Sets [`seq_len`](SplitConfig::seq_len).
    with_seq_len => seq_len: usize,
    /// Sets [`held_out_fraction`](SplitConfig::held_out_fraction).
    with_held_out_fraction => held_out_fraction: f64,
});

/// Disjoint train and held-out sequences of one corpus.
///
/// Sequence `i` of the corpus is the byte range `i * seq_len .. (i + 1) * seq_len`;
/// `train[k]` is sequence `train_index[k]` and likewise for the held-out set. The two
/// index lists are disjoint, together cover `0..num_sequences`, and are each in corpus
/// (ascending) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Bytes per sequence.
    pub seq_len: usize,
    /// Training sequences.
    pub train: Vec<Vec<u8>>,
    /// Held-out sequences.
    pub held_out: Vec<Vec<u8>>,
    /// Corpus sequence index of each training sequence.
    pub train_index: Vec<usize>,
    /// Corpus sequence index of each held-out sequence.
    pub held_out_index: Vec<usize>,
}

impl Corpus {
    /// A corpus from bytes in memory.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Corpus {
            bytes: bytes.into(),
        }
    }

    /// Reads a corpus from any file (UTF-8 text or raw bytes).
    ///
    /// # Errors
    /// [`Error::File`] with the path and the I/O reason if the file cannot be read.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        std::fs::read(path)
            .map(Corpus::from_bytes)
            .map_err(|e| Error::File {
                path: path.display().to_string(),
                reason: format!("cannot read corpus: {e}"),
            })
    }

    /// The shipped default corpus, Ambrose Bierce's *The Devil's Dictionary* (public
    /// domain, about 380 KB of ASCII English; see `data/PROVENANCE.md`).
    pub fn embedded() -> Self {
        Corpus::from_bytes(EMBEDDED)
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when the corpus has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of whole non-overlapping sequences of `seq_len` bytes (0 if `seq_len` is 0).
    pub fn num_sequences(&self, seq_len: usize) -> usize {
        self.bytes.len().checked_div(seq_len).unwrap_or(0)
    }

    /// All whole non-overlapping sequences of `seq_len` bytes, in corpus order; the tail
    /// shorter than `seq_len` is dropped.
    ///
    /// # Errors
    /// [`Error::Config`] (`seq_len`) if `seq_len` is 0, (`corpus`) if the corpus is
    /// shorter than one sequence.
    pub fn sequences(&self, seq_len: usize) -> Result<Vec<Vec<u8>>> {
        if seq_len == 0 {
            return Err(Error::Config {
                field: "seq_len",
                reason: "must be at least 1".into(),
            });
        }
        if self.bytes.len() < seq_len {
            return Err(Error::Config {
                field: "corpus",
                reason: format!(
                    "{} bytes is shorter than one sequence of {seq_len} bytes",
                    self.bytes.len()
                ),
            });
        }
        Ok(self
            .bytes
            .chunks_exact(seq_len)
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// Cuts the corpus into sequences and splits them, uniformly at random (seeded by
    /// `rng`), into disjoint train and held-out sets.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field: `seq_len` if 0; `held_out_fraction` if not
    /// in `(0, 1)`; `corpus` if it holds fewer than two sequences.
    ///
    /// ```
    /// use datarater::{Rng, data::{Corpus, SplitConfig}};
    /// let c = Corpus::from_bytes(vec![7u8; 1000]);
    /// let s = c.split(&SplitConfig::default().with_seq_len(100).with_held_out_fraction(0.2), &mut Rng::new(3))?;
    /// assert_eq!((s.train.len(), s.held_out.len()), (8, 2));
    /// # Ok::<(), datarater::Error>(())
    /// ```
    pub fn split(&self, config: &SplitConfig, rng: &mut Rng) -> Result<Split> {
        let f = config.held_out_fraction;
        if !(f > 0.0 && f < 1.0) {
            return Err(Error::Config {
                field: "held_out_fraction",
                reason: format!("{f} is not in (0, 1)"),
            });
        }
        let seqs = self.sequences(config.seq_len)?;
        let n = seqs.len();
        if n < 2 {
            return Err(Error::Config {
                field: "corpus",
                reason: format!(
                    "{} bytes give {n} sequence(s) of {} bytes; a split needs at least 2",
                    self.bytes.len(),
                    config.seq_len
                ),
            });
        }
        let n_held = ((f * n as f64).round() as usize).clamp(1, n - 1);
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let mut held_out_index = order[..n_held].to_vec();
        let mut train_index = order[n_held..].to_vec();
        held_out_index.sort_unstable();
        train_index.sort_unstable();
        let pick = |idx: &[usize]| idx.iter().map(|&i| seqs[i].clone()).collect();
        Ok(Split {
            seq_len: config.seq_len,
            train: pick(&train_index),
            held_out: pick(&held_out_index),
            train_index,
            held_out_index,
        })
    }
}
