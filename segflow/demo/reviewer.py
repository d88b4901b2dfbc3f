"""A simulated reviewer for the demo: answers a review file from the demo's ground truth, as a careful person would,
through the same files a person uses (a COCO review file in, a COCO review file out).

On each image of the file it matches the labels shown to the ground truth's objects one to one, at mask IoU >= 0.5
(the rule segflow's quality figures use), highest IoU first, the exported labels (``segflow_verdict`` ``accept``)
before the others: a review label that duplicates an exported one is the one deleted.

* a label matched to an object of its class is **kept** as it is;
* a label matched to an object of another class is **relabelled**;
* a label matched to nothing is **deleted**;
* an object no label matched is **added**, with its ground-truth mask.

Used by the tests, by ``bench/review_study.py`` and by ``segflow demo --review-round``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["review_coco", "review_round"]


def _rle(seg: Any, h: int, w: int) -> dict:
    if isinstance(seg, str):  # the demo's ground truth keeps RLEs as their repr
        import ast

        seg = ast.literal_eval(seg)
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, h, w)
    return {"size": seg["size"], "counts": seg["counts"]}


def _answer(shown: list[dict], objects: list[dict], h: int, w: int) -> tuple[list[tuple[dict, str | None]], list]:
    """``(label, class name it should have or None to delete)`` for each label shown (dicts with ``name``, its
    class, and ``segmentation``), and the objects missed."""
    rles = [_rle(a["segmentation"], h, w) for a in shown]
    truth = [_rle(o["segmentation"], h, w) for o in objects]
    iou = mask_utils.iou(rles, truth, [0] * len(truth)) if rles and truth else np.zeros((len(rles), len(truth)))
    iou = np.asarray(iou, np.float64).reshape(len(rles), len(truth))
    answer: list[tuple[dict, str | None]] = [(a, None) for a in shown]
    found: set[int] = set()
    exported = np.array([(a.get("attributes") or {}).get("segflow_verdict") == "accept" for a in shown], bool)
    same = np.array([[a["name"] == o["name"] for o in objects] for a in shown], bool).reshape(iou.shape)
    # a careful person keeps a label of the right class on an object before relabelling another one there (a
    # circle labelled both circle and square: the circle label stays, the square one goes), exported labels first
    for right_class in (True, False):
        for first in (True, False):
            eligible = (exported[:, None] == first) & (same if right_class else np.ones_like(same))
            for flat in np.argsort(-np.where(eligible, iou, -1.0), axis=None, kind="stable"):
                i, j = divmod(int(flat), max(1, len(truth)))
                if iou[i, j] < 0.5 or not eligible[i, j]:
                    break
                if answer[i][1] is None and j not in found:
                    answer[i] = (shown[i], objects[j]["name"])
                    found.add(j)
    return answer, [(objects[j], truth[j]) for j in range(len(objects)) if j not in found]


def review_coco(review_file: str | Path, ground_truth: str | Path, out: str | Path) -> Path:
    """Answer ``review_file`` (COCO instances, or a CVAT COCO 1.0 archive, as ``segflow review-batch`` writes
    them) from ``ground_truth`` (the demo's ``ground_truth/instances.json``); write the reviewed file to
    ``out`` and return its path."""
    raw = Path(review_file).read_bytes()
    if raw[:2] == b"PK":  # a CVAT COCO 1.0 archive
        import io
        import zipfile

        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            raw = z.read("annotations/instances_default.json")
    doc = json.loads(raw)
    gold = json.loads(Path(ground_truth).read_text())
    gold_names = {c["id"]: c["name"] for c in gold["categories"]}
    ids = {c["name"]: c["id"] for c in doc["categories"]}
    names = {c["id"]: c["name"] for c in doc["categories"]}
    gold_image = {im["file_name"]: im["id"] for im in gold["images"]}
    objects: dict[int, list[dict]] = {}
    for a in gold["annotations"]:
        if not a.get("iscrowd") and gold_names[a["category_id"]] in ids:
            objects.setdefault(a["image_id"], []).append(a | {"name": gold_names[a["category_id"]]})
    by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    kept, next_id = [], 1 + max([a["id"] for a in doc["annotations"]] + [0])
    for im in doc["images"]:
        truth = objects.get(gold_image.get(im["file_name"], -1), [])
        shown = [a | {"name": names[a["category_id"]]} for a in by_image.get(im["id"], [])]
        answer, missed = _answer(shown, truth, im["height"], im["width"])
        for a, name in answer:
            if name is not None:
                a = {k: v for k, v in a.items() if k != "name"}
                kept.append(a if names[a["category_id"]] == name else a | {"category_id": ids[name]})
        for obj, rle in missed:
            counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
            kept.append(
                {
                    "id": next_id,
                    "image_id": im["id"],
                    "category_id": ids[obj["name"]],
                    "segmentation": {"size": [im["height"], im["width"]], "counts": counts},
                    "area": int(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
            next_id += 1
    target = Path(out)
    target.write_text(json.dumps(doc | {"annotations": kept}))
    return target


def _subset(ground_truth: Path, keep: set[str], target: Path) -> Path:
    """The ground truth of the images named in ``keep``, written to ``target``."""
    gold = json.loads(ground_truth.read_text())
    images = [im for im in gold["images"] if im["file_name"] in keep]
    ids = {im["id"] for im in images}
    target.write_text(
        json.dumps(gold | {"images": images, "annotations": [a for a in gold["annotations"] if a["image_id"] in ids]})
    )
    return target


def review_round(folder: str | Path, budget: int = 200, seed: int = 0, audit_share: float = 0.5) -> dict[str, Any]:
    """One round of the review loop on a finished demo under ``folder``: a review batch of ``budget``, answered by
    the simulated reviewer, imported (the audit's estimate), then thresholds fitted again from the reviews.

    Returns the figures: the estimate against the truth on every image (before the re-fit), and the exported set's
    precision and recall before and after the re-fit on the images neither the round nor the job's gold set
    touched.
    """
    from segflow.demo.prepare import holdout_quality
    from segflow.tasks.ops.calibrate import recalibrate_from_reviews
    from segflow.tasks.ops.review import import_review
    from segflow.tasks.ops.review_batch import write_batch

    folder = Path(folder)
    out, truth = folder / "out", folder / "ground_truth" / "instances.json"
    job = json.loads((out / "job.json").read_text())
    batch, _ = write_batch(str(out), str(folder / "review" / f"batch-{seed}"), budget, audit_share, "cvat", seed)
    names = {r["image_id"]: r["file_name"] for r in _image_rows(out)}
    touched = {names[i] for i in batch.image_ids}
    accept = job.get("accept") or {}
    fitted_on_gold = bool(job.get("gold_set")) and not accept.get("calibration")  # else it only measures the run
    if fitted_on_gold:
        touched |= {im["file_name"] for im in json.loads(Path(job["gold_set"]).read_text())["images"]}
    left = set(names.values()) - touched
    untouched = _subset(truth, left, folder / "review" / f"untouched-{seed}.json")
    measure = lambda: _pr(holdout_quality(str(out), str(untouched))["set"]) if left else None
    before_all = holdout_quality(str(out), str(truth))["set"]
    before = measure()
    answered = review_coco(
        folder / "review" / f"batch-{seed}" / "cvat-coco.zip", truth, folder / "review" / f"reviewed-{seed}.json"
    )
    changes = import_review(str(out), str(answered), "coco", batch.batch)
    _, _, _, n_gold = recalibrate_from_reviews(str(out), fitted_on_gold, precision=accept.get("precision", 0.95))
    after = measure()
    return {
        "batch": batch.batch,
        "budget": budget,
        "estimate": changes.get("estimate"),
        "truth": {"precision": before_all["precision"], "recall": before_all["recall"]},
        "counts": changes["counts"],
        "gold_images_after": n_gold,
        "untouched_images": len(set(names.values()) - touched),
        "before": before,  # None when the round touched every image
        "after": after,
    }


def _pr(counts: dict) -> dict[str, Any]:
    return {"precision": counts["precision"], "recall": counts["recall"]}


def _image_rows(out: Path) -> list[dict]:
    from segflow.tasks.io.parquet import read_folder

    table = read_folder(str(out / "manifest" / "images.parquet"), ["image_id", "file_name", "status"])
    return [r for r in table.to_pylist() if r["status"] == "ok"]
