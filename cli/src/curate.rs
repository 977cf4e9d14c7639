//! `datarater score` and `datarater filter`.

use crate::args::{FilterArgs, FilterMode, ScoreArgs, ShortPolicy};
use crate::error::Result;
use crate::histogram::Histogram;
use crate::input::Input;
use crate::output::OutputFile;
use crate::scoring::{ScoreRecord, ScoreSource, for_each_scored};
use crate::{agree, fail, on_root};
use datarater::Rng;
use datarater::curate::rater_file::RaterFile;
use datarater::curate::{Acceptor, EmpiricalCdf, discard_bottom, draw_size};
use datarater::distributed::Communicator;
use serde_json::json;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

/// `datarater score` (on every rank of `comm`; rank 0 writes and reports).
pub fn score(args: &ScoreArgs, comm: &dyn Communicator) -> Result<()> {
    let input = agree(comm, Input::open(&args.input, args.input_args.options()))?;
    let mut out = OutputFile::create(&args.out, args.force, comm)?;
    let rater = agree(comm, RaterFile::<f32>::load(&args.rater))?;
    let scorer = rater.document_scorer(args.aggregate.into(), args.batch_size)?;
    let start = Instant::now();
    let stats = for_each_scored(
        &input,
        &ScoreSource::Rater(scorer),
        "score",
        comm,
        |i, doc, s| {
            let rec = ScoreRecord {
                doc: i,
                source: input.sources()[doc.source].clone(),
                line: doc.line,
                chunks: s.chunks,
                score: s.score,
            };
            out.write(rec.to_json_line(doc.text().len()).as_bytes())?;
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if stats.short == stats.read.documents {
        fail!(
            "no document is long enough to score: all {} are shorter than the rater's {} bytes",
            stats.short,
            rater.seq_len
        );
    }
    out.commit(comm)?;
    if comm.rank() != 0 {
        return Ok(());
    }
    let secs = start.elapsed().as_secs_f64();
    let n = stats.read.documents;
    println!(
        "scored {n} documents ({:.2} MB of text) in {secs:.1}s: {:.0} documents/s, {:.3} MB/s",
        stats.text_bytes as f64 / 1e6,
        n as f64 / secs,
        stats.text_bytes as f64 / 1e6 / secs
    );
    report_common(&stats, Some(rater.seq_len), "their score is null");
    println!("wrote {}", args.out.display());
    Ok(())
}

fn report_common(stats: &crate::scoring::PassStats, seq_len: Option<usize>, short_fate: &str) {
    if stats.short > 0 {
        let bound = seq_len.map_or(String::new(), |l| format!(" (fewer than {l} bytes)"));
        println!(
            "{} documents are too short to score{bound}: {short_fate}",
            stats.short
        );
    }
    if stats.read.skipped > 0 {
        println!(
            "skipped {} invalid lines (--skip-invalid); the first: {}",
            stats.read.skipped,
            stats.read.first_skipped.as_deref().unwrap_or("?")
        );
    }
}

/// Per-source counts for the report.
#[derive(Clone, Default)]
struct SourceCounts {
    kept: u64,
    discarded: u64,
    short: u64,
}

/// `filter`'s decision rule with its parameter, checked.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Drop this fraction of the scored documents.
    Discard(f64),
    /// Accept each document with the streaming acceptance probability, this rho.
    Accept(f64),
}

/// Largest `--accept-batch`: each document's acceptance probability sums that many
/// terms (and holds them), so larger values would only make filtering crawl (or fail
/// to allocate).
const MAX_ACCEPT_BATCH: usize = 1 << 20;

/// The rule `--mode` asks for, with its parameter present and in range. Not left to
/// clap: its `required_if_eq` does not see `--mode`'s default.
fn rule(args: &FilterArgs) -> Result<Rule> {
    match args.mode {
        FilterMode::Discard => {
            let Some(fraction) = args.discard_fraction else {
                let hint = if args.rho.is_some() {
                    " (--rho is for --mode accept)"
                } else {
                    ""
                };
                fail!(
                    "--mode discard (the default) needs --discard-fraction F, the fraction of the scored documents to drop{hint}"
                );
            };
            if !(0.0..1.0).contains(&fraction) {
                fail!("--discard-fraction {fraction} is not in [0, 1)");
            }
            Ok(Rule::Discard(fraction))
        }
        FilterMode::Accept => {
            let Some(rho) = args.rho else {
                fail!("--mode accept needs --rho R, the filter fraction in [0, 1)");
            };
            if args.accept_batch > MAX_ACCEPT_BATCH {
                fail!(
                    "--accept-batch {} is larger than {MAX_ACCEPT_BATCH} (each document's acceptance probability sums that many terms)",
                    args.accept_batch
                );
            }
            draw_size(args.accept_batch, rho).map_err(|e| {
                crate::error::CliError(format!(
                    "--rho {rho} / --accept-batch {}: {e}",
                    args.accept_batch
                ))
            })?;
            Ok(Rule::Accept(rho))
        }
    }
}

/// `datarater filter` (on every rank of `comm`; rank 0 writes and reports).
pub fn filter(args: &FilterArgs, comm: &dyn Communicator) -> Result<()> {
    let rule = rule(args)?;
    let input = agree(comm, Input::open(&args.input, args.input_args.options()))?;
    let report_path = sibling(&args.out, "report.json");
    let svg_path = sibling(&args.out, "histogram.svg");
    on_root(comm, || {
        crate::output::check_absent(&report_path, args.force)?;
        crate::output::check_absent(&svg_path, args.force)
    })?;
    let mut out = OutputFile::create(&args.out, args.force, comm)?;
    let mut report_file = OutputFile::create(&report_path, args.force, comm)?;
    let mut svg_file = OutputFile::create(&svg_path, args.force, comm)?;
    // A score file, when given, is used instead of the rater.
    let rater = match (&args.rater, &args.scores) {
        (Some(r), None) => Some(agree(comm, RaterFile::<f32>::load(r))?),
        _ => None,
    };
    let source = match (&rater, &args.scores) {
        (Some(r), _) => {
            ScoreSource::Rater(r.document_scorer(args.aggregate.into(), args.batch_size)?)
        }
        (None, Some(p)) => ScoreSource::File(p.clone()),
        (None, None) => fail!("filter needs --rater FILE or --scores FILE"),
    };
    let keep_short = args.short == ShortPolicy::Keep;
    let mut per_source = vec![SourceCounts::default(); input.sources().len()];
    let (mut kept, mut kept_bytes, mut total_bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut write_doc = |doc: &crate::input::Document, keep: bool, short: bool| -> Result<()> {
        let c = &mut per_source[doc.source];
        total_bytes += doc.raw.len() as u64;
        if short {
            c.short += 1;
        }
        if keep {
            c.kept += 1;
            kept += 1;
            kept_bytes += doc.raw.len() as u64;
            out.write(&doc.raw)?;
            out.write(input.format_of(doc.source).separator())?;
        } else {
            c.discarded += 1;
        }
        Ok(())
    };
    let (stats, hist, threshold, mode_report) = match rule {
        Rule::Discard(fraction) => {
            // Pass 1: every document's score (only the scores are held).
            let mut scores: Vec<Option<f64>> = Vec::new();
            let stats = for_each_scored(&input, &source, "filter: scoring", comm, |_, _, s| {
                scores.push(s.score);
                Ok(ControlFlow::Continue(()))
            })?;
            let scored: Vec<f64> = scores.iter().flatten().copied().collect();
            if scored.is_empty() {
                fail!(
                    "no document is long enough to score: all {} are shorter than the rater's sequence length",
                    scores.len()
                );
            }
            let mut keep_scored = vec![false; scored.len()];
            for i in discard_bottom(&scored, fraction)? {
                keep_scored[i] = true;
            }
            let threshold = scored
                .iter()
                .zip(&keep_scored)
                .filter(|(_, k)| **k)
                .map(|(s, _)| *s)
                .fold(f64::INFINITY, f64::min);
            let (lo, hi) = min_max(&scored);
            let mut hist = Histogram::new(lo, hi, 40);
            // Pass 2: copy the kept documents (rank 0 alone: the others write nothing,
            // and their counts and histogram are not reported).
            on_root(comm, || {
                let mut at = 0;
                let mut docs = input.documents(Arc::default());
                for (doc, score) in docs.by_ref().zip(&scores) {
                    let doc = doc?;
                    let keep = match score {
                        Some(s) => {
                            let k = keep_scored[at];
                            hist.add(*s, k);
                            at += 1;
                            k
                        }
                        None => keep_short,
                    };
                    write_doc(&doc, keep, score.is_none())?;
                }
                if docs.stats.documents != scores.len() as u64 {
                    fail!(
                        "the input changed while filtering ({} documents, then {})",
                        scores.len(),
                        docs.stats.documents
                    );
                }
                Ok(())
            })?;
            let r =
                json!({"mode": "discard", "discard_fraction": fraction, "threshold": threshold});
            (stats, hist, Some(threshold), r)
        }
        Rule::Accept(rho) => {
            // The reference score distribution: the first `--reference` scored documents.
            let mut reference = Vec::new();
            for_each_scored(&input, &source, "filter: reference", comm, |_, _, s| {
                reference.extend(s.score);
                Ok(if reference.len() >= args.reference {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            if reference.is_empty() {
                fail!(
                    "no document is long enough to score: all are shorter than the rater's sequence length"
                );
            }
            let (lo, hi) = min_max(&reference);
            let acceptor = Acceptor::new(EmpiricalCdf::new(&reference)?, args.accept_batch, rho)?;
            let mut hist = Histogram::new(lo, hi, 40);
            let mut rng = Rng::new(args.seed);
            let stats = for_each_scored(&input, &source, "filter", comm, |_, doc, s| {
                let keep = match s.score {
                    Some(x) => {
                        let k = acceptor.accept(x, &mut rng);
                        hist.add(x, k);
                        k
                    }
                    None => keep_short,
                };
                write_doc(doc, keep, s.score.is_none())?;
                Ok(ControlFlow::Continue(()))
            })?;
            let r = json!({
                "mode": "accept", "rho": rho, "seed": args.seed,
                "accept_batch": args.accept_batch, "draw": acceptor.draw(),
                "reference_documents": reference.len(),
            });
            (stats, hist, None, r)
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let n = stats.read.documents;
    let discarded = n - kept;
    let sources: Vec<serde_json::Value> = input
        .sources()
        .iter()
        .zip(&per_source)
        .map(|(s, c)| {
            json!({"source": s, "kept": c.kept, "discarded": c.discarded, "too_short": c.short})
        })
        .collect();
    let mut report = json!({
        "input": args.input.display().to_string(),
        "output": args.out.display().to_string(),
        "documents": n,
        "kept": kept,
        "discarded": discarded,
        "bytes": total_bytes,
        "kept_bytes": kept_bytes,
        "too_short": stats.short,
        "too_short_policy": if keep_short { "keep" } else { "discard" },
        "skipped_invalid_lines": stats.read.skipped,
        "histogram": svg_path.display().to_string(),
        "sources": sources,
    });
    if let (Some(obj), serde_json::Value::Object(m)) = (report.as_object_mut(), mode_report) {
        obj.extend(m);
    }
    let title = format!("Document scores: {kept} kept, {discarded} discarded");
    svg_file.write(hist.svg(&title, threshold).as_bytes())?;
    // `{:#}`: pretty-printed (writing a `Value` to a string cannot fail).
    report_file.write(format!("{report:#}\n").as_bytes())?;
    out.commit(comm)?;
    report_file.commit(comm)?;
    svg_file.commit(comm)?;
    if comm.rank() != 0 {
        return Ok(());
    }
    println!(
        "kept {kept} of {n} documents ({:.1}%), discarded {discarded}; {:.2} of {:.2} MB kept ({secs:.1}s)",
        100.0 * kept as f64 / n.max(1) as f64,
        kept_bytes as f64 / 1e6,
        total_bytes as f64 / 1e6
    );
    if let Some(t) = threshold {
        println!("discard threshold: documents scoring below {t:.6} were dropped");
    }
    let seq_len = rater.as_ref().map(|r| r.seq_len);
    let fate = if keep_short {
        "kept (--short discard drops them)"
    } else {
        "discarded"
    };
    report_common(&stats, seq_len, fate);
    if per_source.len() > 1 {
        println!("per source (kept / discarded / too short):");
        for (s, c) in input.sources().iter().zip(&per_source) {
            println!("  {s}: {} / {} / {}", c.kept, c.discarded, c.short);
        }
    }
    println!(
        "wrote {}, {} and {}",
        args.out.display(),
        report_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// `out` with `.suffix` appended to its file name (`kept.jsonl` -> `kept.jsonl.report.json`).
fn sibling(out: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}
