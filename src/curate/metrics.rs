//! How well scores separate good data from bad: rank correlation and AUC.

/// Ranks (1-based) with ties given their average rank.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation of paired samples (ties get average ranks); `NaN` when
/// either side is constant or the lengths differ.
///
/// ```
/// use datarater::curate::spearman;
/// assert_eq!(spearman(&[1.0, 2.0, 3.0], &[30.0, 20.0, 10.0]), -1.0);
/// ```
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    if x.len() != y.len() || x.len() < 2 {
        return f64::NAN;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Area under the ROC curve for ranking `positives` above `negatives` (the probability
/// that a random positive scores higher than a random negative, ties counting half).
///
/// ```
/// use datarater::curate::auc;
/// assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.85]), 0.75);
/// ```
pub fn auc(positives: &[f64], negatives: &[f64]) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let all: Vec<f64> = positives.iter().chain(negatives).copied().collect();
    let r = ranks(&all);
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    let rank_sum: f64 = r[..positives.len()].iter().sum();
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}
