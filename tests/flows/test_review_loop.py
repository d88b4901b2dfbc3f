"""The review loop on the demo's finished run, through the files a person uses: `segflow review-batch` writes a CVAT
archive, the simulated reviewer (segflow.demo.reviewer) answers it from the ground truth, `segflow import-review`
estimates the exported set's precision and recall from the audit, `segflow calibrate --from-reviews` fits on what
was reviewed. The truth is the ground truth of every image (segflow.demo.prepare.holdout_quality)."""

from __future__ import annotations

import json
import zipfile

from segflow.demo.prepare import holdout_quality
from segflow.demo.reviewer import review_coco
from segflow.flows import cli
from segflow.tasks.ops.calibrate import reviews_gold


def _batch(out, dest, budget, capsys, *extra, fmt="cvat"):
    assert cli.main(["review-batch", str(out), str(dest), "--budget", str(budget), "--format", fmt, *extra]) == 0
    capsys.readouterr()
    name = sorted(p.stem for p in (out / "review_batches").glob("b*.json"))[-1]
    return json.loads((out / "review_batches" / f"{name}.json").read_text())


def _import(out, reviewed, capsys):
    assert cli.main(["import-review", str(out), str(reviewed), "--format", "coco", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_review_batch_measures_the_exported_set_and_marks_what_to_check(demo_run, demo_copy, tmp_path, capsys):
    out, truth = demo_copy, demo_run / "ground_truth" / "instances.json"
    batch = _batch(out, tmp_path / "batch", 60, capsys)
    parts = {it["part"] for it in batch["items"]}
    assert {"audit", "fix"} <= parts and len(batch["items"]) == 60
    for it in batch["items"]:
        if it["part"] == "audit":
            s = batch["strata"][it["stratum"]]
            assert it["inclusion_probability"] == s["n"] / s["N"]
            assert str(it["image_id"]) in batch["image_inclusion"]
    assert sum(s["n"] for s in batch["strata"].values()) == sum(it["part"] == "audit" for it in batch["items"])
    whole = {it["image_id"] for it in batch["items"] if it["part"] == "fix-image"}
    assert not [it for it in batch["items"] if it["part"] == "fix" and it["image_id"] in whole]  # nothing asked twice
    fix = [it for it in batch["items"] if it["part"] == "fix"]
    assert [it["p_right"] for it in fix] == sorted(it["p_right"] for it in fix)  # likeliest wrong first

    with zipfile.ZipFile(tmp_path / "batch" / "cvat-coco.zip") as z:
        doc = json.loads(z.read("annotations/instances_default.json"))
    assert {im["id"] for im in doc["images"]} == {it["image_id"] for it in batch["items"]}
    marked = {a["id"] for a in doc["annotations"] if a["attributes"].get("segflow_check")}
    assert marked == {it["annotation_id"] for it in batch["items"] if it["annotation_id"] is not None}
    assert {a["attributes"]["segflow_verdict"] for a in doc["annotations"]} <= {"accept", "review"}

    changes = _import(out, review_coco(tmp_path / "batch" / "cvat-coco.zip", truth, tmp_path / "r.json"), capsys)
    e = changes["estimate"]
    assert json.loads((out / "reviews" / changes["version"] / "estimate.json").read_text()) == e
    true = holdout_quality(str(out), str(truth))["set"]
    assert e["precision_low"] <= true["precision"] <= e["precision_high"], (e, true)
    assert e["recall_low"] <= true["recall"] <= e["recall_high"], (e, true)
    assert e["exported"] == true["tp"] + true["fp"]


def test_a_reviewer_who_deletes_everything_gets_an_estimate_that_says_so(demo_run, demo_copy, tmp_path, capsys):
    """Negative control: the estimate follows the answers, not the run's own scores."""
    out = demo_copy
    batch = _batch(out, tmp_path / "batch", 40, capsys, fmt="coco")
    doc = json.loads((tmp_path / "batch" / "instances.json").read_text())  # COCO: RLE, the batch's masks marked
    marked = {a["id"] for a in doc["annotations"] if a["attributes"]["segflow_check"]}
    assert marked == {it["annotation_id"] for it in batch["items"] if it["annotation_id"] is not None}
    (tmp_path / "none.json").write_text(json.dumps(doc | {"annotations": []}))
    e = _import(out, tmp_path / "none.json", capsys)["estimate"]
    true = holdout_quality(str(out), str(demo_run / "ground_truth" / "instances.json"))["set"]
    assert e["precision"] == 0.0 and e["precision_high"] < true["precision"]


def test_thresholds_refit_from_reviews_use_the_audit_and_accumulate(demo_run, demo_copy, tmp_path, capsys):
    out, truth = demo_copy, demo_run / "ground_truth" / "instances.json"
    first = _batch(out, tmp_path / "b1", 60, capsys)
    _import(out, review_coco(tmp_path / "b1" / "cvat-coco.zip", truth, tmp_path / "r1.json"), capsys)
    assert cli.main(["calibrate", str(out), "--from-reviews", "--json"]) == 0
    capsys.readouterr()
    gold = json.loads((out / "reviews" / "gold.json").read_text())
    names = {im["file_name"] for im in gold["images"]}
    job_gold = json.loads((demo_run / "ground_truth" / "fit.json").read_text())
    assert {im["file_name"] for im in job_gold["images"]} <= names  # the job's gold set counts too
    images = json.loads((out / "job.json").read_text())
    assert images["gold_set"].endswith("reviews/gold.json")
    audited = {int(i) for i in first["image_inclusion"]}
    fix_only = {it["image_id"] for it in first["items"] if it["image_id"] not in audited}
    fit_only = names - {im["file_name"] for im in job_gold["images"]}
    manifest_names = _file_names(out)
    assert {manifest_names[i] for i in fix_only} & fit_only == set()  # images chosen for their errors stay out
    weights = [im["segflow_weight"] for im in gold["images"] if "segflow_weight" in im]
    assert len(weights) == len(fit_only) and abs(sum(weights) / len(weights) - 1) < 1e-3  # 1 / chance, mean 1
    assert len(set(weights)) > 1  # images with more exported masks were likelier to be audited: they weigh less
    assert all("segflow_weight" not in im for im in gold["images"] if im["file_name"] not in fit_only)
    n_first = len(gold["images"])

    second = _batch(out, tmp_path / "b2", 60, capsys, "--seed", "1")
    _import(out, review_coco(tmp_path / "b2" / "cvat-coco.zip", truth, tmp_path / "r2.json"), capsys)
    _, n_second = reviews_gold(str(out))  # what `calibrate --from-reviews` fits on next (without finalizing again)
    new = {int(i) for i in second["image_inclusion"]} - audited
    base = lambda names: {n.rsplit("/", 1)[-1] for n in names}
    assert n_second == n_first + len(base(manifest_names[i] for i in new) - base(names))  # rounds accumulate


def _file_names(out) -> dict[int, str]:
    import pyarrow.dataset as ds

    rows = ds.dataset(str(out / "manifest" / "images.parquet")).to_table(columns=["image_id", "file_name"])
    return dict(zip(rows["image_id"].to_pylist(), rows["file_name"].to_pylist(), strict=True))


def test_a_demo_round_and_the_report_show_the_estimate(demo_run, demo_copy, capsys):
    """`segflow demo --review-round`'s round on the demo's run; the report drawn again shows the estimate, and a
    report without a review shows none (negative control)."""
    import shutil

    from segflow.demo.reviewer import review_round

    assert cli.main(["report", str(demo_copy)]) == 0
    assert 'id="review-estimate"' not in (demo_copy / "report.html").read_text()
    folder = demo_copy.parent
    shutil.copytree(demo_run / "ground_truth", folder / "ground_truth")
    # 6 audit masks (and at most one image without masks) and 6 fix items touch at most 13 of the 15 images
    # outside the job's gold set, whatever the run exported: some are left to measure the round on
    r = review_round(folder, budget=12, seed=5)
    e = r["estimate"]
    assert e == json.loads((demo_copy / "reviews" / "v0001" / "estimate.json").read_text())
    assert r["untouched_images"] >= 2 and set(r["before"]) == set(r["after"]) == {"precision", "recall"}
    assert cli.main(["report", str(demo_copy)]) == 0
    capsys.readouterr()
    html = (demo_copy / "report.html").read_text()
    assert 'id="review-estimate"' in html and f"{e['precision']:.3f}" in html and e["batch"] in html
