//! Scoring throughput and the peak heap of `datarater score` and `datarater filter`.
//!
//! 1. Throughput: scores a generated JSON Lines sample (`--sample-mb`, default 16 MB)
//!    with the default rater (`datarater train`'s defaults, untrained: the cost does
//!    not depend on the weights) and prints documents/s, MB/s of text, the rater's
//!    FLOPs per byte, the GFLOP/s achieved and, for comparison, the machine's f32 gemm
//!    rate (512^3 matmuls on one thread, and on every thread at once).
//! 2. Memory: generates `--gb` (default 1) GB of JSON Lines into a temporary file,
//!    streaming, and runs `score`, then `filter --scores` in discard and accept mode
//!    on it, each under the counting allocator, printing its peak heap. Skip with
//!    `--gb 0`. Scoring a gigabyte with the default rater takes about 18 minutes on two
//!    cores, so this run uses a tiny rater by default (`--memory-rater tiny`: width 8,
//!    64-byte sequences); the readers, blocks and writers are the same, and the
//!    default rater's own peak is printed by the throughput run for comparison.
//!
//! ```text
//! cargo run --release -p datarater-cli --example throughput -- [--sample-mb N] [--gb X] [--dir DIR]
//! ```

use clap::Parser;
use datarater::Rng;
use datarater::alloc::{CountingAlloc, current_bytes, peak_bytes, reset_peak};
use datarater::curate::rater_file::RaterFile;
use datarater::nn::{SequenceScorer, TransformerConfig};
use datarater_cli::args::{Cli, Command};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
struct Opts {
    /// Size of the throughput sample in MB.
    #[arg(long, default_value_t = 16.0)]
    sample_mb: f64,
    /// Size of the memory run's input in GB (0 skips it).
    #[arg(long, default_value_t = 1.0)]
    gb: f64,
    /// The rater of the memory run.
    #[arg(long, value_enum, default_value_t = MemoryRater::Tiny)]
    memory_rater: MemoryRater,
    /// Where to put the generated files, which are then kept (default: a directory in
    /// the system temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The rater the memory run scores with.
#[derive(Clone, Copy, clap::ValueEnum)]
enum MemoryRater {
    /// Width 8, one head (fast; the same readers, blocks and writers).
    Tiny,
    /// `datarater train`'s default rater.
    Default,
}

/// Writes JSON Lines documents of pseudo-English words (20 to 2000 bytes, with an id
/// and a metadata field) until `bytes` are written; returns (documents, text bytes).
fn generate(path: &Path, bytes: u64, seed: u64) -> (u64, u64) {
    const WORDS: [&str; 24] = [
        "the",
        "rater",
        "scores",
        "data",
        "model",
        "learns",
        "a",
        "held-out",
        "loss",
        "bytes",
        "of",
        "text",
        "is",
        "good",
        "noise",
        "and",
        "to",
        "in",
        "curated",
        "corpus",
        "training",
        "document",
        "with",
        "meta-gradient",
    ];
    let mut rng = Rng::new(seed);
    let mut w = BufWriter::new(std::fs::File::create(path).expect("create the input"));
    let (mut written, mut docs, mut text) = (0u64, 0u64, 0u64);
    let mut doc = String::new();
    while written < bytes {
        doc.clear();
        let target = 20 + rng.below(1980);
        while doc.len() < target {
            if !doc.is_empty() {
                doc.push(' ');
            }
            doc.push_str(WORDS[rng.below(WORDS.len())]);
        }
        let line = format!("{{\"id\":{docs},\"text\":\"{doc}\",\"lang\":\"en\"}}\n");
        w.write_all(line.as_bytes()).expect("write the input");
        written += line.len() as u64;
        text += doc.len() as u64;
        docs += 1;
    }
    w.flush().expect("write the input");
    (docs, text)
}

/// Runs one command line in this process; returns (seconds, peak heap bytes above the
/// start).
fn run(args: &[&str]) -> (f64, usize) {
    let cli = Cli::parse_from(std::iter::once("datarater").chain(args.iter().copied()));
    let base = current_bytes();
    reset_peak();
    let t = Instant::now();
    datarater_cli::run(&cli).unwrap_or_else(|e| panic!("datarater {args:?}: {e}"));
    (t.elapsed().as_secs_f64(), peak_bytes().saturating_sub(base))
}

/// GFLOP/s of `n x n x n` f32 matmuls on `threads` threads at once.
fn gemm_gflops(n: usize, threads: usize) -> f64 {
    use rayon::prelude::*;
    let a = datarater::ndarray::Array2::<f32>::from_elem((n, n), 0.5);
    let reps = 20;
    let t = Instant::now();
    (0..threads).into_par_iter().for_each(|_| {
        for _ in 0..reps {
            std::hint::black_box(a.dot(&a));
        }
    });
    (2.0 * (n * n * n) as f64 * (reps * threads) as f64) / t.elapsed().as_secs_f64() / 1e9
}

/// Multiply-adds of the rater's forward pass per sequence of `l` bytes.
fn macs_per_sequence(c: &TransformerConfig, l: usize) -> f64 {
    let (d, f, l) = (c.d_model as f64, c.d_ff as f64, l as f64);
    let layer = 4.0 * l * d * d + 2.0 * l * d * f + 2.0 * l * l * d;
    c.n_layers as f64 * layer + d
}

fn main() {
    let opts = Opts::parse();
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("datarater-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the work directory");
    let p = |n: &str| dir.join(n).display().to_string();

    // The default rater, exactly as `datarater train` would build it.
    let Command::Train(train) = Cli::parse_from([
        "datarater",
        "train",
        "--train",
        "t",
        "--held-out",
        "h",
        "--out",
        "o",
    ])
    .command
    else {
        unreachable!("parsed a train command")
    };
    let cfg = train.rater_config().expect("the default rater config");
    let save = |cfg: &TransformerConfig, name: &str| {
        let scorer = SequenceScorer::new(cfg.clone()).expect("a valid config");
        RaterFile {
            eta: scorer.init::<f32>(&mut Rng::new(0)),
            scorer,
            seq_len: train.seq_len,
            training: serde_json::json!({"note": "untrained, for timing"}),
        }
        .save(p(name))
        .expect("save the rater");
    };
    save(&cfg, "rater.safetensors");
    let tiny = cfg.clone().with_d_model(8).with_n_heads(1).with_d_ff(16);
    save(&tiny, "tiny.safetensors");
    let threads = rayon::current_num_threads();
    println!(
        "default rater: d_model {}, {} layer(s), {} heads, d_ff {}, {}-byte sequences; {threads} threads",
        cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, train.seq_len
    );

    // 1. Throughput.
    let (docs, text) = generate(
        Path::new(&p("sample.jsonl")),
        (opts.sample_mb * 1e6) as u64,
        1,
    );
    let (secs, _) = run(&[
        "score",
        "--rater",
        &p("rater.safetensors"),
        "--input",
        &p("sample.jsonl"),
        "--out",
        &p("sample.scores.jsonl"),
        "--force",
    ]);
    let mbps = text as f64 / 1e6 / secs;
    let flops_per_byte = 2.0 * macs_per_sequence(&cfg, train.seq_len) / train.seq_len as f64;
    let achieved = mbps * 1e6 * flops_per_byte / 1e9;
    let (g1, gn) = (gemm_gflops(512, 1), gemm_gflops(512, threads));
    println!(
        "\nthroughput ({:.1} MB of text in {docs} documents):",
        text as f64 / 1e6
    );
    println!(
        "  {:.0} documents/s, {mbps:.3} MB/s of text",
        docs as f64 / secs
    );
    println!(
        "  rater forward: {:.0} FLOP per byte -> {achieved:.2} GFLOP/s achieved",
        flops_per_byte
    );
    println!(
        "  f32 gemm 512^3: {g1:.1} GFLOP/s on 1 thread, {gn:.1} GFLOP/s on {threads} -> scoring runs at {:.0}% of the gemm peak",
        100.0 * achieved / gn
    );

    // 2. Peak heap on a large input.
    if opts.gb > 0.0 {
        let big = p("big.jsonl");
        let t = Instant::now();
        let (docs, text) = generate(Path::new(&big), (opts.gb * 1e9) as u64, 2);
        let size = std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
        println!(
            "\nmemory: generated {:.2} GB of JSON Lines ({docs} documents, {:.2} GB of text) in {:.0}s",
            size as f64 / 1e9,
            text as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        let mb = |b: usize| b as f64 / 1e6;
        let (rater, name) = match opts.memory_rater {
            MemoryRater::Tiny => (p("tiny.safetensors"), "tiny"),
            MemoryRater::Default => (p("rater.safetensors"), "default"),
        };
        println!("  (scored with the {name} rater)");
        let (s, score_peak) = run(&[
            "score",
            "--rater",
            &rater,
            "--input",
            &big,
            "--out",
            &p("big.scores.jsonl"),
            "--force",
        ]);
        println!(
            "  score:                        {s:>7.0}s, peak heap {:>8.1} MB",
            mb(score_peak)
        );
        let (s, discard_peak) = run(&[
            "filter",
            "--scores",
            &p("big.scores.jsonl"),
            "--input",
            &big,
            "--out",
            &p("big.kept.jsonl"),
            "--discard-fraction",
            "0.25",
            "--force",
        ]);
        println!(
            "  filter --scores (discard):    {s:>7.0}s, peak heap {:>8.1} MB ({:.1} bytes per document)",
            mb(discard_peak),
            discard_peak as f64 / docs as f64
        );
        let (s, accept_peak) = run(&[
            "filter",
            "--scores",
            &p("big.scores.jsonl"),
            "--input",
            &big,
            "--out",
            &p("big.accepted.jsonl"),
            "--mode",
            "accept",
            "--rho",
            "0.25",
            "--force",
        ]);
        println!(
            "  filter --scores (accept):     {s:>7.0}s, peak heap {:>8.1} MB",
            mb(accept_peak)
        );
    }
    if opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
