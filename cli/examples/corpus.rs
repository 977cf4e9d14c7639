//! A sharded corpus end to end: generates `--mb` MB of text as `--shards` shards, half
//! Parquet (FineWeb-like: id, text, url, with zstd pages) and half `.jsonl.zst`
//! (Dolma-like), then runs `train` (on a sample) -> `score` -> `filter` on it in this
//! process, printing each stage's time, MB/s of text and peak heap (counting
//! allocator), and finally kills a `score` run (SIGKILL) half way through and times
//! the rerun, which redoes only the shards that were in flight.
//!
//! ```text
//! cargo build --release -p datarater-cli   # the kill-and-rerun stage runs the binary
//! cargo run --release -p datarater-cli --example corpus -- [--mb 200] [--shards 16] [--stages train,score,filter,rerun]
//! ```
//!
//! The rater is a tiny one (width 8, 64-byte sequences) so that a run takes minutes:
//! the readers, writers and resumption are the same as with the default rater.

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use clap::Parser;
use datarater::Rng;
use datarater::alloc::{CountingAlloc, current_bytes, peak_bytes, reset_peak};
use datarater_cli::args::Cli;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
struct Opts {
    /// Text in the generated corpus, in MB.
    #[arg(long, default_value_t = 200.0)]
    mb: f64,
    /// Shards (half Parquet, half .jsonl.zst).
    #[arg(long, default_value_t = 16)]
    shards: usize,
    /// Stages to run, of train, score, filter, rerun.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "train,score,filter,rerun"
    )]
    stages: Vec<String>,
    /// `train --train-sample-bytes`.
    #[arg(long, default_value_t = 64 << 20)]
    train_sample_bytes: u64,
    /// Where to put the corpus and outputs, which are then kept (default: a directory in
    /// the system temporary directory, removed at the end). An existing corpus there of
    /// the same size is reused.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One pseudo-English document of 50 to 4000 bytes (word frequencies skewed, so an LM
/// has something to learn).
fn document(rng: &mut Rng) -> String {
    const WORDS: [&str; 20] = [
        "the", "of", "and", "a", "to", "in", "is", "data", "model", "rater", "text", "loss",
        "held-out", "corpus", "curated", "training", "bytes", "with", "document", "shard",
    ];
    let target = 50 + rng.below(3950);
    let mut doc = String::with_capacity(target + 16);
    while doc.len() < target {
        if !doc.is_empty() {
            doc.push(' ');
        }
        // Squaring a uniform index favours the first words.
        let u = rng.uniform();
        doc.push_str(WORDS[((u * u) * WORDS.len() as f64) as usize]);
    }
    doc
}

/// Writes shard `k` of `n` (`bytes` of text) under `dir`; returns its path.
fn write_shard(dir: &Path, k: usize, bytes: u64) -> PathBuf {
    let mut rng = Rng::new(k as u64 + 1);
    let mut docs = Vec::new();
    let mut text = 0u64;
    while text < bytes {
        let d = document(&mut rng);
        text += d.len() as u64;
        docs.push(d);
    }
    let first = k as i64 * 1_000_000;
    if k % 2 == 0 {
        let path = dir.join(format!("fineweb/part-{k:04}.parquet"));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("url", DataType::Utf8, false),
        ]));
        let props = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_max_row_group_row_count(Some(10_000))
            .build();
        let file = std::fs::File::create(&path).expect("create a shard");
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).expect("a writer");
        for (c, chunk) in docs.chunks(10_000).enumerate() {
            let ids = (0..chunk.len()).map(|i| first + (c * 10_000 + i) as i64);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids.clone())),
                    Arc::new(StringArray::from_iter_values(chunk)),
                    Arc::new(StringArray::from_iter_values(
                        ids.map(|i| format!("https://example.org/{i}")),
                    )),
                ],
            )
            .expect("a batch");
            w.write(&batch).expect("write a shard");
        }
        w.close().expect("write a shard");
        path
    } else {
        let path = dir.join(format!("dolma/part-{k:04}.jsonl.zst"));
        let file = std::fs::File::create(&path).expect("create a shard");
        let mut z = zstd::Encoder::new(std::io::BufWriter::new(file), 3).expect("zstd");
        for (i, d) in docs.iter().enumerate() {
            writeln!(
                z,
                "{}",
                serde_json::json!({"id": format!("d{}", first + i as i64), "text": d, "source": "gen"})
            )
            .expect("write a shard");
        }
        z.finish().expect("write a shard");
        path
    }
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

/// Files under `dir` named `*.json` in `.datarater` directories: complete shards.
fn records(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".datarater") {
                std::fs::read_dir(&p).map_or(0, |r| r.count())
            } else if p.is_dir() {
                records(&p)
            } else {
                0
            }
        })
        .sum()
}

fn main() {
    let opts = Opts::parse();
    let keep = opts.dir.is_some();
    let dir = opts.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("datarater-corpus-{}", std::process::id()))
    });
    let p = |n: &str| dir.join(n).display().to_string();
    let corpus = dir.join(format!("corpus-{}mb-{}", opts.mb, opts.shards));
    let text_bytes = (opts.mb * 1e6) as u64;
    if !corpus.exists() {
        let t = Instant::now();
        let tmp = dir.join("corpus.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("fineweb")).expect("create the corpus directory");
        std::fs::create_dir_all(tmp.join("dolma")).expect("create the corpus directory");
        for k in 0..opts.shards {
            write_shard(&tmp, k, text_bytes / opts.shards as u64);
        }
        std::fs::rename(&tmp, &corpus).expect("create the corpus directory");
        println!(
            "generated {:.0} MB of text as {} shards in {:.1}s",
            opts.mb,
            opts.shards,
            t.elapsed().as_secs_f64()
        );
    }
    let held = dir.join("held-out.txt");
    let mut rng = Rng::new(99);
    let held_text: String = (0..500).map(|_| document(&mut rng) + "\n").collect();
    std::fs::write(&held, held_text).expect("write the held-out set");
    let mb = text_bytes as f64 / 1e6;
    let report = |stage: &str, (secs, peak): (f64, usize)| {
        println!(
            "{stage:<8} {secs:>8.1} s {:>8.2} MB/s of text   peak heap {:>8.1} MB",
            mb / secs,
            peak as f64 / 1e6
        );
    };
    let stage = |s: &str| opts.stages.iter().any(|x| x == s);
    let run_dir = p("run");
    if stage("train") {
        let _ = std::fs::remove_dir_all(&run_dir);
        let sample = opts.train_sample_bytes.to_string();
        let r = run(&[
            "train",
            "--train",
            &corpus.display().to_string(),
            "--held-out",
            &held.display().to_string(),
            "--out",
            &run_dir,
            "--outer-steps",
            "3",
            "--rater-width",
            "8",
            "--rater-heads",
            "1",
            "--lm-width",
            "8",
            "--lm-heads",
            "1",
            "--lm-layers",
            "1",
            "--train-sample-bytes",
            &sample,
        ]);
        report("train", r);
    }
    let rater = format!("{run_dir}/rater.safetensors");
    let (scores, kept) = (p("scores"), p("kept"));
    if stage("score") {
        let _ = std::fs::remove_dir_all(&scores);
        let r = run(&[
            "score",
            "--rater",
            &rater,
            "--input",
            &corpus.display().to_string(),
            "--out",
            &scores,
        ]);
        report("score", r);
    }
    if stage("filter") {
        let _ = std::fs::remove_dir_all(&kept);
        let r = run(&[
            "filter",
            "--scores",
            &scores,
            "--input",
            &corpus.display().to_string(),
            "--out",
            &kept,
            "--discard-fraction",
            "0.3",
            "--force",
        ]);
        report("filter", r);
    }
    if stage("rerun") {
        // The binary beside this example (target/release/examples/..).
        let exe = std::env::current_exe().expect("this example's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("datarater"))
            .filter(|b| b.exists())
            .expect("build the binary first: cargo build --release -p datarater-cli");
        let out = dir.join("scores-killed");
        let _ = std::fs::remove_dir_all(&out);
        let args = [
            "score".to_string(),
            "--rater".into(),
            rater.clone(),
            "--input".into(),
            corpus.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        let mut child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the binary");
        let t = Instant::now();
        while records(&out) < opts.shards / 2 {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "the run ended early"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
        println!(
            "killed `score` (SIGKILL) after {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let rerun = Command::new(&bin)
            .args(&args)
            .stderr(Stdio::null())
            .output()
            .expect("run the binary");
        assert!(rerun.status.success());
        let stdout = String::from_utf8_lossy(&rerun.stdout);
        let line = stdout
            .lines()
            .find(|l| l.contains("already complete"))
            .unwrap_or("no shard was complete");
        println!("rerun    {:>8.1} s: {line}", t.elapsed().as_secs_f64());
        if stage("score") {
            let same = Command::new("diff")
                .args(["-r", &scores, &out.display().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            println!(
                "rerun output identical to the uninterrupted run's: {}",
                if same { "yes" } else { "NO" }
            );
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
