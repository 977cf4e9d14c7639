//! `datarater train` through the real binary: the train -> score -> filter round trip,
//! kill (SIGKILL, or an abort in the middle of writing a checkpoint) and resume ==
//! uninterrupted, Ctrl-C, bad settings, cleaning up after a failure, and two runs in
//! one process through the library.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny, fast configuration.
const TINY: [&str; 16] = [
    "--lm-width",
    "8",
    "--lm-layers",
    "1",
    "--lm-heads",
    "1",
    "--rater-width",
    "8",
    "--rater-heads",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--population",
    "2",
];

fn corpus(dir: &Path) -> (PathBuf, PathBuf) {
    let (train, held) = (dir.join("train.jsonl"), dir.join("held.jsonl"));
    write_jsonl(&train, &documents(120, 1));
    write_jsonl(&held, &documents(30, 2));
    (train, held)
}

fn train_args<'a>(train: &'a Path, held: &'a Path, out: &'a Path, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--train",
        s(train),
        "--held-out",
        s(held),
        "--out",
        s(out),
        "--outer-steps",
        steps,
        "--checkpoint-every",
        "1",
    ];
    a.extend(TINY);
    a
}

/// The rater parameters and recorded settings of a rater file.
fn rater_of(path: &Path) -> (datarater::Params<datarater::Tensor<f32>>, String) {
    let (eta, meta) = datarater::io::load_params::<f32>(path).unwrap();
    (eta, meta["rater_config"].clone())
}

/// The outer step stored in a run's checkpoint (0 if none readable yet).
fn checkpoint_step(run: &Path) -> usize {
    let rater = run.join("rater.safetensors");
    datarater::io::load_params::<f32>(&rater)
        .ok()
        .and_then(|(_, m)| serde_json::from_str::<serde_json::Value>(&m["training"]).ok())
        .and_then(|t| t["outer_steps_done"].as_u64())
        .unwrap_or(0) as usize
}

#[test]
fn train_score_filter_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let run = dir.path().join("run");
    let out = ok(&train_args(&train, &held, &run, "3"));
    assert!(out.contains("trained 3 outer steps"), "{out}");
    let rater = run.join("rater.safetensors");
    let scores = dir.path().join("scores.jsonl");
    ok(&[
        "score",
        "--rater",
        s(&rater),
        "--input",
        s(&train),
        "--out",
        s(&scores),
    ]);
    assert_eq!(read_scores(&scores).len(), 120);
    let kept = dir.path().join("kept.jsonl");
    let out = ok(&[
        "filter",
        "--rater",
        s(&rater),
        "--input",
        s(&train),
        "--out",
        s(&kept),
        "--discard-fraction",
        "0.5",
    ]);
    assert!(out.contains("of 120 documents"), "{out}");
    // The rater file records its settings: nothing else is needed to use it.
    let (_, meta) = datarater::io::load_params::<f32>(&rater).unwrap();
    let training: serde_json::Value = serde_json::from_str(&meta["training"]).unwrap();
    assert_eq!(training["seq_len"], 16);
    assert_eq!(training["outer_steps_done"], 3);
    // A second run into the same directory is refused without --force.
    fails(
        &train_args(&train, &held, &run, "3"),
        &["already holds a run", "--resume"],
    );
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let steps = "40";
    let full = dir.path().join("full");
    ok(&train_args(&train, &held, &full, steps));

    let run = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(train_args(&train, &held, &run, steps))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_step(&run) < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at = checkpoint_step(&run);
    assert!(
        still_running && (3..40).contains(&at),
        "killed at step {at}"
    );
    let out = ok(&["train", "--resume", s(&run)]);
    assert!(out.contains("trained 40 outer steps"), "{out}");
    assert_eq!(
        rater_of(&run.join("rater.safetensors")),
        rater_of(&full.join("rater.safetensors")),
        "resumed after step {at}: the rater must be bitwise the uninterrupted one"
    );
}

#[test]
fn ctrl_c_checkpoints_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_datarater"))
        .args(train_args(&train, &held, &run, "400"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpoint_step(&run) < 2 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        err.contains(&format!("datarater train --resume {}", s(&run))),
        "{err}"
    );
    // The checkpoint holds the step the message names.
    let at = checkpoint_step(&run);
    assert!(
        err.contains(&format!("after outer step {at} of 400")),
        "step {at}: {err}"
    );
    // And resuming continues from there.
    let out = ok(&[
        "train",
        "--resume",
        s(&run),
        "--outer-steps",
        &(at + 2).to_string(),
    ]);
    assert!(
        out.contains(&format!("trained {} outer steps", at + 2)),
        "{out}"
    );
}

#[test]
fn resume_with_another_model_config_names_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let run = dir.path().join("run");
    ok(&train_args(&train, &held, &run, "1"));
    fails(
        &[
            "train",
            "--resume",
            s(&run),
            "--rater-width",
            "16",
            "--outer-steps",
            "2",
        ],
        &["rater.d_model: 8 (checkpoint) vs 16 (requested)"],
    );
    fails(
        &["train", "--resume", s(&dir.path().join("nothing"))],
        &["no checkpoint to resume from"],
    );
    // A damaged checkpoint is refused with a clear message.
    let ckpt = run.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["train", "--resume", s(&run)], &["checkpoint.safetensors"]);
}

#[test]
fn target_steps_is_recorded_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let (run, full) = (dir.path().join("run"), dir.path().join("full"));
    let with_target = |out: &Path, steps: &'static str| {
        let mut a: Vec<String> = train_args(&train, &held, out, steps)
            .into_iter()
            .map(String::from)
            .collect();
        a.extend(["--target-steps".into(), "12".into()]);
        a
    };
    fn strs(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }
    ok(&strs(&with_target(&full, "3")));
    ok(&strs(&with_target(&run, "2")));
    // Resumed without the flag, the run keeps its recorded target.
    ok(&["train", "--resume", s(&run), "--outer-steps", "3"]);
    let rater = |r: &Path| rater_of(&r.join("rater.safetensors")).0;
    assert_eq!(rater(&run), rater(&full));
    fails(
        &[
            "train",
            "--resume",
            s(&run),
            "--target-steps",
            "40",
            "--outer-steps",
            "4",
        ],
        &["target_steps: 12 (checkpoint) vs 40 (requested)"],
    );
}

#[test]
fn bad_training_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = corpus(dir.path());
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "just one document of some length\n").unwrap();
    let run = dir.path().join("run");
    fails(
        &train_args(&train, &small, &run, "2"),
        &[
            "held-out data is too small for one batch",
            "--batch-size is 4",
        ],
    );
    // Short documents are padded to one sequence; only empty ones cannot be used.
    let short = dir.path().join("empty.jsonl");
    std::fs::write(&short, "{\"text\":\"\"}\n{\"text\":\"\"}\n").unwrap();
    fails(
        &train_args(&short, &train, &run, "2"),
        &["no document is long enough"],
    );
    fails(
        &train_args(&train, &train, Path::new("/proc/datarater-run"), "2"),
        &["/proc/datarater-run", "cannot"],
    );
    fails(
        &train_args(&train, &dir.path().join("missing.jsonl"), &run, "2"),
        &["missing.jsonl", "cannot open input"],
    );
}

#[test]
fn a_non_finite_meta_gradient_stops_the_run_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let run = dir.path().join("run");
    let mut a = train_args(&train, &held, &run, "5");
    a.extend(["--inner-lr", "1e30"]);
    fails(&a, &["non-finite", "outer step 0", "last good checkpoint"]);
    // The checkpoint written before the failure is intact: it is bitwise the state of
    // an uninterrupted run to the same step (outer step 0 of the same settings) ...
    let clean_run = dir.path().join("clean");
    let mut clean = train_args(&train, &held, &clean_run, "0");
    clean.extend(["--inner-lr", "1e30"]);
    ok(&clean);
    let ckpt = run.join("checkpoint.safetensors");
    let clean_ckpt = dir.path().join("clean/checkpoint.safetensors");
    assert_eq!(tensors(&ckpt), tensors(&clean_ckpt));
    assert_eq!(step_of(&ckpt), 0);
    // ... and resumable: the resumed run loads it and meets the same failure at the
    // same step (the settings are the run's), leaving the checkpoint as it was.
    let before = std::fs::read(&ckpt).unwrap();
    fails(
        &["train", "--resume", s(&run)],
        &[
            "non-finite",
            "outer step 0",
            "last good checkpoint (after step 0)",
        ],
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
}

/// The tensors of a safetensors file (a checkpoint or a rater file).
fn tensors(path: &Path) -> datarater::Params<datarater::Tensor<f32>> {
    datarater::io::load_params::<f32>(path).unwrap().0
}

/// The outer step recorded in a checkpoint.
fn step_of(ckpt: &Path) -> u64 {
    let (_, meta) = datarater::io::load_params::<f32>(ckpt).unwrap();
    let state: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
    state["step"].as_u64().unwrap()
}

#[cfg(unix)]
#[test]
fn killed_while_writing_a_checkpoint_keeps_the_previous_one_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    let full = dir.path().join("full");
    ok(&train_args(&train, &held, &full, "4"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let (ckpt_len, rater_len) = (
        size(&full.join("checkpoint.safetensors")),
        size(&full.join("rater.safetensors")),
    );
    // Each save writes the checkpoint, then the rater file: the initial save and the
    // one after step 1 complete, the one after step 2 dies halfway through its
    // checkpoint.
    let run = dir.path().join("run");
    let out = run_faulted(
        dir.path(),
        &train_args(&train, &held, &run, "4"),
        2 * (ckpt_len + rater_len) + ckpt_len / 2,
    );
    assert_aborted(&out);
    let ckpt = run.join("checkpoint.safetensors");
    // The half-written file is the hidden temporary one; the checkpoint is step 1's.
    let partial: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".checkpoint")
        })
        .collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!((1..ckpt_len).contains(&size(&partial[0])), "{partial:?}");
    assert!(datarater::checkpoint::read_checkpoint_configs(&ckpt).is_ok());
    assert_eq!(step_of(&ckpt), 1);
    assert_eq!(checkpoint_step(&run), 1);
    // Resuming completes the run, bitwise the uninterrupted one.
    let out = ok(&["train", "--resume", s(&run)]);
    assert!(out.contains("trained 4 outer steps"), "{out}");
    assert_eq!(
        tensors(&ckpt),
        tensors(&full.join("checkpoint.safetensors"))
    );
    assert_eq!(
        rater_of(&run.join("rater.safetensors")),
        rater_of(&full.join("rater.safetensors"))
    );

    // Dying in the middle of the rater file (after step 1's checkpoint) leaves step 1's
    // checkpoint and step 0's rater file, and resumes the same way.
    let run = dir.path().join("run2");
    let out = run_faulted(
        dir.path(),
        &train_args(&train, &held, &run, "4"),
        2 * ckpt_len + rater_len + rater_len / 2,
    );
    assert_aborted(&out);
    assert_eq!(step_of(&run.join("checkpoint.safetensors")), 1);
    assert_eq!(checkpoint_step(&run), 0);
    ok(&["train", "--resume", s(&run)]);
    assert_eq!(
        rater_of(&run.join("rater.safetensors")),
        rater_of(&full.join("rater.safetensors"))
    );
}

#[test]
fn a_failed_train_removes_the_run_directory_it_made_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = corpus(dir.path());
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "just one document of some length\n").unwrap();
    let too_small = ["held-out data is too small"];
    // Directories the run created (several levels) are removed.
    let nested = dir.path().join("new/deeper/run");
    fails(&train_args(&train, &small, &nested, "2"), &too_small);
    assert!(!dir.path().join("new").exists());
    // A directory the user made is left as it was, empty or not.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    fails(&train_args(&train, &small, &mine, "2"), &too_small);
    assert!(mine.is_dir());
    let parent = dir.path().join("parent");
    std::fs::create_dir(&parent).unwrap();
    std::fs::write(parent.join("notes.txt"), "mine").unwrap();
    fails(
        &train_args(&train, &small, &parent.join("run"), "2"),
        &too_small,
    );
    assert!(!parent.join("run").exists());
    assert_eq!(std::fs::read(parent.join("notes.txt")).unwrap(), b"mine");
    // A run that fails after writing a checkpoint keeps it (it can be resumed).
    let held = dir.path().join("held.jsonl");
    let run = dir.path().join("diverged");
    let mut a = train_args(&train, &held, &run, "2");
    a.extend(["--inner-lr", "1e30"]);
    fails(&a, &["non-finite"]);
    assert!(run.join("checkpoint.safetensors").exists());
}

#[test]
fn two_trains_in_one_process_through_the_library() {
    use clap::Parser;
    // The Ctrl-C handler is process-wide: a second `train` once failed to install it.
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = corpus(dir.path());
    for name in ["first", "second"] {
        let run = dir.path().join(name);
        let mut args = vec!["datarater"];
        args.extend(train_args(&train, &held, &run, "1"));
        let cli = datarater_cli::args::Cli::try_parse_from(args).unwrap();
        datarater_cli::run(&cli).unwrap_or_else(|e| panic!("{name} train: {e}"));
        assert_eq!(checkpoint_step(&run), 1, "{name}");
    }
    assert_eq!(
        rater_of(&dir.path().join("first/rater.safetensors")),
        rater_of(&dir.path().join("second/rater.safetensors"))
    );
}

#[test]
fn each_input_is_detected_on_its_own_and_unsupported_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = corpus(dir.path());
    let run = dir.path().join("run");
    // A compressed or binary held-out set is refused by name, never read as text.
    let bz2 = dir.path().join("held.txt.bz2");
    std::fs::write(&bz2, b"BZh91AY&SY\x01\x02\x03").unwrap();
    fails(
        &train_args(&train, &bz2, &run, "1"),
        &["held.txt.bz2", "bzip2"],
    );
    let exe = std::env::current_exe().unwrap();
    fails(&train_args(&train, &exe, &run, "1"), &["ELF executable"]);
    // A paragraphs held-out set beside a JSON Lines training set: the held-out's own
    // format does not change how the training set is read.
    let held = dir.path().join("held.para");
    std::fs::write(&held, documents(30, 5).join("\n\n") + "\n").unwrap();
    let mut a = train_args(&train, &held, &run, "1");
    a.extend(["--held-out-format", "paragraphs"]);
    let stdout = ok(&a);
    assert!(
        stdout.contains("training data: 120 documents")
            && stdout.contains("held-out: 30 documents"),
        "{stdout}"
    );
}

/// Short documents (shorter than the sequence): words, or noise bytes of the same
/// lengths; which one is document i's: `i % 2 == 1` is noise.
fn short_documents(n: usize, seed: u64) -> Vec<String> {
    let mut rng = datarater::Rng::new(seed);
    let words = documents(n, seed + 100);
    (0..n)
        .map(|i| {
            let clean: String = words[i].chars().take(8 + rng.below(16)).collect();
            let clean = clean.trim().to_string();
            if i % 2 == 0 {
                clean
            } else {
                (0..clean.len().max(4))
                    .map(|_| char::from(b'!' + rng.below(94) as u8))
                    .collect()
            }
        })
        .collect()
}

#[test]
fn short_documents_are_scored_padded_and_a_short_corpus_is_filtered_sensibly() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = (dir.path().join("train.txt"), dir.path().join("held.txt"));
    write_lines(&train, &short_documents(2000, 1));
    let held_docs: Vec<String> = short_documents(800, 2).into_iter().step_by(2).collect();
    write_lines(&held, &held_docs);
    let run = dir.path().join("run");
    let mut a = vec![
        "train",
        "--train",
        s(&train),
        "--held-out",
        s(&held),
        "--out",
        s(&run),
        "--outer-steps",
        "120",
        "--reset-every",
        "40",
        "--checkpoint-every",
        "1000",
        "--seq-len",
        "24",
        "--lm-width",
        "16",
        "--rater-width",
        "16",
        "--batch-size",
        "16",
        "--meta-lr",
        "0.01",
    ];
    let stdout = ok(&a);
    assert!(stdout.contains("padded with NUL"), "{stdout}");
    a.clear();
    // A fresh corpus of short documents: every one gets a score, and the rater keeps
    // the words rather than the noise.
    let corpus = dir.path().join("short.txt");
    let docs = short_documents(400, 3);
    write_lines(&corpus, &docs);
    let kept = dir.path().join("kept.txt");
    let rater = run.join("rater.safetensors");
    let stdout = ok(&[
        "filter",
        "--rater",
        s(&rater),
        "--input",
        s(&corpus),
        "--out",
        s(&kept),
        "--discard-fraction",
        "0.5",
    ]);
    assert!(
        stdout.contains("400 documents shorter than the rater's sequence were scored padded"),
        "{stdout}"
    );
    let kept: Vec<String> = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(kept.len(), 200);
    let clean_kept = kept
        .iter()
        .filter(|k| {
            docs.iter()
                .position(|d| d == *k)
                .is_some_and(|i| i % 2 == 0)
        })
        .count();
    eprintln!("kept {clean_kept} word documents of 200 kept");
    assert!(
        clean_kept >= 150,
        "kept {clean_kept} word documents of 200 kept"
    );
}

#[test]
fn evaluate_compares_fresh_lms_trained_on_each_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // Clean text, and the same text with every other document replaced by noise.
    let docs = documents(400, 7);
    write_lines(&p("clean.txt"), &docs);
    let noisy: Vec<String> = short_documents(400, 8)
        .into_iter()
        .zip(&docs)
        .enumerate()
        .map(|(i, (n, d))| if i % 2 == 1 { n.repeat(4) } else { d.clone() })
        .collect();
    write_lines(&p("noisy.txt"), &noisy);
    write_lines(&p("held.txt"), &documents(100, 9));
    let stdout = ok(&[
        "evaluate",
        "--held-out",
        s(&p("held.txt")),
        s(&p("noisy.txt")),
        s(&p("clean.txt")),
        "--out",
        s(&p("eval")),
        "--steps",
        "80",
        "--eval-every",
        "20",
        "--lm-width",
        "8",
        "--lm-layers",
        "1",
        "--lm-heads",
        "1",
        "--seq-len",
        "16",
    ]);
    assert!(stdout.contains("steps to reach the first"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("eval.json")).unwrap()).unwrap();
    let corpora = report["corpora"].as_array().unwrap();
    assert_eq!(corpora.len(), 2);
    let (noisy, clean) = (&corpora[0], &corpora[1]);
    assert_eq!(
        noisy["curve"].as_array().unwrap().len(),
        5,
        "steps 0, 20, 40, 60, 80"
    );
    let (fn_, fc) = (
        noisy["final_loss"].as_f64().unwrap(),
        clean["final_loss"].as_f64().unwrap(),
    );
    assert!(fc < fn_, "clean {fc} should beat noisy {fn_}");
    // The clean corpus reaches the noisy one's final loss no later than step 80.
    assert!(clean["steps_to_reference"].as_u64().unwrap() <= 80);
    assert_eq!(noisy["steps_to_reference"], 80);
    let svg = std::fs::read_to_string(p("eval.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}
