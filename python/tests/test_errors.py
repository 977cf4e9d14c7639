"""Every error kind arrives as its exception, with the command line's message; a panic
is an exception, never an abort."""

from __future__ import annotations

import subprocess
import sys

import pytest

import datarater
from datarater import _native
from conftest import TINY, cli_error, run_cli

KINDS = {
    "Shape": datarater.ShapeError,
    "ShapeExpected": datarater.ShapeExpectedError,
    "Index": datarater.IndexRangeError,
    "Params": datarater.ParamsError,
    "Config": datarater.ConfigError,
    "NonFinite": datarater.NonFiniteError,
    "MemoryBudget": datarater.MemoryBudgetError,
    "File": datarater.FileError,
    "Rank": datarater.RankError,
    "Usage": datarater.UsageError,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_library_error_has_its_class_and_message(kind):
    with pytest.raises(KINDS[kind]) as e:
        _native._raise_library_error(kind)
    assert isinstance(e.value, datarater.DataRaterError)
    assert str(e.value) == e.value.rust_message
    assert type(e.value).__module__ == "datarater"
    # Distinct classes: no kind is caught as another.
    others = [c for k, c in KINDS.items() if k != kind]
    assert not isinstance(e.value, tuple(others))


def test_a_missing_rater_file_is_a_file_error_with_the_command_lines_message(cli, tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(datarater.FileError) as e:
        datarater.Rater.load(missing)
    (tmp_path / "in.txt").write_text("a document\n")
    p = run_cli(cli, "score", "--rater", missing, "--input", tmp_path / "in.txt",
                "--out", tmp_path / "s.jsonl", check=False)
    assert str(e.value) == cli_error(p)


def test_a_file_that_is_not_a_rater(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(datarater.FileError, match="not a usable rater file"):
        datarater.Rater.load(bad)


def test_settings_errors(rater_path, corpus, tmp_path):
    with pytest.raises(datarater.ConfigError, match="batch_size"):
        datarater.Rater.load(rater_path, forward_batch=0)
    with pytest.raises(datarater.ArgumentError, match="median"):
        datarater.Rater.load(rater_path, aggregate="median")
    with pytest.raises(TypeError, match="unexpected keyword argument 'popluation'"):
        datarater.train(train=corpus["train"], held_out=corpus["held_out"], out=tmp_path, popluation=3)
    with pytest.raises(datarater.ArgumentError, match="invalid value 'many'"):
        datarater.train(train=corpus["train"], held_out=corpus["held_out"], out=tmp_path, population="many")
    rater = datarater.Rater.load(rater_path)
    with pytest.raises(TypeError, match="not one str"):
        rater.score("one document")
    with pytest.raises(TypeError, match="document 1 is a int"):
        rater.score(["a", 1])
    with pytest.raises(ValueError, match="dtype"):
        rater.score(["a"], dtype="float16")


def test_a_failing_command_is_a_command_error_with_the_command_lines_message(
    cli, rater_path, corpus, tmp_path
):
    missing = tmp_path / "missing.txt"
    with pytest.raises(datarater.CommandError) as e:
        datarater.score_files(rater_path, missing, tmp_path / "s.jsonl")
    p = run_cli(cli, "score", "--rater", rater_path, "--input", missing,
                "--out", tmp_path / "s.jsonl", check=False)
    assert str(e.value) == cli_error(p)
    # filter: a mode without its parameter.
    with pytest.raises(datarater.CommandError, match="--discard-fraction"):
        datarater.filter_files(corpus["train"], tmp_path / "k.txt", rater=rater_path)
    # train: held-out data too small for one batch.
    (tmp_path / "tiny.txt").write_text("only a few bytes\n")
    settings = {**TINY, "batch_size": 64}
    with pytest.raises(datarater.CommandError, match="too small for one batch") as e:
        datarater.train(train=corpus["train"], held_out=tmp_path / "tiny.txt",
                        out=tmp_path / "run", **settings)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    p = run_cli(cli, "train", "--train", corpus["train"], "--held-out", tmp_path / "tiny.txt",
                "--out", tmp_path / "run", *args, check=False)
    assert str(e.value) == cli_error(p)


def test_a_panic_is_an_exception_and_the_interpreter_goes_on():
    code = (
        "import datarater\n"
        "from datarater import _native\n"
        "try:\n"
        "    _native._panic_in_command()\n"
        "except datarater.PanicError as e:\n"
        "    print('caught:', e)\n"
        "print('still alive')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 0, p.stderr
    assert "caught: Rust code panicked (a bug in datarater): injected panic for the test suite" in p.stdout
    assert "still alive" in p.stdout
    # And in this process too.
    with pytest.raises(datarater.PanicError, match="injected panic"):
        _native._panic_in_command()
