"""The typed records: RunSummary reads a summary.json written before it existed and writes it back byte for byte;
verdicts and roles are string enums the files and manifests hold as plain strings; one colour table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segflow.tasks.records import VERDICT_COLOURS, QcVerdict, Role, RunSummary, ShardResult, Verdict, rgb

OLD = Path(__file__).resolve().parents[1] / "data" / "outputs" / "summary-before-records.json"


def test_a_summary_written_before_the_record_reads_and_writes_back_unchanged():
    text = OLD.read_text()  # the demo's summary.json (seed 3), written by the dict-based finalize
    run = RunSummary.from_dict(json.loads(text))
    assert json.dumps(run.to_dict(), indent=2) == text
    assert run.images == 32 and run.failed_images == 2 and run.verdicts["accept"] > 0 and run.extra == {}
    assert run.calibration is not None and run.panoptic is not None and run.qc is not None
    assert run.report_error is None and "report_error" not in run.to_dict()  # absent sections stay absent


def test_unknown_keys_are_kept_and_missing_ones_named():
    data = json.loads(OLD.read_text())
    newer = RunSummary.from_dict(data | {"from_a_newer_segflow": {"x": 1}})
    assert newer.extra == {"from_a_newer_segflow": {"x": 1}} and newer.to_dict()["from_a_newer_segflow"] == {"x": 1}
    del data["commits_digest"]
    with pytest.raises(KeyError, match="commits_digest"):
        RunSummary.from_dict(data)
    # what the flow adds for its caller never goes into the file
    run = RunSummary.from_dict(json.loads(OLD.read_text()))
    run.shard_runs = [ShardResult("shard-00000", 4, 4, 0, 7, 1.5, skipped=False)]
    assert "shard_runs" not in run.to_dict()


def test_verdicts_and_roles_are_the_strings_the_files_hold():
    assert [v.value for v in Verdict] == ["accept", "review", "reject"] and Verdict.ACCEPT == "accept"
    assert [v.value for v in QcVerdict] == ["pass", "flag", "reject"]
    assert json.dumps({Verdict.REVIEW: 1}) == '{"review": 1}'
    from segflow.tasks.stages.registry import ADAPTERS, ROLES

    assert set(ROLES) == set(Role) and all(spec.role in set(Role) for spec in ADAPTERS.values())


def test_one_colour_table_for_plots_and_contact_sheets():
    from segflow.tasks.outputs import qc_report
    from segflow.tasks.report import plots

    assert plots.VERDICT_COLOURS == {k: VERDICT_COLOURS[k] for k in ("accept", "review", "reject")}
    assert qc_report._COLOURS == {k: rgb(v) for k, v in VERDICT_COLOURS.items()}
    assert rgb("#2bbd5a") == (43, 189, 90)
