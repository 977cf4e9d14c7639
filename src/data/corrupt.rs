//! Corruption generators: controlled noisy copies of byte sequences, and labelled
//! mixed pools of clean and corrupted sequences.

use crate::error::{Error, Result};
use crate::rng::Rng;
use std::fmt;

/// A kind of corruption a curator meets in the wild, at a controlled level.
///
/// Every corruption maps a sequence to a sequence of the same length, drawing its
/// randomness from the [`Rng`] it is given (so a seed reproduces it exactly).
///
/// ```
/// use datarater::{Rng, data::Corruption};
/// let text = b"the quick brown fox jumps over the lazy dog";
/// let caps = Corruption::AllCaps.apply(text, &mut Rng::new(0))?;
/// assert_eq!(caps, b"THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG");
/// let noisy = Corruption::ByteReplace { rate: 0.5 }.apply(text, &mut Rng::new(0))?;
/// assert_eq!(noisy.len(), text.len());
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Corruption {
    /// No corruption: the identity (kind `"clean"`, level 0).
    Clean,
    /// Each byte, independently with probability `rate`, is replaced by a byte drawn
    /// uniformly from the 255 *other* byte values, so the expected fraction of changed
    /// bytes is exactly `rate`.
    ByteReplace {
        /// Replacement probability per byte, in `[0, 1]`.
        rate: f64,
    },
    /// Word order is scrambled: each word (maximal run of non-whitespace bytes) is
    /// selected independently with probability `rate`, and the selected words are
    /// randomly permuted among their slots. Whitespace stays in place, so the length is
    /// unchanged.
    ShuffleWords {
        /// Selection probability per word, in `[0, 1]`.
        rate: f64,
    },
    /// Stutter and padding junk: after each input byte, with probability `rate`, a run
    /// of 3 to 10 copies of that byte (half the time) or of spaces (otherwise) is
    /// injected. The result is truncated to the input length.
    RepeatRuns {
        /// Injection probability per input byte, in `[0, 1]`.
        rate: f64,
    },
    /// ASCII letters upper-cased (shouting); other bytes unchanged. Level 1.
    AllCaps,
}

impl Corruption {
    /// A short stable name: `"clean"`, `"byte_replace"`, `"shuffle_words"`,
    /// `"repeat_runs"` or `"all_caps"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Corruption::Clean => "clean",
            Corruption::ByteReplace { .. } => "byte_replace",
            Corruption::ShuffleWords { .. } => "shuffle_words",
            Corruption::RepeatRuns { .. } => "repeat_runs",
            Corruption::AllCaps => "all_caps",
        }
    }

    /// The corruption strength in `[0, 1]` for reporting: the rate for rated kinds, 0
    /// for [`Corruption::Clean`], 1 for [`Corruption::AllCaps`].
    pub fn level(&self) -> f64 {
        match *self {
            Corruption::Clean => 0.0,
            Corruption::ByteReplace { rate }
            | Corruption::ShuffleWords { rate }
            | Corruption::RepeatRuns { rate } => rate,
            Corruption::AllCaps => 1.0,
        }
    }

    /// Checks the rate is a finite number in `[0, 1]`.
    ///
    /// # Errors
    /// [`Error::Config`] (`rate`) otherwise.
    pub fn validate(&self) -> Result<()> {
        let r = self.level();
        if (0.0..=1.0).contains(&r) {
            Ok(())
        } else {
            Err(Error::Config {
                field: "rate",
                reason: format!("{}: rate {r} is not in [0, 1]", self.kind()),
            })
        }
    }

    /// A corrupted copy of `bytes`, of the same length.
    ///
    /// # Errors
    /// [`Error::Config`] (`rate`) if the rate is not in `[0, 1]`.
    pub fn apply(&self, bytes: &[u8], rng: &mut Rng) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(match *self {
            Corruption::Clean => bytes.to_vec(),
            Corruption::ByteReplace { rate } => byte_replace(bytes, rate, rng),
            Corruption::ShuffleWords { rate } => shuffle_words(bytes, rate, rng),
            Corruption::RepeatRuns { rate } => repeat_runs(bytes, rate, rng),
            Corruption::AllCaps => bytes.to_ascii_uppercase(),
        })
    }
}

impl fmt::Display for Corruption {
    /// `kind` for unrated kinds, `kind(rate)` otherwise, e.g. `byte_replace(0.25)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Clean | Corruption::AllCaps => f.write_str(self.kind()),
            _ => write!(f, "{}({})", self.kind(), self.level()),
        }
    }
}

fn byte_replace(bytes: &[u8], rate: f64, rng: &mut Rng) -> Vec<u8> {
    bytes
        .iter()
        .map(|&b| {
            if rng.uniform() < rate {
                // Uniform over the 255 values other than `b`.
                let r = rng.below(255) as u8;
                if r >= b { r + 1 } else { r }
            } else {
                b
            }
        })
        .collect()
}

fn shuffle_words(bytes: &[u8], rate: f64, rng: &mut Rng) -> Vec<u8> {
    // Word spans, in order.
    let mut words = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        words.push(start..i);
    }
    let slots: Vec<usize> = (0..words.len()).filter(|_| rng.uniform() < rate).collect();
    let mut perm = slots.clone();
    rng.shuffle(&mut perm);
    // `assigned[w]` is the word written into slot `w`.
    let mut assigned: Vec<usize> = (0..words.len()).collect();
    for (&slot, &src) in slots.iter().zip(&perm) {
        assigned[slot] = src;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut pos = 0;
    for (w, span) in words.iter().enumerate() {
        out.extend_from_slice(&bytes[pos..span.start]); // whitespace before the slot
        out.extend_from_slice(&bytes[words[assigned[w]].clone()]);
        pos = span.end;
    }
    out.extend_from_slice(&bytes[pos..]);
    out
}

fn repeat_runs(bytes: &[u8], rate: f64, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if out.len() >= bytes.len() {
            break;
        }
        out.push(b);
        if rng.uniform() < rate {
            let run = 3 + rng.below(8);
            let fill = if rng.uniform() < 0.5 { b } else { b' ' };
            out.extend(std::iter::repeat_n(fill, run));
        }
    }
    out.truncate(bytes.len());
    out
}

/// A sequence with the corruption that produced it (ground truth for evaluating a rater).
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledSequence {
    /// The (possibly corrupted) bytes.
    pub bytes: Vec<u8>,
    /// [`Corruption::kind`] of the corruption applied (`"clean"` if none).
    pub kind: &'static str,
    /// [`Corruption::level`] of the corruption applied (0 if none).
    pub level: f64,
}

impl AsRef<[u8]> for LabeledSequence {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The demo's default training mix: 20% clean; 10% each of byte replacement at rates
/// 0.1, 0.25, 0.5, 0.75 and 1.0; 10% each of [`Corruption::ShuffleWords`] (rate 0.5),
/// [`Corruption::RepeatRuns`] (rate 0.05) and [`Corruption::AllCaps`].
pub fn default_mix() -> Vec<(Corruption, f64)> {
    let mut mix = vec![(Corruption::Clean, 0.2)];
    for rate in [0.1, 0.25, 0.5, 0.75, 1.0] {
        mix.push((Corruption::ByteReplace { rate }, 0.1));
    }
    mix.push((Corruption::ShuffleWords { rate: 0.5 }, 0.1));
    mix.push((Corruption::RepeatRuns { rate: 0.05 }, 0.1));
    mix.push((Corruption::AllCaps, 0.1));
    mix
}

/// Builds a labelled training pool: every clean sequence is used exactly once, with the
/// corruption assigned to it drawn so that corruption `j` is applied to exactly its
/// share of the pool (`fraction_j * n`, rounded by largest remainder, so the counts sum
/// to `n`). Which sequences get which corruption is a seeded random assignment;
/// `pool[i]` is the corrupted `clean[i]`.
///
/// # Errors
/// [`Error::Config`]: `mix` if it is empty, a fraction is negative or not finite, or
/// the fractions do not sum to 1 (within `1e-6`); `rate` if a corruption's rate is
/// invalid.
///
/// ```
/// use datarater::{Rng, data::{Corruption, corrupted_pool}};
/// let clean = vec![b"some clean text".to_vec(); 10];
/// let mix = [(Corruption::Clean, 0.3), (Corruption::AllCaps, 0.7)];
/// let pool = corrupted_pool(&clean, &mix, &mut Rng::new(0))?;
/// assert_eq!(pool.iter().filter(|s| s.kind == "all_caps").count(), 7);
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn corrupted_pool<S: AsRef<[u8]>>(
    clean: &[S],
    mix: &[(Corruption, f64)],
    rng: &mut Rng,
) -> Result<Vec<LabeledSequence>> {
    let bad = |reason: String| Error::Config {
        field: "mix",
        reason,
    };
    if mix.is_empty() {
        return Err(bad("no corruptions given".into()));
    }
    for (c, f) in mix {
        c.validate()?;
        if !(f.is_finite() && *f >= 0.0) {
            return Err(bad(format!(
                "fraction {f} for {c} is not a non-negative number"
            )));
        }
    }
    let total: f64 = mix.iter().map(|(_, f)| f).sum();
    if (total - 1.0).abs() > 1e-6 {
        return Err(bad(format!("fractions sum to {total}, not 1")));
    }
    let n = clean.len();
    // Largest-remainder apportionment of n sequences.
    let exact: Vec<f64> = mix.iter().map(|(_, f)| f * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..mix.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let short = n.saturating_sub(counts.iter().sum());
    for &j in order.iter().cycle().take(short) {
        counts[j] += 1;
    }
    let mut assign: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(j, &c)| std::iter::repeat_n(j, c))
        .collect();
    assign.truncate(n);
    rng.shuffle(&mut assign);
    clean
        .iter()
        .zip(assign)
        .map(|(s, j)| {
            let c = mix[j].0;
            Ok(LabeledSequence {
                bytes: c.apply(s.as_ref(), rng)?,
                kind: c.kind(),
                level: c.level(),
            })
        })
        .collect()
}
