//! The command line's arguments (clap derive): names and flags are a stable interface
//! that scripts rely on.

use crate::error::CliError;
use crate::input::{Compression, Format, InputOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};
use datarater::curate::documents::Aggregate;
use datarater::nn::TransformerConfig;
use std::path::PathBuf;

/// Meta-learned dataset curation: train a DataRater on your corpus, score it, filter it.
#[derive(Debug, Parser)]
#[command(name = "datarater", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments (exiting with clap's message on a usage error);
    /// see [`Cli::try_parse_args`].
    pub fn from_env() -> Cli {
        Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name), recording which `train` flags
    /// were given explicitly (so a resume can tell a chosen value from a default).
    ///
    /// # Errors
    /// clap's usage error (`--help` and `--version` are errors too, as in clap).
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Train(t), Some(m)) =
            (&mut cli.command, matches.subcommand_matches("train"))
        {
            t.explicit = m
                .ids()
                .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.to_string())
                .collect();
        }
        Ok(cli)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Meta-train a rater on training data against held-out data (or resume a run).
    Train(Box<TrainArgs>),
    /// Score every document of an input with a trained rater (JSON Lines out).
    Score(ScoreArgs),
    /// Keep the better documents of an input, byte for byte, in input order.
    Filter(FilterArgs),
    /// Did the curation help? Train a fresh LM on each corpus and compare held-out losses.
    Evaluate(EvaluateArgs),
}

/// `datarater evaluate`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each corpus gives a fresh causal LM of the given size, from one \
    initialisation (--seed), the same number of steps on batches drawn with one seed from \
    a sample of at most --sample-bytes of its sequences. Prints each corpus's final \
    held-out loss and the steps it needs to reach the first corpus's final loss, and \
    writes OUT.json (the curves) and OUT.svg (a plot). Give the raw corpus first to see \
    what a curation saves."
)]
pub struct EvaluateArgs {
    /// Held-out data the LMs are evaluated on.
    #[arg(long, value_name = "DATA")]
    pub held_out: PathBuf,
    /// The corpora to compare (files, directories of shards or globs).
    #[arg(value_name = "CORPUS", required = true)]
    pub corpora: Vec<PathBuf>,
    /// Where to write OUT.json and OUT.svg.
    #[arg(long, value_name = "OUT", default_value = "evaluation")]
    pub out: PathBuf,
    /// Training steps per corpus.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Evaluate the held-out loss every this many steps (and at the end).
    #[arg(long, default_value_t = 25)]
    pub eval_every: usize,
    /// Held-out sequences evaluated (a sample of --held-out).
    #[arg(long, default_value_t = 256)]
    pub eval_sequences: usize,
    /// Bytes of sequences sampled from each corpus.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub sample_bytes: u64,
    /// Seed of the initialisation, the samples and the batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Language model width (d_model; the MLP is 4x).
    #[arg(long, default_value_t = 32)]
    pub lm_width: usize,
    /// Language model layers.
    #[arg(long, default_value_t = 2)]
    pub lm_layers: usize,
    /// Language model attention heads.
    #[arg(long, default_value_t = 2)]
    pub lm_heads: usize,
    /// Bytes per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub input_args: InputArgs,
}

impl EvaluateArgs {
    /// The language model: as `train`'s inner model.
    ///
    /// # Errors
    /// `--lm-width` so large that the MLP's width overflows.
    pub fn lm_config(&self) -> Result<TransformerConfig, CliError> {
        lm_config(self.lm_width, self.lm_layers, self.lm_heads, self.seq_len)
    }
}

/// How the input is read.
#[derive(Debug, Args, Clone)]
pub struct InputArgs {
    /// Input format: `auto` detects each shard's own: Parquet, gzip and zstd by their
    /// magic bytes, then the extension (`.parquet`; `.jsonl`, `.ndjson`, `.json` ->
    /// jsonl; other text -> lines). Files of other formats (bzip2, xz, zip,
    /// executables, binary data) are refused by name.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// JSON Lines and Parquet: the field (column) holding the document's text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_field: String,
    /// JSON Lines and Parquet: the field (column) holding a document id, copied into
    /// score records when present.
    #[arg(long, default_value = "id", value_name = "NAME")]
    pub id_field: String,
    /// Skip (and count) malformed records, invalid UTF-8, records without the text
    /// field, and in `score` and `filter` whole corrupt shards (listed in the report),
    /// instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Skip (and count) documents whose text is longer than this many bytes (0: no
    /// limit). Skipped documents are not scored and not written.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub max_document_bytes: u64,
}

impl InputArgs {
    /// As reader options.
    pub fn options(&self) -> InputOptions {
        InputOptions {
            format: self.format,
            text_field: self.text_field.clone(),
            id_field: self.id_field.clone(),
            skip_invalid: self.skip_invalid,
            max_document_bytes: self.max_document_bytes,
        }
    }

    /// The settings that decide what is read, for run records.
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({
            "format": self.format.name(),
            "text_field": self.text_field,
            "id_field": self.id_field,
            "skip_invalid": self.skip_invalid,
            "max_document_bytes": self.max_document_bytes,
        })
    }
}

/// Compression of written shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputCompression {
    /// As the input shard (a single output file: from its name's `.gz` or `.zst`).
    Auto,
    /// Uncompressed (Parquet: uncompressed pages).
    None,
    /// gzip (text formats only).
    Gzip,
    /// zstd (Parquet: zstd pages).
    Zstd,
    /// Snappy (Parquet only).
    Snappy,
}

impl OutputCompression {
    /// The text-layer compression of an output; `input` is the input shard's, `name`
    /// the output's file name when it was given by the user.
    ///
    /// # Errors
    /// Snappy, which is not a text-layer compression.
    pub fn text(self, input: Compression, name: Option<&str>) -> crate::error::Result<Compression> {
        Ok(match self {
            OutputCompression::Auto => match name {
                Some(n) => Compression::detect_name(n),
                None => input,
            },
            OutputCompression::None => Compression::None,
            OutputCompression::Gzip => Compression::Gzip,
            OutputCompression::Zstd => Compression::Zstd,
            OutputCompression::Snappy => {
                crate::fail!(
                    "--compression snappy is for Parquet output; text shards take gzip or zstd"
                )
            }
        })
    }

    /// The Parquet codec of an output (`None`: as the input's).
    ///
    /// # Errors
    /// gzip, which this build does not write into Parquet.
    pub fn parquet(self) -> crate::error::Result<Option<parquet::basic::Compression>> {
        use parquet::basic::{Compression as C, ZstdLevel};
        Ok(match self {
            OutputCompression::Auto => None,
            OutputCompression::None => Some(C::UNCOMPRESSED),
            OutputCompression::Zstd => Some(C::ZSTD(ZstdLevel::default())),
            OutputCompression::Snappy => Some(C::SNAPPY),
            OutputCompression::Gzip => {
                crate::fail!(
                    "--compression gzip is for text output; Parquet shards take none, snappy or zstd"
                )
            }
        })
    }
}

/// How chunk scores become a document score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AggregateArg {
    /// Mean of the chunk scores.
    Mean,
    /// Lowest chunk score.
    Min,
}

impl From<AggregateArg> for Aggregate {
    fn from(a: AggregateArg) -> Aggregate {
        match a {
            AggregateArg::Mean => Aggregate::Mean,
            AggregateArg::Min => Aggregate::Min,
        }
    }
}

/// `datarater score`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each document is cut into sequences of the rater's length (the last one \
    aligned to the document's end); its score is the mean (or min) of their scores. \
    Documents shorter than one sequence get \"score\": null and are counted. \
    A file in gives one score file out; a directory or glob in gives, under OUT, one \
    attribute shard per input shard at the same relative path (NAME.scores.jsonl, \
    compressed as the input). A rerun skips the shards already complete."
)]
pub struct ScoreArgs {
    /// The rater file written by `datarater train` (RUN_DIR/rater.safetensors).
    #[arg(long, value_name = "FILE")]
    pub rater: PathBuf,
    /// The documents: a file, a directory of shards or a glob (quote it).
    #[arg(long, value_name = "DATA")]
    pub input: PathBuf,
    /// Where to write one JSON object per document (doc, line, id, bytes, chunks,
    /// score): a file for a file in, a directory for shards in.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Compression of the score files.
    #[arg(long, value_enum, default_value_t = OutputCompression::Auto)]
    pub compression: OutputCompression,
    /// How a document's chunk scores are combined.
    #[arg(long, value_enum, default_value_t = AggregateArg::Mean)]
    pub aggregate: AggregateArg,
    /// Sequences per rater forward pass (small batches stay in cache: 16 measured
    /// fastest for the default rater).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Overwrite existing output files, and redo shards written with other settings.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub input_args: InputArgs,
}

/// How `filter` decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FilterMode {
    /// Drop the lowest-scoring fraction of the whole input (exact quantile; two passes,
    /// holding only the scores).
    Discard,
    /// The paper's one-pass streaming acceptance: accept each document with the
    /// probability that it survives keeping the top N of ceil(N / (1 - rho)) draws.
    Accept,
}

/// What happens to documents too short to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShortPolicy {
    /// Keep them (the rater has no opinion on them).
    Keep,
    /// Discard them.
    Discard,
}

/// `datarater filter`.
#[derive(Debug, Args)]
#[command(
    after_help = "Writes OUT (the kept documents exactly as in the input, in input order; \
    lines and JSON Lines end with a newline, paragraphs are separated by a blank line; \
    Parquet rows with every column), OUT.report.json (counts, per-shard counts, settings) \
    and OUT.histogram.svg. A directory or glob in gives a directory out with one shard per \
    input shard at the same relative path, in the same format. One threshold (or \
    acceptance rule) holds for the whole corpus. A rerun skips the shards already complete."
)]
pub struct FilterArgs {
    /// The rater file (not needed with --scores).
    #[arg(long, value_name = "FILE", required_unless_present = "scores")]
    pub rater: Option<PathBuf>,
    /// The documents: a file, a directory of shards or a glob (quote it).
    #[arg(long, value_name = "DATA")]
    pub input: PathBuf,
    /// Where to write the kept documents: a file for a file in, a directory for
    /// shards in.
    #[arg(long, value_name = "KEPT")]
    pub out: PathBuf,
    /// Compression of the kept shards.
    #[arg(long, value_enum, default_value_t = OutputCompression::Auto)]
    pub compression: OutputCompression,
    /// Decision rule.
    #[arg(long, value_enum, default_value_t = FilterMode::Discard)]
    pub mode: FilterMode,
    /// Discard mode (the default): fraction of the scored documents to drop, lowest
    /// scores first (required in this mode).
    #[arg(long, value_name = "F")]
    pub discard_fraction: Option<f64>,
    /// Accept mode: the filter fraction rho in [0, 1) (required in this mode).
    #[arg(long, value_name = "R")]
    pub rho: Option<f64>,
    /// Accept mode: seed of the acceptance decisions.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Accept mode: the batch size N whose top-N selection is emulated.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub accept_batch: usize,
    /// Accept mode: how many leading documents' scores form the reference distribution.
    #[arg(long, default_value_t = 10_000, value_name = "DOCS")]
    pub reference: usize,
    /// Reuse the scores written by `datarater score` for this input (its OUT: a file,
    /// or the directory of attribute shards) instead of scoring.
    #[arg(long, value_name = "SCORES")]
    pub scores: Option<PathBuf>,
    /// What to do with documents too short to score.
    #[arg(long, value_enum, default_value_t = ShortPolicy::Keep)]
    pub short: ShortPolicy,
    /// How a document's chunk scores are combined.
    #[arg(long, value_enum, default_value_t = AggregateArg::Mean)]
    pub aggregate: AggregateArg,
    /// Sequences per rater forward pass (small batches stay in cache: 16 measured
    /// fastest for the default rater).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Overwrite existing output files, and redo shards written with other settings.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub input_args: InputArgs,
}

/// `datarater train`.
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "Documents are cut into --seq-len-byte sequences (the last one aligned to the \
    document's end; shorter documents are counted and unused). RUN_DIR receives \
    checkpoint.safetensors (the whole training state, written atomically every \
    --checkpoint-every steps, on Ctrl-C and at the end) and rater.safetensors. With --resume, \
    settings come from the run; a flag given explicitly must agree with it (--outer-steps may \
    be raised to train longer)."
)]
pub struct TrainArgs {
    /// Training data (what the rater learns to curate).
    #[arg(long, value_name = "DATA", required_unless_present = "resume")]
    pub train: Option<PathBuf>,
    /// Held-out data (what the curated model should do well on).
    #[arg(long, value_name = "DATA", required_unless_present = "resume")]
    pub held_out: Option<PathBuf>,
    /// The run directory: checkpoint and rater.safetensors go here.
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in RUN_DIR.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["train", "held_out", "out"])]
    pub resume: Option<PathBuf>,
    /// Outer (meta) steps K.
    #[arg(long, default_value_t = 200)]
    pub outer_steps: usize,
    /// Inner steps per outer step T.
    #[arg(long, default_value_t = 2)]
    pub inner_steps: usize,
    /// Inner language models in the population.
    #[arg(long, default_value_t = 2)]
    pub population: usize,
    /// Re-initialise each inner model every this many outer steps (0 = never).
    /// Ignored with --target-steps.
    #[arg(long, default_value_t = 50)]
    pub reset_every: usize,
    /// Value data for a model trained about N steps: inner models are warm-started to
    /// ages spread over 0..N and re-initialised at age N (see docs/guide.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub target_steps: Option<u64>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Meta-optimiser (Adam) learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub meta_lr: f64,
    /// Inner optimiser (Adam) learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub inner_lr: f64,
    /// Language model width (d_model; the MLP is 4x).
    #[arg(long, default_value_t = 32)]
    pub lm_width: usize,
    /// Language model layers.
    #[arg(long, default_value_t = 2)]
    pub lm_layers: usize,
    /// Language model attention heads.
    #[arg(long, default_value_t = 2)]
    pub lm_heads: usize,
    /// Rater width (d_model; the MLP is 2x).
    #[arg(long, default_value_t = 32)]
    pub rater_width: usize,
    /// Rater layers.
    #[arg(long, default_value_t = 1)]
    pub rater_layers: usize,
    /// Rater attention heads.
    #[arg(long, default_value_t = 2)]
    pub rater_heads: usize,
    /// Bytes per sequence (documents are cut into sequences of this length).
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Sequences per inner and outer batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Write a checkpoint every N outer steps (and always at the end).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub checkpoint_every: usize,
    /// Overwrite a RUN_DIR that already holds a run.
    #[arg(long)]
    pub force: bool,
    /// The format of --train when detection cannot tell (default: --format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub train_format: Option<Format>,
    /// The format of --held-out when detection cannot tell (default: --format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub held_out_format: Option<Format>,
    /// At most this many bytes of sequences are drawn from --train (and from
    /// --held-out): a uniform sample over all their shards, fixed by --seed and the
    /// shard list, so memory does not grow with the corpus.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub train_sample_bytes: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub input_args: InputArgs,
    /// Ids of the flags given on the command line (filled by [`Cli::from_env`]), so a
    /// resume can tell a chosen value from a default.
    #[arg(skip)]
    pub explicit: Vec<String>,
}

impl TrainArgs {
    /// The rater's model: a bidirectional transformer over `seq_len` bytes, MLP 2x wide.
    ///
    /// # Errors
    /// `--rater-width` so large that the MLP's width overflows.
    pub fn rater_config(&self) -> Result<TransformerConfig, CliError> {
        Ok(TransformerConfig::new(
            self.rater_width,
            self.rater_layers,
            self.rater_heads,
            self.seq_len,
        )
        .with_d_ff(widened(self.rater_width, 2, "--rater-width")?)
        .with_causal(false))
    }

    /// The inner language model: a causal transformer reading `seq_len - 1` bytes, MLP 4x wide.
    ///
    /// # Errors
    /// `--lm-width` so large that the MLP's width overflows.
    pub fn lm_config(&self) -> Result<TransformerConfig, CliError> {
        lm_config(self.lm_width, self.lm_layers, self.lm_heads, self.seq_len)
    }
}

/// The byte LM of `train` and `evaluate`: causal, reading `seq_len - 1` bytes, MLP 4x
/// `width` (an error naming `--lm-width` when that overflows).
fn lm_config(
    width: usize,
    layers: usize,
    heads: usize,
    seq_len: usize,
) -> Result<TransformerConfig, CliError> {
    Ok(
        TransformerConfig::new(width, layers, heads, seq_len.saturating_sub(1).max(1))
            .with_d_ff(widened(width, 4, "--lm-width")?),
    )
}

/// `factor * width`, the MLP's width, or an error naming `flag`.
fn widened(width: usize, factor: usize, flag: &str) -> Result<usize, CliError> {
    width.checked_mul(factor).ok_or_else(|| {
        CliError(format!(
            "{flag} {width} is too large (its MLP would be {factor}x as wide)"
        ))
    })
}
