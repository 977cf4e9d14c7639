//! Choosing the dataset-level discard fraction by evaluation.

use super::filter::discard_bottom;
use crate::error::{Error, Result};

/// The discard fractions swept by default: 10%, 25%, 50%, 75% and 90%.
pub const DEFAULT_DISCARD_FRACTIONS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];

/// One evaluated discard fraction.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// Fraction of the dataset discarded (lowest scores first).
    pub fraction: f64,
    /// Number of examples kept.
    pub kept: usize,
    /// The loss the evaluation returned (lower is better).
    pub loss: f64,
}

/// All evaluated fractions, in the order given, and the best one.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepResult {
    /// Every `(fraction, kept, loss)` in the order the fractions were given.
    pub points: Vec<SweepPoint>,
    /// Index into `points` of the lowest finite loss (the first one on ties).
    pub best: usize,
}

impl SweepResult {
    /// The best point.
    pub fn best_point(&self) -> &SweepPoint {
        &self.points[self.best]
    }

    /// The best discard fraction.
    pub fn best_fraction(&self) -> f64 {
        self.best_point().fraction
    }

    /// The best (lowest) loss.
    pub fn best_loss(&self) -> f64 {
        self.best_point().loss
    }

    /// `(fraction, loss)` pairs in the order the fractions were given.
    pub fn pairs(&self) -> Vec<(f64, f64)> {
        self.points.iter().map(|p| (p.fraction, p.loss)).collect()
    }
}

/// For each discard fraction, keeps the examples that survive [`discard_bottom`] and
/// calls `eval` with their indices (ascending); `eval` typically trains a small model on
/// them and returns its held-out loss. Picks the fraction with the lowest loss.
///
/// Non-finite losses (for example a diverged run) are recorded but never chosen as best.
///
/// # Errors
/// [`Error::Config`]: `fractions` if empty, or as for [`discard_bottom`];
/// [`Error::Usage`] if every loss is non-finite (the message lists them); any
/// error returned by `eval` is passed through.
///
/// ```
/// use datarater::curate::{DEFAULT_DISCARD_FRACTIONS, sweep_discard_fractions};
/// let scores: Vec<f64> = (0..100).map(|i| i as f64).collect();
/// // A toy evaluation whose loss is smallest when 60 examples are kept.
/// let r = sweep_discard_fractions(&scores, &DEFAULT_DISCARD_FRACTIONS, |kept| {
///     Ok((kept.len() as f64 - 60.0).abs())
/// })?;
/// assert_eq!(r.best_fraction(), 0.5);
/// assert_eq!(r.pairs().len(), 5);
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn sweep_discard_fractions(
    scores: &[f64],
    fractions: &[f64],
    mut eval: impl FnMut(&[usize]) -> Result<f64>,
) -> Result<SweepResult> {
    if fractions.is_empty() {
        return Err(Error::Config {
            field: "fractions",
            reason: "no discard fractions to sweep".into(),
        });
    }
    let mut points = Vec::with_capacity(fractions.len());
    for &fraction in fractions {
        let kept = discard_bottom(scores, fraction)?;
        let loss = eval(&kept)?;
        points.push(SweepPoint {
            fraction,
            kept: kept.len(),
            loss,
        });
    }
    let best = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.loss.is_finite())
        .min_by(|(i, a), (j, b)| a.loss.total_cmp(&b.loss).then(i.cmp(j)))
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Error::Usage(format!(
                "sweep_discard_fractions: every evaluation returned a non-finite loss: {:?}",
                points
                    .iter()
                    .map(|p| (p.fraction, p.loss))
                    .collect::<Vec<_>>()
            ))
        })?;
    Ok(SweepResult { points, best })
}
