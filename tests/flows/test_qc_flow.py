"""The qc stage in a real flow: verdicts in the manifest, quarantine, COCO filtering, reports that match the
manifest."""

import json
from collections import Counter

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image
from pycocotools.coco import COCO

from segflow.flows import cli


def add_qc(job, **settings):
    job["stages"]["qc"] = {"kind": "qc", "needs": ["masks"], **settings}


def test_qc_stage_verdicts_reports_and_export(prefect_harness, write_job, image_dir, tmp_path):
    out = tmp_path / "out"
    # random-weight SAM: low predicted IoU everywhere, so loosen that gate to see every verdict
    job = write_job(
        image_dir,
        out,
        mutate=lambda j: add_qc(
            j, predicted_iou={"min": 0.0, "action": "reject"}, stability={"min": 0.5, "action": "flag"}
        ),
    )
    assert cli.main(["run", str(job), "--no-progress"]) == 0

    masks = ds.dataset(str(out / "manifest" / "masks.parquet")).to_table().to_pylist()
    images = ds.dataset(str(out / "manifest" / "images.parquet")).to_table().to_pylist()
    qc_verdicts = Counter(m["qc_verdict"] for m in masks)
    assert set(qc_verdicts) <= {"pass", "flag", "reject"} and sum(qc_verdicts.values()) == len(masks) > 0
    assert all((m["qc_verdict"] == "pass") == (m["qc_reasons"] == []) for m in masks)
    # without a calibration QC decides: pass -> accept, flag -> review, reject -> reject, for the same reasons
    as_verdict = {"pass": "accept", "flag": "review", "reject": "reject"}
    assert all(m["verdict"] == as_verdict[m["qc_verdict"]] and m["verdict_reasons"] == m["qc_reasons"] for m in masks)
    verdicts = Counter(m["verdict"] for m in masks)
    assert all(m["stage"] == "masks" and m["model"].startswith("sam:") for m in masks)  # QC passes rows through
    ok = [i for i in images if i["status"] == "ok"]
    assert all(isinstance(i["qc_flags"], list) for i in ok)

    quarantine = ds.dataset(str(out / "qc" / "quarantine.parquet")).to_table().to_pylist()
    assert sorted(q["annotation_id"] for q in quarantine) == sorted(
        m["annotation_id"] for m in masks if m["verdict"] == "reject"
    )
    review = ds.dataset(str(out / "review" / "masks.parquet")).to_table().to_pylist()
    assert sorted(r["annotation_id"] for r in review) == sorted(
        m["annotation_id"] for m in masks if m["verdict"] == "review"
    )
    review_coco = COCO(str(out / "review" / "instances.json"))
    assert sorted(review_coco.anns) == sorted(r["annotation_id"] for r in review)
    assert set(review_coco.imgs) == {r["image_id"] for r in review}  # only the images a reviewer has to open

    # report numbers equal the counts in the manifest
    summary = pq.read_table(out / "qc" / "summary.parquet").to_pylist()
    by_rule = Counter()
    for r in summary:
        by_rule[(r["category_name"], r["verdict"], r["rule"])] += r["count"]
    expected = Counter()
    for m in masks:
        for rule in m["verdict_reasons"] or ["(none)"]:
            expected[(m["category_name"], m["verdict"], rule)] += 1
    assert by_rule == expected
    run_summary = json.loads((out / "summary.json").read_text())
    assert run_summary["qc"]["verdicts"] == {v: verdicts.get(v, 0) for v in ("accept", "review", "reject")}
    assert run_summary["verdicts"] == run_summary["qc"]["verdicts"]
    report = (out / "qc" / "report.md").read_text()
    for v in ("accept", "review", "reject"):
        assert f"| {v} | {verdicts.get(v, 0)} |" in report
    assert (out / "qc" / "report.html").read_text().count("<table") >= 3
    for v, name in (("accept", "accepted"), ("review", "review"), ("reject", "rejected")):
        if verdicts.get(v):
            sheet = Image.open(out / "qc" / "sheets" / f"{name}.jpg")
            assert sheet.format == "JPEG" and sheet.width >= 600 and f"sheets/{name}.jpg" in report

    # COCO holds the accepted masks only, unless review ones are switched on
    assert (
        len(COCO(str(out / "coco" / "instances.json")).anns)
        == verdicts.get("accept", 0)
        == run_summary["coco_annotations"]
    )
    out2 = tmp_path / "out2"
    job2 = write_job(
        image_dir,
        out2,
        name="flagged.yaml",
        mutate=lambda j: add_qc(
            j,
            predicted_iou={"min": 0.0, "action": "reject"},
            stability={"min": 0.5, "action": "flag"},
            export_review=True,
        ),
    )
    assert cli.main(["run", str(job2), "--no-progress"]) == 0
    n = verdicts.get("accept", 0) + verdicts.get("review", 0)
    assert len(COCO(str(out2 / "coco" / "instances.json")).anns) == n


def test_panoptic_agreement_in_a_flow_and_merge_takes_only_exportable_things(
    prefect_harness, write_job, image_dir, tmp_path, tiny_models
):
    """qc needs the panoptic stage: things the panoptic model does not see (here: it sees only stuff)
    are flagged by panoptic_agreement; the merge then uses passed things only."""
    out = tmp_path / "out"

    def mutate(j):
        j["ontology"].append({"id": 4, "name": "sky", "isthing": False})
        j["stages"]["panoptic"] = {
            "kind": "mask2former",
            "weights": str(tiny_models["mask2former"]),
            "device": "cpu",
            "threshold": 0.0,
            "overlap_threshold": 0.0,
            "label_map": {"circle": "sky", "square": "sky", "triangle": "sky"},
        }
        add_qc(
            j,
            predicted_iou={"min": 0.0, "action": "reject"},
            stability={"min": 0.0, "action": "off"},
            needs=["masks", "panoptic"],
            components={"action": "off"},
            mask_box_iou={"min": 0.0, "action": "off"},
            duplicate={"action": "off"},
            class_conflict={"action": "off"},
            max_area={"action": "off"},
            min_area={"min_px": 0, "action": "off"},
        )
        j["stages"]["merge"] = {"kind": "panoptic_merge", "needs": ["qc", "panoptic"], "min_area": 1}

    assert cli.main(["run", str(write_job(image_dir, out, mutate=mutate)), "--no-progress"]) == 0
    masks = ds.dataset(str(out / "manifest" / "masks.parquet")).to_table().to_pylist()
    assert masks and all(m["qc_reasons"] == ["panoptic_agreement"] and m["qc_verdict"] == "flag" for m in masks)
    assert json.loads((out / "summary.json").read_text())["qc"]["rules"] == {"panoptic_agreement": len(masks)}
    segments = ds.dataset(str(out / "manifest" / "panoptic.parquet")).to_table().to_pylist()
    assert segments and not any(s["isthing"] for s in segments)  # flagged things stay out of the panoptic map
