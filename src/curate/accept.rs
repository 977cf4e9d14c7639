//! Per-example acceptance: the probability that an example survives batch-level
//! filtering, as a function of its score quantile, for streaming curation.

use super::filter::draw_size;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Probability that an example with score quantile `p` (its CDF value under the score
/// distribution) is among the top `keep` of a batch of `draw` i.i.d. examples:
///
/// `P(accept) = sum_{k=0}^{keep-1} C(draw-1, k) (1-p)^k p^(draw-1-k)`,
///
/// i.e. fewer than `keep` of the other `draw - 1` examples score higher (each does so
/// with probability `1 - p`). Terms are summed in log space with the binomial
/// coefficients built by an exact incremental recurrence, so it is stable for large
/// `draw` and for `p` near 0 or 1. Averaged over `p ~ U(0, 1)` it equals `keep / draw`.
///
/// `p` is clamped to `[0, 1]`; if `keep >= draw` every example is kept (returns 1).
///
/// # Panics
/// If `draw` or `keep` is 0, or `p` is NaN.
///
/// ```
/// use datarater::curate::acceptance_probability;
/// // Keep 1 of 2: accepted iff the other example scores lower, i.e. with probability p.
/// assert!((acceptance_probability(0.3, 2, 1) - 0.3).abs() < 1e-12);
/// assert_eq!(acceptance_probability(1.0, 100, 10), 1.0);
/// assert_eq!(acceptance_probability(0.0, 100, 10), 0.0);
/// ```
pub fn acceptance_probability(p: f64, draw: usize, keep: usize) -> f64 {
    assert!(
        draw > 0 && keep > 0,
        "acceptance_probability: draw and keep must be positive"
    );
    assert!(!p.is_nan(), "acceptance_probability: p is NaN");
    if keep >= draw {
        return 1.0;
    }
    let p = p.clamp(0.0, 1.0);
    if p == 1.0 {
        return 1.0; // only the k = 0 term is non-zero, and it is 1
    }
    if p == 0.0 {
        return 0.0; // only the k = draw - 1 term is non-zero, and keep - 1 < draw - 1
    }
    let m = (draw - 1) as f64;
    let (lq, lp) = ((1.0 - p).ln(), p.ln());
    // log of term k: ln C(m, k) + k ln(1-p) + (m-k) ln p.
    let mut log_c = 0.0;
    let mut terms = Vec::with_capacity(keep);
    for k in 0..keep {
        let kf = k as f64;
        terms.push(log_c + kf * lq + (m - kf) * lp);
        log_c += (m - kf).ln() - (kf + 1.0).ln();
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (max + s.ln()).exp().clamp(0.0, 1.0)
}

/// The empirical distribution of a sample of scores, for looking up score quantiles.
///
/// Uses the mid-rank convention `F(s) = (#{x < s} + #{x = s} / 2) / m`, so the CDF
/// values of the sample itself average exactly 1/2 (as for a continuous distribution)
/// and ties share one value.
///
/// ```
/// use datarater::curate::EmpiricalCdf;
/// let cdf = EmpiricalCdf::new(&[1.0, 2.0, 3.0, 4.0])?;
/// assert_eq!(cdf.cdf(0.0), 0.0);
/// assert_eq!(cdf.cdf(2.5), 0.5);
/// assert_eq!(cdf.cdf(2.0), 0.375);
/// assert_eq!(cdf.cdf(9.0), 1.0);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct EmpiricalCdf {
    sorted: Vec<f64>,
}

impl EmpiricalCdf {
    /// The empirical CDF of `scores`.
    ///
    /// # Errors
    /// [`Error::Config`] (`scores`) if `scores` is empty or holds a NaN.
    pub fn new(scores: &[f64]) -> Result<Self> {
        if scores.is_empty() {
            return Err(Error::Config {
                field: "scores",
                reason: "an empirical CDF needs at least one score".into(),
            });
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(Error::Config {
                field: "scores",
                reason: format!("score {i} is NaN"),
            });
        }
        let mut sorted = scores.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        Ok(EmpiricalCdf { sorted })
    }

    /// `F(s)` in `[0, 1]` (mid-rank convention; see the type docs). A NaN score maps to 0.
    pub fn cdf(&self, s: f64) -> f64 {
        if s.is_nan() {
            return 0.0;
        }
        let less = self.sorted.partition_point(|&x| x < s);
        let less_eq = self.sorted.partition_point(|&x| x <= s);
        (less as f64 + 0.5 * (less_eq - less) as f64) / self.sorted.len() as f64
    }

    /// Number of scores in the sample.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Always false (an empirical CDF holds at least one score).
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// Streaming per-example filter equivalent in distribution to batch-level filtering
/// with target batch size `keep` and filter fraction `rho`: each example is accepted
/// independently with probability [`acceptance_probability`]`(F(score), draw, keep)`,
/// where `draw = ceil(keep / (1 - rho))` and `F` is the empirical CDF of a reference
/// sample of scores.
///
/// ```
/// use datarater::{Rng, curate::{Acceptor, EmpiricalCdf}};
/// let reference: Vec<f64> = (0..1000).map(|i| i as f64).collect();
/// let acc = Acceptor::new(EmpiricalCdf::new(&reference)?, 8, 0.5)?; // keep 8 of 16
/// assert!(acc.probability(990.0) > 0.99);
/// assert!(acc.probability(10.0) < 0.01);
/// let mut rng = Rng::new(0);
/// let kept = reference.iter().filter(|&&s| acc.accept(s, &mut rng)).count();
/// assert!((kept as f64 / 1000.0 - 0.5).abs() < 0.05);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Acceptor {
    cdf: EmpiricalCdf,
    draw: usize,
    keep: usize,
}

impl Acceptor {
    /// An acceptor for target batch size `keep` and filter fraction `rho`.
    ///
    /// # Errors
    /// [`Error::Config`] as for [`draw_size`].
    pub fn new(cdf: EmpiricalCdf, keep: usize, rho: f64) -> Result<Self> {
        let draw = draw_size(keep, rho)?;
        Ok(Acceptor { cdf, draw, keep })
    }

    /// The batch size `n` this acceptor emulates drawing.
    pub fn draw(&self) -> usize {
        self.draw
    }

    /// The number `N` kept per drawn batch.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The reference score distribution.
    pub fn cdf(&self) -> &EmpiricalCdf {
        &self.cdf
    }

    /// Probability that an example with this score is accepted.
    pub fn probability(&self, score: f64) -> f64 {
        acceptance_probability(self.cdf.cdf(score), self.draw, self.keep)
    }

    /// A seeded Bernoulli decision: accept with [`Acceptor::probability`].
    pub fn accept(&self, score: f64, rng: &mut Rng) -> bool {
        rng.uniform() < self.probability(score)
    }
}

/// One-off form of [`Acceptor::accept`]: accept an example with `score` with
/// probability [`acceptance_probability`]`(cdf.cdf(score), draw, keep)`.
///
/// # Panics
/// If `draw` or `keep` is 0.
pub fn accept(score: f64, cdf: &EmpiricalCdf, draw: usize, keep: usize, rng: &mut Rng) -> bool {
    rng.uniform() < acceptance_probability(cdf.cdf(score), draw, keep)
}
