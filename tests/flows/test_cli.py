"""The CLI package: its choices come from the registries (a format registered by a user's package is usable from
`segflow export` and `segflow import-review` without touching the CLI), and every command group is wired."""

from __future__ import annotations

import json

import pytest

from segflow.flows import cli
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.formats import EXPORTERS, REVIEW_READERS, register_exporter
from segflow.tasks.plan.planner import make_plan
from tests.support.outputs import commit_planned, make_job


def export_ids(run, dest: str, verdicts: str, **options) -> dict:
    """A user's export format: the annotation ids of each image, as JSON."""
    images = list(run.images(verdicts))
    ids = {im.file_name: [r["annotation_id"] for r in im.masks] for im in images}
    with open(dest, "w") as f:
        json.dump(ids, f)
    return {"images": len(images), "masks": sum(map(len, ids.values())), "file": dest}


@pytest.fixture
def finished(tmp_path):
    job = make_job(tmp_path, str(tmp_path / "out"))
    for sid in make_plan(job).shard_ids:
        commit_planned(job, sid)
    finalize(job)
    return job


def test_a_registered_export_format_is_usable_from_the_cli(finished, tmp_path, capsys):
    dest = tmp_path / "ids.json"
    argv = ["export", finished.output, str(dest), "--format", "ids-json", "--verdicts", "all"]
    with pytest.raises(SystemExit):  # not registered yet: argparse refuses the choice
        cli.main(argv)
    assert "invalid choice: 'ids-json'" in capsys.readouterr().err
    register_exporter("ids-json", f"{__name__}:export_ids", default_verdicts="all")
    try:
        assert cli.main(argv) == 0
        written = json.loads(dest.read_text())
        assert written and sum(map(len, written.values())) > 0
        assert f"ids-json: {len(written)} images" in capsys.readouterr().out
    finally:
        EXPORTERS.pop("ids-json")


def test_the_parser_offers_what_the_registries_hold():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommands argparse knows
    assert set(commands) >= {"run", "rerun", "validate", "schema", "status", "verify", "publish", "report", "export"}
    assert set(commands) >= {"import-review", "calibrate", "demo", "train-demo-models", "convert-weights"}
    formats = {a.dest: a.choices for a in commands["export"]._actions}["format"]
    assert list(formats) == list(EXPORTERS)
    readers = {a.dest: a.choices for a in commands["import-review"]._actions}["format"]
    assert list(readers) == list(REVIEW_READERS)
