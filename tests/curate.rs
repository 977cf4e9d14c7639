//! Curation: batch filtering, per-example acceptance, dataset-level discard, sweeps.

use datarater::curate::{
    Acceptor, DEFAULT_DISCARD_FRACTIONS, EmpiricalCdf, accept, acceptance_probability,
    discard_bottom, draw_size, filter_batch, rank_desc, sweep_discard_fractions,
};
use datarater::{Error, Rng};
use proptest::prelude::*;

/// Reference top-N: stable sort by score descending (ties keep lower index first).
fn reference_top(scores: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
    let mut top = idx[..n].to_vec();
    top.sort();
    top
}

fn scores_strategy() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        prop::collection::vec(-1e6f64..1e6, 0..60),
        // Few distinct values: many ties.
        prop::collection::vec((0i32..4).prop_map(f64::from), 0..60),
        prop::collection::vec(
            prop_oneof![
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(0.0),
                Just(-0.0),
                -1.0f64..1.0
            ],
            0..40
        ),
    ]
}

proptest! {
    #[test]
    fn filter_keeps_exactly_n_of_the_highest_scores(
        (scores, n) in scores_strategy().prop_flat_map(|s| { let l = s.len(); (Just(s), 0..=l) })
    ) {
        let kept = filter_batch(&scores, n).unwrap();
        prop_assert_eq!(kept.len(), n);
        prop_assert!(kept.windows(2).all(|w| w[0] < w[1]), "ascending and unique");
        let in_kept: Vec<bool> = (0..scores.len()).map(|i| kept.contains(&i)).collect();
        for &k in &kept {
            for d in (0..scores.len()).filter(|&d| !in_kept[d]) {
                prop_assert!(scores[k] >= scores[d]);
                if scores[k] == scores[d] {
                    prop_assert!(k < d, "tie between {} and {} not broken by index", k, d);
                }
            }
        }
        prop_assert_eq!(&kept, &reference_top(&scores, n));
        // Deterministic.
        prop_assert_eq!(kept, filter_batch(&scores, n).unwrap());
    }

    #[test]
    fn rank_desc_is_a_permutation_best_first(scores in scores_strategy()) {
        let r = rank_desc(&scores).unwrap();
        let mut sorted = r.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..scores.len()).collect::<Vec<_>>());
        for n in 0..=scores.len() {
            let mut top = r[..n].to_vec();
            top.sort();
            prop_assert_eq!(top, filter_batch(&scores, n).unwrap());
        }
    }

    #[test]
    fn discard_keeps_the_right_count_and_the_top(
        scores in prop::collection::vec(-10.0f64..10.0, 0..200),
        fraction in 0.0f64..=1.0,
    ) {
        let kept = discard_bottom(&scores, fraction).unwrap();
        let n_discard = (fraction * scores.len() as f64).round() as usize;
        prop_assert_eq!(kept.len(), scores.len() - n_discard);
        prop_assert_eq!(&kept, &reference_top(&scores, kept.len()));
    }

    #[test]
    fn acceptance_is_a_probability_and_monotone_in_p(
        draw in 1usize..300, keep_frac in 0.0f64..1.0, p in 0.0f64..1.0, dp in 0.0f64..0.2,
    ) {
        let keep = ((keep_frac * draw as f64) as usize).max(1);
        let a = acceptance_probability(p, draw, keep);
        let b = acceptance_probability((p + dp).min(1.0), draw, keep);
        prop_assert!((0.0..=1.0).contains(&a));
        prop_assert!(b >= a - 1e-12, "P({}) = {} > P({}) = {}", p, a, p + dp, b);
    }
}

#[test]
fn filter_examples_and_errors() {
    assert_eq!(filter_batch(&[0.1, 0.9, 0.3, 0.8], 2).unwrap(), vec![1, 3]);
    assert_eq!(filter_batch(&[1.0, 1.0, 1.0, 1.0], 2).unwrap(), vec![0, 1]);
    assert_eq!(filter_batch(&[], 0).unwrap(), Vec::<usize>::new());
    assert_eq!(filter_batch(&[2.0, 1.0], 0).unwrap(), Vec::<usize>::new());
    assert!(matches!(
        filter_batch(&[1.0, 2.0], 3),
        Err(Error::Config {
            field: "n_keep",
            ..
        })
    ));
    assert!(matches!(
        filter_batch(&[1.0, f64::NAN], 1),
        Err(Error::Config {
            field: "scores",
            ..
        })
    ));
    assert!(matches!(
        discard_bottom(&[1.0], 1.5),
        Err(Error::Config {
            field: "fraction",
            ..
        })
    ));
    assert_eq!(
        discard_bottom(&[1.0, 2.0, 3.0], 0.0).unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(
        discard_bottom(&[1.0, 2.0, 3.0], 1.0).unwrap(),
        Vec::<usize>::new()
    );
}

#[test]
fn draw_size_is_ceil_n_over_one_minus_rho() {
    for (batch, rho, n) in [
        (10, 0.0, 10),
        (10, 0.1, 12), // 11.11
        (10, 0.25, 14),
        (10, 0.5, 20),
        (10, 0.75, 40),
        (10, 0.9, 100),
        (1, 0.5, 2),
        (7, 1.0 / 3.0, 11), // 10.5
        (64, 0.2, 80),
    ] {
        assert_eq!(draw_size(batch, rho).unwrap(), n, "N={batch} rho={rho}");
    }
    for rho in [1.0, -0.1, f64::NAN] {
        assert!(matches!(
            draw_size(4, rho),
            Err(Error::Config { field: "rho", .. })
        ));
    }
    assert!(matches!(
        draw_size(0, 0.5),
        Err(Error::Config { field: "batch", .. })
    ));
}

#[test]
fn acceptance_closed_forms() {
    for p in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0] {
        // n = 3, N = 2: p^2 + 2 p (1 - p).
        let want = p * p + 2.0 * p * (1.0 - p);
        assert!((acceptance_probability(p, 3, 2) - want).abs() < 1e-12);
        // N = 1: the example must beat all n - 1 others: p^(n-1).
        assert!((acceptance_probability(p, 10, 1) - p.powi(9)).abs() < 1e-12);
        // N = n - 1: rejected only if all others score higher: 1 - (1-p)^(n-1).
        assert!((acceptance_probability(p, 10, 9) - (1.0 - (1.0 - p).powi(9))).abs() < 1e-12);
        // Keeping everything accepts everything.
        assert_eq!(acceptance_probability(p, 10, 10), 1.0);
    }
    // Large batches: by symmetry P(Bin(4999, 1/2) <= 2499) = 1/2.
    let half = acceptance_probability(0.5, 5000, 2500);
    assert!((half - 0.5).abs() < 1e-9, "{half}");
    // Deep tails stay finite and tiny rather than NaN or negative.
    let tail = acceptance_probability(0.01, 5000, 10);
    assert!(tail.is_finite() && (0.0..1e-300).contains(&tail));
    assert_eq!(acceptance_probability(-0.5, 10, 3), 0.0);
    assert_eq!(acceptance_probability(1.5, 10, 3), 1.0);
}

/// Monte-Carlo simulation of draw-`n`-keep-top-`N` with the crate's own `filter_batch`:
/// the focal example has score `p` (under U(0,1), its CDF value), the other `n - 1`
/// are uniform, and the focal one sits at a random position in the batch.
fn simulate(p: f64, n: usize, keep: usize, trials: usize, rng: &mut Rng) -> f64 {
    let mut kept = 0;
    let mut scores = vec![0.0; n];
    for _ in 0..trials {
        scores.iter_mut().for_each(|s| *s = rng.uniform());
        let focal = rng.below(n);
        scores[focal] = p;
        if filter_batch(&scores, keep).unwrap().contains(&focal) {
            kept += 1;
        }
    }
    kept as f64 / trials as f64
}

#[test]
fn acceptance_matches_monte_carlo_draw_n_keep_top_n() {
    let mut rng = Rng::new(2025);
    let trials = 20_000;
    for &(n, keep) in &[(2, 1), (8, 4), (10, 3), (20, 16), (40, 10)] {
        for &p in &[0.05, 0.3, 0.5, 0.7, 0.95] {
            let want = acceptance_probability(p, n, keep);
            let got = simulate(p, n, keep, trials, &mut rng);
            let se = (want * (1.0 - want) / trials as f64).sqrt();
            assert!(
                (got - want).abs() <= 4.0 * se + 1e-3,
                "n={n} N={keep} p={p}: formula {want}, simulation {got} (se {se})"
            );
        }
    }
}

#[test]
fn acceptance_averages_to_keep_over_draw_under_uniform_p() {
    for &(n, keep) in &[(2, 1), (10, 1), (10, 7), (64, 16), (200, 150), (1000, 100)] {
        let m = 20_000;
        let mean = (0..m)
            .map(|i| acceptance_probability((i as f64 + 0.5) / m as f64, n, keep))
            .sum::<f64>()
            / m as f64;
        let want = keep as f64 / n as f64;
        assert!(
            (mean - want).abs() < 1e-4,
            "n={n} N={keep}: {mean} vs {want}"
        );
    }
}

#[test]
fn empirical_cdf_mid_rank() {
    let cdf = EmpiricalCdf::new(&[3.0, 1.0, 2.0, 2.0]).unwrap();
    assert_eq!(cdf.len(), 4);
    assert_eq!(cdf.cdf(0.5), 0.0);
    assert_eq!(cdf.cdf(1.0), 0.125);
    assert_eq!(cdf.cdf(1.5), 0.25);
    assert_eq!(cdf.cdf(2.0), 0.5); // (1 + 2/2) / 4
    assert_eq!(cdf.cdf(3.0), 0.875);
    assert_eq!(cdf.cdf(f64::INFINITY), 1.0);
    // Over a sample of distinct scores the sample's own CDF values average 1/2.
    let mut rng = Rng::new(1);
    let xs: Vec<f64> = (0..999).map(|_| rng.normal()).collect();
    let cdf = EmpiricalCdf::new(&xs).unwrap();
    let mean = xs.iter().map(|&x| cdf.cdf(x)).sum::<f64>() / xs.len() as f64;
    assert!((mean - 0.5).abs() < 1e-12);
    assert!(matches!(
        EmpiricalCdf::new(&[]),
        Err(Error::Config {
            field: "scores",
            ..
        })
    ));
    assert!(matches!(
        EmpiricalCdf::new(&[1.0, f64::NAN]),
        Err(Error::Config {
            field: "scores",
            ..
        })
    ));
}

/// Streaming acceptance with an empirical CDF reproduces what batch filtering does to
/// examples of each score quantile, on a non-uniform (normal) score distribution.
#[test]
fn streaming_acceptance_reproduces_batch_filtering() {
    let (keep, rho) = (4, 0.6);
    let mut rng = Rng::new(7);
    let reference: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
    let acc = Acceptor::new(EmpiricalCdf::new(&reference).unwrap(), keep, rho).unwrap();
    assert_eq!((acc.draw(), acc.keep()), (10, 4));

    let bins = 5;
    let (mut batch_kept, mut stream_kept, mut seen) =
        (vec![0.0; bins], vec![0.0; bins], vec![0.0; bins]);
    let bin = |s: f64| ((acc.cdf().cdf(s) * bins as f64) as usize).min(bins - 1);
    for _ in 0..8_000 {
        let scores: Vec<f64> = (0..acc.draw()).map(|_| rng.normal()).collect();
        let kept = filter_batch(&scores, keep).unwrap();
        for (i, &s) in scores.iter().enumerate() {
            let b = bin(s);
            seen[b] += 1.0;
            batch_kept[b] += f64::from(u8::from(kept.contains(&i)));
            stream_kept[b] += f64::from(u8::from(acc.accept(s, &mut rng)));
        }
    }
    let total: f64 = seen.iter().sum();
    let overall = stream_kept.iter().sum::<f64>() / total;
    assert!(
        (overall - 0.4).abs() < 0.01,
        "overall stream acceptance {overall}"
    );
    for b in 0..bins {
        let (x, y) = (batch_kept[b] / seen[b], stream_kept[b] / seen[b]);
        let se = (x.max(0.01) * (1.0 - x).max(0.01) / seen[b]).sqrt();
        assert!(
            (x - y).abs() < 5.0 * se * 2f64.sqrt(),
            "bin {b}: batch {x} vs stream {y}"
        );
    }
    // Higher bins are accepted more often.
    assert!(stream_kept.windows(2).all(|w| w[1] > w[0]));
    // The free function agrees with the acceptor given the same stream.
    let (mut r1, mut r2) = (Rng::new(3), Rng::new(3));
    for s in [-2.0, -0.5, 0.0, 0.4, 1.5] {
        assert_eq!(
            acc.accept(s, &mut r1),
            accept(s, acc.cdf(), acc.draw(), acc.keep(), &mut r2)
        );
    }
}

#[test]
fn sweep_reports_every_fraction_and_picks_the_minimum() {
    let scores: Vec<f64> = (0..200).map(|i| ((i * 37) % 200) as f64).collect();
    let mut calls = Vec::new();
    let r = sweep_discard_fractions(&scores, &DEFAULT_DISCARD_FRACTIONS, |kept| {
        // The closure sees exactly the top examples, ascending.
        assert_eq!(kept, &reference_top(&scores, kept.len())[..]);
        calls.push(kept.len());
        // A U-shaped toy loss with its minimum at 100 kept (discard 0.5).
        Ok(((kept.len() as f64 - 100.0) / 100.0).powi(2) + 1.0)
    })
    .unwrap();
    assert_eq!(calls, vec![180, 150, 100, 50, 20]);
    assert_eq!(r.points.len(), 5);
    assert_eq!(r.best_fraction(), 0.5);
    assert_eq!(r.best_loss(), 1.0);
    assert_eq!(r.best_point().kept, 100);
    let pairs = r.pairs();
    assert_eq!(
        pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
        DEFAULT_DISCARD_FRACTIONS
    );
    let min = pairs.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    assert_eq!(r.best_loss(), min);

    // Non-finite losses are recorded but never chosen; ties go to the first.
    let losses = [f64::NAN, 2.0, 1.0, 1.0, f64::NEG_INFINITY];
    let mut i = 0;
    let r = sweep_discard_fractions(&scores, &DEFAULT_DISCARD_FRACTIONS, |_| {
        i += 1;
        Ok(losses[i - 1])
    })
    .unwrap();
    assert_eq!(r.best, 2);
    assert!(r.points[0].loss.is_nan());
}

#[test]
fn sweep_errors() {
    let scores = [1.0, 2.0, 3.0];
    assert!(matches!(
        sweep_discard_fractions(&scores, &[], |_| Ok(0.0)),
        Err(Error::Config {
            field: "fractions",
            ..
        })
    ));
    assert!(matches!(
        sweep_discard_fractions(&scores, &[0.5, 2.0], |_| Ok(0.0)),
        Err(Error::Config {
            field: "fraction",
            ..
        })
    ));
    let failing = sweep_discard_fractions(&scores, &[0.1, 0.5], |kept| {
        if kept.len() < 3 {
            Err(Error::Usage("training diverged".into()))
        } else {
            Ok(1.0)
        }
    });
    assert_eq!(failing, Err(Error::Usage("training diverged".into())));
    assert!(matches!(
        sweep_discard_fractions(&scores, &[0.1, 0.5], |_| Ok(f64::NAN)),
        Err(Error::Usage(_))
    ));
}
