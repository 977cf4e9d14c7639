//! `train` draws a bounded, reproducible sample of its corpus: its peak heap (under the
//! counting allocator, in this process) does not grow with the corpus, and the sample
//! is a function of the seed and the shards, recorded with the run.

mod common;

use clap::Parser;
use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::curate::rater_file::RaterFile;
use datarater_cli::args::Cli;
use std::io::Write;
use std::path::{Path, PathBuf};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The allocator's peak is the whole process's: one test at a time, so no other test's
/// allocations land in a measurement.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A corpus of `shards` shards of about 1 MB of text each, alternating plain lines and
/// zstd-compressed JSON Lines.
fn corpus(dir: &Path, shards: usize) -> PathBuf {
    let root = dir.join(format!("corpus-{shards}"));
    std::fs::create_dir_all(&root).unwrap();
    for k in 0..shards {
        let docs = common::documents(8000, k as u64);
        if k % 2 == 0 {
            common::write_lines(&root.join(format!("part-{k:03}.txt")), &docs);
        } else {
            let mut z = zstd::Encoder::new(Vec::new(), 3).unwrap();
            for d in &docs {
                writeln!(z, "{}", serde_json::json!({"text": d})).unwrap();
            }
            std::fs::write(
                root.join(format!("part-{k:03}.jsonl.zst")),
                z.finish().unwrap(),
            )
            .unwrap();
        }
    }
    root
}

/// Runs `train` for one outer step in this process; returns the peak heap it added
/// and the recorded training-data summary.
fn train(
    corpus: &Path,
    held: &Path,
    out: &Path,
    seed: &str,
    sample_bytes: &str,
) -> (usize, serde_json::Value) {
    let args = [
        "datarater",
        "train",
        "--train",
        common::s(corpus),
        "--held-out",
        common::s(held),
        "--out",
        common::s(out),
        "--outer-steps",
        "1",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--lm-width",
        "8",
        "--rater-width",
        "8",
        "--train-sample-bytes",
        sample_bytes,
        "--seed",
        seed,
    ];
    let cli = Cli::parse_from(args);
    // On one thread: with two, the training part of the peak moves by some 0.5 MB with
    // the threads' timing (which buffers are alive at once).
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let ((), peak) = one.install(|| measure_peak(|| datarater_cli::run(&cli).unwrap()));
    let rater = RaterFile::<f32>::load(out.join("rater.safetensors")).unwrap();
    (peak, rater.training["data"].clone())
}

#[test]
fn train_memory_does_not_grow_with_the_corpus_and_the_sample_is_reproducible() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held.txt");
    common::write_lines(&held, &common::documents(400, 99));
    let small = corpus(dir.path(), 2);
    let big = corpus(dir.path(), 12);
    let (small_peak, small_data) =
        train(&small, &held, &dir.path().join("run-small"), "1", "65536");
    let (big_peak, big_data) = train(&big, &held, &dir.path().join("run-big"), "1", "65536");
    assert_eq!(small_data["train_shards"].as_array().unwrap().len(), 2);
    assert_eq!(big_data["train_shards"].as_array().unwrap().len(), 12);
    // 64 KiB of 32-byte sequences: 2048 sequences from either corpus.
    assert_eq!(small_data["train_sequences"], 2048);
    assert_eq!(big_data["train_sequences"], 2048);
    assert!(
        big_data["train_corpus_sequences"].as_u64().unwrap()
            > 5 * small_data["train_corpus_sequences"].as_u64().unwrap()
    );
    // The big corpus is ~12 MB of text, the small ~2 MB: the peaks differ by far less
    // than either corpus.
    eprintln!("peak heap: {small_peak} bytes (2 shards), {big_peak} bytes (12 shards)");
    assert!(
        big_peak < small_peak + (512 << 10),
        "train's peak grew with the corpus: {small_peak} -> {big_peak} bytes"
    );
    assert!(big_peak < 8 << 20, "peak {big_peak} bytes");
    // The same seed and shards draw the same sample; another seed another.
    let (_, again) = train(&big, &held, &dir.path().join("run-again"), "1", "65536");
    assert_eq!(again["train_fingerprint"], big_data["train_fingerprint"]);
    let (_, other) = train(&big, &held, &dir.path().join("run-other"), "2", "65536");
    assert_ne!(other["train_fingerprint"], big_data["train_fingerprint"]);
}

#[test]
fn the_sample_is_held_in_one_buffer_of_its_own_size() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held.txt");
    common::write_lines(&held, &common::documents(400, 99));
    let big = corpus(dir.path(), 12);
    // A first run in the process also makes what the process keeps for good (4-5 MB
    // here: per-thread workspaces such as the gemm crate's packing buffers, made by each
    // thread's first product): measure warm runs only.
    train(&big, &held, &dir.path().join("run-warm"), "1", "65536");
    let (small_peak, _) = train(&big, &held, &dir.path().join("run-64k"), "1", "65536");
    let (peak, data) = train(&big, &held, &dir.path().join("run-4m"), "1", "4194304");
    assert_eq!(data["train_sequences"], 4 << 20 >> 5);
    // The run holds the 4 MiB sample, and 4 MiB more of sample costs about 4 MiB more
    // heap; one allocation per 32-byte sequence (a Vec per row: 24 bytes of header in
    // the outer vector and the allocator's own) would cost over 7 MiB.
    let extra = peak - small_peak;
    eprintln!("peak heap: {small_peak} bytes (64 KiB sample), {peak} bytes (4 MiB sample)");
    assert!(peak >= 4 << 20, "peak {peak} bytes");
    assert!(extra < 6 << 20, "a 4 MiB sample added {extra} bytes");
}
