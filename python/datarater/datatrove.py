"""A datatrove filter block scoring documents with a DataRater.

Importable only when datatrove is installed (``pip install 'datarater[datatrove]'``).
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple, Union

try:
    from datatrove.data import Document
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.pipeline.writers.disk_base import DiskWriter
except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
    # datatrove itself, or `regex`, which its filters import but only its
    # `processing` extra installs (the `datarater[datatrove]` extra adds it).
    if e.name not in ("datatrove", "regex"):
        raise
    raise ModuleNotFoundError(
        f"datarater.datatrove needs {e.name}: pip install 'datarater[datatrove]'", name=e.name
    ) from e

from . import Rater

__all__ = ["DataRaterFilter"]


class DataRaterFilter(BaseFilter):
    """Scores documents with a DataRater in batches and drops those scoring below
    ``discard_below``.

    Args:
        rater: a rater file (loaded in the worker that runs the block) or a loaded
            ``datarater.Rater``.
        discard_below: documents scoring below this are dropped (``None``: keep all,
            only annotate). ``datarater filter`` prints (and writes in its report as
            ``threshold``) the score its ``--discard-fraction`` amounts to; this block
            with that threshold keeps the same documents (unless several score exactly
            the threshold: the command line then breaks the tie by position).
        batch_size: documents scored together (one ``filter_batch`` call).
        metadata_key: where the score goes in ``doc.metadata`` (``None`` if the
            document could not be scored).
        keep_short: keep documents that cannot be scored (empty, or shorter than one
            sequence for a rater that does not pad), as ``datarater filter`` does by
            default (``--short keep``); else drop them.
        exclusion_writer: a datatrove writer for the dropped documents (their
            ``filter_reason`` is ``below_threshold`` or ``too_short``).

    Scores are the command line's (float64), so a threshold decides exactly as it.
    """

    name = "⭐ DataRater"

    def __init__(
        self,
        rater: Union[str, "os.PathLike[str]", Rater],
        discard_below: Optional[float] = None,
        batch_size: int = 1024,
        *,
        metadata_key: str = "datarater_score",
        keep_short: bool = True,
        exclusion_writer: Optional[DiskWriter] = None,
    ):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        if isinstance(rater, Rater):
            self._rater: Optional[Rater] = rater
            self.rater_path = rater.path
        else:
            self._rater = None
            self.rater_path = os.fspath(rater)
        self.discard_below = discard_below
        self.metadata_key = metadata_key
        self.keep_short = keep_short

    @property
    def rater(self) -> Rater:
        """The rater (loaded on first use)."""
        if self._rater is None:
            self._rater = Rater.load(self.rater_path)
        return self._rater

    def filter(self, doc: Document) -> Union[bool, Tuple[bool, str]]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: List[Document]) -> List[Union[bool, Tuple[bool, str]]]:
        scores = self.rater.score([doc.text for doc in batch], dtype="float64")
        results: List[Union[bool, Tuple[bool, str]]] = []
        for doc, s in zip(batch, scores):
            score = float(s)
            if math.isnan(score):
                doc.metadata[self.metadata_key] = None
                self.stat_update("too_short")
                results.append(True if self.keep_short else (False, "too_short"))
                continue
            doc.metadata[self.metadata_key] = score
            if self.discard_below is not None and score < self.discard_below:
                results.append((False, "below_threshold"))
            else:
                results.append(True)
        return results
