//! Binomial checkpointing (Griewank & Walther, "Algorithm 799: revolve", ACM TOMS 26(1),
//! 2000): where to keep the states of a window of `l` inner steps, with at most `s` of
//! them stored at once, so that reversing it step by step recomputes as few steps as
//! possible.
//!
//! Counting "advances" (inner steps run only to reach a later state, the first sweep's
//! included; the step being reversed runs once more from its own state to give its
//! gradient, and is not an advance), the least number for `l` steps and `s` snapshots
//! (the one holding the window's start included) is
//! `t(l, s) = r l - beta(s + 1, r - 1)`, `r` the least with `beta(s, r) >= l`, where
//! `beta(s, r) = C(s + r, s)`. It obeys `t(1, s) = 0`, `t(l, 1) = l (l - 1) / 2` and
//! `t(l, s) = min_j [j + t(l - j, s - 1) + t(j, s)]`: advance `j` steps, store that
//! state, reverse the rest with one snapshot fewer, free it, reverse the first `j` steps.

/// `beta(s, r) = C(s + r, s)`, saturating at `usize::MAX`.
fn beta(s: usize, r: usize) -> usize {
    // C(hi + i, i) for i = 1..=lo; each product divides exactly.
    let (lo, hi) = (s.min(r), s.max(r));
    (1..=lo)
        .try_fold(1usize, |b, i| b.checked_mul(hi + i).map(|p| p / i))
        .unwrap_or(usize::MAX)
}

/// The least `r` with `beta(s, r) >= l` (`s >= 1`).
fn repetitions(l: usize, s: usize) -> usize {
    (0..)
        .find(|&r| beta(s, r) >= l)
        .expect("beta grows without bound in r")
}

/// `t(l, s)`: the least number of advances that reverse `l >= 1` steps with `s >= 1`
/// snapshots.
pub(super) fn advances(l: usize, s: usize) -> usize {
    if s == 1 {
        // What the general form gives, without searching up to `r = l - 1`.
        return l * (l - 1) / 2;
    }
    match repetitions(l, s) {
        0 => 0,
        r => r * l - beta(s + 1, r - 1),
    }
}

/// Where to store the next snapshot when reversing `l >= 2` steps with `s >= 2`
/// snapshots: `j` steps after the current one, the least `j` of an optimal schedule.
pub(super) fn split(l: usize, s: usize) -> usize {
    (1..l)
        .min_by_key(|&j| j + advances(l - j, s - 1) + advances(j, s))
        .expect("l >= 2")
}

/// The snapshots `Mode::Checkpointed { snapshots: 0 }` uses for `l` steps: the least `s`
/// with `beta(s, 3) >= l`, so no schedule needs more than three repetitions.
pub(super) fn auto_snapshots(l: usize) -> usize {
    (1..)
        .find(|&s| beta(s, 3) >= l)
        .expect("beta grows without bound in s")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t(l, s)` by its recurrence, for every `l <= n` and `s <= m`.
    fn brute_force(n: usize, m: usize) -> Vec<Vec<usize>> {
        let mut t = vec![vec![0; m + 1]; n + 1];
        for l in 1..=n {
            t[l][1] = l * (l - 1) / 2;
            for s in 2..=m {
                t[l][s] = (1..l)
                    .map(|j| j + t[l - j][s - 1] + t[j][s])
                    .min()
                    .unwrap_or(0);
            }
        }
        t
    }

    #[test]
    fn closed_form_matches_the_recurrence() {
        for (l, row) in brute_force(80, 8).iter().enumerate().skip(1) {
            for (s, &want) in row.iter().enumerate().skip(1) {
                assert_eq!(advances(l, s), want, "l = {l}, s = {s}");
            }
        }
    }

    #[test]
    fn binomials_and_the_automatic_choice() {
        assert_eq!(beta(3, 3), 20);
        assert_eq!(beta(6, 3), 84);
        assert_eq!(beta(0, 7), 1);
        assert_eq!(beta(200, 200), usize::MAX);
        assert_eq!(beta(1000, 2), 1001 * 1002 / 2);
        let auto: Vec<usize> = [1, 4, 5, 16, 64].map(auto_snapshots).to_vec();
        assert_eq!(auto, [1, 1, 2, 3, 6]);
        // With every state stored, only the step gradients are recomputed.
        assert_eq!(advances(16, 16), 15);
    }
}
