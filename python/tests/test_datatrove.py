"""The datatrove block: JsonlReader -> DataRaterFilter -> JsonlWriter keeps exactly
what `datarater filter` keeps at the same threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import paragraphs, run_cli, write_jsonl

pytest.importorskip("datatrove")

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

import datarater  # noqa: E402
from datarater.datatrove import DataRaterFilter  # noqa: E402


def read_jsonl_dir(d) -> list[dict]:
    return [json.loads(line) for f in sorted(d.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.mark.parametrize("loaded", [False, True])
def test_pipeline_keeps_what_datarater_filter_keeps(cli, rater_path, tmp_path, loaded):
    # The shipped corpus as JSON Lines: one document per paragraph of the dictionary
    # (datatrove skips empty documents; repeated paragraphs would tie at a threshold).
    docs = paragraphs()
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "corpus.jsonl", docs)

    kept_cli = tmp_path / "kept.jsonl"
    run_cli(
        cli, "filter", "--rater", rater_path, "--input", data / "corpus.jsonl",
        "--out", kept_cli, "--discard-fraction", 0.3,
    )
    report = json.loads((tmp_path / "kept.jsonl.report.json").read_text())
    threshold = report["threshold"]
    kept_ids = [json.loads(line)["id"] for line in kept_cli.read_text().splitlines()]
    assert 0 < len(kept_ids) < len(docs)
    scores_cli = tmp_path / "scores.jsonl"
    run_cli(cli, "score", "--rater", rater_path, "--input", data / "corpus.jsonl", "--out", scores_cli)
    score_of = {
        r["id"]: r["score"] for r in map(json.loads, scores_cli.read_text().splitlines())
    }

    rater = datarater.Rater.load(rater_path) if loaded else rater_path
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(data)),
            DataRaterFilter(
                rater,
                discard_below=threshold,
                batch_size=256,
                exclusion_writer=JsonlWriter(str(tmp_path / "excluded"), compression=None),
            ),
            JsonlWriter(str(tmp_path / "out"), compression=None),
        ],
        tasks=1,
        workers=1,
        logging_dir=str(tmp_path / "logs"),
    ).run()

    out = read_jsonl_dir(tmp_path / "out")
    excluded = read_jsonl_dir(tmp_path / "excluded")
    assert [d["id"] for d in out] == kept_ids
    assert len(out) + len(excluded) == len(docs)
    assert {d["metadata"]["filter_reason"] for d in excluded} == {"below_threshold"}
    # The score in the metadata is the command line's, exactly.
    for d in out + excluded:
        assert d["metadata"]["datarater_score"] == score_of[d["id"]], d["id"]


def test_short_documents_are_kept_or_dropped(rater_path, tmp_path):
    from datatrove.data import Document

    block = DataRaterFilter(rater_path, discard_below=-1e9, keep_short=False)
    docs = [Document(text="", id="0"), Document(text="a long enough document", id="1")]
    assert block.filter_batch(docs) == [(False, "too_short"), True]
    assert docs[0].metadata["datarater_score"] is None
    assert isinstance(docs[1].metadata["datarater_score"], float)
    annotate = DataRaterFilter(rater_path)  # no threshold: annotate only
    assert annotate.filter_batch([Document(text="", id="0")]) == [True]


def test_datarater_does_not_import_datatrove():
    code = "import sys, datarater; print('datatrove' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    assert out.stdout.strip() == "False"
