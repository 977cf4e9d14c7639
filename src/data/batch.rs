//! Batches of byte sequences as token ids.

use crate::autodiff::Indices;
use crate::error::{Error, Result};

/// Vocabulary size of a byte-level model: token id = byte value, in `0..256`.
pub const VOCAB: usize = 256;

/// `B` sequences of `L` bytes each, stored row-major as token ids.
///
/// Language-model convention: a model with context `L - 1` reads
/// `inputs = tokens[:, ..L-1]` and predicts `targets = tokens[:, 1..]` (the next byte at
/// every position); [`Batch::lm_inputs_targets`] returns both.
///
/// ```
/// use datarater::data::Batch;
/// let b = Batch::from_sequences(&[b"abc".to_vec(), b"xyz".to_vec()])?;
/// assert_eq!(b.tokens().shape(), &[2, 3]);
/// let (x, y) = b.lm_inputs_targets()?;
/// assert_eq!(x.data(), &[97, 98, 120, 121]); // "ab", "xy"
/// assert_eq!(y.data(), &[98, 99, 121, 122]); // "bc", "yz"
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    batch: usize,
    len: usize,
}

impl Batch {
    /// Stacks sequences of equal length into a batch.
    ///
    /// # Errors
    /// [`Error::Config`] (`batch`) if there are no sequences, (`seq_len`) if they are
    /// empty; [`Error::Shape`] if their lengths differ.
    pub fn from_sequences<S: AsRef<[u8]>>(seqs: &[S]) -> Result<Self> {
        let Some(first) = seqs.first() else {
            return Err(Error::Config {
                field: "batch",
                reason: "no sequences".into(),
            });
        };
        let len = first.as_ref().len();
        if len == 0 {
            return Err(Error::Config {
                field: "seq_len",
                reason: "sequences are empty".into(),
            });
        }
        let mut bytes = Vec::with_capacity(seqs.len() * len);
        for s in seqs {
            let s = s.as_ref();
            if s.len() != len {
                return Err(Error::Shape {
                    op: "Batch::from_sequences",
                    lhs: vec![len],
                    rhs: vec![s.len()],
                });
            }
            bytes.extend_from_slice(s);
        }
        Ok(Batch {
            bytes,
            batch: seqs.len(),
            len,
        })
    }

    /// Number of sequences `B`.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Sequence length `L`.
    pub fn seq_len(&self) -> usize {
        self.len
    }

    /// Row `i` as bytes.
    ///
    /// # Panics
    /// If `i >= batch_size()`.
    pub fn row(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.len..(i + 1) * self.len]
    }

    /// All tokens as `[B, L]` indices.
    pub fn tokens(&self) -> Indices {
        self.window(0, self.len)
    }

    /// Next-token pairs for a language model with context `L - 1`:
    /// `(tokens[:, ..L-1], tokens[:, 1..])`, both `[B, L-1]`.
    ///
    /// # Errors
    /// [`Error::Config`] (`seq_len`) if `L < 2`.
    pub fn lm_inputs_targets(&self) -> Result<(Indices, Indices)> {
        if self.len < 2 {
            return Err(Error::Config {
                field: "seq_len",
                reason: format!(
                    "next-token pairs need sequences of at least 2 bytes, got {}",
                    self.len
                ),
            });
        }
        Ok((self.window(0, self.len - 1), self.window(1, self.len)))
    }

    fn window(&self, start: usize, end: usize) -> Indices {
        let data = self
            .bytes
            .chunks_exact(self.len)
            .flat_map(|row| row[start..end].iter().map(|&b| b as usize))
            .collect();
        Indices::new(&[self.batch, end - start], data).expect("size is B * (end - start)")
    }
}
