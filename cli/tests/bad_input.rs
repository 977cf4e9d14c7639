//! Every bad input gets a clear message and exit code 1, never a panic.

mod common;

use common::*;
use std::path::{Path, PathBuf};

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        write_rater(&root.join("rater.safetensors"), 1);
        Setup { _dir: dir, root }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.p(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    /// `datarater score` on `input` into a fresh output, plus `extra` flags.
    fn score(&self, input: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = ["score", "--rater"].iter().map(|x| x.to_string()).collect();
        a.push(s(&self.p("rater.safetensors")).into());
        a.extend(["--input".into(), s(input).into(), "--out".into()]);
        a.push(s(&self.p("out.jsonl")).into());
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }
}

#[test]
fn missing_input_file() {
    let t = Setup::new();
    fails(
        &strs(&t.score(&t.p("nope.txt"), &[])),
        &["nope.txt", "cannot open input"],
    );
    assert!(!t.p("out.jsonl").exists());
}

#[test]
fn empty_file_and_empty_directory() {
    let t = Setup::new();
    let empty = t.write("empty.jsonl", b"");
    fails(
        &strs(&t.score(&empty, &[])),
        &["empty.jsonl", "no documents"],
    );
    let blank = t.write("blank.txt", b"\n\n\n");
    fails(&strs(&t.score(&blank, &[])), &["no documents"]);
    std::fs::create_dir(t.p("dir")).unwrap();
    std::fs::write(t.p("dir/.hidden"), "some text that is hidden\n").unwrap();
    fails(&strs(&t.score(&t.p("dir"), &[])), &["no readable files"]);
    assert!(!t.p("out.jsonl").exists(), "no partial output");
}

#[test]
fn invalid_utf8_in_jsonl() {
    let t = Setup::new();
    let f = t.write(
        "bad.jsonl",
        b"{\"text\":\"a fine line of text here\"}\n{\"text\":\"\xff\xfe\"}\n",
    );
    fails(
        &strs(&t.score(&f, &[])),
        &["bad.jsonl:2", "invalid UTF-8", "--skip-invalid"],
    );
    // Plain text may hold any bytes: it is modelled byte by byte.
    let raw = t.write("bytes.txt", b"\xff\xfe not UTF-8 but still a document\n");
    ok(&strs(&t.score(&raw, &[])));
}

#[test]
fn malformed_json_line_names_file_and_line_and_can_be_skipped() {
    let t = Setup::new();
    let f = t.write(
        "bad.jsonl",
        b"{\"text\":\"a fine line of text here\"}\n\n{\"text\": oops}\n{\"text\":\"another fine document\"}\n",
    );
    fails(&strs(&t.score(&f, &[])), &["bad.jsonl:3", "malformed JSON"]);
    let stdout = ok(&strs(&t.score(&f, &["--skip-invalid"])));
    assert!(stdout.contains("skipped 1 invalid records"), "{stdout}");
    assert!(stdout.contains("bad.jsonl:3"), "{stdout}");
    let recs = read_scores(&t.p("out.jsonl"));
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1]["line"], 4);
}

#[test]
fn a_bad_record_after_the_first_blocks_is_reported_in_its_turn() {
    // More than a block of documents before the bad record: the reader thread reaches it
    // while earlier blocks are scored, and the failure still comes at its place.
    let t = Setup::new();
    let mut lines: Vec<String> = documents(5000, 7)
        .iter()
        .map(|d| serde_json::json!({ "text": d }).to_string())
        .collect();
    lines.push("{\"text\": oops}".into());
    lines.push(serde_json::json!({"text": "the last document, after the bad record"}).to_string());
    let f = t.write("late.jsonl", (lines.join("\n") + "\n").as_bytes());
    fails(
        &strs(&t.score(&f, &[])),
        &["late.jsonl:5001", "malformed JSON"],
    );
    let stdout = ok(&strs(&t.score(&f, &["--skip-invalid"])));
    assert!(stdout.contains("skipped 1 invalid records"), "{stdout}");
    let recs = read_scores(&t.p("out.jsonl"));
    let lines: Vec<u64> = recs.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=5000).chain([5002]).collect();
    assert_eq!(lines, expected);
}

#[test]
fn missing_text_field() {
    let t = Setup::new();
    let f = t.write(
        "doc.jsonl",
        b"{\"body\":\"the text is under another name\"}\n",
    );
    fails(
        &strs(&t.score(&f, &[])),
        &["doc.jsonl:1", "no `text` field", "--text-field"],
    );
    ok(&strs(&t.score(&f, &["--text-field", "body"])));
    let f = t.write("num.jsonl", b"{\"text\": 12}\n");
    fails(
        &strs(&t.score(&f, &["--force"])),
        &["num.jsonl:1", "not a string"],
    );
}

#[test]
fn no_document_long_enough_to_score() {
    let t = Setup::new();
    let f = t.write("short.txt", b"tiny\nwords\nonly\n");
    fails(&strs(&t.score(&f, &[])), &["no document is long enough"]);
    fails(
        &[
            "filter",
            "--rater",
            s(&t.p("rater.safetensors")),
            "--input",
            s(&f),
            "--out",
            s(&t.p("kept.txt")),
            "--discard-fraction",
            "0.5",
        ],
        &["no document is long enough"],
    );
}

#[test]
fn output_directory_not_writable_is_checked_before_work() {
    let t = Setup::new();
    let f = t.write("in.txt", b"a document that is long enough to score\n");
    // A regular file used as a directory, and a directory of a read-only file system
    // (chmod does not stop root, /proc does).
    for out in [
        t.p("in.txt").join("out.jsonl"),
        PathBuf::from("/proc/datarater-out.jsonl"),
    ] {
        fails(
            &[
                "score",
                "--rater",
                s(&t.p("rater.safetensors")),
                "--input",
                s(&f),
                "--out",
                s(&out),
            ],
            &["cannot write"],
        );
    }
    // Checked before any work: even when the input is bad, the output is reported first.
    fails(
        &[
            "filter",
            "--rater",
            s(&t.p("not-there.safetensors")),
            "--input",
            s(&f),
            "--out",
            "/proc/kept.txt",
            "--discard-fraction",
            "0.1",
        ],
        &["/proc", "cannot write"],
    );
}

#[test]
fn existing_output_is_refused_without_force() {
    let t = Setup::new();
    let f = t.write("in.txt", b"a document that is long enough to score\n");
    t.write("out.jsonl", b"precious\n");
    fails(
        &strs(&t.score(&f, &[])),
        &["out.jsonl", "exists", "--force"],
    );
    assert_eq!(std::fs::read(t.p("out.jsonl")).unwrap(), b"precious\n");
    ok(&strs(&t.score(&f, &["--force"])));
    assert_eq!(read_scores(&t.p("out.jsonl")).len(), 1);
    // filter refuses when its report would overwrite a file.
    t.write("kept.txt.report.json", b"{}");
    fails(
        &[
            "filter",
            "--rater",
            s(&t.p("rater.safetensors")),
            "--input",
            s(&f),
            "--out",
            s(&t.p("kept.txt")),
            "--discard-fraction",
            "0.1",
        ],
        &["kept.txt.report.json", "exists"],
    );
}

#[test]
fn rater_file_that_is_not_safetensors_or_damaged_or_misshapen() {
    let t = Setup::new();
    let f = t.write("in.txt", b"a document that is long enough to score\n");
    let score_with = |rater: &Path| {
        vec![
            "score".to_string(),
            "--rater".into(),
            s(rater).into(),
            "--input".into(),
            s(&f).into(),
            "--out".into(),
            s(&t.p("out.jsonl")).into(),
        ]
    };
    let text = t.write("rater.txt", b"this is not a tensor file at all");
    fails(
        &strs(&score_with(&text)),
        &["rater.txt", "not a usable rater file"],
    );
    // Damaged: one byte of tensor data flipped, or the file cut short.
    let mut bytes = std::fs::read(t.p("rater.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    let flipped = t.write("flipped.safetensors", &bytes);
    fails(&strs(&score_with(&flipped)), &["checksum mismatch"]);
    let cut = t.write("cut.safetensors", &bytes[..n / 2]);
    fails(&strs(&score_with(&cut)), &["cut.safetensors", "truncated"]);
    // A plain parameter file without the rater metadata.
    let mut plain = datarater::Params::new();
    plain.insert("w", datarater::Tensor::<f32>::zeros(&[2]).unwrap());
    datarater::io::save_params(t.p("plain.safetensors"), &plain, &[]).unwrap();
    fails(&strs(&score_with(&t.p("plain.safetensors"))), &["checksum"]);
    // Tensors of another shape than the recorded config says.
    let other = t.p("other.safetensors");
    let (eta, meta) = datarater::io::load_params::<f32>(t.p("rater.safetensors")).unwrap();
    let cfg = meta["rater_config"].replace("\"d_model\":16", "\"d_model\":32");
    assert_ne!(cfg, meta["rater_config"]);
    let bytes = datarater::io::encode_checked(
        &eta,
        &[
            ("format", "datarater-rater"),
            ("version", "1"),
            ("rater_config", &cfg),
            ("seq_len", &meta["seq_len"]),
            ("training", "{}"),
        ],
    )
    .unwrap();
    std::fs::write(&other, bytes).unwrap();
    fails(
        &strs(&score_with(&other)),
        &["do not fit the rater config", "shape"],
    );
}

#[test]
fn filter_without_mode_or_its_parameter_says_what_is_missing() {
    // `--mode` defaults to discard, which needs --discard-fraction: this panicked once
    // (clap's required_if_eq does not see default values).
    let t = Setup::new();
    let input = t.write("docs.txt", documents(20, 3).join("\n").as_bytes());
    let (rater, kept) = (t.p("rater.safetensors"), t.p("kept.txt"));
    let filter = |extra: &[&str]| {
        let mut a = vec![
            "filter",
            "--rater",
            s(&rater),
            "--input",
            s(&input),
            "--out",
            s(&kept),
        ];
        a.extend(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    fails(
        &strs(&filter(&[])),
        &["--discard-fraction", "--mode discard"],
    );
    fails(
        &strs(&filter(&["--rho", "0.5"])),
        &["--discard-fraction", "--rho is for --mode accept"],
    );
    fails(
        &strs(&filter(&["--mode", "discard"])),
        &["--discard-fraction"],
    );
    fails(
        &strs(&filter(&["--mode", "accept"])),
        &["--mode accept needs --rho"],
    );
    fails(
        &strs(&filter(&["--mode", "accept", "--rho", "1.5"])),
        &["--rho 1.5", "not in [0, 1)"],
    );
    fails(
        &strs(&filter(&[
            "--mode",
            "accept",
            "--rho",
            "0.5",
            "--accept-batch",
            "0",
        ])),
        &["--accept-batch 0"],
    );
    fails(
        &strs(&filter(&[
            "--mode",
            "accept",
            "--rho",
            "0.5",
            "--accept-batch",
            "4611686018427387904",
        ])),
        &["--accept-batch 4611686018427387904 is larger than"],
    );
    // Nothing was written.
    assert!(!t.p("kept.txt").exists());
    assert!(!t.p("kept.txt.report.json").exists());
}

#[test]
fn train_settings_too_large_to_hold_are_refused_up_front() {
    let t = Setup::new();
    let train = t.write("train.txt", documents(40, 1).join("\n").as_bytes());
    let run = t.p("run");
    let args = |flag: &'static str, value: &'static str| {
        let mut a = vec!["train", "--train", s(&train), "--held-out", s(&train)];
        a.extend(["--out", s(&run), "--seq-len", "16", flag, value]);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let max = "18446744073709551615";
    fails(
        &strs(&args("--lm-width", max)),
        &["--lm-width", "too large"],
    );
    fails(
        &strs(&args("--rater-width", max)),
        &["--rater-width", "too large"],
    );
    fails(
        &strs(&args("--rater-width", "4611686018427387904")),
        &["the rater", "no process can hold it"],
    );
    fails(
        &strs(&args("--lm-layers", max)),
        &["the language model", "no process can hold it"],
    );
    fails(&strs(&args("--population", max)), &["the population"]);
    fails(&strs(&args("--inner-steps", max)), &["--inner-steps"]);
    assert!(!t.p("run").exists());
}

#[test]
fn evaluate_settings_too_large_to_hold_are_refused_up_front() {
    let t = Setup::new();
    let data = t.write("data.txt", documents(40, 1).join("\n").as_bytes());
    let args = |flag: &'static str, value: &'static str| {
        let a = ["evaluate", "--held-out", s(&data), s(&data), flag, value];
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let max = "18446744073709551615";
    fails(
        &strs(&args("--seq-len", max)),
        &["the language model", "--seq-len", "no process can hold it"],
    );
    fails(
        &strs(&args("--batch-size", max)),
        &["a batch (--batch-size", "no process can hold it"],
    );
    fails(
        &strs(&args("--eval-sequences", max)),
        &["the held-out sequences", "no process can hold it"],
    );
    fails(
        &strs(&args("--lm-width", max)),
        &["--lm-width", "too large"],
    );
}

/// A build without MPI started by a launcher as one of several ranks refuses (each
/// rank would run the whole job alone, writing the same files); one rank is fine.
#[cfg(not(feature = "mpi"))]
#[test]
fn several_ranks_without_mpi_are_refused() {
    let t = Setup::new();
    let input = t.write("docs.txt", documents(20, 3).join("\n").as_bytes());
    let args = t.score(&input, &[]);
    let run_with = |var: &str, value: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_datarater"));
        for v in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"] {
            cmd.env_remove(v);
        }
        cmd.args(&args).env(var, value).output().unwrap()
    };
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"] {
        let out = run_with(var, "2");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {err}");
        for needle in [
            &format!("{var}=2") as &str,
            "built without MPI",
            "cargo build --release -p datarater-cli --features mpi",
        ] {
            assert!(err.contains(needle), "{var}: `{needle}` in {err}");
        }
        assert!(!t.p("out.jsonl").exists(), "{var}: nothing is written");
        // One rank is a single process: it runs.
        let out = run_with(var, "1");
        assert!(
            out.status.success(),
            "{var}=1: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(t.p("out.jsonl")).unwrap();
    }
}
