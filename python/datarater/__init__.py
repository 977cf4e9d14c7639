"""The DataRater from Python: meta-learned data curation (see docs/python.md).

- ``Rater.load(path)`` loads a trained rater; ``rater.score(texts)`` returns one score
  per document as a NumPy array (higher is better data), ``rater.score_batches(...)``
  streams.
- ``train(train=..., held_out=..., out=..., **settings)`` meta-trains a rater, as
  ``datarater train`` does, with progress on the ``datarater`` logger or a callback.
- ``score_files(...)`` and ``filter_files(...)`` do what ``datarater score`` and
  ``datarater filter`` do on files and trees of shards.
- ``datarater.datatrove.DataRaterFilter`` is a datatrove filter block (needs the
  ``datarater[datatrove]`` extra).

Every error is a ``DataRaterError``; the library's errors arrive as the subclass of
their kind with the library's message, a failing command as ``CommandError`` with
the command line's message.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Optional, Union

from . import _native
from ._native import (
    ArgumentError,
    CommandError,
    ConfigError,
    DataRaterError,
    FileError,
    IndexRangeError,
    MemoryBudgetError,
    NonFiniteError,
    PanicError,
    ParamsError,
    RankError,
    Rater,
    ScoreBatches,
    ShapeError,
    ShapeExpectedError,
    UsageError,
)

__all__ = [
    "Rater",
    "ScoreBatches",
    "train",
    "score_files",
    "filter_files",
    "DataRaterError",
    "ShapeError",
    "ShapeExpectedError",
    "IndexRangeError",
    "ParamsError",
    "ConfigError",
    "NonFiniteError",
    "MemoryBudgetError",
    "FileError",
    "RankError",
    "UsageError",
    "CommandError",
    "ArgumentError",
    "PanicError",
]

__version__ = "0.2.0"

PathLike = Union[str, "os.PathLike[str]"]


def _path(p: Any) -> Any:
    """A `Rater` as the path it was loaded from; anything else unchanged."""
    return p.path if isinstance(p, Rater) else p


def train(
    train: Optional[PathLike] = None,
    held_out: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    resume: Optional[PathLike] = None,
    callback: Optional[Callable[[Dict[str, Any]], None]] = None,
    **settings: Any,
) -> str:
    """Meta-trains a rater on ``train`` against ``held_out`` into the run directory
    ``out`` (or continues the run in ``resume``), as ``datarater train`` does, and
    returns the path of the rater file (``RUN_DIR/rater.safetensors``).

    ``settings`` are the command line's flags with ``_`` for ``-``; a setting left out
    (or ``None``) takes the command line's default, ``True`` turns on a switch. After
    every outer step the step is logged on the ``datarater`` logger (INFO) and
    ``callback`` (if given) is called with a dict: ``step``, ``outer_steps``,
    ``held_out_loss``, ``meta_grad_norm``. If the callback raises, the run stops after
    that step with a checkpoint and the exception propagates.

    Ctrl-C (``KeyboardInterrupt``) finishes the current outer step, writes a checkpoint
    and raises ``KeyboardInterrupt`` saying where; ``train(resume=RUN_DIR)`` continues
    it, bitwise as an uninterrupted run would.

    Raises ``CommandError`` (the command line's message), ``ArgumentError`` (a setting
    the command line refuses), ``TypeError`` (an unknown setting).

    Settings (name = default: help):

"""
    named = {"train": train, "held_out": held_out, "out": out, "resume": resume}
    return _native.run_train({**named, **settings}, callback)


def score_files(
    rater: Union[PathLike, Rater], input: PathLike, out: PathLike, **settings: Any
) -> str:
    """Scores every document of ``input`` (a file, a directory of shards or a glob)
    with ``rater`` (a rater file, or a loaded ``Rater``: its file), writing one JSON
    object per document to ``out`` (a file for a file in, a tree of attribute shards
    for shards in), as ``datarater score`` does; returns ``out``. A rerun skips the
    shards already complete.

    Settings (name = default: help):

"""
    named = {"rater": _path(rater), "input": input, "out": out}
    _native.run_score({**named, **settings})
    return os.fspath(out)


def filter_files(input: PathLike, out: PathLike, **settings: Any) -> Dict[str, Any]:
    """Keeps the better documents of ``input``, byte for byte, in ``out``, as
    ``datarater filter`` does (give ``rater=`` or ``scores=``, and
    ``discard_fraction=`` or ``mode="accept", rho=``); returns the report it writes
    to ``OUT.report.json`` (counts, threshold, settings).

    Settings (name = default: help):

"""
    if "rater" in settings:
        settings["rater"] = _path(settings["rater"])
    report = _native.run_filter({"input": input, "out": out, **settings})
    with open(report, encoding="utf-8") as f:
        return json.load(f)


# The settings' documentation comes from the command line's own definitions.
for _f, _sub in ((train, "train"), (score_files, "score"), (filter_files, "filter")):
    _f.__doc__ = (_f.__doc__ or "") + _native.settings_doc(_sub)
del _f, _sub
