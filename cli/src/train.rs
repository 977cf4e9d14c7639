//! `datarater train`: Algorithm 1 on the user's training and held-out data, as a thin
//! driver over the library's `Trainer::step`, with checkpoints, resume and Ctrl-C.
//!
//! The run directory holds `checkpoint.safetensors` (the whole training state and the
//! run's settings, see `datarater::checkpoint`) and `rater.safetensors` (the rater
//! file, rewritten with every checkpoint so a stopped run still leaves a usable rater).
//!
//! Under `mpirun` (a build with the `mpi` feature) the population is split over the
//! ranks (`datarater::distributed`): every rank reads the data, rank 0 alone prepares
//! the run directory, writes the files and shows progress, and every decision that
//! could differ between ranks (a failure, Ctrl-C) is agreed on before anyone acts.

use crate::args::TrainArgs;
use crate::error::{CliError, Result, io_error};
use crate::fail;
use crate::input::{Corpus, Format, InputOptions};
use crate::output::replace;
use crate::progress::{Progress, Unit};
use crate::{agree, on_root};
use datarater::checkpoint::{encode_checkpoint, read_checkpoint_configs};
use datarater::curate::documents::chunk_spans;
use datarater::curate::rater_file::{RaterFile, config_from_json, config_to_json};
use datarater::distributed::{self, Communicator, RankState};
use datarater::meta::{MeanLoss, Mode};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::Adam;
use datarater::trainer::{
    MetaAdam, MetaAdamState, Sequences, Setup, TextLm, TextPool, TextRater, Trainer, TrainerConfig,
};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The checkpoint's file name in a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The rater file's name in a run directory.
pub const RATER: &str = "rater.safetensors";
/// Seeds of the training and held-out samples' streams (xor the run's seed), apart
/// from every stream the trainer draws.
const TRAIN_STREAM: u64 = 0x7361_6d70_6c65_0001;
const HELD_STREAM: u64 = 0x7361_6d70_6c65_0002;

/// A reproducible sample of a corpus's sequences (see [`sample`]).
pub(crate) struct Sample {
    /// The sampled sequences, in one buffer.
    pub(crate) seqs: Sequences,
    /// Documents read.
    pub(crate) docs: u64,
    /// Documents too short to use.
    pub(crate) short: u64,
    /// Sequences in the whole corpus.
    pub(crate) total: u64,
    /// The shards read (relative path, size), in order: what the sample is drawn from.
    pub(crate) shards: Json,
}

/// Cuts every document of `path` into `seq_len`-byte sequences (the chunking rule of
/// `datarater::curate::documents`) and keeps a uniform sample of at most `max_bytes`
/// of them (all of them if they fit): a reservoir over the corpus in shard order,
/// drawn from `seed`, so the sample is a function of the seed and the shards, and
/// memory is bounded by `max_bytes` whatever the corpus's size.
pub(crate) fn sample(
    path: &Path,
    opts: &InputOptions,
    seq_len: usize,
    max_bytes: u64,
    seed: u64,
) -> Result<Sample> {
    let corpus = Corpus::open(path, opts)?;
    let capacity = usize::try_from(max_bytes / seq_len as u64)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut rng = datarater::Rng::new(seed);
    let mut seqs = Sequences::new(seq_len)?;
    let (mut docs, mut short, mut total) = (0u64, 0u64, 0u64);
    for shard in &corpus.shards {
        for doc in shard.documents(opts, Arc::default())? {
            let doc = doc?;
            // A short document is one sequence, padded (the rule `score` applies to
            // raters trained so).
            let padded = crate::scoring::padded(doc.text(), seq_len);
            let text = padded.as_deref().unwrap_or(doc.text());
            let spans = chunk_spans(text.len(), seq_len);
            docs += 1;
            if padded.is_some() || spans.is_empty() {
                short += 1;
            }
            for r in spans {
                total += 1;
                if seqs.len() < capacity {
                    if seqs.len() == seqs.capacity() {
                        // Double, but never past the sample's bound.
                        seqs.reserve_exact(seqs.len().max(1024).min(capacity - seqs.len()));
                    }
                    seqs.push(&text[r])?;
                } else {
                    // Algorithm R: sequence `total` replaces a kept one with probability
                    // capacity / total.
                    let j = rng.next_u64() % total;
                    if let Some(slot) = seqs.get_mut(j as usize) {
                        slot.copy_from_slice(&text[r]);
                    }
                }
            }
        }
    }
    let shards = corpus
        .shards
        .iter()
        .map(|s| json!([s.rel.display().to_string(), s.bytes]))
        .collect();
    Ok(Sample {
        seqs,
        docs,
        short,
        total,
        shards,
    })
}

/// FNV-1a of a pool's bytes, recorded so a resume on changed data is refused.
fn fingerprint(seqs: &Sequences) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in seqs.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The settings a run is defined by (everything but `outer_steps` and
/// `checkpoint_every`, which a resume may change).
fn settings(
    a: &TrainArgs,
    train: &Path,
    held_out: &Path,
    lm: &TransformerConfig,
    rater: &TransformerConfig,
) -> Json {
    let mut s = json!({
        "train": train.display().to_string(),
        "held_out": held_out.display().to_string(),
        "format": a.input_args.format.name(),
        "train_format": a.train_format.map(Format::name),
        "held_out_format": a.held_out_format.map(Format::name),
        "train_sample_bytes": a.train_sample_bytes,
        "id_field": a.input_args.id_field,
        "max_document_bytes": a.input_args.max_document_bytes,
        "text_field": a.input_args.text_field,
        "skip_invalid": a.input_args.skip_invalid,
        "lm": config_to_json(lm),
        "rater": config_to_json(rater),
        "seq_len": a.seq_len,
        "short_documents": crate::scoring::SHORT_RULE,
        "batch_size": a.batch_size,
        "inner_steps": a.inner_steps,
        "population": a.population,
        "reset_every": a.reset_every,
        "seed": a.seed,
        "meta_lr": a.meta_lr,
        "inner_lr": a.inner_lr,
    });
    // Recorded only when set, so runs from before the flag resume unchanged.
    if let Some(n) = a.target_steps {
        s["target_steps"] = json!(n);
    }
    s
}

/// Flags whose values come from the run on `--resume` unless given explicitly.
fn apply_recorded(a: &mut TrainArgs, s: &Json) -> Result<()> {
    let bad = |k: &str| CliError(format!("the checkpoint's settings have no valid `{k}`"));
    let u = |k: &str| {
        s.get(k)
            .and_then(Json::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| bad(k))
    };
    let f = |k: &str| s.get(k).and_then(Json::as_f64).ok_or_else(|| bad(k));
    let given = |id: &str| a.explicit.iter().any(|e| e == id);
    macro_rules! recorded {
        ($field:ident, $value:expr) => {
            if !given(stringify!($field)) {
                a.$field = $value;
            }
        };
    }
    let lm = config_from_json(s.get("lm").ok_or_else(|| bad("lm"))?, true)?;
    let rater = config_from_json(s.get("rater").ok_or_else(|| bad("rater"))?, false)?;
    recorded!(lm_width, lm.d_model);
    recorded!(lm_layers, lm.n_layers);
    recorded!(lm_heads, lm.n_heads);
    recorded!(rater_width, rater.d_model);
    recorded!(rater_layers, rater.n_layers);
    recorded!(rater_heads, rater.n_heads);
    recorded!(seq_len, u("seq_len")?);
    recorded!(batch_size, u("batch_size")?);
    recorded!(inner_steps, u("inner_steps")?);
    recorded!(population, u("population")?);
    recorded!(reset_every, u("reset_every")?);
    recorded!(target_steps, s.get("target_steps").and_then(Json::as_u64));
    recorded!(seed, u("seed")? as u64);
    recorded!(meta_lr, f("meta_lr")?);
    recorded!(inner_lr, f("inner_lr")?);
    recorded!(outer_steps, u("outer_steps")?);
    recorded!(checkpoint_every, u("checkpoint_every")?);
    let text = |k: &str| s.get(k).and_then(Json::as_str).ok_or_else(|| bad(k));
    if !given("text_field") {
        a.input_args.text_field = text("text_field")?.to_string();
    }
    if !given("format") {
        a.input_args.format = Format::from_name(text("format")?).unwrap_or(Format::Auto);
    }
    if !given("train_sample_bytes") {
        a.train_sample_bytes = s
            .get("train_sample_bytes")
            .and_then(Json::as_u64)
            .ok_or_else(|| bad("train_sample_bytes"))?;
    }
    if !given("max_document_bytes") {
        a.input_args.max_document_bytes = s
            .get("max_document_bytes")
            .and_then(Json::as_u64)
            .unwrap_or(0);
    }
    if !given("id_field") {
        a.input_args.id_field = text("id_field")?.to_string();
    }
    let format = |k: &str| s.get(k).and_then(Json::as_str).and_then(Format::from_name);
    if !given("train_format") {
        a.train_format = format("train_format");
    }
    if !given("held_out_format") {
        a.held_out_format = format("held_out_format");
    }
    if !given("skip_invalid") {
        a.input_args.skip_invalid = s
            .get("skip_invalid")
            .and_then(Json::as_bool)
            .unwrap_or(false);
    }
    Ok(())
}

/// One finished outer step, as [`train_with`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInfo {
    /// Outer steps done (this one included).
    pub step: usize,
    /// Outer steps the run trains for.
    pub outer_steps: usize,
    /// The step's mean held-out (outer) loss.
    pub held_out_loss: f64,
    /// The mean norm of the population's meta-gradients.
    pub meta_grad_norm: f64,
}

/// `datarater train` (on every rank of `comm`).
pub fn train(args: &TrainArgs, comm: &dyn Communicator) -> Result<()> {
    train_with(args, comm, &mut |_| {})
}

/// [`train`], calling `on_step` after every outer step, before the run checks for
/// Ctrl-C ([`crate::interrupt::request`] from it stops the run after this step, with a
/// checkpoint) and writes a checkpoint due at this step.
pub fn train_with(
    args: &TrainArgs,
    comm: &dyn Communicator,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<()> {
    let root = comm.rank() == 0;
    let mut a = args.clone();
    let resuming = a.resume.is_some();
    let (run_dir, train_path, held_path, recorded) = match a.resume.clone() {
        Some(dir) => {
            let ckpt = dir.join(CHECKPOINT);
            if !ckpt.exists() {
                fail!(
                    "{}: no checkpoint to resume from (was the run started with `datarater train --out {}`?)",
                    ckpt.display(),
                    dir.display()
                );
            }
            let recorded = read_checkpoint_configs(&ckpt)?;
            apply_recorded(&mut a, &recorded)?;
            let path = |k: &str| {
                recorded
                    .get(k)
                    .and_then(Json::as_str)
                    .map(PathBuf::from)
                    .ok_or_else(|| CliError(format!("the checkpoint's settings have no `{k}`")))
            };
            (dir, path("train")?, path("held_out")?, Some(recorded))
        }
        None => {
            // clap requires these without --resume; a library caller may not have.
            let need = |v: &Option<PathBuf>, flag: &str| {
                v.clone()
                    .ok_or_else(|| CliError(format!("train needs {flag} (or --resume RUN_DIR)")))
            };
            (
                need(&a.out, "--out RUN_DIR")?,
                need(&a.train, "--train DATA")?,
                need(&a.held_out, "--held-out DATA")?,
                None,
            )
        }
    };
    if a.checkpoint_every == 0 {
        fail!("--checkpoint-every must be at least 1");
    }
    if a.seq_len < 2 {
        fail!("--seq-len must be at least 2 (an input byte and the byte that follows it)");
    }
    let (lm_config, rater_config) = (a.lm_config()?, a.rater_config()?);
    check_sizes(&a, &lm_config, &rater_config)?;
    // The run directory must be writable before any work; what this creates is removed
    // again if the run fails before writing a checkpoint into it.
    let mut created = CreatedDirs(
        on_root(comm, || prepare_run_dir(&run_dir, resuming, a.force))?.unwrap_or_default(),
    );
    let opts = a.input_args.options();
    let mut train_opts = a.input_args.options();
    train_opts.format = a.train_format.unwrap_or(opts.format);
    let mut held_opts = opts.clone();
    held_opts.format = a.held_out_format.unwrap_or(opts.format);
    let max = a.train_sample_bytes;
    let train = agree(
        comm,
        sample(
            &train_path,
            &train_opts,
            a.seq_len,
            max,
            a.seed ^ TRAIN_STREAM,
        ),
    )?;
    let held = agree(
        comm,
        sample(&held_path, &held_opts, a.seq_len, max, a.seed ^ HELD_STREAM),
    )?;
    let (train_seqs, train_docs, train_short) = (train.seqs, train.docs, train.short);
    let (held_seqs, held_docs) = (held.seqs, held.docs);
    let mut configs = settings(&a, &train_path, &held_path, &lm_config, &rater_config);
    configs["data"] = json!({
        "train_sequences": train_seqs.len(),
        "train_fingerprint": fingerprint(&train_seqs),
        "held_out_sequences": held_seqs.len(),
        "held_out_fingerprint": fingerprint(&held_seqs),
        "train_corpus_sequences": train.total,
        "held_out_corpus_sequences": held.total,
        "train_shards": train.shards,
        "held_out_shards": held.shards,
    });
    // Every rank reads the data itself: ranks that read different data would train
    // different members on it, silently.
    let data = configs["data"].to_string();
    if comm
        .all_gather_bytes(data.as_bytes())
        .iter()
        .any(|d| d != data.as_bytes())
    {
        fail!(
            "the ranks read different training or held-out data (every rank reads it: it must be the same at the same path on every node)"
        );
    }
    if train_seqs.is_empty() {
        fail!(
            "{}: no document is long enough to train on: all {train_docs} are empty (shorter ones are padded to --seq-len {})",
            train_path.display(),
            a.seq_len
        );
    }
    if held_seqs.len() < a.batch_size {
        fail!(
            "{}: the held-out data is too small for one batch: {} sequences of {} bytes from {held_docs} documents, but --batch-size is {}",
            held_path.display(),
            held_seqs.len(),
            a.seq_len,
            a.batch_size
        );
    }
    // The run's length and checkpoint interval may change on resume: compare the
    // recorded ones, then record the new ones.
    let resumable = |c: &mut Json, from: &TrainArgs| {
        c["outer_steps"] = json!(from.outer_steps);
        c["checkpoint_every"] = json!(from.checkpoint_every);
    };
    let expected = match &recorded {
        Some(r) => {
            let mut e = configs.clone();
            e["outer_steps"] = r["outer_steps"].clone();
            e["checkpoint_every"] = r["checkpoint_every"].clone();
            e
        }
        None => configs.clone(),
    };
    resumable(&mut configs, &a);
    if root {
        println!(
            "{}training data: {train_docs} documents in {} -> {} sequences of {} bytes ({train_short} shorter documents padded with NUL bytes to one sequence), sampled {} of them (--train-sample-bytes {}); held-out: {held_docs} documents -> {} sequences, sampled {}",
            if resuming { "resuming; " } else { "" },
            configs["data"]["train_shards"]
                .as_array()
                .map_or(0, Vec::len),
            train.total,
            a.seq_len,
            train_seqs.len(),
            a.train_sample_bytes,
            held.total,
            held_seqs.len()
        );
    }

    let inner = TextLm::new(CausalLm::new(lm_config)?, Adam::new(a.inner_lr as f32))?;
    let scorer = SequenceScorer::new(rater_config)?;
    let rater = TextRater {
        scorer: scorer.clone(),
    };
    let meta_opt = MetaAdam::default()
        .with_lr(a.meta_lr)
        .with_weight_decay(0.01)
        .with_warmup_steps(20)
        .with_clip_norm(1.0);
    let train_pool = TextPool::new(train_seqs, a.batch_size)?;
    let held_pool = TextPool::new(held_seqs, a.batch_size)?;
    let config = TrainerConfig::default()
        .with_outer_steps(a.outer_steps)
        .with_inner_steps(a.inner_steps)
        .with_population(a.population)
        .with_reset_every(a.reset_every)
        .with_mode(Mode::Mixed)
        .with_seed(a.seed);
    let config = match a.target_steps {
        Some(n) => config.for_target(n as usize),
        None => config,
    };
    let trainer = Trainer::new(
        Setup {
            inner: &inner,
            rater: &rater,
            outer: &MeanLoss,
            meta_opt: &meta_opt,
            train: &train_pool,
            held_out: &held_pool,
        },
        config,
    )?;
    let ckpt = run_dir.join(CHECKPOINT);
    // Each rank holds the rater and its own members.
    let mut state: RankState<f32, MetaAdamState<f32>> = match recorded {
        Some(_) => distributed::load_checkpoint(&ckpt, &expected, comm)?,
        None => distributed::init(&trainer, comm, None)?,
    };
    // Rank 0 writes both files (through the command line's one file writer, see
    // `crate::output`); the checkpoint first, so the rater never runs ahead of it.
    let save = |state: &RankState<f32, MetaAdamState<f32>>| -> Result<()> {
        let checkpoint = state
            .gather(comm)
            .and_then(|full| full.map(|f| encode_checkpoint(&f, &configs)).transpose());
        let checkpoint = agree(comm, checkpoint)?;
        replace(&ckpt, checkpoint.as_deref(), comm)?;
        let rater_file = on_root(comm, || {
            let mut training = configs.clone();
            training["outer_steps_done"] = json!(state.local.step);
            Ok(RaterFile {
                scorer: scorer.clone(),
                seq_len: a.seq_len,
                training,
                eta: state.local.eta.clone(),
            }
            .to_bytes()?)
        })?;
        replace(&run_dir.join(RATER), rater_file.as_deref(), comm)
    };
    if !resuming {
        save(&state)?;
    }

    // A second Ctrl-C while the step finishes kills the process (the last checkpoint
    // is intact either way). A library caller may train more than once: a Ctrl-C of
    // an earlier run does not stop this one.
    crate::interrupt::install()?;
    crate::interrupt::reset();
    // Progress is shown once, by rank 0.
    let mut progress = root.then(|| {
        Progress::new(
            "train",
            Unit::Steps,
            a.outer_steps as u64,
            state.local.step as u64,
        )
    });
    let resume_hint = format!("datarater train --resume {}", run_dir.display());
    let mut last_saved = state.local.step;
    let mut last_msg = String::from("nothing to do");
    while state.local.step < a.outer_steps {
        let report = match distributed::step(&trainer, comm, &mut state) {
            Ok(r) => r,
            Err(e) => {
                finish(&mut progress, "stopped");
                fail!(
                    "outer step {} failed: {e}. The last good checkpoint (after step {last_saved}) is intact in {}",
                    state.local.step,
                    run_dir.display()
                );
            }
        };
        let meta_grad_norm = report.grad_norms.iter().sum::<f64>() / report.grad_norms.len() as f64;
        on_step(&StepInfo {
            step: state.local.step,
            outer_steps: a.outer_steps,
            held_out_loss: report.mean_outer_loss(),
            meta_grad_norm,
        });
        // Ranks may see Ctrl-C at different steps: stop when any rank has.
        let interrupted = comm
            .all_gather_bytes(&[u8::from(crate::interrupt::requested())])
            .iter()
            .any(|b| b == &[1]);
        let step = state.local.step;
        if step % a.checkpoint_every == 0 || step == a.outer_steps || interrupted {
            save(&state)?;
            last_saved = step;
        }
        let msg = format!(
            "held-out loss {:.4}, |meta-grad| {meta_grad_norm:.2e}",
            report.mean_outer_loss(),
        );
        if let Some(p) = progress.as_mut() {
            p.set(step as u64, &msg);
        }
        last_msg.clone_from(&msg);
        if interrupted {
            finish(&mut progress, &msg);
            fail!(
                "interrupted: stopped after outer step {step} of {} and wrote a checkpoint; continue with `{resume_hint}`",
                a.outer_steps
            );
        }
    }
    if last_saved != state.local.step {
        save(&state)?;
    }
    finish(&mut progress, &last_msg);
    created.keep();
    if root {
        println!(
            "trained {} outer steps; wrote {} (use it with `datarater score --rater {}`)",
            state.local.step,
            run_dir.join(RATER).display(),
            run_dir.join(RATER).display()
        );
    }
    Ok(())
}

/// Refuses settings whose models or inner windows need more bytes than one allocation
/// may have ([`refuse_oversized`]).
fn check_sizes(a: &TrainArgs, lm: &TransformerConfig, rater: &TransformerConfig) -> Result<()> {
    let n = |x: usize| Some(x as u128);
    let (lm_p, rater_p) = (
        transformer_params(lm, lm.vocab),
        transformer_params(rater, 1),
    );
    // Each member: its language model and Adam's two moments, and the rater's meta-Adam
    // state; the mixed-mode meta-gradient keeps every inner step's gradient.
    let member = add(mul(lm_p, n(3)), mul(rater_p, n(3)));
    refuse_oversized(&[
        (
            "the language model (--lm-width, --lm-layers, --seq-len)",
            f32s(lm_p),
        ),
        (
            "the rater (--rater-width, --rater-layers, --seq-len)",
            f32s(rater_p),
        ),
        (
            "the population (--population)",
            f32s(mul(member, n(a.population))),
        ),
        (
            "one window's inner gradients (--inner-steps)",
            f32s(mul(lm_p, n(a.inner_steps))),
        ),
        (
            "one window's batches (--inner-steps, --batch-size, --seq-len)",
            mul(mul(n(a.inner_steps), n(a.batch_size)), n(a.seq_len)),
        ),
    ])
}

/// Byte counts in `u128`; `None` is one past any count (an overflow).
pub(crate) type Bytes = Option<u128>;

pub(crate) fn mul(x: Bytes, y: Bytes) -> Bytes {
    x?.checked_mul(y?)
}

fn add(x: Bytes, y: Bytes) -> Bytes {
    x?.checked_add(y?)
}

/// The bytes of `x` f32 numbers.
pub(crate) fn f32s(x: Bytes) -> Bytes {
    mul(x, Some(4))
}

/// Parameters of a transformer with a `head`-wide output (its weights and biases).
pub(crate) fn transformer_params(c: &TransformerConfig, head: usize) -> Bytes {
    let n = |x: usize| Some(x as u128);
    let (d, f) = (n(c.d_model), n(c.d_ff));
    let layer = [mul(mul(n(4), d), d), mul(mul(n(2), d), f), f, mul(n(9), d)]
        .into_iter()
        .try_fold(0u128, |acc, x| acc.checked_add(x?));
    let embeddings = mul(add(n(c.vocab), n(c.max_len)), d);
    add(
        add(embeddings, mul(n(c.n_layers), layer)),
        mul(add(d, n(1)), n(head)),
    )
}

/// Refuses settings with a part (what it is, named by its flags; its bytes) larger
/// than one allocation may be (`isize::MAX`): they could never run, and would
/// otherwise stop deep in the library on an arithmetic or capacity overflow. (Smaller
/// ones that do not fit in this machine's memory fail when allocated, as in any
/// program.)
pub(crate) fn refuse_oversized(parts: &[(&str, Bytes)]) -> Result<()> {
    for (what, bytes) in parts {
        if bytes.is_none_or(|b| b > isize::MAX as u128) {
            fail!(
                "{what} would need more than {} bytes: no process can hold it",
                isize::MAX
            );
        }
    }
    Ok(())
}

/// The directories `train` created for its run directory, outermost first; dropped
/// without [`CreatedDirs::keep`] (a failed run), it removes those still empty, so a
/// failure leaves no empty run directory behind (and never touches a file).
struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// The run succeeded: keep them.
    fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Fails (and stops) at a directory that is not empty: a checkpoint was written.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// Ends rank 0's progress display.
fn finish(progress: &mut Option<Progress>, msg: &str) {
    if let Some(p) = progress {
        p.finish(msg);
    }
}

/// Creates the run directory (or checks the one to resume) and proves it writable;
/// returns the directories it created, outermost first.
fn prepare_run_dir(dir: &Path, resuming: bool, force: bool) -> Result<Vec<PathBuf>> {
    if !resuming && dir.join(CHECKPOINT).exists() && !force {
        fail!(
            "{}: already holds a run (resume it with `datarater train --resume {}`, or pass --force to start over)",
            dir.display(),
            dir.display()
        );
    }
    let mut created: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    created.reverse();
    let mut dirs = CreatedDirs(created);
    std::fs::create_dir_all(dir)
        .map_err(|e| io_error(dir, "cannot create the run directory", e))?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| io_error(dir, "cannot write to the run directory", e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(std::mem::take(&mut dirs.0))
}
