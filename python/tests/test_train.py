"""`train` through Python: progress, a failing callback, and a run interrupted
(KeyboardInterrupt, or the process killed) and resumed equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import datarater
from conftest import TINY

STEPS = 12


def train_settings(corpus, **extra):
    return dict(
        train=corpus["train"], held_out=corpus["held_out"], outer_steps=STEPS,
        checkpoint_every=1, **TINY, **extra,
    )


def step_of(run: Path) -> int:
    """The outer step of the run's last checkpoint (0 if none yet)."""
    try:
        return datarater.Rater.load(run / "rater.safetensors").training["outer_steps_done"]
    except datarater.FileError:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> bytes:
    run = tmp_path_factory.mktemp("full") / "run"
    steps = []
    path = datarater.train(out=run, callback=steps.append, **train_settings(corpus))
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert all(s["outer_steps"] == STEPS and s["held_out_loss"] > 0 for s in steps)
    return Path(path).read_bytes()


def test_progress_is_logged(corpus, tmp_path, caplog):
    caplog.set_level("INFO", logger="datarater")
    datarater.train(out=tmp_path / "run", **{**train_settings(corpus), "outer_steps": 2})
    lines = [r.getMessage() for r in caplog.records if r.name == "datarater"]
    assert len(lines) == 2 and lines[1].startswith("outer step 2/2: held-out loss ")


def test_keyboard_interrupt_leaves_a_resumable_checkpoint(corpus, tmp_path, uninterrupted):
    run = tmp_path / "run"

    def ctrl_c_at_step_3(info):
        if info["step"] == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: Python's handler raises
            # The main thread looks for signals every 100 ms, and a step of this tiny
            # run takes ~10 ms: without a pause the run could end before it looks.
            time.sleep(0.5)

    with pytest.raises(KeyboardInterrupt) as e:
        datarater.train(out=run, callback=ctrl_c_at_step_3, **train_settings(corpus))
    at = step_of(run)
    assert 3 <= at < STEPS
    assert f"stopped after outer step {at} of {STEPS} and wrote a checkpoint" in str(e.value)
    assert f"datarater train --resume {run}" in str(e.value)
    path = datarater.train(resume=run)
    assert Path(path).read_bytes() == uninterrupted


def test_killed_and_resumed_equals_uninterrupted(corpus, tmp_path, uninterrupted):
    run = tmp_path / "run"
    settings = {k: str(v) for k, v in train_settings(corpus).items()}
    # A child process training slowly (its callback sleeps; the results do not change).
    code = (
        "import sys, time, datarater\n"
        "settings = dict(a.split('=', 1) for a in sys.argv[2:])\n"
        "datarater.train(out=sys.argv[1], callback=lambda _: time.sleep(0.1), **settings)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(run), *(f"{k}={v}" for k, v in settings.items())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    start = time.monotonic()
    while step_of(run) < 3 and time.monotonic() - start < 120:
        time.sleep(0.005)
    still_running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    at = step_of(run)
    assert still_running and 3 <= at < STEPS, f"killed at step {at}"
    path = datarater.train(resume=run)
    assert Path(path).read_bytes() == uninterrupted


def test_sigint_to_a_python_process_stops_it_with_a_checkpoint(corpus, tmp_path, uninterrupted):
    run = tmp_path / "run"
    settings = {k: str(v) for k, v in train_settings(corpus).items()}
    code = (
        "import sys, time, datarater\n"
        "settings = dict(a.split('=', 1) for a in sys.argv[2:])\n"
        "try:\n"
        "    datarater.train(out=sys.argv[1], callback=lambda _: time.sleep(0.1), **settings)\n"
        "except KeyboardInterrupt as e:\n"
        "    print('KeyboardInterrupt:', e)\n"
        "    sys.exit(3)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(run), *(f"{k}={v}" for k, v in settings.items())],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    start = time.monotonic()
    while step_of(run) < 2 and time.monotonic() - start < 120:
        time.sleep(0.005)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 3, out
    at = step_of(run)
    assert f"stopped after outer step {at} of {STEPS}" in out
    path = datarater.train(resume=run)
    assert Path(path).read_bytes() == uninterrupted


def test_a_raising_callback_stops_the_run_with_a_checkpoint(corpus, tmp_path, uninterrupted):
    run = tmp_path / "run"

    def fail_at_step_2(info):
        if info["step"] == 2:
            raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        datarater.train(out=run, callback=fail_at_step_2, **train_settings(corpus))
    assert step_of(run) == 2
    assert Path(datarater.train(resume=run)).read_bytes() == uninterrupted
