"""Type stubs of the extension module (the public names are re-exported by
``datarater``; see its docstring and docs/python.md)."""

import os
from typing import Any, Callable, Dict, Iterable, Iterator, Literal, Optional, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, "os.PathLike[str]"]
_Dtype = Literal["float32", "float64"]

class DataRaterError(Exception):
    """Base class of every error the DataRater reports."""

class ShapeError(DataRaterError):
    """Two shapes an operation needs to agree do not (`datarater::Error::Shape`)."""

class ShapeExpectedError(DataRaterError):
    """A shape is not of the kind an operation needs (`datarater::Error::ShapeExpected`)."""

class IndexRangeError(DataRaterError):
    """An index is out of range (`datarater::Error::Index`)."""

class ParamsError(DataRaterError):
    """Two parameter groups that must match do not (`datarater::Error::Params`)."""

class ConfigError(DataRaterError):
    """A configuration value is invalid (`datarater::Error::Config`)."""

class NonFiniteError(DataRaterError):
    """A non-finite value appeared in a meta-gradient computation (`datarater::Error::NonFinite`)."""

class MemoryBudgetError(DataRaterError):
    """A meta-gradient computation passed its memory budget (`datarater::Error::MemoryBudget`)."""

class FileError(DataRaterError):
    """Reading or parsing a file failed, or a rater scored a document non-finite (`datarater::Error::File`)."""

class RankError(DataRaterError):
    """Another process of a distributed run failed (`datarater::Error::Rank`)."""

class UsageError(DataRaterError):
    """An API was used in an unsupported way (`datarater::Error::Usage`)."""

class CommandError(DataRaterError):
    """A command (train, score_files, filter_files) failed: the command line's message."""

class ArgumentError(DataRaterError):
    """A setting the command line's argument parser refuses (clap's message)."""

class PanicError(DataRaterError):
    """A bug: Rust code panicked. The interpreter goes on; please report the message."""

class Rater:
    """A trained rater, loaded from the rater file `datarater train` writes.

    Scores documents by the command line's rule: each is cut into sequences of the
    rater's length (the last one aligned to the document's end) and its score is the
    mean (or min) of their scores; a document shorter than one sequence is scored
    padded with NUL bytes if the rater was trained so (every rater this version
    trains), an empty one is not scored (NaN).
    """

    @staticmethod
    def load(
        path: _Path, *, aggregate: Optional[Literal["mean", "min"]] = None, forward_batch: Optional[int] = None
    ) -> Rater:
        """Loads a rater file (`RUN_DIR/rater.safetensors`).

        `aggregate` ('mean' or 'min') combines a document's sequence scores;
        `forward_batch` is the sequences per forward pass (the command line's
        `--batch-size`). Both default to `datarater score`'s defaults.

        Raises FileError if the file cannot be read or is not a usable rater file,
        ConfigError if `forward_batch` is 0, ArgumentError for an unknown `aggregate`.
        """
    def score(self, texts: Iterable[Union[str, bytes]], *, dtype: _Dtype = "float32") -> npt.NDArray[np.floating[Any]]:
        """Scores documents (a sequence or iterable of `str` or `bytes`; a `str` is
        scored as its UTF-8 bytes) and returns one score per document as a NumPy array
        of `dtype` ('float32' or 'float64': the command line's score, exactly). A
        document that cannot be scored scores NaN. Runs on the thread pool with the
        interpreter released.

        Raises FileError naming the document if the rater scores it non-finite (a
        damaged rater file), TypeError for a document of another type.
        """
    def score_batches(
        self, texts: Iterable[Union[str, bytes]], batch_size: int = 1024, *, dtype: _Dtype = "float32"
    ) -> ScoreBatches:
        """Scores the documents an iterable yields in batches of `batch_size`
        documents, yielding one array of scores per batch (as `score`); holds one
        batch at a time."""
    @property
    def seq_len(self) -> int:
        """Bytes per sequence: documents are cut into sequences of this length."""
    @property
    def config(self) -> Dict[str, int]:
        """The rater's model: vocab, d_model, n_layers, n_heads, d_ff, max_len."""
    @property
    def training(self) -> Dict[str, Any]:
        """The training settings recorded in the rater file."""
    @property
    def pads_short(self) -> bool:
        """Whether documents shorter than one sequence are scored padded with NUL bytes."""
    @property
    def aggregate(self) -> str:
        """How sequence scores are combined: 'mean' or 'min'."""
    @property
    def forward_batch(self) -> int:
        """Sequences per forward pass."""
    @property
    def path(self) -> str:
        """The file the rater was loaded from."""

class ScoreBatches(Iterator[npt.NDArray[np.floating[Any]]]):
    """The iterator `Rater.score_batches` returns."""

    def __iter__(self) -> ScoreBatches: ...
    def __next__(self) -> npt.NDArray[np.floating[Any]]: ...

def run_train(settings: Dict[str, Any], callback: Optional[Callable[[Dict[str, Any]], None]] = None) -> str: ...
def run_score(settings: Dict[str, Any]) -> None: ...
def run_filter(settings: Dict[str, Any]) -> str: ...
def settings_doc(sub: str) -> str: ...
def _rater_from_bytes(bytes: bytes, path: str, aggregate: str, forward_batch: int) -> Rater: ...
def _raise_library_error(kind: str) -> None: ...
def _panic_in_command() -> None: ...

