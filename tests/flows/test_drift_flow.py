"""The drift check through `segflow demo`: a calibration fitted on the session's demo run, applied to darkened scenes
(flagged; each `accept.on_drift` action) and to fresh unshifted scenes (holds). Seeds not used elsewhere."""

from __future__ import annotations

import json

from segflow.flows import cli


def test_darkened_scenes_are_flagged_and_each_action_does_what_it_says(demo_run, tmp_path, capsys):
    cal = str(demo_run / "out" / "calibration.json")
    assert json.loads((demo_run / "out" / "calibration.json").read_text())["reference"]["images"] > 0
    out = tmp_path / "dark"
    argv = ["demo", "--output", str(out), "--images", "12", "--seed", "71", "--calibration", cal, "--shift", "dark"]
    # fail: nothing is exported, one error line that says why and what to do
    assert cli.main([*argv, "--on-drift", "fail", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the calibration does not hold for this run's images (drifted: brightness" in err
    assert "segflow export --format label-studio" in err and not (out / "out" / "coco" / "instances.json").exists()

    # warn: exported as usual, and said everywhere the gold set's precision is shown
    job = json.loads((out / "out" / "job.json").read_text())
    job["accept"]["on_drift"] = "warn"
    (out / "out" / "job.json").write_text(json.dumps(job))
    assert cli.main(["rerun", str(out / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "out" / "summary.json").read_text())
    drift = summary["drift"]
    assert drift["verdict"].startswith("drifted: ") and "brightness" in drift["drifted"] and drift["action"] == "warn"
    assert summary["calibration"]["holds"] is False and summary["verdicts"]["accept"] > 0
    assert "CALIBRATION DOES NOT HOLD: drifted: brightness" in printed and "is not this run's" in printed
    assert "on the gold set, NOT this run's" in printed
    quality = json.loads((out / "out" / "quality.json").read_text())
    assert quality["drift"]["verdict"] == drift["verdict"] and quality["estimate"]["precision"] is not None
    report = (out / "out" / "report.html").read_text()
    assert "The calibration does not hold for this run" in report and report.index("calibration-check") < report.index(
        'id="summary"'
    )
    # the estimate is measured against the truth: the exported set's precision on these images
    true = quality["set"]["precision"]
    assert abs(summary["estimate"]["precision"] - true) <= 0.15, (summary["estimate"], true)

    # review: what would be accepted goes to review, reason drift; nothing exported
    job["accept"]["on_drift"] = "review"
    (out / "out" / "job.json").write_text(json.dumps(job))
    assert cli.main(["rerun", str(out / "out"), "--no-progress"]) == 0
    summary = json.loads((out / "out" / "summary.json").read_text())
    assert summary["verdicts"]["accept"] == 0 and summary["coco_annotations"] == 0 and summary["verdicts"]["review"] > 0
    import pyarrow.dataset as ds

    rows = ds.dataset(str(out / "out" / "manifest" / "masks.parquet")).to_table().to_pylist()
    assert any("drift" in r["verdict_reasons"] for r in rows if r["verdict"] == "review")


def test_fresh_unshifted_scenes_hold(demo_run, tmp_path, capsys):
    """Negative control: the same calibration on new scenes rendered as the gold set's were."""
    cal = str(demo_run / "out" / "calibration.json")
    out = tmp_path / "fresh"
    argv = ["demo", "--output", str(out), "--images", "12", "--seed", "72", "--calibration", cal, "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "out" / "summary.json").read_text())
    assert summary["drift"]["verdict"] == "holds" and summary["calibration"]["holds"] is True
    assert "calibration     : holds" in capsys.readouterr().out
