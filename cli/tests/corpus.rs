//! Corpora of shards through the real binary: every format round trip, the mirrored
//! output tree, a corpus-wide threshold, resumption after SIGKILL and Ctrl-C, refusal
//! of changed settings, and corrupt shards.

mod common;

use arrow_array::cast::AsArray;
use arrow_array::{Int64Array, RecordBatch, RecordBatchReader, StringArray};
use arrow_schema::{DataType, Field, Schema};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn jsonl_bytes(docs: &[String], first_id: usize) -> Vec<u8> {
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"id": first_id + i, "text": d, "meta": {"n": i}}).to_string() + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

/// A Parquet shard: `id` (int64), `text` (utf8), `url` (utf8), in row groups of 7 rows.
fn write_parquet(path: &Path, docs: &[String], first_id: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..docs.len()).map(|i| (first_id + i) as i64),
            )),
            Arc::new(StringArray::from_iter_values(docs)),
            Arc::new(StringArray::from_iter_values(
                (0..docs.len()).map(|i| format!("https://example.org/{}", first_id + i)),
            )),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Every row of a Parquet file as one batch, and its schema.
fn read_parquet(path: &Path) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow_select::concat::concat_batches(&schema, &batches).unwrap()
}

/// A mixed corpus of 6 shards in nested directories: JSON Lines (plain, gzip, zstd),
/// Parquet, plain lines; returns its directory and every document in shard order.
fn mixed_corpus(root: &Path, per_shard: usize) -> (PathBuf, Vec<String>) {
    let dir = root.join("corpus");
    std::fs::create_dir_all(dir.join("web/en")).unwrap();
    std::fs::create_dir_all(dir.join("books")).unwrap();
    let docs = documents(6 * per_shard, 11);
    let part = |k: usize| &docs[k * per_shard..(k + 1) * per_shard];
    // Name order: books/a.parquet, books/b.txt, web/en/c.jsonl.zst, web/en/d.jsonl.gz,
    // web/e.jsonl, web/f.parquet.
    write_parquet(&dir.join("books/a.parquet"), part(0), 0);
    write_lines(&dir.join("books/b.txt"), part(1));
    std::fs::write(
        dir.join("web/en/c.jsonl.zst"),
        zstd::encode_all(&jsonl_bytes(part(2), 2 * per_shard)[..], 3).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("web/en/d.jsonl.gz"),
        gzip(&jsonl_bytes(part(3), 3 * per_shard)),
    )
    .unwrap();
    std::fs::write(dir.join("web/e.jsonl"), jsonl_bytes(part(4), 4 * per_shard)).unwrap();
    write_parquet(&dir.join("web/f.parquet"), part(5), 5 * per_shard);
    (dir, docs)
}

/// Every file under `dir` (hidden ones included) with its bytes, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts two trees hold the same files with the same bytes, naming those that differ.
fn assert_same_tree(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (tree(a), tree(b));
    let names = |t: &BTreeMap<PathBuf, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{what}: the same files");
    let differ: Vec<&PathBuf> = ta.keys().filter(|k| ta[*k] != tb[*k]).collect();
    assert!(differ.is_empty(), "{what}: these files differ: {differ:?}");
}

/// The scores in the attribute shards under `dir`, in shard order.
fn all_scores(dir: &Path) -> Vec<Option<f64>> {
    tree(dir)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().contains(".datarater"))
        .flat_map(|(p, bytes)| {
            let text = match p.extension().and_then(|e| e.to_str()) {
                Some("gz") => gunzip(&bytes),
                Some("zst") => zstd::decode_all(&bytes[..]).unwrap(),
                _ => bytes,
            };
            String::from_utf8(text)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn text_formats_round_trip_byte_for_byte_and_parquet_keeps_values_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_rater(&p("rater.safetensors"), 1);
    let docs = documents(40, 3);
    write_lines(&p("in.txt"), &docs);
    std::fs::write(p("in.para"), docs.join("\n\n") + "\n\n").unwrap();
    std::fs::write(p("in.jsonl"), jsonl_bytes(&docs, 0)).unwrap();
    std::fs::write(p("in.jsonl.gz"), gzip(&jsonl_bytes(&docs, 0))).unwrap();
    std::fs::write(
        p("in.jsonl.zst"),
        zstd::encode_all(&jsonl_bytes(&docs, 0)[..], 3).unwrap(),
    )
    .unwrap();
    write_parquet(&p("in.parquet"), &docs, 0);
    // Keep everything: the output is the input.
    let keep_all = |input: &str, out: &str, format: &str| {
        ok(&[
            "filter",
            "--rater",
            s(&p("rater.safetensors")),
            "--input",
            s(&p(input)),
            "--out",
            s(&p(out)),
            "--discard-fraction",
            "0",
            "--format",
            format,
        ]);
        std::fs::read(p(out)).unwrap()
    };
    assert_eq!(
        keep_all("in.txt", "out.txt", "auto"),
        std::fs::read(p("in.txt")).unwrap()
    );
    assert_eq!(
        keep_all("in.para", "out.para", "paragraphs"),
        (docs.join("\n\n") + "\n\n").into_bytes()
    );
    assert_eq!(
        keep_all("in.jsonl", "out.jsonl", "auto"),
        jsonl_bytes(&docs, 0)
    );
    let gz = keep_all("in.jsonl.gz", "out.jsonl.gz", "auto");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip in, gzip out");
    assert_eq!(gunzip(&gz), jsonl_bytes(&docs, 0));
    let zst = keep_all("in.jsonl.zst", "out.jsonl.zst", "auto");
    assert_eq!(zstd::decode_all(&zst[..]).unwrap(), jsonl_bytes(&docs, 0));
    keep_all("in.parquet", "out.parquet", "auto");
    let (a, b) = (
        read_parquet(&p("in.parquet")),
        read_parquet(&p("out.parquet")),
    );
    assert_eq!(a.schema(), b.schema());
    assert_eq!(a, b, "the same rows, every column");
    // --compression overrides: zstd out of plain text.
    ok(&[
        "filter",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.txt")),
        "--out",
        s(&p("out2.txt")),
        "--discard-fraction",
        "0",
        "--compression",
        "zstd",
    ]);
    let z = std::fs::read(p("out2.txt")).unwrap();
    assert_eq!(
        zstd::decode_all(&z[..]).unwrap(),
        std::fs::read(p("in.txt")).unwrap()
    );
}

/// `score` then `filter --scores` over the mixed corpus into `out`; returns stdout of
/// the filter.
fn score_and_filter(
    root: &Path,
    corpus: &Path,
    scores: &str,
    kept: &str,
    extra: &[&str],
) -> String {
    let rater = root.join("rater.safetensors");
    let mut a = vec!["score", "--rater", s(&rater), "--input", s(corpus), "--out"];
    let scores = root.join(scores);
    a.push(s(&scores));
    a.extend(extra);
    ok(&a);
    let kept = root.join(kept);
    ok(&[
        "filter",
        "--scores",
        s(&scores),
        "--input",
        s(corpus),
        "--out",
        s(&kept),
        "--discard-fraction",
        "0.4",
    ])
}

#[test]
fn shards_in_give_a_mirrored_tree_out_with_one_corpus_wide_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rater(&root.join("rater.safetensors"), 2);
    let (corpus, docs) = mixed_corpus(root, 30);
    let stdout = score_and_filter(root, &corpus, "scores", "kept", &[]);
    let scores_tree: Vec<PathBuf> = tree(&root.join("scores"))
        .into_keys()
        .filter(|p| !p.to_string_lossy().contains(".datarater"))
        .collect();
    let want: Vec<PathBuf> = [
        "books/a.parquet.scores.jsonl",
        "books/b.txt.scores.jsonl",
        "web/e.jsonl.scores.jsonl",
        "web/en/c.jsonl.scores.jsonl.zst",
        "web/en/d.jsonl.scores.jsonl.gz",
        "web/f.parquet.scores.jsonl",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(scores_tree, want);
    // The Parquet shard's records carry its id column.
    let recs = read_scores(&root.join("scores/web/f.parquet.scores.jsonl"));
    assert_eq!(
        (recs[3]["id"].clone(), recs[3]["line"].clone()),
        (153.into(), 4.into())
    );
    // The kept tree mirrors the input, shard for shard, format for format.
    let kept = tree(&root.join("kept"));
    let names: Vec<String> = kept
        .keys()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.contains(".datarater"))
        .collect();
    assert_eq!(
        names,
        [
            "books/a.parquet",
            "books/b.txt",
            "web/e.jsonl",
            "web/en/c.jsonl.zst",
            "web/en/d.jsonl.gz",
            "web/f.parquet"
        ]
    );
    // One threshold for the whole corpus: the kept set is the corpus-wide rule applied
    // to the concatenated scores (tree order = shard order here but for web/e and
    // web/en, which the sort of `tree` puts e before en/ as the reader does).
    let scores = all_scores(&root.join("scores"));
    assert_eq!(scores.len(), docs.len());
    let scored: Vec<f64> = scores.iter().flatten().copied().collect();
    let mut keep_scored = vec![false; scored.len()];
    for i in datarater::curate::discard_bottom(&scored, 0.4).unwrap() {
        keep_scored[i] = true;
    }
    let mut it = keep_scored.iter();
    let keep: Vec<bool> = scores
        .iter()
        .map(|s| {
            if s.is_some() {
                *it.next().unwrap()
            } else {
                true
            }
        })
        .collect();
    let per_shard = 30;
    // Shard order as read: books/a, books/b, web/e, web/en/c, web/en/d, web/f.
    let order = [0, 1, 4, 2, 3, 5];
    let kept_docs = |k: usize| -> Vec<String> {
        let pos = order.iter().position(|&o| o == k).unwrap();
        (0..per_shard)
            .filter(|i| keep[pos * per_shard + i])
            .map(|i| docs[k * per_shard + i].clone())
            .collect()
    };
    let texts_of_jsonl = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let parquet_texts = |p: &Path| -> Vec<String> {
        let b = read_parquet(p);
        b.column(1)
            .as_string::<i32>()
            .iter()
            .map(|t| t.unwrap().to_string())
            .collect()
    };
    assert_eq!(
        parquet_texts(&root.join("kept/books/a.parquet")),
        kept_docs(0)
    );
    let b = String::from_utf8(kept[Path::new("books/b.txt")].clone()).unwrap();
    assert_eq!(
        b.lines().map(String::from).collect::<Vec<_>>(),
        kept_docs(1)
    );
    let c = zstd::decode_all(&kept[Path::new("web/en/c.jsonl.zst")][..]).unwrap();
    assert_eq!(texts_of_jsonl(&c), kept_docs(2));
    let d = &kept[Path::new("web/en/d.jsonl.gz")];
    assert_eq!(&d[..2], &[0x1f, 0x8b]);
    assert_eq!(texts_of_jsonl(&gunzip(d)), kept_docs(3));
    assert_eq!(
        texts_of_jsonl(&kept[Path::new("web/e.jsonl")]),
        kept_docs(4)
    );
    let f = read_parquet(&root.join("kept/web/f.parquet"));
    assert_eq!(
        f.schema(),
        read_parquet(&corpus.join("web/f.parquet")).schema()
    );
    assert_eq!(
        parquet_texts(&root.join("kept/web/f.parquet")),
        kept_docs(5)
    );
    // The report gives each shard's kept fraction.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("kept.report.json")).unwrap())
            .unwrap();
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6);
    let kept_total: u64 = shards.iter().map(|s| s["kept"].as_u64().unwrap()).sum();
    assert_eq!(kept_total, keep.iter().filter(|k| **k).count() as u64);
    assert!(stdout.contains("per shard"), "{stdout}");
    // A glob selects shards, rooted at the pattern's directory.
    ok(&[
        "score",
        "--rater",
        s(&root.join("rater.safetensors")),
        "--input",
        &format!("{}/web/*/*.jsonl.*", corpus.display()),
        "--out",
        s(&root.join("globbed")),
    ]);
    let g: Vec<PathBuf> = tree(&root.join("globbed"))
        .into_keys()
        .filter(|p| !p.to_string_lossy().contains(".datarater"))
        .collect();
    assert_eq!(
        g,
        [
            PathBuf::from("en/c.jsonl.scores.jsonl.zst"),
            PathBuf::from("en/d.jsonl.scores.jsonl.gz")
        ]
    );
}

/// Shard records under `dir` (0 if none yet), tolerating files that come and go.
fn record_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".datarater") {
                std::fs::read_dir(&p).map_or(0, |r| {
                    r.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                        .count()
                })
            } else if p.is_dir() {
                record_count(&p)
            } else {
                0
            }
        })
        .sum()
}

/// Runs `datarater ARGS` with shards slowed down, kills it (SIGKILL) once `n` shard
/// records exist under `out`, and returns whether it was killed before finishing.
fn kill_after_records(args: &[&str], out: &Path, n: usize) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(args)
        .env("DATARATER_TEST_SHARD_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let records = record_count(out);
        if records >= n {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killed_and_rerun_equals_uninterrupted_for_score_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rater(&root.join("rater.safetensors"), 4);
    let (corpus, _) = mixed_corpus(root, 25);
    let rater = root.join("rater.safetensors");
    let score_args = |out: &Path| -> Vec<String> {
        [
            "score",
            "--rater",
            s(&rater),
            "--input",
            s(&corpus),
            "--out",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let filter_args = |scores: &Path, out: &Path| -> Vec<String> {
        [
            "filter",
            "--scores",
            s(scores),
            "--input",
            s(&corpus),
            "--out",
            s(out),
            "--mode",
            "accept",
            "--rho",
            "0.5",
            "--seed",
            "3",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    // Uninterrupted.
    ok(&strs(&score_args(&root.join("s1"))));
    ok(&strs(&filter_args(&root.join("s1"), &root.join("k1"))));
    // Killed after 2 shards, then rerun.
    let s2 = root.join("s2");
    assert!(
        kill_after_records(&strs(&score_args(&s2)), &s2, 2),
        "the run ended before the kill"
    );
    // Complete shards: renamed into place (temporary files and records are hidden).
    let partial = tree(&s2)
        .keys()
        .filter(|p| !p.to_string_lossy().split('/').any(|c| c.starts_with('.')))
        .count();
    assert!(
        (1..6).contains(&partial),
        "{partial} records after the kill"
    );
    let stdout = ok(&strs(&score_args(&s2)));
    assert!(
        stdout.contains(&format!("{partial} shards (")) && stdout.contains("were already complete"),
        "only the shards in flight are redone: {stdout}"
    );
    assert_same_tree(
        &s2,
        &root.join("s1"),
        "score: rerun after a kill == uninterrupted",
    );
    let k2 = root.join("k2");
    assert!(kill_after_records(&strs(&filter_args(&s2, &k2)), &k2, 3));
    ok(&strs(&filter_args(&s2, &k2)));
    assert_same_tree(
        &k2,
        &root.join("k1"),
        "filter: rerun after a kill == uninterrupted",
    );
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(name)).unwrap()).unwrap()
    };
    let (r1, r2) = (report("k1.report.json"), report("k2.report.json"));
    assert_eq!(
        (&r1["kept"], &r1["documents"]),
        (&r2["kept"], &r2["documents"])
    );
    let resumed = r2["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("resumed").is_some())
        .count();
    assert!(resumed >= 1, "{r2}");
    // A rerun with other settings is refused, naming the setting; --force redoes it.
    let mut other = score_args(&s2);
    other.extend(["--aggregate".into(), "min".into()]);
    fails(&strs(&other), &["other settings", "aggregate", "--force"]);
    let mut other_rater = score_args(&s2);
    write_rater(&root.join("rater2.safetensors"), 5);
    other_rater[2] = s(&root.join("rater2.safetensors")).into();
    fails(&strs(&other_rater), &["other settings", "rater_xxh64"]);
    other.push("--force".into());
    ok(&strs(&other));
    assert_ne!(tree(&s2), tree(&root.join("s1")));
    // A file in the way that no run wrote is refused too.
    let k3 = root.join("k3");
    std::fs::create_dir_all(k3.join("books")).unwrap();
    std::fs::write(k3.join("books/b.txt"), "precious\n").unwrap();
    fails(
        &strs(&filter_args(&root.join("s1"), &k3)),
        &["books/b.txt", "exists", "--force"],
    );
}

#[test]
fn ctrl_c_stops_cleanly_and_says_how_to_continue() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rater(&root.join("rater.safetensors"), 4);
    let (corpus, _) = mixed_corpus(root, 20);
    let out = root.join("scores");
    let rater = root.join("rater.safetensors");
    let args = [
        "score",
        "--rater",
        s(&rater),
        "--input",
        s(&corpus),
        "--out",
        s(&out),
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(args)
        .env("DATARATER_TEST_SHARD_DELAY_MS", "400")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join(".datarater").exists() && !out.join("books/.datarater").exists() {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("run the same command again"),
        "{err}"
    );
    assert!(
        !tree(&out)
            .keys()
            .any(|p| p.to_string_lossy().contains(".tmp-")),
        "temporary files left: {:?}",
        tree(&out).keys().collect::<Vec<_>>()
    );
    let stdout = ok(&args);
    assert!(stdout.contains("already complete"), "{stdout}");
}

#[test]
fn corrupt_shards_are_named_or_skipped_with_skip_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rater(&root.join("rater.safetensors"), 4);
    let rater = root.join("rater.safetensors");
    let docs = documents(200, 9);
    let good = root.join("good");
    std::fs::create_dir_all(&good).unwrap();
    write_lines(&good.join("a.txt"), &docs[..50]);
    let jsonl = jsonl_bytes(&docs[50..], 0);
    let gz = gzip(&jsonl);
    let zst = zstd::encode_all(&jsonl[..], 3).unwrap();
    write_parquet(&root.join("p.parquet"), &docs[..50], 0);
    let pq = std::fs::read(root.join("p.parquet")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("b.jsonl.gz", gz[..gz.len() / 2].to_vec(), "gzip"),
        ("b.jsonl.zst", zst[..zst.len() / 2].to_vec(), "zstd"),
        (
            "b.parquet",
            pq[..pq.len() - 5].to_vec(),
            "corrupt Parquet file",
        ),
        ("b.parquet", pq.clone(), "no column `body`"),
    ];
    for (k, (name, bytes, reason)) in cases.into_iter().enumerate() {
        let corpus = root.join(format!("c{k}"));
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::copy(good.join("a.txt"), corpus.join("a.txt")).unwrap();
        std::fs::write(corpus.join(name), &bytes).unwrap();
        let out = root.join(format!("o{k}"));
        let mut args = vec![
            "score",
            "--rater",
            s(&rater),
            "--input",
            s(&corpus),
            "--out",
            s(&out),
        ];
        if reason.contains("body") {
            args.extend(["--text-field", "body"]);
            // The plain-text shard has no fields: only the Parquet shard fails.
        }
        fails(&args, &[name, reason]);
        let out = root.join(format!("skipping{k}"));
        args[6] = s(&out);
        args.push("--skip-invalid");
        let stdout = ok(&args);
        assert!(
            stdout.contains("1 shards could not be read") && stdout.contains(name),
            "{stdout}"
        );
        assert_eq!(read_scores(&out.join("a.txt.scores.jsonl")).len(), 50);
    }
}

#[test]
fn unsupported_inputs_are_refused_by_name_and_max_document_bytes_skips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rater(&root.join("rater.safetensors"), 4);
    let corpus = root.join("c");
    std::fs::create_dir_all(&corpus).unwrap();
    write_lines(&corpus.join("a.txt"), &documents(20, 1));
    std::fs::write(corpus.join("b.jsonl.bz2"), b"BZh91AY&SY\x00\x01").unwrap();
    let args = |input: &Path, out: &str| {
        vec![
            "score".to_string(),
            "--rater".into(),
            s(&root.join("rater.safetensors")).into(),
            "--input".into(),
            s(input).into(),
            "--out".into(),
            s(&root.join(out)).into(),
        ]
    };
    fails(
        &strs(&args(&corpus, "o1")),
        &["b.jsonl.bz2", "bzip2", "not a supported input"],
    );
    let exe = std::env::current_exe().unwrap();
    fails(&strs(&args(&exe, "o2.jsonl")), &["ELF executable"]);
    // --max-document-bytes: longer documents are skipped and counted.
    std::fs::remove_file(corpus.join("b.jsonl.bz2")).unwrap();
    let docs = documents(20, 1);
    let limit = 40;
    let long = docs.iter().filter(|d| d.len() > limit).count();
    assert!(long > 0);
    let mut a = args(&corpus.join("a.txt"), "o3.jsonl");
    a.extend(["--max-document-bytes".into(), limit.to_string()]);
    let stdout = ok(&strs(&a));
    assert!(
        stdout.contains(&format!("skipped {long} documents longer")),
        "{stdout}"
    );
    assert_eq!(read_scores(&root.join("o3.jsonl")).len(), 20 - long);
}
