//! Top-`N` selection by score: batch-level filtering and dataset-level discard.

use crate::error::{Error, Result};
use std::cmp::Ordering;

fn check_scores(scores: &[f64]) -> Result<()> {
    match scores.iter().position(|s| s.is_nan()) {
        Some(i) => Err(Error::Config {
            field: "scores",
            reason: format!("score {i} is NaN"),
        }),
        None => Ok(()),
    }
}

/// Higher score first; equal scores (including `0.0` and `-0.0`) by lower index first.
/// Callers have rejected NaN, so the comparison is total.
fn better(scores: &[f64], a: usize, b: usize) -> Ordering {
    scores[b]
        .partial_cmp(&scores[a])
        .expect("NaN scores are rejected before ranking")
        .then(a.cmp(&b))
}

/// How many candidates to draw so that keeping the top `batch` discards a fraction
/// `rho` of them: `n = ceil(batch / (1 - rho))`.
///
/// # Errors
/// [`Error::Config`]: `batch` if 0; `rho` if not in `[0, 1)`.
///
/// ```
/// use datarater::curate::draw_size;
/// assert_eq!(draw_size(10, 0.0)?, 10);
/// assert_eq!(draw_size(10, 0.25)?, 14); // ceil(13.33)
/// assert_eq!(draw_size(10, 0.9)?, 100);
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn draw_size(batch: usize, rho: f64) -> Result<usize> {
    if batch == 0 {
        return Err(Error::Config {
            field: "batch",
            reason: "must be at least 1".into(),
        });
    }
    if !(0.0..1.0).contains(&rho) {
        return Err(Error::Config {
            field: "rho",
            reason: format!("filter fraction {rho} is not in [0, 1)"),
        });
    }
    let exact = batch as f64 / (1.0 - rho);
    // Guard against `x.0000000001` from rounding error turning into an extra draw.
    let n = (exact - 1e-9 * exact).ceil() as usize;
    Ok(n.max(batch))
}

/// All indices ordered best first: by score descending, ties by lower index first.
///
/// # Errors
/// [`Error::Config`] (`scores`) if a score is NaN.
pub fn rank_desc(scores: &[f64]) -> Result<Vec<usize>> {
    check_scores(scores)?;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| better(scores, a, b));
    Ok(idx)
}

/// Indices of the `n_keep` highest scores, returned in ascending index order (so a
/// filtered batch keeps the order it was drawn in). Ties are broken deterministically
/// in favour of the lower index. `+inf` and `-inf` are ordinary extreme scores.
///
/// # Errors
/// [`Error::Config`]: `n_keep` if it exceeds `scores.len()`; `scores` if a score is NaN.
///
/// ```
/// use datarater::curate::filter_batch;
/// assert_eq!(filter_batch(&[0.5, 0.9, 0.5, 0.1], 2)?, vec![0, 1]); // tie: lower index
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn filter_batch(scores: &[f64], n_keep: usize) -> Result<Vec<usize>> {
    if n_keep > scores.len() {
        return Err(Error::Config {
            field: "n_keep",
            reason: format!("cannot keep {n_keep} of {} examples", scores.len()),
        });
    }
    check_scores(scores)?;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if n_keep < idx.len() && n_keep > 0 {
        idx.select_nth_unstable_by(n_keep - 1, |&a, &b| better(scores, a, b));
    }
    idx.truncate(n_keep);
    idx.sort_unstable();
    Ok(idx)
}

/// Dataset-level discard: the indices kept after dropping the lowest-scoring
/// `round(fraction * len)` examples, in ascending index order (ties as in
/// [`filter_batch`]).
///
/// # Errors
/// [`Error::Config`]: `fraction` if not in `[0, 1]`; `scores` if a score is NaN.
///
/// ```
/// use datarater::curate::discard_bottom;
/// assert_eq!(discard_bottom(&[3.0, 1.0, 2.0, 0.0], 0.5)?, vec![0, 2]);
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn discard_bottom(scores: &[f64], fraction: f64) -> Result<Vec<usize>> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::Config {
            field: "fraction",
            reason: format!("discard fraction {fraction} is not in [0, 1]"),
        });
    }
    let n_discard = ((fraction * scores.len() as f64).round() as usize).min(scores.len());
    filter_batch(scores, scores.len() - n_discard)
}
