//! Corpora, splits, batches and corruption generators.

use datarater::data::{Batch, Corpus, Corruption, SplitConfig, VOCAB, corrupted_pool, default_mix};
use datarater::{Error, Rng};
use std::collections::HashSet;

fn text(n: usize) -> Vec<u8> {
    Corpus::embedded().bytes()[..n].to_vec()
}

fn changed(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn embedded_corpus_is_the_devils_dictionary() {
    let c = Corpus::embedded();
    assert!(c.len() > 300_000, "embedded corpus has {} bytes", c.len());
    let s = String::from_utf8_lossy(c.bytes());
    assert!(s.contains("DEVIL'S DICTIONARY"));
    assert!(s.contains("BIERCE"));
}

#[test]
fn from_file_reads_raw_bytes_and_reports_missing_files() {
    let dir = std::env::temp_dir().join(format!("datarater-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bytes.bin");
    let raw: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00]).collect(); // not UTF-8
    std::fs::write(&path, &raw).unwrap();
    assert_eq!(Corpus::from_file(&path).unwrap().bytes(), &raw[..]);

    let missing = dir.join("does-not-exist.txt");
    match Corpus::from_file(&missing) {
        Err(Error::File { path, reason }) => {
            assert!(path.contains("does-not-exist.txt"), "{path}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected a File error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sequences_are_non_overlapping_windows_dropping_the_tail() {
    let c = Corpus::from_bytes((0..250u8).collect::<Vec<_>>());
    let seqs = c.sequences(64).unwrap();
    assert_eq!(seqs.len(), 3);
    assert_eq!(c.num_sequences(64), 3);
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s.len(), 64);
        assert_eq!(s[..], c.bytes()[i * 64..(i + 1) * 64]);
    }
}

#[test]
fn split_is_disjoint_covers_the_corpus_and_matches_the_bytes() {
    let c = Corpus::embedded();
    let cfg = SplitConfig::default()
        .with_seq_len(128)
        .with_held_out_fraction(0.15);
    let s = c.split(&cfg, &mut Rng::new(11)).unwrap();
    let n = c.len() / 128;
    assert_eq!(s.train.len() + s.held_out.len(), n);
    assert_eq!(s.held_out.len(), (0.15 * n as f64).round() as usize);
    let train: HashSet<_> = s.train_index.iter().copied().collect();
    let held: HashSet<_> = s.held_out_index.iter().copied().collect();
    assert_eq!(train.len(), s.train_index.len(), "duplicate train index");
    assert_eq!(
        held.len(),
        s.held_out_index.len(),
        "duplicate held-out index"
    );
    assert!(train.is_disjoint(&held));
    let all: HashSet<_> = train.union(&held).copied().collect();
    assert_eq!(all, (0..n).collect::<HashSet<_>>());
    for (seqs, idx) in [(&s.train, &s.train_index), (&s.held_out, &s.held_out_index)] {
        assert_eq!(seqs.len(), idx.len());
        for (seq, &i) in seqs.iter().zip(idx.iter()) {
            assert_eq!(seq.len(), 128);
            assert_eq!(seq[..], c.bytes()[i * 128..(i + 1) * 128]);
        }
    }
    // The held-out set is a random sample, not a contiguous block.
    let max_gap = s
        .held_out_index
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    assert!(max_gap > 1);
    assert!(s.held_out_index.iter().any(|&i| i < n / 2));
    assert!(s.held_out_index.iter().any(|&i| i >= n / 2));
}

#[test]
fn split_is_deterministic_in_the_seed() {
    let c = Corpus::from_bytes(text(20_000));
    let cfg = SplitConfig::default();
    let a = c.split(&cfg, &mut Rng::new(5)).unwrap();
    let b = c.split(&cfg, &mut Rng::new(5)).unwrap();
    let d = c.split(&cfg, &mut Rng::new(6)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.held_out_index, d.held_out_index);
}

#[test]
fn split_keeps_both_sets_non_empty() {
    let c = Corpus::from_bytes(vec![1u8; 20]);
    for f in [0.01, 0.99] {
        let s = c
            .split(
                &SplitConfig::default()
                    .with_seq_len(10)
                    .with_held_out_fraction(f),
                &mut Rng::new(0),
            )
            .unwrap();
        assert_eq!((s.train.len(), s.held_out.len()), (1, 1));
    }
}

#[test]
fn config_errors_name_the_field() {
    fn field<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }
    let c = Corpus::from_bytes(vec![0u8; 100]);
    let mut rng = Rng::new(0);
    let cfg = |seq_len, held_out_fraction| {
        SplitConfig::default()
            .with_seq_len(seq_len)
            .with_held_out_fraction(held_out_fraction)
    };
    assert_eq!(field(c.split(&cfg(0, 0.1), &mut rng)), "seq_len");
    assert_eq!(field(c.sequences(0)), "seq_len");
    assert_eq!(field(c.split(&cfg(60, 0.1), &mut rng)), "corpus"); // one sequence only
    assert_eq!(field(c.split(&cfg(101, 0.1), &mut rng)), "corpus");
    assert_eq!(field(c.sequences(101)), "corpus");
    assert_eq!(
        field(Corpus::from_bytes(vec![]).split(&cfg(1, 0.5), &mut rng)),
        "corpus"
    );
    for f in [0.0, 1.0, -0.1, f64::NAN] {
        assert_eq!(field(c.split(&cfg(10, f), &mut rng)), "held_out_fraction");
    }
    for bad in [
        Corruption::ByteReplace { rate: 1.5 },
        Corruption::ShuffleWords { rate: -0.1 },
        Corruption::RepeatRuns { rate: f64::NAN },
    ] {
        assert_eq!(field(bad.apply(b"abc", &mut rng)), "rate");
    }
    let clean = vec![b"abc".to_vec(); 4];
    assert_eq!(field(corrupted_pool(&clean, &[], &mut rng)), "mix");
    assert_eq!(
        field(corrupted_pool(
            &clean,
            &[(Corruption::Clean, 0.5)],
            &mut rng
        )),
        "mix"
    );
    assert_eq!(
        field(corrupted_pool(
            &clean,
            &[(Corruption::Clean, 1.5), (Corruption::AllCaps, -0.5)],
            &mut rng
        )),
        "mix"
    );
    assert_eq!(field(Batch::from_sequences::<Vec<u8>>(&[])), "batch");
    assert_eq!(field(Batch::from_sequences(&[Vec::<u8>::new()])), "seq_len");
    assert_eq!(
        field(Batch::from_sequences(&[b"a"]).unwrap().lm_inputs_targets()),
        "seq_len"
    );
    assert!(matches!(
        Batch::from_sequences(&[b"ab".to_vec(), b"abc".to_vec()]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn batch_tokens_and_next_token_targets() {
    let seqs = [
        text(32),
        text(64)[32..].to_vec(),
        [0u8, 255, 7, 9].repeat(8),
    ];
    let b = Batch::from_sequences(&seqs).unwrap();
    assert_eq!((b.batch_size(), b.seq_len()), (3, 32));
    let t = b.tokens();
    assert_eq!(t.shape(), &[3, 32]);
    assert!(t.data().iter().all(|&x| x < VOCAB));
    let (x, y) = b.lm_inputs_targets().unwrap();
    assert_eq!(x.shape(), &[3, 31]);
    assert_eq!(y.shape(), &[3, 31]);
    for (r, s) in seqs.iter().enumerate() {
        assert_eq!(b.row(r), &s[..]);
        for j in 0..31 {
            assert_eq!(t.data()[r * 32 + j], s[j] as usize);
            assert_eq!(x.data()[r * 31 + j], s[j] as usize);
            assert_eq!(y.data()[r * 31 + j], s[j + 1] as usize);
        }
    }
}

fn all_kinds(rate: f64) -> Vec<Corruption> {
    vec![
        Corruption::Clean,
        Corruption::ByteReplace { rate },
        Corruption::ShuffleWords { rate },
        Corruption::RepeatRuns { rate },
        Corruption::AllCaps,
    ]
}

#[test]
fn corruptions_preserve_length_and_report_kind_and_level() {
    let s = text(128);
    for rate in [0.0, 0.3, 1.0] {
        for c in all_kinds(rate) {
            let out = c.apply(&s, &mut Rng::new(1)).unwrap();
            assert_eq!(out.len(), s.len(), "{c}");
            assert!((0.0..=1.0).contains(&c.level()));
        }
    }
    let kinds: HashSet<_> = all_kinds(0.5).iter().map(Corruption::kind).collect();
    assert_eq!(kinds.len(), 5);
    assert_eq!(Corruption::ByteReplace { rate: 0.25 }.level(), 0.25);
    assert_eq!(
        Corruption::ByteReplace { rate: 0.25 }.to_string(),
        "byte_replace(0.25)"
    );
    assert_eq!(Corruption::Clean.level(), 0.0);
    assert_eq!(Corruption::AllCaps.level(), 1.0);
    // Empty input is fine too.
    for c in all_kinds(0.5) {
        assert!(c.apply(b"", &mut Rng::new(0)).unwrap().is_empty());
    }
}

#[test]
fn rate_zero_is_the_identity() {
    let s = text(4096);
    for c in all_kinds(0.0) {
        if c == Corruption::AllCaps {
            continue;
        }
        assert_eq!(c.apply(&s, &mut Rng::new(2)).unwrap(), s, "{c}");
    }
}

#[test]
fn byte_replacement_fraction_matches_the_rate() {
    let s = text(100_000);
    let n = s.len() as f64;
    for (seed, rate) in [0.1, 0.25, 0.5, 0.75, 1.0].into_iter().enumerate() {
        let out = Corruption::ByteReplace { rate }
            .apply(&s, &mut Rng::new(seed as u64))
            .unwrap();
        let frac = changed(&s, &out) as f64 / n;
        let se = (rate * (1.0 - rate) / n).sqrt().max(1e-9);
        assert!(
            (frac - rate).abs() < 5.0 * se + 1e-12,
            "rate {rate}: changed fraction {frac}"
        );
    }
    // At rate 1 every byte changes, and the replacements look uniform over bytes.
    let out = Corruption::ByteReplace { rate: 1.0 }
        .apply(&s, &mut Rng::new(9))
        .unwrap();
    assert_eq!(changed(&s, &out), s.len());
    let mut hist = [0usize; 256];
    out.iter().for_each(|&b| hist[b as usize] += 1);
    let expect = n / 256.0;
    assert!(
        hist.iter()
            .all(|&h| (h as f64 - expect).abs() < 6.0 * expect.sqrt()),
        "replacement bytes are not uniform"
    );
}

#[test]
fn corruption_is_deterministic_in_the_seed() {
    let s = text(2048);
    for c in all_kinds(0.4) {
        let a = c.apply(&s, &mut Rng::new(3)).unwrap();
        let b = c.apply(&s, &mut Rng::new(3)).unwrap();
        assert_eq!(a, b, "{c}");
        if matches!(c, Corruption::Clean | Corruption::AllCaps) {
            continue;
        }
        let d = c.apply(&s, &mut Rng::new(4)).unwrap();
        assert_ne!(a, d, "{c}: different seeds gave the same output");
    }
}

#[test]
fn shuffle_words_permutes_words_and_keeps_whitespace() {
    let s = text(4096);
    let words = |b: &[u8]| {
        let mut w: Vec<Vec<u8>> = b
            .split(|c| c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        w.sort();
        w
    };
    let out = Corruption::ShuffleWords { rate: 1.0 }
        .apply(&s, &mut Rng::new(5))
        .unwrap();
    assert_eq!(words(&out), words(&s), "same multiset of words");
    let ws = |b: &[u8]| -> Vec<usize> {
        b.iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_whitespace())
            .map(|(i, _)| i)
            .collect()
    };
    // Whitespace runs stay, though their positions move with the word lengths.
    assert_eq!(ws(&out).len(), ws(&s).len());
    assert!(
        changed(&s, &out) > s.len() / 2,
        "rate 1 should scramble most text"
    );
    // A low rate touches fewer bytes than a high one.
    let low = Corruption::ShuffleWords { rate: 0.1 }
        .apply(&s, &mut Rng::new(5))
        .unwrap();
    assert_eq!(words(&low), words(&s));
    assert!(changed(&s, &low) < changed(&s, &out));
}

#[test]
fn repeat_runs_inject_runs_and_all_caps_shouts() {
    let s = b"abcdefghijklmnopqrstuvwxyz0123456789".repeat(20);
    let out = Corruption::RepeatRuns { rate: 0.2 }
        .apply(&s, &mut Rng::new(6))
        .unwrap();
    // The source has no repeated bytes; runs of >= 3 must have been injected.
    let runs = out
        .windows(3)
        .filter(|w| w[0] == w[1] && w[1] == w[2])
        .count();
    assert!(runs > 20, "only {runs} run windows");
    // The output is the input with insertions: the input's prefix is a subsequence.
    let mut it = out.iter();
    let kept = s.iter().take_while(|b| it.any(|c| c == *b)).count();
    assert!(kept > 100 && kept < s.len());

    let caps = Corruption::AllCaps
        .apply(b"Hello, World! 123 \xff", &mut Rng::new(0))
        .unwrap();
    assert_eq!(caps, b"HELLO, WORLD! 123 \xff");
}

#[test]
fn pool_follows_the_mix_exactly_and_labels_each_sequence() {
    let c = Corpus::from_bytes(text(64 * 1000));
    let clean = c.sequences(64).unwrap();
    let mix = default_mix();
    assert!((mix.iter().map(|(_, f)| f).sum::<f64>() - 1.0).abs() < 1e-12);
    let pool = corrupted_pool(&clean, &mix, &mut Rng::new(7)).unwrap();
    assert_eq!(pool.len(), clean.len());
    let count = |kind: &str, level: f64| {
        pool.iter()
            .filter(|s| s.kind == kind && s.level == level)
            .count()
    };
    assert_eq!(count("clean", 0.0), 200);
    for rate in [0.1, 0.25, 0.5, 0.75, 1.0] {
        assert_eq!(count("byte_replace", rate), 100);
    }
    assert_eq!(count("shuffle_words", 0.5), 100);
    assert_eq!(count("repeat_runs", 0.05), 100);
    assert_eq!(count("all_caps", 1.0), 100);
    for (p, s) in pool.iter().zip(&clean) {
        assert_eq!(p.bytes.len(), s.len());
        if p.kind == "clean" {
            assert_eq!(&p.bytes, s);
        }
        if p.kind == "byte_replace" && p.level == 1.0 {
            assert_eq!(changed(&p.bytes, s), s.len());
        }
        if p.kind == "all_caps" {
            assert_eq!(p.bytes, s.to_ascii_uppercase());
        }
    }
    // The assignment is random: clean sequences are spread over the corpus.
    let clean_pos: Vec<usize> = (0..pool.len())
        .filter(|&i| pool[i].kind == "clean")
        .collect();
    assert!(clean_pos[0] < 200 && *clean_pos.last().unwrap() > 800);
    // And seeded.
    assert_eq!(
        pool,
        corrupted_pool(&clean, &mix, &mut Rng::new(7)).unwrap()
    );
    assert_ne!(
        pool,
        corrupted_pool(&clean, &mix, &mut Rng::new(8)).unwrap()
    );
}

#[test]
fn pool_counts_round_by_largest_remainder() {
    let clean = vec![b"xyz".to_vec(); 10];
    let mix = [
        (Corruption::Clean, 1.0 / 3.0),
        (Corruption::AllCaps, 1.0 / 3.0),
        (Corruption::ByteReplace { rate: 1.0 }, 1.0 / 3.0),
    ];
    let pool = corrupted_pool(&clean, &mix, &mut Rng::new(0)).unwrap();
    assert_eq!(pool.len(), 10);
    let mut counts: Vec<usize> = ["clean", "all_caps", "byte_replace"]
        .iter()
        .map(|k| pool.iter().filter(|s| s.kind == *k).count())
        .collect();
    counts.sort();
    assert_eq!(counts, vec![3, 3, 4]);
}
