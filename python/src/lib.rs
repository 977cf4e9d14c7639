//! `datarater._native`: the DataRater's Python extension module (PyO3, stable ABI).
//!
//! A thin layer over the `datarater` library and the command line's code
//! (`datarater_cli`): scoring uses the command line's rule ([`score_texts`]), and
//! `train`, `score_files` and `filter_files` build the command line's own argument
//! structs by parsing an argument vector with its clap definitions (so the settings,
//! their defaults and their checks have one source), then run its functions. The
//! Python package around it (`datarater/__init__.py`) documents the API; see
//! `docs/python.md`.
//!
//! Threads: scoring runs on rayon's global pool with the interpreter released
//! ([`Python::detach`]); a command runs on a worker thread while the calling thread,
//! released too, checks for Python signals, and a `KeyboardInterrupt` asks the command
//! to stop as Ctrl-C does the command line's ([`interrupt::request`]).

use clap::{ArgAction, CommandFactory, ValueEnum};
use datarater::curate::documents::DocumentScorer;
use datarater::curate::rater_file::{RaterFile, config_to_json};
use datarater::distributed::SingleProcess;
use datarater_cli::args::{AggregateArg, Cli, Command};
use datarater_cli::error::CliError;
use datarater_cli::interrupt;
use datarater_cli::scoring::{BLOCK_DOCS, BLOCK_SEQS, pads_short, score_texts};
use datarater_cli::train::{RATER, StepInfo, train_with};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyIterator, PyString, PyTuple};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

create_exception!(
    datarater,
    DataRaterError,
    PyException,
    "Base class of every error the DataRater reports."
);
create_exception!(
    datarater,
    ShapeError,
    DataRaterError,
    "Two shapes an operation needs to agree do not (`datarater::Error::Shape`)."
);
create_exception!(
    datarater,
    ShapeExpectedError,
    DataRaterError,
    "A shape is not of the kind an operation needs (`datarater::Error::ShapeExpected`)."
);
create_exception!(
    datarater,
    IndexRangeError,
    DataRaterError,
    "An index is out of range (`datarater::Error::Index`)."
);
create_exception!(
    datarater,
    ParamsError,
    DataRaterError,
    "Two parameter groups that must match do not (`datarater::Error::Params`)."
);
create_exception!(
    datarater,
    ConfigError,
    DataRaterError,
    "A configuration value is invalid (`datarater::Error::Config`)."
);
create_exception!(
    datarater,
    NonFiniteError,
    DataRaterError,
    "A non-finite value appeared in a meta-gradient computation (`datarater::Error::NonFinite`)."
);
create_exception!(
    datarater,
    MemoryBudgetError,
    DataRaterError,
    "A meta-gradient computation passed its memory budget (`datarater::Error::MemoryBudget`)."
);
create_exception!(
    datarater,
    FileError,
    DataRaterError,
    "Reading or parsing a file failed, or a rater scored a document non-finite (`datarater::Error::File`)."
);
create_exception!(
    datarater,
    RankError,
    DataRaterError,
    "Another process of a distributed run failed (`datarater::Error::Rank`)."
);
create_exception!(
    datarater,
    UsageError,
    DataRaterError,
    "An API was used in an unsupported way (`datarater::Error::Usage`)."
);
create_exception!(
    datarater,
    CommandError,
    DataRaterError,
    "A command (train, score_files, filter_files) failed: the message the command line prints after `error: `."
);
create_exception!(
    datarater,
    ArgumentError,
    DataRaterError,
    "A setting the command line's argument parser refuses (clap's message)."
);
create_exception!(
    datarater,
    PanicError,
    DataRaterError,
    "A bug: Rust code panicked. The interpreter goes on; please report the message."
);

/// A library error as the exception of its kind, with the same message.
fn library_error(e: datarater::Error) -> PyErr {
    use datarater::Error as E;
    let msg = e.to_string();
    match e {
        E::Shape { .. } => ShapeError::new_err(msg),
        E::ShapeExpected { .. } => ShapeExpectedError::new_err(msg),
        E::Index { .. } => IndexRangeError::new_err(msg),
        E::Params { .. } => ParamsError::new_err(msg),
        E::Config { .. } => ConfigError::new_err(msg),
        E::NonFinite { .. } => NonFiniteError::new_err(msg),
        E::MemoryBudget { .. } => MemoryBudgetError::new_err(msg),
        E::File { .. } => FileError::new_err(msg),
        E::Rank { .. } => RankError::new_err(msg),
        E::Usage(_) => UsageError::new_err(msg),
        _ => DataRaterError::new_err(msg),
    }
}

/// A caught panic as [`PanicError`].
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    PanicError::new_err(format!("Rust code panicked (a bug in datarater): {msg}"))
}

/// Runs `f`, turning a panic into [`PanicError`].
fn guarded<T>(f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_error)
}

// ---------------------------------------------------------------------------------
// Settings: the command line's clap definitions, from Python keyword arguments.

/// Parses an argument vector with the command line's definitions.
fn parse(argv: Vec<String>) -> PyResult<Cli> {
    Cli::try_parse_args(argv)
        .map_err(|e| ArgumentError::new_err(e.to_string().trim_end().to_string()))
}

/// `datarater SUB` with `settings` (Python keyword arguments: the flags' names with
/// `_` for `-`; `None` leaves a setting at its default; `True`/`False` set or leave
/// a switch; any other value is passed as `str(value)`). `func` names the Python
/// function in the `TypeError` for an unknown keyword.
fn argv(sub: &str, settings: &Bound<'_, PyDict>, func: &str) -> PyResult<Vec<String>> {
    let cli = Cli::command();
    let cmd = cli
        .find_subcommand(sub)
        .ok_or_else(|| PyValueError::new_err(format!("no subcommand {sub}")))?;
    let mut argv = vec!["datarater".to_string(), sub.to_string()];
    for (key, value) in settings.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        let arg = cmd
            .get_arguments()
            .find(|a| {
                a.get_id() == key.as_str()
                    && a.get_long().is_some()
                    && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
            })
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "{func}() got an unexpected keyword argument '{key}'"
                ))
            })?;
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if value.extract::<bool>()? {
                argv.push(long);
            }
        } else {
            argv.push(long);
            argv.push(value.str()?.to_cow()?.into_owned());
        }
    }
    Ok(argv)
}

/// The settings of `datarater SUB` as Python keyword arguments, one per line
/// (`name: default. help`), for docstrings.
#[pyfunction]
fn settings_doc(sub: &str) -> PyResult<String> {
    let cli = Cli::command();
    let cmd = cli
        .find_subcommand(sub)
        .ok_or_else(|| PyValueError::new_err(format!("no subcommand {sub}")))?;
    let mut out = String::new();
    for a in cmd.get_arguments() {
        if a.get_long().is_none() || matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
        {
            continue;
        }
        let default = match a.get_action() {
            ArgAction::SetTrue => "False".to_string(),
            _ => {
                let d: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                if d.is_empty() {
                    "None".into()
                } else {
                    d.join(" ")
                }
            }
        };
        let mut values = String::new();
        let possible = a.get_possible_values();
        if !possible.is_empty() && !matches!(a.get_action(), ArgAction::SetTrue) {
            let names: Vec<&str> = possible.iter().map(|p| p.get_name()).collect();
            values = format!(" (one of {})", names.join(", "));
        }
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push_str(&format!("    {} = {default}{values}: {help}\n", a.get_id()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Commands on a worker thread, interruptible from Python.

/// Runs a command on a worker thread while this thread, detached from the
/// interpreter, waits and checks every 100 ms for Python signals. A signal handler
/// that raises (Ctrl-C's `KeyboardInterrupt`) asks the command to stop as Ctrl-C does
/// the command line's; the command then stops at its next check (`train` after the
/// outer step, with a checkpoint; `score` and `filter` between blocks), and the
/// exception is raised with the command's message. A panic becomes [`PanicError`].
fn run_command<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, CliError> + Send,
) -> PyResult<T> {
    let mut signal: Option<PyErr> = None;
    let outcome = py.detach(|| {
        std::thread::scope(|s| {
            let (done, finished) = mpsc::channel::<()>();
            let worker = s.spawn(move || {
                // As the `datarater` binary does: freed buffers reused within the command.
                let r = catch_unwind(AssertUnwindSafe(|| datarater::alloc::reuse_buffers(f)));
                let _ = done.send(());
                r
            });
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                finished.recv_timeout(Duration::from_millis(100))
            {
                if signal.is_none() {
                    signal = Python::attach(|py| py.check_signals()).err();
                }
                // Again on every tick: the command may have reset the flag as it started.
                if signal.is_some() {
                    interrupt::request();
                }
            }
            worker.join().and_then(|r| r)
        })
    });
    let outcome = outcome.map_err(panic_error)?;
    match (signal, outcome) {
        (Some(e), Ok(_)) => Err(e),
        (Some(e), Err(cmd)) => Err(if e.is_instance_of::<PyKeyboardInterrupt>(py) {
            PyKeyboardInterrupt::new_err(cmd.0)
        } else {
            e
        }),
        (None, Ok(v)) => Ok(v),
        (None, Err(cmd)) => Err(CommandError::new_err(cmd.0)),
    }
}

/// `datarater train` with `settings` (see [`argv`]); calls `callback(info)` with a
/// dict after every outer step and logs the step on the `datarater` logger. Returns
/// the rater file's path.
#[pyfunction]
#[pyo3(signature = (settings, callback=None))]
fn run_train(
    py: Python<'_>,
    settings: &Bound<'_, PyDict>,
    callback: Option<Py<PyAny>>,
) -> PyResult<String> {
    let cli = parse(argv("train", settings, "train")?)?;
    let Command::Train(args) = cli.command else {
        return Err(PyValueError::new_err("not a train command"));
    };
    let run_dir = args
        .resume
        .clone()
        .or_else(|| args.out.clone())
        .unwrap_or_default();
    let logger = py
        .import("logging")?
        .call_method1("getLogger", ("datarater",))?
        .unbind();
    let mut callback_error: Option<PyErr> = None;
    let result = run_command(py, || {
        train_with(&args, &SingleProcess, &mut |info: &StepInfo| {
            Python::attach(|py| {
                let r = (|| -> PyResult<()> {
                    logger.call_method1(
                        py,
                        "info",
                        (
                            "outer step %d/%d: held-out loss %.4f, |meta-grad| %.2e",
                            info.step,
                            info.outer_steps,
                            info.held_out_loss,
                            info.meta_grad_norm,
                        ),
                    )?;
                    if let Some(cb) = &callback {
                        let d = PyDict::new(py);
                        d.set_item("step", info.step)?;
                        d.set_item("outer_steps", info.outer_steps)?;
                        d.set_item("held_out_loss", info.held_out_loss)?;
                        d.set_item("meta_grad_norm", info.meta_grad_norm)?;
                        cb.call1(py, (d,))?;
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    // Stop after this step, with a checkpoint; raise it then.
                    callback_error.get_or_insert(e);
                    interrupt::request();
                }
            });
        })
    });
    match (result, callback_error) {
        (Err(e), _) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(e),
        (_, Some(e)) => Err(e),
        (r, None) => r.map(|()| run_dir.join(RATER).display().to_string()),
    }
}

/// `datarater score` with `settings` (see [`argv`]).
#[pyfunction]
fn run_score(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<()> {
    let cli = parse(argv("score", settings, "score_files")?)?;
    let Command::Score(args) = cli.command else {
        return Err(PyValueError::new_err("not a score command"));
    };
    run_command(py, || datarater_cli::curate::score(&args, &SingleProcess))
}

/// `datarater filter` with `settings` (see [`argv`]); returns the report's path.
#[pyfunction]
fn run_filter(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<String> {
    let cli = parse(argv("filter", settings, "filter_files")?)?;
    let Command::Filter(args) = cli.command else {
        return Err(PyValueError::new_err("not a filter command"));
    };
    run_command(py, || datarater_cli::curate::filter(&args, &SingleProcess))?;
    Ok(datarater_cli::curate::sibling(&args.out, "report.json")
        .display()
        .to_string())
}

// ---------------------------------------------------------------------------------
// The rater.

/// The element type of returned scores.
#[derive(Clone, Copy)]
enum Dtype {
    F32,
    F64,
}

fn dtype(name: &str) -> PyResult<Dtype> {
    match name {
        "float32" => Ok(Dtype::F32),
        "float64" => Ok(Dtype::F64),
        _ => Err(PyValueError::new_err(format!(
            "dtype must be 'float32' or 'float64', not {name:?}"
        ))),
    }
}

/// Scores as a NumPy array (NaN: not scored).
fn to_array<'py>(py: Python<'py>, scores: &[f64], dtype: Dtype) -> PyResult<Bound<'py, PyAny>> {
    let (bytes, name): (Vec<u8>, &str) = match dtype {
        Dtype::F32 => (
            scores
                .iter()
                .flat_map(|&s| (s as f32).to_ne_bytes())
                .collect(),
            "float32",
        ),
        Dtype::F64 => (
            scores.iter().flat_map(|&s| s.to_ne_bytes()).collect(),
            "float64",
        ),
    };
    py.import("numpy")?
        .call_method1("frombuffer", (PyByteArray::new(py, &bytes), name))
}

/// A document's bytes (a `str` as UTF-8).
fn document_bytes(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Vec<u8>> {
    if let Ok(b) = item.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(s) = item.cast::<PyString>() {
        return Ok(s.to_cow()?.as_bytes().to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "document {index} is a {}, expected str or bytes",
        item.get_type().name()?
    )))
}

/// A trained rater, loaded from the rater file `datarater train` writes.
///
/// Scores documents by the command line's rule: each is cut into sequences of the
/// rater's length (the last one aligned to the document's end) and its score is the
/// mean (or min) of their scores; a document shorter than one sequence is scored padded
/// with NUL bytes if the rater was trained so (every rater this version trains), an
/// empty one is not scored (NaN).
#[pyclass(frozen, module = "datarater", name = "Rater")]
struct Rater {
    file: RaterFile<f32>,
    /// Built once, so the first-layer table it builds serves every later call.
    scorer: DocumentScorer<f32>,
    path: String,
    aggregate: AggregateArg,
    forward_batch: usize,
}

impl Rater {
    /// Checks the settings and wraps `file`.
    fn new(
        file: RaterFile<f32>,
        path: String,
        aggregate: Option<&str>,
        forward_batch: Option<usize>,
    ) -> PyResult<Rater> {
        // `datarater score`'s --aggregate and --batch-size, parsed and defaulted by it.
        let mut args: Vec<String> = [
            "datarater",
            "score",
            "--rater",
            "-",
            "--input",
            "-",
            "--out",
            "-",
        ]
        .map(String::from)
        .to_vec();
        if let Some(a) = aggregate {
            args.extend(["--aggregate".into(), a.into()]);
        }
        if let Some(b) = forward_batch {
            args.extend(["--batch-size".into(), b.to_string()]);
        }
        let Command::Score(s) = parse(args)?.command else {
            return Err(PyValueError::new_err("not a score command"));
        };
        let scorer = file
            .document_scorer(s.aggregate.into(), s.batch_size)
            .map_err(library_error)?;
        Ok(Rater {
            file,
            scorer,
            path,
            aggregate: s.aggregate,
            forward_batch: s.batch_size,
        })
    }

    fn aggregate_name(&self) -> String {
        self.aggregate
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// Scores the documents `iter` yields, at most `limit` of them; `first` is the
    /// index of the first (for error messages). Blocks of documents are copied with
    /// the interpreter held, then scored without it; signals are checked between
    /// blocks.
    fn score_iter(
        &self,
        py: Python<'_>,
        iter: &Bound<'_, PyIterator>,
        limit: usize,
        first: usize,
    ) -> PyResult<Vec<f64>> {
        let scorer = &self.scorer;
        let pad = pads_short(&self.file.training);
        let seq_len = self.file.seq_len;
        let mut out: Vec<f64> = Vec::new();
        let mut iter = iter.clone();
        let mut ended = false;
        while !ended && out.len() < limit {
            let mut block: Vec<Vec<u8>> = Vec::new();
            let mut seqs = 0;
            while block.len() < BLOCK_DOCS && seqs < BLOCK_SEQS && out.len() + block.len() < limit {
                let Some(item) = iter.next() else {
                    ended = true;
                    break;
                };
                let doc = document_bytes(&item?, first + out.len() + block.len())?;
                seqs += doc.len().div_ceil(seq_len).max(1);
                block.push(doc);
            }
            if block.is_empty() {
                break;
            }
            py.check_signals()?;
            let at = first + out.len();
            let scores = py
                .detach(|| {
                    guarded(|| {
                        score_texts(scorer, pad, &block, &SingleProcess, |i| {
                            format!("document {}", at + i)
                        })
                    })
                })?
                .map_err(library_error)?;
            out.extend(scores.iter().map(|s| s.score.unwrap_or(f64::NAN)));
        }
        Ok(out)
    }
}

#[pymethods]
impl Rater {
    /// Loads a rater file (`RUN_DIR/rater.safetensors`).
    ///
    /// `aggregate` ('mean' or 'min') combines a document's sequence scores;
    /// `forward_batch` is the sequences per forward pass (the command line's
    /// `--batch-size`). Both default to `datarater score`'s defaults.
    ///
    /// Raises FileError if the file cannot be read or is not a usable rater file,
    /// ConfigError if `forward_batch` is 0, ArgumentError for an unknown `aggregate`.
    #[staticmethod]
    #[pyo3(signature = (path, *, aggregate=None, forward_batch=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        aggregate: Option<&str>,
        forward_batch: Option<usize>,
    ) -> PyResult<Rater> {
        let file = py
            .detach(|| guarded(|| RaterFile::<f32>::load(&path)))?
            .map_err(library_error)?;
        Rater::new(file, path.display().to_string(), aggregate, forward_batch)
    }

    /// Scores documents (a sequence or iterable of `str` or `bytes`; a `str` is scored
    /// as its UTF-8 bytes) and returns one score per document as a NumPy array of
    /// `dtype` ('float32' or 'float64': the command line's score, exactly). A document
    /// that cannot be scored (empty, or shorter than one sequence for a rater that does
    /// not pad) scores NaN. Runs on the thread pool with the interpreter released.
    ///
    /// Raises FileError naming the document if the rater scores it non-finite (a
    /// damaged rater file), TypeError for a document of another type.
    #[pyo3(signature = (texts, *, dtype="float32"))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        dtype: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dt = self::dtype(dtype)?;
        if texts.is_instance_of::<PyString>() || texts.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err(
                "score takes a sequence of documents, not one str or bytes: score([text])",
            ));
        }
        let scores = self.score_iter(py, &texts.try_iter()?, usize::MAX, 0)?;
        to_array(py, &scores, dt)
    }

    /// Scores the documents an iterable yields in batches of `batch_size` documents,
    /// yielding one array of scores per batch (as `score`); holds one batch at a time.
    #[pyo3(signature = (texts, batch_size=1024, *, dtype="float32"))]
    fn score_batches(
        slf: &Bound<'_, Self>,
        texts: &Bound<'_, PyAny>,
        batch_size: usize,
        dtype: &str,
    ) -> PyResult<ScoreBatches> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        Ok(ScoreBatches {
            rater: slf.clone().unbind(),
            iter: texts.try_iter()?.unbind(),
            batch_size,
            dtype: self::dtype(dtype)?,
            done: 0,
        })
    }

    /// Bytes per sequence: documents are cut into sequences of this length.
    #[getter]
    fn seq_len(&self) -> usize {
        self.file.seq_len
    }

    /// The rater's model: vocab, d_model, n_layers, n_heads, d_ff, max_len.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &config_to_json(&self.file.scorer.cfg))
    }

    /// The training settings recorded in the rater file.
    #[getter]
    fn training<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.file.training)
    }

    /// Whether documents shorter than one sequence are scored padded with NUL bytes.
    #[getter]
    fn pads_short(&self) -> bool {
        pads_short(&self.file.training)
    }

    /// How sequence scores are combined: 'mean' or 'min'.
    #[getter]
    fn aggregate(&self) -> String {
        self.aggregate_name()
    }

    /// Sequences per forward pass.
    #[getter]
    fn forward_batch(&self) -> usize {
        self.forward_batch
    }

    /// The file the rater was loaded from.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Rater(path={:?}, seq_len={}, aggregate={:?}, forward_batch={})",
            self.path,
            self.file.seq_len,
            self.aggregate_name(),
            self.forward_batch
        )
    }

    /// Pickles as the rater file's bytes (for multiprocess pipelines).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let bytes = self.file.to_bytes().map_err(library_error)?;
        let load = py
            .import("datarater._native")?
            .getattr("_rater_from_bytes")?;
        let args = (
            PyBytes::new(py, &bytes),
            self.path.clone(),
            self.aggregate_name(),
            self.forward_batch,
        );
        PyTuple::new(py, [load, args.into_pyobject(py)?.into_any()])
    }
}

/// Rebuilds a pickled [`Rater`].
#[pyfunction]
fn _rater_from_bytes(
    bytes: &[u8],
    path: String,
    aggregate: &str,
    forward_batch: usize,
) -> PyResult<Rater> {
    let file = RaterFile::<f32>::from_bytes(&path, bytes).map_err(library_error)?;
    Rater::new(file, path, Some(aggregate), Some(forward_batch))
}

/// The iterator `Rater.score_batches` returns.
#[pyclass(module = "datarater")]
struct ScoreBatches {
    rater: Py<Rater>,
    iter: Py<PyIterator>,
    batch_size: usize,
    dtype: Dtype,
    done: usize,
}

#[pymethods]
impl ScoreBatches {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let rater = self.rater.get();
        let scores = rater.score_iter(py, self.iter.bind(py), self.batch_size, self.done)?;
        if scores.is_empty() {
            return Ok(None);
        }
        self.done += scores.len();
        to_array(py, &scores, self.dtype).map(Some)
    }
}

/// A JSON value as Python objects (through the `json` module).
fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

// ---------------------------------------------------------------------------------
// Hooks for the test suite: every error kind and a panic, through the real paths.

/// Raises an example of the library error `kind` (a variant name), converted as every
/// library error is.
#[pyfunction]
fn _raise_library_error(kind: &str) -> PyResult<()> {
    use datarater::Error as E;
    let e = match kind {
        "Shape" => E::Shape {
            op: "matmul",
            lhs: vec![2, 3],
            rhs: vec![4, 5],
        },
        "ShapeExpected" => E::ShapeExpected {
            op: "loss",
            shape: vec![2, 2],
            expected: "[batch]".into(),
        },
        "Index" => E::Index {
            op: "embedding",
            index: 300,
            size: 256,
        },
        "Params" => E::Params {
            name: "w".into(),
            reason: "missing".into(),
        },
        "Config" => E::Config {
            field: "seq_len",
            reason: "must be positive".into(),
        },
        "NonFinite" => E::NonFinite {
            step: 3,
            quantity: "meta-gradient".into(),
        },
        "MemoryBudget" => E::MemoryBudget {
            budget: 1,
            in_use: 2,
            mode: datarater::meta::Mode::Mixed,
            step: 0,
        },
        "File" => E::File {
            path: "x".into(),
            reason: "cannot read".into(),
        },
        "Rank" => E::Rank {
            rank: 1,
            message: "failed".into(),
        },
        "Usage" => E::Usage("second backward pass".into()),
        _ => return Err(PyValueError::new_err(format!("no error kind {kind}"))),
    };
    let msg = e.to_string();
    let err = library_error(e);
    Python::attach(|py| {
        err.value(py).setattr("rust_message", msg)?;
        Err(err)
    })
}

/// Panics on a command's worker thread, inside a task on rayon's pool.
#[pyfunction]
fn _panic_in_command(py: Python<'_>) -> PyResult<()> {
    use rayon::prelude::*;
    run_command(py, || -> Result<(), CliError> {
        (0..4).into_par_iter().for_each(|i| {
            if i == 3 {
                panic!("injected panic for the test suite");
            }
        });
        Ok(())
    })
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The interpreter owns SIGINT: the commands must not install their own handler.
    interrupt::handle_externally();
    let py = m.py();
    m.add_class::<Rater>()?;
    m.add_class::<ScoreBatches>()?;
    m.add_function(wrap_pyfunction!(run_train, m)?)?;
    m.add_function(wrap_pyfunction!(run_score, m)?)?;
    m.add_function(wrap_pyfunction!(run_filter, m)?)?;
    m.add_function(wrap_pyfunction!(settings_doc, m)?)?;
    m.add_function(wrap_pyfunction!(_rater_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(_raise_library_error, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_in_command, m)?)?;
    m.add("DataRaterError", py.get_type::<DataRaterError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("ShapeExpectedError", py.get_type::<ShapeExpectedError>())?;
    m.add("IndexRangeError", py.get_type::<IndexRangeError>())?;
    m.add("ParamsError", py.get_type::<ParamsError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("MemoryBudgetError", py.get_type::<MemoryBudgetError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("RankError", py.get_type::<RankError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("CommandError", py.get_type::<CommandError>())?;
    m.add("ArgumentError", py.get_type::<ArgumentError>())?;
    m.add("PanicError", py.get_type::<PanicError>())?;
    Ok(())
}
