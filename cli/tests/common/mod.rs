//! Shared helpers of the CLI tests: run the real binary, generate small corpora, make a
//! rater file from the library (an initialised, untrained rater: scoring needs no
//! training).

#![allow(dead_code)] // each test file uses a subset

use datarater::Rng;
use datarater::curate::rater_file::RaterFile;
use datarater::nn::{SequenceScorer, TransformerConfig};
use std::path::Path;
use std::process::{Command, Output};

/// gzip of `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The strings of `v` as `&str`s (for argument lists).
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Sequence length of the test rater.
pub const SEQ_LEN: usize = 16;

/// Runs `datarater ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "datarater {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and asserts a failure with a readable message (no Debug dump, no panic)
/// containing every one of `needles`; returns stderr.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "datarater {args:?} should fail");
    assert_eq!(out.status.code(), Some(1), "exit code, stderr: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "the last line is the error: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");
    assert!(
        !err.contains(" { "),
        "a Debug struct dump in the message: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr should mention `{n}`: {err}");
    }
    err
}

/// `n` documents of pseudo-English words, lengths varied (some shorter than
/// [`SEQ_LEN`]), none containing a newline.
pub fn documents(n: usize, seed: u64) -> Vec<String> {
    const WORDS: [&str; 16] = [
        "the", "rater", "scores", "data", "model", "learns", "a", "held", "out", "loss", "byte",
        "of", "text", "is", "good", "noise",
    ];
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let words = if i % 7 == 3 { 1 } else { 2 + rng.below(40) };
            let mut d: Vec<&str> = (0..words).map(|_| WORDS[rng.below(WORDS.len())]).collect();
            if i % 5 == 0 {
                d.push("\"quoted\" \\ back\tslash é");
            }
            d.join(" ")
        })
        .collect()
}

/// Writes documents one per line.
pub fn write_lines(path: &Path, docs: &[String]) {
    std::fs::write(path, docs.join("\n") + "\n").unwrap();
}

/// Writes documents as JSON Lines `{"id": i, "text": doc, "meta": {...}}`.
pub fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({"id": i, "text": d, "meta": {"src": "gen"}}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A rater file for a small untrained rater (seeded), sequence length [`SEQ_LEN`].
pub fn write_rater(path: &Path, seed: u64) {
    let scorer =
        SequenceScorer::new(TransformerConfig::new(16, 1, 2, SEQ_LEN).with_d_ff(32)).unwrap();
    RaterFile {
        eta: scorer.init::<f32>(&mut Rng::new(seed)),
        scorer,
        seq_len: SEQ_LEN,
        training: serde_json::json!({"note": "untrained test rater"}),
    }
    .save(path)
    .unwrap();
}

/// The `score` fields of a score file, in order.
pub fn read_scores(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A path as a `&str` argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `datarater ARGS` in `dir` (where a core dump would land) with the test-only
/// fault injection aborting the process after `bytes` bytes written to files.
#[cfg(unix)]
pub fn run_faulted(dir: &Path, args: &[&str], bytes: u64) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(args)
        .current_dir(dir)
        .env("DATARATER_FAULT_AFTER_BYTES", bytes.to_string())
        .output()
        .unwrap()
}

/// Asserts that `out` is a process killed by the fault injection's abort (SIGABRT).
#[cfg(unix)]
pub fn assert_aborted(out: &std::process::Output) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {err}");
    assert!(err.contains("DATARATER_FAULT_AFTER_BYTES"), "{err}");
}
