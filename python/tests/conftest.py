"""Fixtures of the Python suite: the `datarater` binary (the command line the bindings
must agree with), a small corpus cut from the shipped dictionary, and a tiny rater
trained through the bindings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import datarater

REPO = Path(__file__).resolve().parents[2]
DICTIONARY = REPO / "data" / "devils-dictionary.txt"

# A tiny, fast configuration (as the command line's tests use).
TINY = dict(
    format="lines",
    population=2,
    lm_width=8,
    lm_layers=1,
    lm_heads=1,
    rater_width=8,
    rater_heads=1,
    seq_len=16,
    batch_size=4,
)


@pytest.fixture(scope="session")
def cli() -> str:
    """The `datarater` binary: $DATARATER_BIN (set by .ci/run), else built by cargo."""
    path = os.environ.get("DATARATER_BIN")
    if path:
        return path
    out = subprocess.run(
        ["cargo", "build", "--release", "-p", "datarater-cli", "--message-format=json"],
        cwd=REPO,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    for line in out.decode().splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "datarater":
            if msg.get("executable"):
                return msg["executable"]
    raise RuntimeError("cargo built no `datarater` binary")


def run_cli(cli: str, *args: object, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """Runs `datarater ARGS`; with `check`, fails the test on a non-zero exit."""
    p = subprocess.run(
        [cli, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
    )
    if check and p.returncode != 0:
        raise AssertionError(f"datarater {args} failed:\n{p.stdout}\n{p.stderr}")
    return p


def cli_error(p: subprocess.CompletedProcess) -> str:
    """The message the command line printed after `error: `."""
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), p.stderr
    return last[len("error: ") :]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """Training and held-out text cut from the dictionary."""
    d = tmp_path_factory.mktemp("corpus")
    text = DICTIONARY.read_bytes()
    (d / "train.txt").write_bytes(text[:60000])
    (d / "held.txt").write_bytes(text[-20000:])
    return {"train": d / "train.txt", "held_out": d / "held.txt", "dir": d}


@pytest.fixture(scope="session")
def rater_path(corpus, tmp_path_factory) -> str:
    """A tiny rater, trained for a few outer steps through `datarater.train`."""
    run = tmp_path_factory.mktemp("rater") / "run"
    return datarater.train(
        train=corpus["train"], held_out=corpus["held_out"], out=run, outer_steps=3, **TINY
    )


def paragraphs() -> list[str]:
    """The dictionary's paragraphs (blank-line separated), stripped, non-empty, each once."""
    seen, out = set(), []
    for p in DICTIONARY.read_text(encoding="utf-8").split("\n\n"):
        p = p.strip()
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": t}) + "\n")
