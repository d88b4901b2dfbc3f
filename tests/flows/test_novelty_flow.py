"""Shapes outside the ontology through `segflow demo --unknown`: the calibration fitted on the session's demo run
sends masks unlike its gold set's to review (reason `novel`, the score in the manifest and the review band's
files); with `accept.novelty: false` (negative control) more of the unknown shapes are exported as known classes."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
from pycocotools import mask as mask_utils

from segflow.flows import cli


def _exported_unknowns(run) -> int:
    """Exported masks that are one of the unknown shapes (mask IoU >= 0.5 with one)."""
    gt = json.loads((run / "ground_truth" / "unknown.json").read_text())
    images = {
        r["file_name"]: r for r in ds.dataset(str(run / "out" / "manifest" / "images.parquet")).to_table().to_pylist()
    }
    masks = ds.dataset(str(run / "out" / "manifest" / "masks.parquet")).to_table().to_pylist()
    found = 0
    for im in gt["images"]:
        image_id = images[im["file_name"]]["image_id"]
        mine = [m for m in masks if m["image_id"] == image_id and m["verdict"] == "accept"]
        for a in (a for a in gt["annotations"] if a["image_id"] == im["id"]):
            rles = [{"size": [m["height"], m["width"]], "counts": m["rle_counts"]} for m in mine]
            if rles and mask_utils.iou(rles, [a["segmentation"]], [0]).max() >= 0.5:
                found += 1
    return found


def test_unknown_shapes_go_to_review_as_novel_and_not_without_it(demo_run, demo_copy, tmp_path, capsys):
    # a calibration on all 30 of the session demo's images (about 40 right masks a class: a limit for each)
    gold = str(demo_run / "ground_truth" / "instances.json")
    before = (demo_run / "out" / "calibration.json").read_bytes()
    assert cli.main(["calibrate", str(demo_copy), "--gold", gold, "--precision", "0.97"]) == 0
    assert (demo_run / "out" / "calibration.json").read_bytes() == before  # the copy, not the run it was copied from
    cal = str(demo_copy / "calibration.json")
    fitted = json.loads((demo_copy / "calibration.json").read_text())["classes"]
    assert all(e.get("novelty") for e in fitted.values()), {n: e.get("novelty") for n, e in fitted.items()}
    run = tmp_path / "unknown"
    argv = ["demo", "--output", str(run), "--images", "12", "--seed", "73", "--unknown", "2", "--calibration", cal]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert "reason novel" in capsys.readouterr().out
    summary = json.loads((run / "out" / "summary.json").read_text())
    masks = ds.dataset(str(run / "out" / "manifest" / "masks.parquet")).to_table()
    novel = [r for r in masks.to_pylist() if "novel" in (r["verdict_reasons"] or [])]
    assert novel and summary["calibration"]["novel"] == len(novel) and all(r["verdict"] == "review" for r in novel)
    assert not any("novelty check" in w for w in summary["calibration"]["warnings"])
    review = ds.dataset(str(run / "out" / "review" / "masks.parquet")).to_table()
    assert {r["annotation_id"] for r in novel} <= set(review["annotation_id"].to_pylist())
    assert "novelty" in review.column_names and min(r["novelty"] for r in novel) > 0
    with_novelty = _exported_unknowns(run)
    report = (run / "out" / "report.html").read_text()
    assert (
        "review: shape unlike the gold set&#39;s (novel)" in report or "shape unlike the gold set's (novel)" in report
    )

    job = json.loads((run / "out" / "job.json").read_text())  # negative control: the score only
    job["accept"]["novelty"] = False
    (run / "out" / "job.json").write_text(json.dumps(job))
    assert cli.main(["rerun", str(run / "out"), "--no-progress"]) == 0
    warnings = json.loads((run / "out" / "summary.json").read_text())["calibration"]["warnings"]
    assert any("counting on the novelty check" in w for w in warnings)  # thresholds fitted with it, run without
    masks = ds.dataset(str(run / "out" / "manifest" / "masks.parquet")).to_table().to_pylist()
    assert not any("novel" in (r["verdict_reasons"] or []) for r in masks)
    assert any(r["novelty"] is not None for r in masks)  # still scored
    without = _exported_unknowns(run)
    assert with_novelty < without, (with_novelty, without)
