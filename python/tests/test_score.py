"""Scores from Python are, bitwise, the command line's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datarater
from conftest import paragraphs, run_cli, write_jsonl


def documents() -> list[str]:
    # Every paragraph of the dictionary (several of the command line's blocks of
    # documents), and the edge cases of the short-document rule.
    return paragraphs() + ["", "a", "x" * 15, "y" * 16, "z" * 17, "Ünïcödé ✓ " * 5]


def cli_scores(cli, rater, jsonl, tmp_path, *flags) -> list:
    out = tmp_path / "scores.jsonl"
    run_cli(cli, "score", "--rater", rater, "--input", jsonl, "--out", out, "--force", *flags)
    return [json.loads(line)["score"] for line in out.read_text().splitlines()]


def assert_same(py: np.ndarray, cli: list) -> None:
    assert py.dtype == np.float64 and len(py) == len(cli)
    for i, (p, c) in enumerate(zip(py, cli)):
        if c is None:
            assert np.isnan(p), i
        else:
            # The command line writes the f64 score in its shortest round-trip form.
            assert np.float64(c).tobytes() == p.tobytes(), (i, p, c)


@pytest.mark.parametrize("settings", [{}, {"aggregate": "min", "forward_batch": 7}])
def test_scores_equal_the_command_lines_bitwise(cli, rater_path, tmp_path, settings):
    docs = documents()
    assert len(docs) > 4096 // 8  # more than one block of sequences
    jsonl = tmp_path / "docs.jsonl"
    write_jsonl(jsonl, docs)
    flags = []
    if settings:
        flags = ["--aggregate", settings["aggregate"], "--batch-size", settings["forward_batch"]]
    expected = cli_scores(cli, rater_path, jsonl, tmp_path, *flags)
    rater = datarater.Rater.load(rater_path, **settings)
    f64 = rater.score(docs, dtype="float64")
    assert_same(f64, expected)
    # float32 (the default) is the same score rounded once.
    f32 = rater.score(docs)
    assert f32.dtype == np.float32
    assert f32.tobytes() == f64.astype(np.float32).tobytes()
    # bytes in, and streamed in batches of any size: the same scores.
    assert rater.score([d.encode() for d in docs], dtype="float64").tobytes() == f64.tobytes()
    batches = list(rater.score_batches(iter(docs), batch_size=97, dtype="float64"))
    assert [len(b) for b in batches[:-1]] == [97] * (len(batches) - 1)
    assert np.concatenate(batches).tobytes() == f64.tobytes()


def test_scores_do_not_depend_on_what_the_rater_scored_before(rater_path):
    # A rater keeps the first-layer table its first large call builds (at least 1024
    # sequences), and later calls of any size look rows up in it: the same bits as
    # before it was built.
    docs = documents()
    rater = datarater.Rater.load(rater_path)
    few = rater.score(docs[:50], dtype="float64")
    rater.score(docs)
    assert rater.score(docs[:50], dtype="float64").tobytes() == few.tobytes()


def test_short_documents_follow_the_rule(rater_path):
    rater = datarater.Rater.load(rater_path)
    assert rater.pads_short and rater.seq_len == 16
    s = rater.score(["", "a", "a\0", "abc" * 10])
    assert np.isnan(s[0]) and not np.isnan(s[1])
    # A short document is scored padded with NUL bytes to one sequence.
    assert s[1] == s[2]
    assert not np.isnan(s[3])
    assert rater.score([]).shape == (0,)


def test_rater_properties_and_pickle(rater_path):
    import pickle

    rater = datarater.Rater.load(rater_path)
    assert rater.config == {
        "vocab": 256, "d_model": 8, "n_layers": 1, "n_heads": 1, "d_ff": 16, "max_len": 16
    }
    assert rater.training["outer_steps_done"] == 3
    assert (rater.aggregate, rater.forward_batch) == ("mean", 16)  # `datarater score`'s defaults
    back = pickle.loads(pickle.dumps(rater))
    docs = paragraphs()[:50]
    assert back.score(docs).tobytes() == rater.score(docs).tobytes()
    assert "seq_len=16" in repr(rater)


def test_score_files_and_filter_files_write_what_the_command_line_writes(
    cli, rater_path, tmp_path
):
    jsonl = tmp_path / "docs.jsonl"
    write_jsonl(jsonl, paragraphs()[:800])
    (tmp_path / "py").mkdir()
    (tmp_path / "cli").mkdir()
    out = datarater.score_files(datarater.Rater.load(rater_path), jsonl, tmp_path / "py" / "s.jsonl")
    assert out == str(tmp_path / "py" / "s.jsonl")
    run_cli(cli, "score", "--rater", rater_path, "--input", jsonl, "--out", tmp_path / "cli" / "s.jsonl")
    assert (tmp_path / "py" / "s.jsonl").read_bytes() == (tmp_path / "cli" / "s.jsonl").read_bytes()

    report = datarater.filter_files(
        jsonl, tmp_path / "py" / "kept.jsonl", rater=rater_path, discard_fraction=0.25
    )
    run_cli(
        cli, "filter", "--rater", rater_path, "--input", jsonl,
        "--out", tmp_path / "cli" / "kept.jsonl", "--discard-fraction", 0.25,
    )
    assert (tmp_path / "py" / "kept.jsonl").read_bytes() == (tmp_path / "cli" / "kept.jsonl").read_bytes()
    assert report["documents"] == 800 and report["kept"] == 600
    assert report["mode"] == "discard" and report["threshold"] is not None
