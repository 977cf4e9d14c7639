//! Property: no command line makes `datarater` panic or crash. Random combinations of
//! every subcommand's flags and values, generated from clap's own definition of the
//! command line (`Cli::command()`: its subcommands, their flags, the possible values of
//! enumerations and the type each value parses to), run through the real binary on
//! small real files. Every run must end with an exit status (no signal: a panic in
//! the library under MPI aborts, an allocation failure aborts), never clap's panic
//! exit code 101 or a "panicked" message; a failure must say `error: ...`; and a
//! command line holding a value that cannot parse (or an unknown argument) must be
//! refused as a usage error.

mod common;

use clap::CommandFactory;
use common::*;
use datarater_cli::args::Cli;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::any::TypeId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One word of a generated command line; `junk` marks a word that can never parse
/// (so the whole line is a usage error).
#[derive(Clone, Debug)]
struct Word {
    text: String,
    junk: bool,
}

fn word(text: &str, junk: bool) -> Word {
    Word {
        text: text.to_string(),
        junk,
    }
}

/// `train`'s settings for a fast case (clap's defaults train a 32-wide model for 200
/// steps); a case's own choice of any of these flags replaces the value here. The
/// fixture run is trained with exactly these, so `--resume` with them agrees.
const TINY_TRAIN: [(&str, &str); 11] = [
    ("outer-steps", "1"),
    ("inner-steps", "1"),
    ("population", "2"),
    ("lm-width", "8"),
    ("lm-layers", "1"),
    ("lm-heads", "1"),
    ("rater-width", "8"),
    ("rater-layers", "1"),
    ("rater-heads", "1"),
    ("seq-len", "16"),
    ("batch-size", "4"),
];

/// Files a path argument may name, by the argument's role: `(fitting, others)`.
/// Placeholders: `{OUT}` a fresh path in the case's directory, `{CASE}` that (existing)
/// directory, `{RUN}` a copy of a trained run. Outputs never name a fixture (a case
/// with `--force` would overwrite it).
fn path_pool(long: &str) -> (&'static [&'static str], &'static [&'static str]) {
    const READ: &[&str] = &[
        "train.jsonl",
        "held.jsonl",
        "docs.txt",
        "data",
        "rater.safetensors",
        "scores.jsonl",
        "junk.bin",
        "empty.txt",
        "missing",
        "/proc/datarater",
        "",
    ];
    const WRITE: &[&str] = &[
        "{OUT}",
        "{CASE}",
        "missing-dir/out",
        "/proc/datarater/out",
        "",
    ];
    match long {
        "train" | "held-out" | "input" | "corpora" => {
            (&["train.jsonl", "held.jsonl", "docs.txt", "data"], READ)
        }
        "rater" => (&["rater.safetensors", "run/rater.safetensors"], READ),
        "scores" => (&["scores.jsonl"], READ),
        "out" => (&["{OUT}"], WRITE),
        "resume" => (&["{RUN}"], &["{RUN}", "{OUT}", "{CASE}", "docs.txt", ""]),
        other => panic!("path argument --{other}: give it a role in path_pool"),
    }
}

/// The values one argument may take, from its clap definition: fitting ones (weight
/// 12), others that parse (3) and words that cannot parse (1); only fitting ones in
/// a `clean` case.
fn values(arg: &clap::Arg, clean: bool) -> BoxedStrategy<Word> {
    let long = name(arg).to_string();
    let words = |ws: &[&str], junk: bool| ws.iter().map(|w| word(w, junk)).collect::<Vec<_>>();
    let (fit, other, junk) = {
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        let ty = arg.get_value_parser().type_id();
        if !choices.is_empty() {
            let fit: Vec<Word> = choices.iter().map(|c| word(c, false)).collect();
            (fit.clone(), fit, words(&["bogus", ""], true))
        } else if ty == TypeId::of::<PathBuf>() {
            let (fit, other) = path_pool(&long);
            (words(fit, false), words(other, false), vec![])
        } else if ty == TypeId::of::<usize>() || ty == TypeId::of::<u64>() {
            // Small values keep every case fast (at most 4 layers, members, inner and
            // outer steps); u64::MAX reaches the size and overflow checks.
            let mut other = words(&["0", "3", "18446744073709551615"], false);
            if ["outer-steps", "target-steps", "steps"].contains(&long.as_str()) {
                // Valid, but a run that would not end (`evaluate --steps` trains that
                // many steps; the warm start alone of a `--target-steps` member is that
                // many steps times its index / population).
                other.pop();
            }
            let junk = words(&["-1", "1.5", "x", "", "18446744073709551616"], true);
            (words(&["1", "2", "4"], false), other, junk)
        } else if ty == TypeId::of::<f64>() {
            let other = words(&["1", "-0.5", "nan", "inf", "-inf", "1e30", "1e-30"], false);
            let fit = words(&["0", "0.003", "0.1", "0.5", "0.9"], false);
            (fit, other, words(&["x", ""], true))
        } else if ty == TypeId::of::<String>() {
            let other = words(&["", "id", "meta", "nope"], false);
            (words(&["text"], false), other, vec![])
        } else {
            panic!("--{long}: a value type this test does not generate yet");
        }
    };
    let select = |w: Vec<Word>| proptest::sample::select(w).boxed();
    if clean {
        select(fit)
    } else if junk.is_empty() {
        prop_oneof![12 => select(fit), 3 => select(other)].boxed()
    } else {
        prop_oneof![12 => select(fit), 3 => select(other), 1 => select(junk)].boxed()
    }
}

/// A flag's long name, or a positional argument's id.
fn name(arg: &clap::Arg) -> &str {
    arg.get_long().unwrap_or(arg.get_id().as_str())
}

/// How often (in tenths) a case gives an argument: inputs and outputs almost always
/// (always in a `clean` case), `--scores` (used instead of `--rater`) sometimes,
/// `--resume` (which excludes `--train`, `--held-out` and `--out`) seldom (never in a
/// clean case), the rest half the time.
fn presence(arg: &clap::Arg, clean: bool) -> u32 {
    let path = arg.get_value_parser().type_id() == TypeId::of::<PathBuf>();
    match name(arg) {
        "resume" => u32::from(!clean),
        "scores" => 2,
        _ if (arg.is_required_set() || path) && clean => 10,
        _ if arg.is_required_set() || path => 9,
        _ => 5,
    }
}

/// Random command lines: a subcommand, each of its flags present or not
/// ([`presence`]; with a value from [`values`]), sometimes an unknown flag or a stray
/// word. Half the cases are `clean`: fitting values only, so that many run through.
fn command_lines() -> BoxedStrategy<Vec<Word>> {
    any::<bool>().prop_flat_map(lines).boxed()
}

fn lines(clean: bool) -> BoxedStrategy<Vec<Word>> {
    let cli = Cli::command();
    let subcommands: Vec<BoxedStrategy<Vec<Word>>> = cli
        .get_subcommands()
        .map(|sub| {
            let command = sub.get_name().to_string();
            let args: Vec<BoxedStrategy<Vec<Word>>> = sub
                .get_arguments()
                .map(|arg| {
                    let p = presence(arg, clean);
                    if arg.is_positional() {
                        // One or two values, in place of the flag and its value.
                        let given = proptest::collection::vec(values(arg, clean), 1..=2);
                        return prop_oneof![10 - p => Just(vec![]), p => given].boxed();
                    }
                    let flag = word(&format!("--{}", name(arg)), false);
                    let given = if arg.get_action().takes_values() {
                        // `--flag value` or `--flag=value` (which can start with `-`).
                        (values(arg, clean), any::<bool>())
                            .prop_map(move |(v, joined)| match joined {
                                true => vec![word(&format!("{}={}", flag.text, v.text), v.junk)],
                                false => vec![flag.clone(), v],
                            })
                            .boxed()
                    } else {
                        Just(vec![flag]).boxed()
                    };
                    prop_oneof![10 - p => Just(vec![]), p => given].boxed()
                })
                .collect();
            // A stray word is a usage error only where no positional argument takes it
            // (for `evaluate` it is one more corpus, and missing).
            let positional = sub.get_positionals().next().is_some();
            let extra = prop_oneof![
                18 => Just(vec![]),
                u32::from(!clean) => Just(vec![word("--bogus", true)]),
                u32::from(!clean) => Just(vec![word("stray", !positional)]),
            ];
            (args, extra)
                .prop_map(move |(args, extra)| {
                    let mut line = vec![word(&command, false)];
                    line.extend(args.into_iter().flatten());
                    line.extend(extra);
                    line
                })
                .boxed()
        })
        .collect();
    proptest::strategy::Union::new(subcommands).boxed()
}

/// The files every case may read (and the trained run `{RUN}` copies).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cases: AtomicUsize,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        write_jsonl(&root.join("train.jsonl"), &documents(60, 1));
        write_jsonl(&root.join("held.jsonl"), &documents(30, 2));
        write_lines(&root.join("docs.txt"), &documents(40, 3));
        std::fs::create_dir(root.join("data")).unwrap();
        write_lines(&root.join("data/a.txt"), &documents(20, 4));
        write_jsonl(&root.join("data/b.jsonl"), &documents(20, 5));
        write_rater(&root.join("rater.safetensors"), 1);
        std::fs::write(root.join("junk.bin"), [0xff, 0x00, 0x1f, 0x8b, 0x08, 0x42]).unwrap();
        std::fs::write(root.join("empty.txt"), b"").unwrap();
        let p = |n: &str| root.join(n).display().to_string();
        let (docs, rater, scores) = (p("docs.txt"), p("rater.safetensors"), p("scores.jsonl"));
        ok(&[
            "score", "--rater", &rater, "--input", &docs, "--out", &scores,
        ]);
        let (train, held, run) = (p("train.jsonl"), p("held.jsonl"), p("run"));
        let mut args = vec![
            "train",
            "--train",
            &train,
            "--held-out",
            &held,
            "--out",
            &run,
        ];
        let tiny: Vec<String> = TINY_TRAIN
            .iter()
            .flat_map(|(f, v)| [format!("--{f}"), v.to_string()])
            .collect();
        args.extend(tiny.iter().map(String::as_str));
        ok(&args);
        Fixture {
            _dir: dir,
            root,
            cases: AtomicUsize::new(0),
        }
    }

    /// The arguments of `line` for a new case: placeholders resolved, `train`'s fast
    /// settings added where the case chose none.
    fn arguments(&self, line: &[Word]) -> Vec<String> {
        let case = self.root.join(format!(
            "case-{}",
            self.cases.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir(&case).unwrap();
        // Fixture names are relative: the binary runs in the fixture's directory.
        let path = |p: PathBuf| p.display().to_string();
        let mut args: Vec<String> = line
            .iter()
            .map(|w| {
                let t = w.text.replace("{OUT}", &path(case.join("out")));
                let t = t.replace("{CASE}", &path(case.clone()));
                if !t.contains("{RUN}") {
                    return t;
                }
                let run = case.join("run");
                copy_dir(&self.root.join("run"), &run);
                t.replace("{RUN}", &path(run))
            })
            .collect();
        if args.first().map(String::as_str) == Some("train") {
            for (flag, value) in TINY_TRAIN {
                let flag = format!("--{flag}");
                let joined = format!("{flag}=");
                if !args.iter().any(|a| *a == flag || a.starts_with(&joined)) {
                    args.extend([flag, value.to_string()]);
                }
            }
        }
        args
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn no_command_line_panics() {
    let fixture = Fixture::new();
    let config = Config {
        cases: 64,
        // Each case runs the binary: shrinking a failure is slow but still bounded.
        max_shrink_iters: 64,
        ..Config::default()
    };
    proptest!(config, |(line in command_lines())| {
        let args = fixture.arguments(&line);
        let out = Command::new(env!("CARGO_BIN_EXE_datarater"))
            .args(&args)
            .current_dir(&fixture.root)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        prop_assert!(code.is_some(), "killed by a signal ({:?}): {:?}\n{}", out.status, args, err);
        prop_assert!(code != Some(101) && !err.contains("panicked"), "a panic: {:?}\n{}", args, err);
        if code != Some(0) {
            prop_assert!(err.contains("error:"), "no message: {:?}\n{}", args, err);
        }
        if line.iter().any(|w| w.junk) {
            // clap's usage error.
            prop_assert_eq!(code, Some(2), "{:?}\n{}", args, err);
        }
    });
}
