"""Scoring throughput from Python next to the command line's, on the same documents.

    python python/examples/throughput.py [--rater FILE] [--bin PATH] [--repeat N] [--runs R]

The documents are the shipped dictionary's lines (non-empty), repeated --repeat times,
written once as JSON Lines for `datarater score`. Python times `Rater.score` on the
texts in memory; the command line's time is the scoring pass it reports itself
("scored N documents ... in S s"), which reads the file, scores and writes the score
file (its start-up and rater loading are left out, as `Rater.load` is). Runs alternate
Python and the command line; each side's best and median are printed. Without
--rater, a rater of the command line's default size is made (0 outer steps: the
speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datarater

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rater", help="a rater file (default: a fresh one of the default size)")
    p.add_argument("--bin", default=os.environ.get("DATARATER_BIN", str(REPO / "target/release/datarater")),
                   help="the datarater binary (default: $DATARATER_BIN or target/release/datarater)")
    p.add_argument("--repeat", type=int, default=4, help="copies of the dictionary's lines")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each side")
    a = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="datarater-throughput-"))
    try:
        measure(a, tmp)
    finally:
        shutil.rmtree(tmp)


def measure(a: argparse.Namespace, tmp: Path) -> None:
    dictionary = REPO / "data" / "devils-dictionary.txt"
    lines = [l for l in dictionary.read_text(encoding="utf-8").splitlines() if l.strip()]
    docs = lines * a.repeat
    corpus = tmp / "docs.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    mb = sum(len(d.encode()) for d in docs) / 1e6

    rater_path = a.rater or datarater.train(
        train=dictionary, held_out=dictionary, out=tmp / "run", format="lines", outer_steps=0
    )
    rater = datarater.Rater.load(rater_path)
    threads = os.environ.get("RAYON_NUM_THREADS", str(os.cpu_count()))
    print(f"{len(docs)} documents, {mb:.2f} MB of text; {rater}; threads: {threads}", flush=True)

    py, cli = [], []
    for _ in range(a.runs):
        start = time.perf_counter()
        rater.score(docs)
        py.append(time.perf_counter() - start)
        out = subprocess.run(
            [a.bin, "score", "--rater", rater_path, "--input", corpus, "--out", tmp / "s.jsonl", "--force"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        ).stdout
        m = re.search(r"scored \d+ documents .* in ([0-9.]+)s", out)
        if not m:
            sys.exit(f"unexpected output of datarater score: {out}")
        cli.append(float(m.group(1)))

    def show(name: str, times: list) -> float:
        best, med = min(times), statistics.median(times)
        print(f"{name:>14}: best {mb / best:.3f} MB/s ({len(docs) / best:.0f} documents/s), "
              f"median {mb / med:.3f} MB/s, runs {', '.join(f'{t:.2f}s' for t in times)}")
        return med

    p_med, c_med = show("Python", py), show("command line", cli)
    print(f"Python / command line (median throughput): {c_med / p_med:.3f}")


if __name__ == "__main__":
    main()
