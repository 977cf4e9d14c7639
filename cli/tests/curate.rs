//! `datarater score` and `datarater filter` on small generated corpora, through the
//! real binary.

mod common;

use common::*;

#[test]
fn help_lists_every_subcommand_and_flag() {
    let top = ok(&["--help"]);
    for sub in ["train", "score", "filter", "evaluate"] {
        assert!(top.contains(sub), "{top}");
    }
    let train = ok(&["train", "--help"]);
    for flag in [
        "--train",
        "--held-out",
        "--out",
        "--resume",
        "--outer-steps",
        "--inner-steps",
        "--population",
        "--reset-every",
        "--seed",
        "--meta-lr",
        "--lm-width",
        "--rater-layers",
        "--seq-len",
        "--batch-size",
        "--checkpoint-every",
        "--train-sample-bytes",
        "--train-format",
        "--held-out-format",
    ] {
        assert!(train.contains(flag), "train --help lacks {flag}");
    }
    let score = ok(&["score", "--help"]);
    for flag in [
        "--rater",
        "--input",
        "--out",
        "--aggregate",
        "--format",
        "--text-field",
        "--id-field",
        "--compression",
        "--max-document-bytes",
        "--skip-invalid",
    ] {
        assert!(score.contains(flag), "score --help lacks {flag}");
    }
    let filter = ok(&["filter", "--help"]);
    for flag in [
        "--discard-fraction",
        "--mode",
        "--rho",
        "--seed",
        "--scores",
        "--force",
        "--compression",
    ] {
        assert!(filter.contains(flag), "filter --help lacks {flag}");
    }
    let evaluate = ok(&["evaluate", "--help"]);
    for flag in [
        "--held-out",
        "--steps",
        "--eval-every",
        "--lm-width",
        "--out",
    ] {
        assert!(evaluate.contains(flag), "evaluate --help lacks {flag}");
    }
}

#[test]
fn score_writes_one_record_per_document_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (rater, input, out) = (
        dir.path().join("rater.safetensors"),
        dir.path().join("docs.txt"),
        dir.path().join("scores.jsonl"),
    );
    write_rater(&rater, 1);
    let docs = documents(60, 2);
    write_lines(&input, &docs);
    let stdout = ok(&[
        "score",
        "--rater",
        s(&rater),
        "--input",
        s(&input),
        "--out",
        s(&out),
    ]);
    assert!(stdout.contains("scored 60 documents"), "{stdout}");
    let recs = read_scores(&out);
    assert_eq!(recs.len(), 60);
    let mut short = 0;
    for (i, (r, d)) in recs.iter().zip(&docs).enumerate() {
        assert_eq!(r["doc"], i);
        assert_eq!(r["line"], i + 1);
        assert!(r.get("id").is_none(), "plain lines have no id: {r}");
        assert_eq!(r["bytes"], d.len());
        let chunks = d.len().div_ceil(SEQ_LEN);
        if d.len() < SEQ_LEN {
            short += 1;
            assert!(r["score"].is_null() && r["chunks"] == 0, "{r}");
        } else {
            assert_eq!(r["chunks"], chunks);
            assert!(r["score"].as_f64().unwrap().is_finite());
        }
    }
    assert!(short > 0, "the corpus should have short documents");
    assert!(
        stdout.contains(&format!("{short} documents are too short")),
        "{stdout}"
    );
    // `min` aggregation is never above `mean`.
    let out_min = dir.path().join("min.jsonl");
    ok(&[
        "score",
        "--rater",
        s(&rater),
        "--input",
        s(&input),
        "--out",
        s(&out_min),
        "--aggregate",
        "min",
    ]);
    for (a, b) in recs.iter().zip(read_scores(&out_min)) {
        if let (Some(mean), Some(min)) = (a["score"].as_f64(), b["score"].as_f64()) {
            assert!(min <= mean + 1e-12);
        }
    }
}

#[test]
fn every_input_form_gives_identical_scores() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_rater(&p("rater.safetensors"), 3);
    let docs = documents(50, 4);
    write_lines(&p("docs.txt"), &docs);
    std::fs::write(p("docs.para"), docs.join("\n\n\n") + "\n").unwrap();
    write_jsonl(&p("docs.jsonl"), &docs);
    std::fs::write(
        p("docs.jsonl.gz"),
        gzip(&std::fs::read(p("docs.jsonl")).unwrap()),
    )
    .unwrap();
    std::fs::create_dir(p("dir")).unwrap();
    write_jsonl(&p("dir/part-1.jsonl"), &docs[..20]);
    std::fs::write(
        p("dir/part-2.txt.gz"),
        gzip((docs[20..].join("\n") + "\n").as_bytes()),
    )
    .unwrap();

    let score = |input: &str, format: &str| {
        let out = p(&format!("{}.{format}.scores", input.replace('/', "_")));
        ok(&[
            "score",
            "--rater",
            s(&p("rater.safetensors")),
            "--input",
            s(&p(input)),
            "--out",
            s(&out),
            "--format",
            format,
        ]);
        out
    };
    let fields = |recs: &[serde_json::Value]| {
        recs.iter()
            .map(|r| (r["chunks"].clone(), r["score"].clone()))
            .collect::<Vec<_>>()
    };
    let reference = fields(&read_scores(&score("docs.txt", "lines")));
    assert_eq!(reference.len(), 50);
    assert_eq!(
        fields(&read_scores(&score("docs.para", "paragraphs"))),
        reference
    );
    let jsonl = read_scores(&score("docs.jsonl", "auto"));
    assert_eq!(fields(&jsonl), reference);
    assert_eq!(jsonl[7]["id"], 7, "the id field is copied");
    assert_eq!(
        fields(&read_scores(&score("docs.jsonl.gz", "auto"))),
        reference
    );
    assert_eq!(
        fields(&read_scores(&score("docs.jsonl.gz", "jsonl"))),
        reference
    );
    // A directory in gives a directory out: one score file per shard, compressed as
    // the shard was.
    let out = score("dir", "auto");
    let first = read_scores(&out.join("part-1.jsonl.scores.jsonl"));
    let gz = std::fs::read(out.join("part-2.txt.scores.jsonl.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let second: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!((first.len(), second.len()), (20, 30));
    assert_eq!(fields(&[first, second.clone()].concat()), reference);
    assert_eq!(
        (second[0]["doc"].clone(), second[0]["line"].clone()),
        (0.into(), 1.into())
    );
    // Paragraphs start on every third line.
    let para = read_scores(&p("docs.para.paragraphs.scores"));
    assert_eq!(para[2]["line"], 7);
}

/// The kept set the discard rule must produce: drop `round(f * n)` lowest scores among
/// scored documents (ties: the later document goes first), keep short documents.
fn expected_kept(scores: &[Option<f64>], f: f64) -> Vec<bool> {
    let mut scored: Vec<(f64, usize)> = scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (s, i)))
        .collect();
    let n_drop = (f * scored.len() as f64).round() as usize;
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut keep = vec![true; scores.len()];
    for &(_, i) in &scored[..n_drop] {
        keep[i] = false;
    }
    keep
}

#[test]
fn filter_discard_keeps_exact_lines_in_order_and_reuses_scores() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_rater(&p("rater.safetensors"), 5);
    let docs = documents(80, 6);
    write_jsonl(&p("in.jsonl"), &docs);
    ok(&[
        "score",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.jsonl")),
        "--out",
        s(&p("scores.jsonl")),
    ]);
    let scores: Vec<Option<f64>> = read_scores(&p("scores.jsonl"))
        .iter()
        .map(|r| r["score"].as_f64())
        .collect();
    let stdout = ok(&[
        "filter",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.jsonl")),
        "--out",
        s(&p("kept.jsonl")),
        "--discard-fraction",
        "0.3",
    ]);
    let lines: Vec<String> = std::fs::read_to_string(p("in.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let keep = expected_kept(&scores, 0.3);
    let want: Vec<&String> = lines
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(l, _)| l)
        .collect();
    let got = std::fs::read_to_string(p("kept.jsonl")).unwrap();
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got, want, "kept lines must be the input's lines, in order");
    assert!(
        stdout.contains(&format!("kept {} of 80", want.len())),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("kept.jsonl.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["kept"], want.len());
    assert_eq!(report["discarded"], 80 - want.len());
    assert_eq!(report["shards"][0]["kept"], want.len());
    let svg = std::fs::read_to_string(p("kept.jsonl.histogram.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<rect"));

    // The same from the score file, without the rater.
    ok(&[
        "filter",
        "--scores",
        s(&p("scores.jsonl")),
        "--input",
        s(&p("in.jsonl")),
        "--out",
        s(&p("kept2.jsonl")),
        "--discard-fraction",
        "0.3",
    ]);
    assert_eq!(
        std::fs::read(p("kept2.jsonl")).unwrap(),
        std::fs::read(p("kept.jsonl")).unwrap()
    );
    // Short documents dropped on request.
    ok(&[
        "filter",
        "--scores",
        s(&p("scores.jsonl")),
        "--input",
        s(&p("in.jsonl")),
        "--out",
        s(&p("kept3.jsonl")),
        "--discard-fraction",
        "0.3",
        "--short",
        "discard",
    ]);
    let n_short = scores.iter().filter(|s| s.is_none()).count();
    assert!(n_short > 0);
    let kept3 = std::fs::read_to_string(p("kept3.jsonl")).unwrap();
    assert_eq!(kept3.lines().count(), want.len() - n_short);
    // A score file for another input is refused.
    write_lines(&p("other.txt"), &docs);
    fails(
        &[
            "filter",
            "--scores",
            s(&p("scores.jsonl")),
            "--input",
            s(&p("other.txt")),
            "--out",
            s(&p("kept4.txt")),
            "--discard-fraction",
            "0.3",
        ],
        &["another input"],
    );
}

#[test]
fn filter_paragraphs_writes_paragraphs_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_rater(&p("rater.safetensors"), 7);
    let docs = documents(30, 8);
    let paras: Vec<String> = docs.chunks(2).map(|c| c.join("\r\n")).collect();
    std::fs::write(p("in.txt"), paras.join("\n\n") + "\n").unwrap();
    ok(&[
        "filter",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.txt")),
        "--format",
        "paragraphs",
        "--out",
        s(&p("kept.txt")),
        "--discard-fraction",
        "0.5",
    ]);
    let kept = std::fs::read_to_string(p("kept.txt")).unwrap();
    let kept: Vec<&str> = kept.split("\n\n").filter(|x| !x.is_empty()).collect();
    assert!(!kept.is_empty() && kept.len() < paras.len());
    let mut at = 0;
    for k in kept {
        // Each kept paragraph is one of the input's, byte for byte, in order.
        let pos = paras[at..]
            .iter()
            .position(|p| p == k)
            .expect("a kept paragraph");
        at += pos + 1;
    }
}

#[test]
fn filter_accept_is_seeded_and_keeps_roughly_one_minus_rho() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    write_rater(&p("rater.safetensors"), 9);
    let docs: Vec<String> = documents(400, 10)
        .into_iter()
        .filter(|d| d.len() >= SEQ_LEN)
        .collect();
    write_lines(&p("in.txt"), &docs);
    let run_accept = |out: &str, seed: &str| {
        ok(&[
            "filter",
            "--rater",
            s(&p("rater.safetensors")),
            "--input",
            s(&p("in.txt")),
            "--out",
            s(&p(out)),
            "--mode",
            "accept",
            "--rho",
            "0.5",
            "--seed",
            seed,
            "--accept-batch",
            "8",
        ]);
        std::fs::read_to_string(p(out)).unwrap()
    };
    let a = run_accept("a.txt", "1");
    assert_eq!(a, run_accept("b.txt", "1"), "same seed, same decisions");
    assert_ne!(a, run_accept("c.txt", "2"), "another seed, other decisions");
    let kept: Vec<&str> = a.lines().collect();
    let frac = kept.len() as f64 / docs.len() as f64;
    assert!((0.38..0.62).contains(&frac), "kept fraction {frac}");
    // A subsequence of the input.
    let mut it = docs.iter();
    for k in kept {
        assert!(it.any(|d| d == k));
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("a.txt.report.json")).unwrap()).unwrap();
    assert_eq!(report["mode"], "accept");
    assert_eq!(report["draw"], 16);
    // From a score file (its reference pass stops early), the same decisions.
    ok(&[
        "score",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.txt")),
        "--out",
        s(&p("scores.jsonl")),
    ]);
    ok(&[
        "filter",
        "--scores",
        s(&p("scores.jsonl")),
        "--input",
        s(&p("in.txt")),
        "--out",
        s(&p("d.txt")),
        "--mode",
        "accept",
        "--rho",
        "0.5",
        "--seed",
        "1",
        "--accept-batch",
        "8",
        "--reference",
        "50",
    ]);
    ok(&[
        "filter",
        "--rater",
        s(&p("rater.safetensors")),
        "--input",
        s(&p("in.txt")),
        "--out",
        s(&p("e.txt")),
        "--mode",
        "accept",
        "--rho",
        "0.5",
        "--seed",
        "1",
        "--accept-batch",
        "8",
        "--reference",
        "50",
    ]);
    assert_eq!(
        std::fs::read(p("d.txt")).unwrap(),
        std::fs::read(p("e.txt")).unwrap()
    );
}

/// A process that dies (abort) in the middle of writing an output leaves no output
/// file (only a hidden temporary one), and running the command again (no --force
/// needed) writes exactly what an undisturbed run writes.
#[cfg(unix)]
#[test]
fn killed_while_writing_an_output_leaves_none_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (rater, input) = (
        dir.path().join("rater.safetensors"),
        dir.path().join("docs.txt"),
    );
    write_rater(&rater, 1);
    // Enough documents that the outputs outgrow the writer's 64 KiB buffer.
    write_lines(&input, &documents(3000, 4));
    let score = |out: &str| {
        let out = dir.path().join(out).display().to_string();
        let a = ["score", "--rater", s(&rater), "--input", s(&input), "--out"];
        a.iter()
            .map(|x| x.to_string())
            .chain([out])
            .collect::<Vec<_>>()
    };
    let filter = |out: &str| {
        let out = dir.path().join(out).display().to_string();
        let a = [
            "filter",
            "--rater",
            s(&rater),
            "--input",
            s(&input),
            "--out",
        ];
        a.iter()
            .map(|x| x.to_string())
            .chain([out, "--discard-fraction".into(), "0.3".into()])
            .collect::<Vec<_>>()
    };
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let exists = |name: &str| dir.path().join(name).exists();
    for (name, args) in [
        ("scores.jsonl", &score as &dyn Fn(&str) -> Vec<String>),
        ("kept.txt", &filter),
    ] {
        let reference = format!("reference-{name}");
        let a = args(&reference);
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let size = read(&reference).len() as u64;
        assert!(size > 1 << 17, "{name}: {size} bytes");
        let a = args(name);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_aborted(&run_faulted(dir.path(), &a, size / 2));
        let report = format!("{name}.report.json");
        let svg = format!("{name}.histogram.svg");
        for f in [name, &report, &svg] {
            assert!(!exists(f), "{f} after the abort");
        }
        ok(&a);
        assert_eq!(read(name), read(&reference), "{name}");
    }
    // The filter's report names its own output; everything else is the same.
    let report = |name: &str| {
        let mut r: serde_json::Value =
            serde_json::from_slice(&read(&format!("{name}.report.json"))).unwrap();
        r["output"] = serde_json::Value::Null;
        r["histogram"] = serde_json::Value::Null;
        r["shards"][0]["output"] = serde_json::Value::Null;
        r
    };
    assert_eq!(report("kept.txt"), report("reference-kept.txt"));
}
