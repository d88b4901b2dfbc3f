"""``segflow calibrate``: fit the operating point of a finished run on a gold set and export it again there.

No model runs and committed shards are not touched (:func:`recalibrate_output`); the fit is
:mod:`segflow.tasks.evaluate.calibration`'s. With ``--from-reviews`` (:func:`reviews_gold`) the gold set is what
people reviewed: every image of a review batch's audit (:mod:`segflow.tasks.ops.review_batch`) that a review
import covered, with its labels as the latest review left them and its ``segflow_weight`` (one over its chance of
being audited, scaled to a mean of 1: the thresholds are fitted for the run, not for the images audits favour),
plus the job's own gold set (weight 1). The images only the
fix part brought are left out: they were chosen for their errors, and fitting on them would set the thresholds for
the worst images rather than for the run. Each round's audit adds its images: rounds accumulate.
"""

from __future__ import annotations

from typing import Any

from segflow.tasks.documents import CocoDataset
from segflow.tasks.records import RunSummary

__all__ = ["recalibrate_from_reviews", "recalibrate_output", "reviews_gold"]


def recalibrate_output(output: str, gold_url: str, **accept: Any) -> tuple[RunSummary, dict]:
    """Fit the acceptance of a finished run on a gold set and export again at that operating point.

    No model runs and committed shards are not touched: ``job.json`` gets the gold set and the ``accept``
    settings (``precision``, ``folds``, ``score``, ...; a saved ``calibration`` is dropped), then the run is
    finalized again from its commits. Returns ``(summary, calibration)``.
    """
    import json

    from segflow.config.schema import JobConfig
    from segflow.tasks.evaluate.quality import load_gold
    from segflow.tasks.finalize.finalizer import finalize
    from segflow.tasks.io.layout import OutputLayout
    from segflow.tasks.io.lease import hold
    from segflow.tasks.io.storage import open_fs, read_bytes, scrub, write_bytes

    layout = OutputLayout(output)
    fs, job_path = open_fs(layout.job_json)
    with hold(output, "calibrate"):
        job = JobConfig.model_validate(json.loads(read_bytes(fs, job_path)))
        load_gold(gold_url)  # a clear error before anything is written
        settings = job.accept.model_copy(update={**accept, "calibration": None})
        update = {"gold_set": gold_url, "accept": type(settings).model_validate(settings.model_dump())}
        update["output"] = output  # this output, wherever job.json says it was written (a copy, a moved folder)
        job = job.model_copy(update=update)
        write_bytes(fs, job_path, json.dumps(scrub(job.model_dump(mode="json")), indent=1).encode())
        summary = finalize(job, force=True)
        _, cal_path = open_fs(layout.calibration)
        return summary, json.loads(read_bytes(fs, cal_path))


def recalibrate_from_reviews(
    output: str, with_gold_set: bool = True, **accept: Any
) -> tuple[RunSummary, dict, str, int]:
    """:func:`reviews_gold`, then :func:`recalibrate_output` on it: ``(summary, calibration, gold set URL, its
    images)``."""
    gold, images = reviews_gold(output, with_gold_set)
    summary, calibration = recalibrate_output(output, gold, **accept)
    return summary, calibration, gold, images


def reviews_gold(output: str, with_gold_set: bool = True) -> tuple[str, int]:
    """Write ``OUTPUT/reviews/gold.json`` (COCO instances) from the reviewed audit images and (``with_gold_set``)
    the job's gold set; returns its URL and how many images it holds.

    Raises:
      ValueError: no review batch's audited image has been reviewed yet.
    """
    import json

    from segflow.tasks.evaluate.quality import load_gold
    from segflow.tasks.formats.labels import RunLabels, review_versions
    from segflow.tasks.io.storage import join, open_fs, read_json, write_bytes
    from segflow.tasks.ops.review_batch import audited_images

    run = RunLabels(output)
    versions = review_versions(output)
    reviewed: set[int] = set()
    for v in versions:
        changes = read_json(run.fs, run.layout.review_version(v, "changes.json")) or {}
        reviewed.update(int(i) for i in changes.get("image_ids", []))
    audited = audited_images(output)
    chosen = reviewed & set(audited)
    if not chosen:
        raise ValueError(
            f"{output}: no audited image of a review batch is reviewed yet: `segflow review-batch`, then "
            "`segflow import-review`"
        )
    doc = _reviewed_coco(run, versions[-1], chosen)
    for im in doc["images"]:  # one over the chance of being audited
        im["segflow_weight"] = 1.0 / max(audited[im["id"]], 1e-6)
    gold_url = run.job.get("gold_set") if with_gold_set else None
    if gold_url:  # people's own gold set counts too (weight 1); where both have an image, it wins
        doc = _merge_coco(load_gold(gold_url), doc)
    weighted = [im for im in doc["images"] if "segflow_weight" in im]
    scale = len(weighted) / sum(im["segflow_weight"] for im in weighted) if weighted else 1.0  # mean 1
    for im in weighted:
        im["segflow_weight"] = round(im["segflow_weight"] * scale, 6)
    url = join(output, "reviews", "gold.json")
    write_bytes(run.fs, open_fs(url)[1], json.dumps(doc).encode())
    return url, len(doc["images"])


def _reviewed_coco(run: Any, version: str, chosen: set[int]) -> CocoDataset:
    """COCO instances of the ``chosen`` images as review ``version`` left their labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segflow.tasks.io.parquet import read_parquet
    from segflow.tasks.io.storage import open_fs

    keep = pa.array(sorted(chosen), pa.int64())
    images, annotations = [], []
    for sid in run.shards:
        part = run._part("images", sid)
        if part is None:
            continue
        part = part.filter(pc.is_in(part["image_id"], value_set=keep))
        if not part.num_rows:
            continue
        images += [
            {"id": r["image_id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"]}
            for r in part.to_pylist()
        ]
        fs, path = open_fs(run.layout.review_part(version, sid))
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as f:
            table = read_parquet(f)
        rows = table.filter(pc.is_in(table["image_id"], value_set=keep))
        for r in rows.to_pylist():
            annotations.append(
                {
                    "id": r["annotation_id"],
                    "image_id": r["image_id"],
                    "category_id": r["category_id"],
                    "segmentation": {"size": [r["height"], r["width"]], "counts": r["rle_counts"]},
                    "area": r["area"],
                    "bbox": r["bbox"],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k, "name": v} for k, v in sorted(run.categories.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


def _merge_coco(gold: CocoDataset, reviewed: CocoDataset) -> CocoDataset:
    """``gold`` plus the ``reviewed`` images it does not have (matched as a gold set is matched to a run: by file
    name, else by unique base name; ids renumbered after gold's)."""
    from segflow.tasks.evaluate.quality import match_images

    have = set(match_images(gold, {im["file_name"]: im["id"] for im in reviewed["images"]}).values())
    image_base = 1 + max([im["id"] for im in gold["images"]] + [0])
    ann_base = 1 + max([a["id"] for a in gold["annotations"]] + [0])
    names = {c["name"]: c["id"] for c in gold["categories"]}
    theirs = {c["id"]: c["name"] for c in reviewed["categories"]}
    new_id: dict[int, int] = {}
    images, annotations = list(gold["images"]), list(gold["annotations"])
    for im in reviewed["images"]:
        if im["id"] not in have:
            new_id[im["id"]] = image_base + len(new_id)
            images.append(im | {"id": new_id[im["id"]]})
    for a in reviewed["annotations"]:
        if a["image_id"] in new_id and theirs[a["category_id"]] in names:
            annotations.append(
                a
                | {
                    "id": ann_base + len(annotations),
                    "image_id": new_id[a["image_id"]],
                    "category_id": names[theirs[a["category_id"]]],
                }
            )
    return {"images": images, "annotations": annotations, "categories": gold["categories"]}
