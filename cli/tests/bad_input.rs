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

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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
    plain.insert("w", datarater::Tensor::<f32>::zeros(&[2]));
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
