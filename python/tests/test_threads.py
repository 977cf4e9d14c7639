"""Scoring releases the interpreter: a Python thread makes progress while a long
`score` runs."""

from __future__ import annotations

import math
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
    # Blocks of documents (each fewer than a block's 2048 sequences) for about half a
    # second, however fast the machine: the interpreter is taken back only between them.
    block_docs = ["a document about the lexicographer's craft, " * 20] * 120
    assert sum(-(-len(d) // slow_rater.seq_len) for d in block_docs) < 2048
    slow_rater.score(block_docs)
    start = time.perf_counter()
    slow_rater.score(block_docs)
    docs = block_docs * math.ceil(0.5 / (time.perf_counter() - start))
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
    # The counting thread's rate alone (sleeping releases the interpreter).
    before, start = ticks, time.perf_counter()
    time.sleep(0.05)
    rate = (ticks - before) / (time.perf_counter() - start)
    before = ticks
    start = time.perf_counter()
    scores = slow_rater.score(docs)
    elapsed = time.perf_counter() - start
    during = ticks - before
    stop.set()
    t.join()
    assert not np.isnan(scores).any()
    # Holding the interpreter, the counting thread could run only when the interpreter
    # switches threads (at most every 5 ms, and only between blocks); released, it runs
    # beside the scoring threads for most of the call.
    assert during > 0.2 * rate * elapsed, f"{during} ticks in {elapsed:.3f}s at {rate:.0f}/s alone"


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

    # One of the command line's blocks of 2048 sequences, timed warm.
    block_docs = ["x" * (slow_rater.seq_len * 16)] * 128
    slow_rater.score(block_docs)
    start = time.perf_counter()
    slow_rater.score(block_docs)
    block = time.perf_counter() - start
    # Enough blocks that the whole input takes far longer than the wait before Ctrl-C,
    # however fast the machine.
    delay = 0.2
    docs = block_docs * max(10, math.ceil(20 * delay / block))
    timer = threading.Timer(delay, signal.raise_signal, args=(signal.SIGINT,))
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        slow_rater.score(docs)
    stopped = time.perf_counter() - start
    timer.join()
    assert stopped < delay + 3 * block + 0.5, (stopped, block)
