"""Scoring releases the interpreter: a Python thread makes progress while a long
`score` runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import datarater


@pytest.fixture(scope="module")
def slow_rater(corpus, tmp_path_factory) -> datarater.Rater:
    # The command line's default model (untrained: 0 outer steps), slow enough to time.
    run = tmp_path_factory.mktemp("slow") / "run"
    return datarater.Rater.load(
        datarater.train(
            train=corpus["train"], held_out=corpus["held_out"], out=run, format="lines", outer_steps=0
        )
    )


def test_a_python_thread_progresses_while_score_runs(slow_rater):
    # One block of documents (fewer than the block's 2048 sequences): the interpreter
    # is taken back only before and after it.
    docs = ["a document about the lexicographer's craft, " * 20] * 120
    assert sum(-(-len(d) // slow_rater.seq_len) for d in docs) < 2048
    ticks = 0
    stop = threading.Event()
    started = threading.Event()

    def count() -> None:
        nonlocal ticks
        started.set()
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=count)
    t.start()
    started.wait()
    before = ticks
    start = time.perf_counter()
    scores = slow_rater.score(docs)
    elapsed = time.perf_counter() - start
    during = ticks - before
    stop.set()
    t.join()
    assert not np.isnan(scores).any()
    assert elapsed > 0.05, f"score took {elapsed:.3f}s: too short to tell"
    # Holding the interpreter, the counting thread could not run at all (a C call is
    # never preempted); released, it counts at Python speed (millions per second).
    assert during > 10_000, f"{during} ticks in {elapsed:.3f}s"


def test_scores_do_not_depend_on_the_calling_thread(slow_rater):
    docs = ["short", "a longer document " * 10, ""] * 30
    expected = slow_rater.score(docs).tobytes()
    results = [None] * 3

    def work(i: int) -> None:
        results[i] = slow_rater.score(docs).tobytes()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3


def test_ctrl_c_stops_a_long_score_between_blocks(slow_rater):
    import signal

    # About ten of the command line's blocks of 2048 sequences.
    docs = ["x" * (slow_rater.seq_len * 16)] * (128 * 10)
    timer = threading.Timer(0.2, signal.raise_signal, args=(signal.SIGINT,))
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        slow_rater.score(docs)
    stopped = time.perf_counter() - start
    timer.join()
    # The whole input takes several times longer than one block.
    first_block = docs[:128]
    start = time.perf_counter()
    slow_rater.score(first_block)
    block = time.perf_counter() - start
    assert stopped < 0.2 + 3 * block + 0.5, (stopped, block)
