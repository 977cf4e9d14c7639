//! `datarater score` and `datarater filter` over a corpus of shards.
//!
//! The shard is the unit of output and of resumption ([`crate::shards`]): one input
//! shard gives one output shard (a score file for `score`, the kept documents in the
//! input's format for `filter`) at the same relative path under `--out`, or the file
//! `--out` itself for a single file in. A rerun skips the shards already complete.
//!
//! `filter` first gets every document's score (from the rater or the attribute shards
//! of `datarater score`), holding only the scores (8 bytes a document), then decides
//! with one rule for the whole corpus (an exact threshold, or the acceptance rule with
//! one stream of random numbers per shard, seeded by the seed and the shard's path),
//! then writes the shards that are not complete.

use crate::args::{FilterArgs, FilterMode, ScoreArgs, ShortPolicy};
use crate::error::{CliError, Result, io_error};
use crate::histogram::Histogram;
use crate::input::{Compression, Corpus, Format, InputOptions, Shard};
use crate::output::{Digest, OutputFile};
use crate::progress::count;
use crate::scoring::{CorpusProgress, PassStats, ScoreRecord, ScoreSource, for_each_scored};
use crate::shards::{ShardState, plan, test_delay, write_record};
use crate::{agree, fail, interrupt, on_root};
use datarater::Rng;
use datarater::curate::rater_file::RaterFile;
use datarater::curate::{Acceptor, EmpiricalCdf, discard_bottom, draw_size};
use datarater::distributed::Communicator;
use serde_json::{Value as Json, json};
use std::hash::Hasher;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where each shard's output goes: `out` itself for a single file in, else
/// `out/REL` with `rename` applied to the relative path's file name.
fn output_paths(
    corpus: &Corpus,
    out: &Path,
    rename: impl Fn(usize, &Shard) -> String,
) -> Vec<PathBuf> {
    corpus
        .shards
        .iter()
        .enumerate()
        .map(|(k, s)| {
            if corpus.single_file {
                out.to_path_buf()
            } else {
                out.join(&s.rel).with_file_name(rename(k, s))
            }
        })
        .collect()
}

/// The name of a shard's score file: its name without a compression suffix, then
/// `.scores.jsonl` and the score file's compression suffix.
fn score_name(shard: &Shard, compression: Compression) -> String {
    let name = shard.rel.file_name().unwrap_or_default().to_string_lossy();
    format!(
        "{}.scores.jsonl{}",
        shard.compression.strip_suffix(&name),
        compression.suffix()
    )
}

/// Checks that `out` can be written before any work: creates it (a directory for a
/// corpus of shards) and a probe file in it. On rank 0; collective.
fn probe_output(out: &Path, single_file: bool, comm: &dyn Communicator) -> Result<()> {
    on_root(comm, || {
        let dir = if single_file {
            if out.is_dir() {
                fail!("{}: is a directory, not an output file", out.display());
            }
            out.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        } else {
            if out.is_file() {
                fail!(
                    "{}: is a file, but the input is a corpus of shards: --out must name a directory",
                    out.display()
                );
            }
            std::fs::create_dir_all(out)
                .map_err(|e| io_error(out, "cannot write the output directory", e))?;
            out.to_path_buf()
        };
        let probe = dir.join(format!(".datarater-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .map_err(|e| io_error(&dir, "cannot write the output file's directory", e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    })?;
    Ok(())
}

/// How the shards are shared over the ranks of `comm`: with several ranks and several
/// shards, shard `k` is rank `k mod P`'s, which reads and writes it alone (no
/// collective per block); otherwise every rank takes part in every shard (a block's
/// rater batches are shared over the ranks, rank 0 writes). Either way each output
/// shard is a function of its input shard and the settings only, so the outputs are
/// byte for byte those of one process.
struct Sharing<'a> {
    comm: &'a dyn Communicator,
    by_shard: bool,
    local: datarater::distributed::SingleProcess,
}

impl<'a> Sharing<'a> {
    fn new(comm: &'a dyn Communicator, shards: usize) -> Sharing<'a> {
        Sharing {
            comm,
            by_shard: comm.size() > 1 && shards > 1,
            local: datarater::distributed::SingleProcess,
        }
    }

    /// Whether this rank works on shard `k`.
    fn mine(&self, k: usize) -> bool {
        !self.by_shard || k % self.comm.size() == self.comm.rank()
    }

    /// The progress of the stage `label` over this rank's share of `shards` (shown by
    /// rank 0): with shards shared by rank, its own shards only, so the bar reaches
    /// 100% when they are done; otherwise all of them.
    fn progress(&self, label: &'static str, shards: &[Shard]) -> CorpusProgress {
        let (n, bytes) = shards
            .iter()
            .enumerate()
            .filter(|(k, _)| self.mine(*k))
            .fold((0, 0), |(n, b), (_, s)| (n + 1, b + s.bytes));
        CorpusProgress::new(label, n, bytes, self.comm)
    }

    /// The communicator a shard's work runs on.
    fn work(&self) -> &dyn Communicator {
        if self.by_shard {
            &self.local
        } else {
            self.comm
        }
    }

    /// The outcome of this rank's share, agreed by every rank. When every rank took
    /// part in every shard, each failure was agreed where it happened: `local` is
    /// already every rank's (agreeing again would prefix its rank a second time).
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        if self.by_shard {
            agree(self.comm, local)
        } else {
            local
        }
    }

    /// Every rank's `local` bytes, in rank order (just `local` with one rank or
    /// without sharing by shard).
    fn gather(&self, local: Vec<u8>) -> Vec<Vec<u8>> {
        if self.by_shard {
            self.comm.all_gather_bytes(&local)
        } else {
            vec![local]
        }
    }
}

/// XXH64 of a file, as hex: identifies the rater that produced a shard.
fn file_checksum(path: &Path) -> Result<String> {
    Ok(format!("{:016x}", Digest::of_file(path)?.xxh64))
}

/// The message of an interrupted run: what is done and how to continue.
fn interrupted_message(done: usize, total: usize, out: &Path) -> CliError {
    CliError(format!(
        "interrupted: {done} of {total} output shards are complete in {}; run the same command again to continue (complete shards are skipped)",
        out.display()
    ))
}

/// `error` as is, or, if the run was interrupted, as [`interrupted_message`].
fn explain(error: CliError, done: usize, total: usize, out: &Path) -> CliError {
    if interrupt::interrupted(&error) {
        interrupted_message(done, total, out)
    } else {
        error
    }
}

/// A shard that could not be read, with `--skip-invalid` and a corpus of shards:
/// listed in the report (a single file in is the whole input: its failure is the run's).
fn skip_or_fail(
    corpus: &Corpus,
    shard: &Shard,
    e: CliError,
    opts: &InputOptions,
) -> Result<String> {
    if opts.skip_invalid && !corpus.single_file && !interrupt::interrupted(&e) {
        eprintln!(
            "warning: skipping {} (--skip-invalid): {e}",
            shard.path.display()
        );
        Ok(e.0)
    } else {
        Err(e)
    }
}

/// `datarater score` (on every rank of `comm`; rank 0 writes and reports).
pub fn score(args: &ScoreArgs, comm: &dyn Communicator) -> Result<()> {
    let opts = args.input_args.options();
    let corpus = agree(comm, Corpus::open(&args.input, &opts))?;
    probe_output(&args.out, corpus.single_file, comm)?;
    let out_name = corpus.single_file.then(|| {
        args.out
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    });
    let compressions = corpus
        .shards
        .iter()
        .map(|s| {
            let input = match s.format {
                Format::Parquet => Compression::None,
                _ => s.compression,
            };
            args.compression.text(input, out_name.as_deref())
        })
        .collect::<Result<Vec<_>>>()?;
    let outs = output_paths(&corpus, &args.out, |k, s| score_name(s, compressions[k]));
    let rater = agree(comm, RaterFile::<f32>::load(&args.rater))?;
    let mut settings = args.input_args.settings();
    settings["command"] = json!("score");
    settings["rater_xxh64"] = json!(agree(comm, file_checksum(&args.rater))?);
    settings["aggregate"] = json!(format!("{:?}", args.aggregate).to_lowercase());
    settings["batch_size"] = json!(args.batch_size);
    let (digests, states) = plan(&corpus.shards, &outs, &settings, args.force, comm)?;
    let scorer = rater.document_scorer(args.aggregate.into(), args.batch_size)?;
    let pad = crate::scoring::pads_short(&rater.training);
    let scorer = ScoreSource::Rater(&scorer, pad);
    interrupt::install()?;
    interrupt::reset();
    let start = Instant::now();
    let sharing = Sharing::new(comm, corpus.shards.len());
    let mut progress = sharing.progress("score", &corpus.shards);
    // `total` counts every shard's documents, `fresh` those scored by this run.
    let (mut total, mut fresh) = (PassStats::default(), PassStats::default());
    let (mut written, mut skipped, mut invalid) = (0usize, 0usize, Vec::new());
    let outcome = (|| -> Result<()> {
        for (k, shard) in corpus.shards.iter().enumerate() {
            if !sharing.mine(k) {
                continue;
            }
            if let ShardState::Done(counts) = &states[k] {
                let n = |key: &str| counts[key].as_u64().unwrap_or(0);
                total.read.documents += n("documents");
                total.short += n("too_short");
                total.padded += n("padded");
                total.text_bytes += n("text_bytes");
                progress.shard_done(shard, n("documents"), n("too_short"), n("text_bytes"));
                skipped += 1;
                continue;
            }
            let result = score_shard(
                shard,
                &opts,
                &scorer,
                &outs[k],
                compressions[k],
                sharing.work(),
                &mut progress,
                |stats, digest| {
                    if corpus.single_file {
                        no_documents(shard, stats)?;
                    }
                    if corpus.single_file && stats.short == stats.read.documents {
                        fail!(
                            "no document is long enough to score: all {} are shorter than the rater's {} bytes",
                            stats.short,
                            rater.seq_len
                        );
                    }
                    let counts = json!({
                        "documents": stats.read.documents, "too_short": stats.short,
                        "padded": stats.padded, "text_bytes": stats.text_bytes,
                    });
                    write_record(&outs[k], digests[k], &settings, digest, &counts)
                },
            );
            match result {
                Ok(stats) => {
                    total.add(&stats);
                    fresh.add(&stats);
                    written += 1;
                }
                Err(e) => {
                    let e = explain(e, written + skipped, corpus.shards.len(), &args.out);
                    invalid.push((shard.rel.clone(), skip_or_fail(&corpus, shard, e, &opts)?));
                    progress.shard_done(shard, 0, 0, 0);
                }
            }
            test_delay();
        }
        Ok(())
    })();
    sharing.agree(outcome)?;
    progress.finish();
    // Every rank's counts.
    let mine = json!({
        "total": total.to_json(), "fresh": fresh.to_json(), "written": written,
        "skipped": skipped, "invalid": invalid,
    });
    let (mut total, mut fresh) = (PassStats::default(), PassStats::default());
    let (mut written, mut skipped, mut invalid) = (0usize, 0usize, corpus.invalid.clone());
    for bytes in sharing.gather(serde_json::to_vec(&mine).expect("JSON values serialise")) {
        let v: Json = serde_json::from_slice(&bytes)
            .map_err(|e| CliError(format!("bad counts from a rank: {e}")))?;
        total.add(&PassStats::from_json(&v["total"]));
        fresh.add(&PassStats::from_json(&v["fresh"]));
        written += v["written"].as_u64().unwrap_or(0) as usize;
        skipped += v["skipped"].as_u64().unwrap_or(0) as usize;
        let listed: Vec<(PathBuf, String)> =
            serde_json::from_value(v["invalid"].clone()).unwrap_or_default();
        invalid.extend(listed);
    }
    invalid.sort();
    if total.read.documents == 0 {
        fail!(
            "{}: no documents found in its {}{}",
            args.input.display(),
            count(corpus.shards.len() as u64, "shard"),
            skipped_note(&total)
        );
    }
    if comm.rank() != 0 {
        return Ok(());
    }
    let secs = start.elapsed().as_secs_f64();
    let n = fresh.read.documents;
    println!(
        "scored {} ({:.2} MB of text) in {} in {secs:.1}s: {:.0} documents/s, {:.3} MB/s",
        count(n, "document"),
        fresh.text_bytes as f64 / 1e6,
        count(written as u64, "shard"),
        n as f64 / secs,
        fresh.text_bytes as f64 / 1e6 / secs
    );
    if skipped > 0 {
        println!(
            "{skipped} shards ({} documents) were already complete and were skipped; {written} written",
            total.read.documents - n
        );
    }
    report_common(&total, Some(rater.seq_len), "their score is null");
    report_invalid(&invalid);
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Scores one shard into its score file; `record` writes its record before the rename.
#[allow(clippy::too_many_arguments)]
fn score_shard(
    shard: &Shard,
    opts: &InputOptions,
    scorer: &ScoreSource<'_>,
    out_path: &Path,
    compression: Compression,
    comm: &dyn Communicator,
    progress: &mut CorpusProgress,
    record: impl FnOnce(&PassStats, Digest) -> Result<()>,
) -> Result<PassStats> {
    let mut out = OutputFile::create_shard(out_path, compression, comm)?;
    let stats = for_each_scored(shard, opts, scorer, comm, progress, |i, doc, s| {
        let rec = ScoreRecord {
            doc: i,
            line: doc.line,
            id: doc.id.clone(),
            chunks: s.chunks,
            score: s.score,
        };
        out.write(rec.to_json_line(doc.text().len()).as_bytes())?;
        Ok(ControlFlow::Continue(()))
    })?;
    out.commit_with(comm, |digest| record(&stats, digest))?;
    Ok(stats)
}

/// Fails if a single file in had no documents.
fn no_documents(shard: &Shard, stats: &PassStats) -> Result<()> {
    if stats.read.documents == 0 {
        fail!(
            "{}: no documents found{} (is the file empty, or is --format wrong?)",
            shard.path.display(),
            skipped_note(stats)
        );
    }
    Ok(())
}

fn skipped_note(stats: &PassStats) -> String {
    match (stats.read.skipped, stats.read.too_long) {
        (0, 0) => String::new(),
        (s, l) => format!(" ({s} invalid records skipped, {l} too long)"),
    }
}

fn report_common(stats: &PassStats, seq_len: Option<usize>, short_fate: &str) {
    if stats.padded > 0 {
        println!(
            "{} documents shorter than the rater's sequence were scored padded with NUL bytes (the rule it was trained with)",
            stats.padded
        );
    }
    if stats.short > 0 {
        let bound = seq_len.map_or(String::new(), |l| format!(" (fewer than {l} bytes)"));
        println!(
            "{} documents are too short to score{bound}: {short_fate}",
            stats.short
        );
    }
    if stats.read.skipped > 0 {
        println!(
            "skipped {} invalid records (--skip-invalid); the first: {}",
            stats.read.skipped,
            stats.read.first_skipped.as_deref().unwrap_or("?")
        );
    }
    if stats.read.too_long > 0 {
        println!(
            "skipped {} documents longer than --max-document-bytes (not scored, not written)",
            stats.read.too_long
        );
    }
}

fn report_invalid(invalid: &[(PathBuf, String)]) {
    if !invalid.is_empty() {
        println!(
            "{} shards could not be read and were skipped (--skip-invalid):",
            invalid.len()
        );
        for (rel, why) in invalid {
            println!("  {}: {why}", rel.display());
        }
    }
}

/// One shard's scores in document order (NaN: too short) and what reading it saw;
/// `Err` holds why a shard was skipped (`--skip-invalid`).
type ShardScores = std::result::Result<(Vec<f64>, PassStats), String>;

/// This rank's shards' scores as bytes: per shard its index, its counts (or why it was
/// skipped) as JSON, and its scores as `f64` bits (NaN: no score).
fn encode_scores(mine: &[(usize, ShardScores)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, r) in mine {
        let (meta, scores) = match r {
            Ok((scores, stats)) => (json!({"stats": stats.to_json()}), scores.as_slice()),
            Err(why) => (json!({"invalid": why}), &[][..]),
        };
        let meta = serde_json::to_vec(&meta).expect("JSON values serialise");
        for n in [*k, meta.len(), scores.len()] {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        out.extend_from_slice(&meta);
        for s in scores {
            out.extend_from_slice(&s.to_bits().to_le_bytes());
        }
    }
    out
}

/// The inverse of [`encode_scores`].
fn decode_scores(mut b: &[u8]) -> Result<Vec<(usize, ShardScores)>> {
    let bad = || CliError("malformed scores from a rank".into());
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        let (head, rest) = b
            .split_at_checked(n)
            .ok_or_else(|| CliError("malformed scores from a rank".into()))?;
        *b = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let head = take(&mut b, 24)?;
        let n = |i: usize| {
            u64::from_le_bytes(head[8 * i..8 * i + 8].try_into().expect("8 bytes")) as usize
        };
        let (k, meta_len, count) = (n(0), n(1), n(2));
        let meta: Json = serde_json::from_slice(take(&mut b, meta_len)?).map_err(|_| bad())?;
        let scores = take(&mut b, count.checked_mul(8).ok_or_else(bad)?)?
            .chunks_exact(8)
            .map(|c| f64::from_bits(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect();
        out.push((
            k,
            match meta.get("invalid").and_then(Json::as_str) {
                Some(why) => Err(why.to_string()),
                None => Ok((scores, PassStats::from_json(&meta["stats"]))),
            },
        ));
    }
    Ok(out)
}

/// The per-shard stream of the acceptance rule: seeded by `seed` and the shard's path.
fn shard_rng(seed: u64, shard: &Shard) -> Rng {
    let mut h = twox_hash::XxHash64::with_seed(seed);
    h.write(shard.rel.to_string_lossy().as_bytes());
    Rng::new(h.finish())
}

/// Where a shard's scores are read from under `filter --scores`; a score file whose
/// record (written by `datarater score`) names another input is refused.
fn score_file_for(scores: &Path, corpus: &Corpus, shard: &Shard) -> Result<PathBuf> {
    let checked = |p: PathBuf| -> Result<PathBuf> {
        let rec = crate::shards::record_path(&p);
        if let Ok(text) = std::fs::read_to_string(&rec)
            && let Ok(rec) = serde_json::from_str::<Json>(&text)
        {
            let now = Digest::of_file(&shard.path)?.to_json();
            if rec["input"] != now {
                fail!(
                    "{}: was written for another input (its record says the input had size and checksum {}; {} has {now})",
                    p.display(),
                    rec["input"],
                    shard.path.display()
                );
            }
        }
        Ok(p)
    };
    if corpus.single_file {
        return checked(scores.to_path_buf());
    }
    let base = scores.join(&shard.rel);
    for c in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let p = base.with_file_name(score_name(shard, c));
        if p.exists() {
            return checked(p);
        }
    }
    fail!(
        "{}: no score file for this shard (written by `datarater score --input ... --out {}`?)",
        base.with_file_name(score_name(shard, Compression::None))
            .display(),
        scores.display()
    )
}

/// The decision rule of `filter`, for the whole corpus.
enum Rule {
    /// Keep the scored documents marked here (in corpus order), and short ones if
    /// `keep_short`.
    Discard {
        keep_scored: Vec<bool>,
        keep_short: bool,
    },
    /// The acceptance rule, with one random stream per shard.
    Accept {
        acceptor: Acceptor,
        seed: u64,
        keep_short: bool,
    },
}

impl Rule {
    /// Whether each document of `shard` (its `scores`, NaN for too short) is kept;
    /// `first` counts the scored documents of the shards before it.
    fn decide(&self, shard: &Shard, scores: &[f64], first: usize) -> Vec<bool> {
        match self {
            Rule::Discard {
                keep_scored,
                keep_short,
            } => {
                let mut at = first;
                scores
                    .iter()
                    .map(|s| {
                        if s.is_nan() {
                            return *keep_short;
                        }
                        at += 1;
                        keep_scored[at - 1]
                    })
                    .collect()
            }
            Rule::Accept {
                acceptor,
                seed,
                keep_short,
            } => {
                let mut rng = shard_rng(*seed, shard);
                scores
                    .iter()
                    .map(|s| {
                        if s.is_nan() {
                            *keep_short
                        } else {
                            acceptor.accept(*s, &mut rng)
                        }
                    })
                    .collect()
            }
        }
    }
}

/// `filter`'s mode with its parameter, checked.
#[derive(Clone, Copy, Debug)]
enum Mode {
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
fn checked_mode(args: &FilterArgs) -> Result<Mode> {
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
            Ok(Mode::Discard(fraction))
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
            Ok(Mode::Accept(rho))
        }
    }
}

/// `datarater filter` (on every rank of `comm`; rank 0 writes and reports).
pub fn filter(args: &FilterArgs, comm: &dyn Communicator) -> Result<()> {
    let mode = checked_mode(args)?;
    let opts = args.input_args.options();
    let corpus = agree(comm, Corpus::open(&args.input, &opts))?;
    let report_path = sibling(&args.out, "report.json");
    let svg_path = sibling(&args.out, "histogram.svg");
    probe_output(&args.out, corpus.single_file, comm)?;
    let out_name = corpus.single_file.then(|| {
        args.out
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    });
    let outs = output_paths(&corpus, &args.out, |_, s| {
        s.rel
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into()
    });
    // Each shard's output compression (text) or codec (Parquet), checked before work.
    let text_compressions = corpus
        .shards
        .iter()
        .map(|s| match s.format {
            Format::Parquet => Ok(Compression::None),
            _ => args.compression.text(s.compression, out_name.as_deref()),
        })
        .collect::<Result<Vec<_>>>()?;
    let parquet_codec = if corpus.shards.iter().any(|s| s.format == Format::Parquet) {
        args.compression.parquet()?
    } else {
        None
    };
    let rater = match (&args.rater, &args.scores) {
        (Some(r), None) => Some(agree(comm, RaterFile::<f32>::load(r))?),
        _ => None,
    };
    let scorer = match &rater {
        Some(r) => Some(r.document_scorer(args.aggregate.into(), args.batch_size)?),
        None => None,
    };
    interrupt::install()?;
    interrupt::reset();
    let start = Instant::now();

    // Pass 1: every document's score, shard by shard.
    let stage = if scorer.is_some() {
        "filter: scoring"
    } else {
        "filter: reading scores"
    };
    let sharing = Sharing::new(comm, corpus.shards.len());
    let mut progress = sharing.progress(stage, &corpus.shards);
    let mut mine: Vec<(usize, ShardScores)> = Vec::new();
    let outcome = (|| -> Result<()> {
        for (k, shard) in corpus.shards.iter().enumerate() {
            if !sharing.mine(k) {
                continue;
            }
            let source = match (&scorer, &args.scores) {
                (Some(s), _) => Ok(ScoreSource::Rater(
                    s,
                    rater
                        .as_ref()
                        .is_some_and(|r| crate::scoring::pads_short(&r.training)),
                )),
                (None, Some(dir)) => score_file_for(dir, &corpus, shard).map(ScoreSource::File),
                (None, None) => unreachable!("checked above"),
            };
            let mut scores = Vec::new();
            let work = sharing.work();
            let result = agree(work, source).and_then(|source| {
                for_each_scored(shard, &opts, &source, work, &mut progress, |_, _, s| {
                    scores.push(s.score.unwrap_or(f64::NAN));
                    Ok(ControlFlow::Continue(()))
                })
            });
            mine.push((
                k,
                match result {
                    Ok(stats) => Ok((scores, stats)),
                    Err(e) => {
                        let e = explain(e, 0, corpus.shards.len(), &args.out);
                        let why = skip_or_fail(&corpus, shard, e, &opts)?;
                        progress.shard_done(shard, 0, 0, 0);
                        Err(why)
                    }
                },
            ));
        }
        Ok(())
    })();
    sharing.agree(outcome)?;
    // Every rank's scores, in shard order.
    let mut per_shard: Vec<Option<ShardScores>> = vec![None; corpus.shards.len()];
    for bytes in sharing.gather(encode_scores(&mine)) {
        for (k, r) in decode_scores(&bytes)? {
            per_shard[k] = Some(r);
        }
    }
    let per_shard: Vec<ShardScores> = per_shard
        .into_iter()
        .map(|r| r.ok_or_else(|| CliError("a rank did not report a shard's scores".into())))
        .collect::<Result<_>>()?;
    progress.finish();
    if corpus.single_file
        && let Some(Ok((_, stats))) = per_shard.first()
    {
        no_documents(&corpus.shards[0], stats)?;
    }
    // Every document's score in corpus order (NaN: none), without a copy.
    let all = || {
        per_shard
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|(s, _)| s.iter().copied())
    };
    let scored: Vec<f64> = all().filter(|s| !s.is_nan()).collect();
    let documents = all().count();
    if documents == 0 {
        fail!("{}: no documents found", args.input.display());
    }
    if scored.is_empty() {
        fail!(
            "no document is long enough to score: all {documents} are shorter than the rater's sequence length"
        );
    }
    let mut scores_hash = twox_hash::XxHash64::with_seed(0);
    for s in all() {
        scores_hash.write(&s.to_bits().to_le_bytes());
    }
    let (lo, hi) = min_max(&scored);

    // The rule, for the whole corpus.
    let keep_short = args.short == ShortPolicy::Keep;
    let mut settings = args.input_args.settings();
    settings["command"] = json!("filter");
    settings["scores_xxh64"] = json!(format!("{:016x}", scores_hash.finish()));
    settings["short"] = json!(if keep_short { "keep" } else { "discard" });
    settings["compression"] = json!(format!("{:?}", args.compression).to_lowercase());
    let (rule, threshold, mode_report) = match mode {
        Mode::Discard(fraction) => {
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
            settings["mode"] = json!("discard");
            settings["discard_fraction"] = json!(fraction);
            let rule = Rule::Discard {
                keep_scored,
                keep_short,
            };
            (
                rule,
                Some(threshold),
                json!({"mode": "discard", "discard_fraction": fraction, "threshold": threshold,
                       "quantile": "exact: every score is held (8 bytes a document)"}),
            )
        }
        Mode::Accept(rho) => {
            // The reference distribution: the corpus's first `--reference` scores.
            let reference: Vec<f64> = scored.iter().copied().take(args.reference).collect();
            let acceptor = Acceptor::new(EmpiricalCdf::new(&reference)?, args.accept_batch, rho)?;
            settings["mode"] = json!("accept");
            settings["rho"] = json!(rho);
            settings["seed"] = json!(args.seed);
            settings["accept_batch"] = json!(args.accept_batch);
            settings["reference"] = json!(args.reference);
            let r = json!({
                "mode": "accept", "rho": rho, "seed": args.seed,
                "accept_batch": args.accept_batch, "draw": acceptor.draw(),
                "reference_documents": reference.len(),
            });
            let rule = Rule::Accept {
                acceptor,
                seed: args.seed,
                keep_short,
            };
            (rule, None, r)
        }
    };
    if let Some(r) = &args.rater {
        settings["rater_xxh64"] = json!(agree(comm, file_checksum(r))?);
        settings["aggregate"] = json!(format!("{:?}", args.aggregate).to_lowercase());
        settings["batch_size"] = json!(args.batch_size);
    }
    let (digests, states) = plan(&corpus.shards, &outs, &settings, args.force, comm)?;
    let resuming = states.iter().any(|s| matches!(s, ShardState::Done(_)));
    on_root(comm, || {
        if !resuming {
            crate::output::check_absent(&report_path, args.force)?;
            crate::output::check_absent(&svg_path, args.force)?;
        }
        Ok(())
    })?;

    // Pass 2: write the shards not yet complete.
    let mut hist = Histogram::new(lo, hi, 40);
    let mut shard_reports = Vec::new();
    let mut invalid = corpus.invalid.clone();
    let mut total = PassStats::default();
    let (mut kept, mut first) = (0u64, 0usize);
    let mut done = states
        .iter()
        .filter(|s| matches!(s, ShardState::Done(_)))
        .count();
    let mut written: Result<()> = Ok(());
    let mut writing = CorpusProgress::new(
        "filter: writing",
        corpus.shards.len(),
        corpus.total_bytes(),
        comm,
    );
    for (k, shard) in corpus.shards.iter().enumerate() {
        let (scores, stats) = match &per_shard[k] {
            Ok(x) => x,
            Err(why) => {
                invalid.push((shard.rel.clone(), why.clone()));
                shard_reports.push(json!({"shard": shard.rel, "invalid": why}));
                writing.shard_done(shard, 0, 0, 0);
                continue;
            }
        };
        let keep = rule.decide(shard, scores, first);
        first += scores.iter().filter(|s| !s.is_nan()).count();
        for (s, k) in scores.iter().zip(&keep) {
            if !s.is_nan() {
                hist.add(*s, *k);
            }
        }
        let n_kept = keep.iter().filter(|k| **k).count() as u64;
        let short = stats.short;
        kept += n_kept;
        total.add(stats);
        let counts = json!({
            "documents": scores.len(), "kept": n_kept, "discarded": scores.len() as u64 - n_kept,
            "too_short": short, "text_bytes": stats.text_bytes,
        });
        let mut shard_report = json!({
            "shard": shard.rel, "output": outs[k], "documents": scores.len(), "kept": n_kept,
            "discarded": scores.len() as u64 - n_kept, "too_short": short,
            "kept_fraction": n_kept as f64 / scores.len().max(1) as f64,
            "skipped_invalid_records": stats.read.skipped,
            "too_long": stats.read.too_long,
        });
        if matches!(states[k], ShardState::Done(_)) {
            shard_report["resumed"] = json!("complete in an earlier run, not rewritten");
            shard_reports.push(shard_report);
            writing.shard_done(shard, scores.len() as u64, short, stats.text_bytes);
            continue;
        }
        if sharing.mine(k) && written.is_ok() {
            written = write_kept(
                shard,
                &opts,
                &keep,
                &outs[k],
                text_compressions[k],
                parquet_codec,
                sharing.work(),
                |digest| write_record(&outs[k], digests[k], &settings, digest, &counts),
            )
            .map_err(|e| explain(e, done, corpus.shards.len(), &args.out));
            done += 1;
        }
        writing.shard_done(shard, scores.len() as u64, short, stats.text_bytes);
        shard_reports.push(shard_report);
        test_delay();
    }
    sharing.agree(written)?;
    writing.finish();
    let secs = start.elapsed().as_secs_f64();
    let n = total.read.documents;
    let discarded = n - kept;
    let mut report = json!({
        "input": args.input.display().to_string(),
        "output": args.out.display().to_string(),
        "documents": n,
        "kept": kept,
        "discarded": discarded,
        "text_bytes": total.text_bytes,
        "too_short": total.short,
        "padded_short": total.padded,
        "too_short_policy": if keep_short { "keep" } else { "discard" },
        "skipped_invalid_records": total.read.skipped,
        "too_long": total.read.too_long,
        "max_document_bytes": args.input_args.max_document_bytes,
        "invalid_shards": invalid
            .iter()
            .map(|(rel, why)| json!({"shard": rel, "reason": why}))
            .collect::<Vec<_>>(),
        "histogram": svg_path.display().to_string(),
        "shards": shard_reports,
    });
    if let (Some(obj), Json::Object(m)) = (report.as_object_mut(), mode_report) {
        obj.extend(m);
    }
    let title = format!("Document scores: {kept} kept, {discarded} discarded");
    let svg = hist.svg(&title, threshold);
    let report_text = serde_json::to_string_pretty(&report).expect("JSON values serialise") + "\n";
    on_root(comm, || {
        crate::output::write_atomic(&svg_path, svg.as_bytes())?;
        crate::output::write_atomic(&report_path, report_text.as_bytes())
    })?;
    if comm.rank() != 0 {
        return Ok(());
    }
    println!(
        "kept {kept} of {} ({:.1}%), discarded {discarded}, in {} ({secs:.1}s)",
        count(n, "document"),
        100.0 * kept as f64 / n.max(1) as f64,
        count(corpus.shards.len() as u64, "shard")
    );
    if let Some(t) = threshold {
        println!(
            "discard threshold (one for the whole corpus): documents scoring below {t:.6} were dropped"
        );
    }
    let fate = if keep_short {
        "kept (--short discard drops them)"
    } else {
        "discarded"
    };
    report_common(&total, rater.as_ref().map(|r| r.seq_len), fate);
    report_invalid(&invalid);
    if corpus.shards.len() > 1 {
        println!("per shard (kept / documents, kept fraction):");
        for r in report["shards"].as_array().into_iter().flatten() {
            if r.get("invalid").is_none() {
                println!(
                    "  {}: {} / {} ({:.1}%){}",
                    r["shard"].as_str().unwrap_or("?"),
                    r["kept"],
                    r["documents"],
                    100.0 * r["kept_fraction"].as_f64().unwrap_or(0.0),
                    if r.get("resumed").is_some() {
                        " (already complete)"
                    } else {
                        ""
                    }
                );
            }
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

/// Writes the kept documents of `shard` (`keep[i]` for its i-th document) to `out_path`
/// in its format; `record` writes the shard's record before the rename. Collective.
#[allow(clippy::too_many_arguments)]
fn write_kept(
    shard: &Shard,
    opts: &InputOptions,
    keep: &[bool],
    out_path: &Path,
    compression: Compression,
    codec: Option<parquet::basic::Compression>,
    comm: &dyn Communicator,
    record: impl FnOnce(Digest) -> Result<()>,
) -> Result<()> {
    let mut out = OutputFile::create_shard(out_path, compression, comm)?;
    // Rank 0 alone reads and writes; every rank agrees on its outcome.
    let written = if comm.rank() == 0 {
        copy_kept(shard, opts, keep, &mut out, codec)
    } else {
        Ok(())
    };
    agree(comm, written)?;
    out.commit_with(comm, record)
}

fn copy_kept(
    shard: &Shard,
    opts: &InputOptions,
    keep: &[bool],
    out: &mut OutputFile,
    codec: Option<parquet::basic::Compression>,
) -> Result<()> {
    let seen = if shard.format == Format::Parquet {
        let mut it = keep.iter();
        let n = crate::input::parquet::copy_kept(
            shard,
            opts,
            codec,
            || it.next().copied().unwrap_or(false),
            &mut *out,
        )?;
        n as usize
    } else {
        let mut n = 0;
        for doc in shard.documents(opts, Arc::default())? {
            let doc = doc?;
            if n % 4096 == 0 {
                interrupt::check()?;
            }
            if keep.get(n).copied().unwrap_or(false) {
                out.write(&doc.raw)?;
                out.write(shard.format.separator())?;
            }
            n += 1;
        }
        n
    };
    if seen != keep.len() {
        fail!(
            "{}: the input changed while filtering ({} documents, then {seen})",
            shard.path.display(),
            keep.len()
        );
    }
    Ok(())
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// `out` with `.suffix` appended to its file name (`kept.jsonl` -> `kept.jsonl.report.json`).
pub fn sibling(out: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}
