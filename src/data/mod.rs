//! Corpora, byte-level sequences and corruption generators.
//!
//! * [`Corpus`]: raw bytes from a file, a buffer or the embedded default corpus
//!   (Ambrose Bierce's *The Devil's Dictionary*, see `data/PROVENANCE.md`), cut into
//!   non-overlapping fixed-length sequences and split into disjoint train and held-out
//!   sets ([`Corpus::split`]).
//! * [`Batch`]: `B` sequences of `L` bytes as token ids (`0..256`), convertible to
//!   [`Indices`](crate::Indices) of shape `[B, L]`, with the language-model convention
//!   (inputs `tokens[..L-1]`, targets `tokens[1..]`) in [`Batch::lm_inputs_targets`].
//! * [`Corruption`]: controlled noisy copies of a sequence (same length out as in), and
//!   [`corrupted_pool`], which builds a mixed, labelled training pool from clean
//!   sequences.
//!
//! ```
//! use datarater::Rng;
//! use datarater::data::{Batch, Corpus, SplitConfig, corrupted_pool, default_mix};
//!
//! let corpus = Corpus::embedded();
//! let split = corpus.split(&SplitConfig::default().with_seq_len(64), &mut Rng::new(0))?;
//! let pool = corrupted_pool(&split.train, &default_mix(), &mut Rng::new(1))?;
//! assert_eq!(pool.len(), split.train.len());
//! let batch = Batch::from_sequences(&pool[..8])?;
//! let (inputs, targets) = batch.lm_inputs_targets()?;
//! assert_eq!(inputs.shape(), &[8, 63]);
//! assert_eq!(targets.shape(), &[8, 63]);
//! # Ok::<(), datarater::Error>(())
//! ```

mod batch;
mod corpus;
mod corrupt;

pub use batch::{Batch, VOCAB};
pub use corpus::{Corpus, Split, SplitConfig};
pub use corrupt::{Corruption, LabeledSequence, corrupted_pool, default_mix};
