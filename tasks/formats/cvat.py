"""COCO for CVAT (and any COCO tool): the run's labels out as a COCO 1.0 archive, a reviewer's COCO back in.

``segflow export OUTPUT --format cvat DEST`` writes ``DEST`` as a zip (or, when DEST
does not end in ``.zip``, ``DEST/cvat-coco.zip``) holding
``annotations/instances_default.json``: the layout CVAT's "COCO 1.0" import reads
(upload it to a task that has the same images; CVAT matches images by ``file_name``,
the path relative to the source root). Masks are **polygons** (``iscrowd`` 0), one per
outer boundary (:mod:`segflow.tasks.formats.polygons`): exact to the pixel, holes
filled. Each image carries all its accept and review labels (``--verdicts all``:
rejected ones too), so a reviewer sees every label of the image.

``--format coco`` writes ``DEST`` (a ``.json``, or ``DEST/instances.json``) as the run's
``coco/instances.json`` is written: compressed RLE, the masks of the chosen verdicts.

A review (``segflow import-review OUTPUT FILE --format coco``) is a COCO instances file,
or a CVAT "COCO 1.0" export zip. Images are matched by ``file_name``, classes by name
(CVAT renumbers category ids). CVAT does not keep annotation ids, so each reviewed
mask is traced back by shape: the exported polygon of one of the image's labels
(kept or relabelled), else the label it overlaps most at mask IoU >= 0.5 (reshaped),
else it was added. Polygons and RLE (compressed or not) are read.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import pyarrow as pa
from pycocotools import mask as mask_utils

from segflow.tasks.coco import InstancesWriter
from segflow.tasks.formats.labels import VERDICTS, ExportError, RunLabels, dumps
from segflow.tasks.formats.polygons import polygons_to_rle, rle_to_polygons
from segflow.tasks.formats.review_model import ReviewedImage, ReviewedLabel
from segflow.tasks.storage import join, open_fs, write_bytes

__all__ = ["export_coco", "export_cvat", "read_coco_review"]

ANNOTATIONS = "annotations/instances_default.json"


def _coco_images_and_annotations(run: RunLabels, verdicts: str, tolerance: float) -> dict[str, Any]:
    shown = VERDICTS["all"] if verdicts == "all" else ("accept", "review")
    images, anns = [], []
    for im in run.images(verdicts, rows=shown):
        images.append({"id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height})
        for r in im.masks:
            polys = rle_to_polygons(r["rle_counts"], im.height, im.width, tolerance)
            if not polys:
                continue
            anns.append(
                {
                    "id": r["annotation_id"],
                    "image_id": im.image_id,
                    "category_id": r["category_id"],
                    "segmentation": [np.round(p, 3).reshape(-1).tolist() for p in polys],
                    "area": int(r["area"]),
                    "bbox": [round(float(v), 2) for v in r["bbox"]],
                    "iscrowd": 0,
                    "attributes": {"occluded": False, "segflow_verdict": r["verdict"]},
                }
            )
    return {"images": images, "annotations": anns}


def export_cvat(run: RunLabels, dest: str, verdicts: str, tolerance: float = 0.0) -> dict[str, int]:
    """Write the COCO 1.0 archive; returns counts."""
    body = _coco_images_and_annotations(run, verdicts, tolerance)
    doc = {
        "info": {"description": str(run.job.get("name", "")), "contributor": "segflow"},
        "licenses": [],
        "categories": run.category_list(),
        **body,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(ANNOTATIONS, dumps(doc))
    target = dest if dest.endswith(".zip") else join(dest, "cvat-coco.zip")
    fs, path = open_fs(target)
    write_bytes(fs, path, buf.getvalue())
    return {"images": len(body["images"]), "masks": len(body["annotations"]), "file": target}


def export_coco(run: RunLabels, dest: str, verdicts: str) -> dict[str, int]:
    """COCO instances (compressed RLE) of the masks of ``verdicts``, written shard by shard; returns counts."""
    target = dest if dest.endswith(".json") else join(dest, "instances.json")
    writer = InstancesWriter(target, run.categories, str(run.job.get("name", "")), VERDICTS[verdicts])
    for images, masks in run.shard_tables():
        writer.add(images, masks if masks is not None else _empty_masks())
    counts = writer.close()
    return {"images": counts["images"], "masks": counts["annotations"], "file": target}


def _empty_masks() -> Any:
    from segflow.tasks.manifest import MASKS_SCHEMA

    return MASKS_SCHEMA.empty_table().append_column("verdict", pa.array([], pa.string()))


def _load(raw: bytes, source: str) -> dict:
    if raw[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = [n for n in z.namelist() if n.startswith("annotations/") and n.endswith(".json")]
            if len(names) != 1:
                raise ExportError(f"{source}: expected one annotations/*.json in the archive, found {names}")
            raw = z.read(names[0])
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ExportError(f"{source}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= set(doc):
        raise ExportError(f"{source}: not a COCO instances file (needs images, annotations, categories)")
    return doc


def _rle(seg: Any, h: int, w: int) -> str:
    if isinstance(seg, list):
        return polygons_to_rle([np.asarray(p, np.float64).reshape(-1, 2) for p in seg], h, w)
    rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
    counts = rle["counts"]
    return counts.decode() if isinstance(counts, bytes) else counts


def read_coco_review(raw: bytes, source: str, run: RunLabels) -> list[ReviewedImage]:
    """The reviewed images of a COCO file (or CVAT COCO 1.0 zip), traced back to the run's masks by shape."""
    doc = _load(raw, source)
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    by_name = {}
    for im in run.images("all", rows=VERDICTS["all"], labelled_only=False):
        by_name[im.file_name] = im
    unknown = sorted({i["file_name"] for i in doc["images"]} - set(by_name))
    if unknown:
        raise ExportError(f"{source}: names images the run does not have: {unknown[:5]}")
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for i in doc["images"]:
        im = by_name[i["file_name"]]
        h, w = im.height, im.width
        shown = {r["annotation_id"]: r for r in im.masks if r["verdict"] in ("accept", "review")}
        exported: dict[str, list[int]] = {}  # shape -> the labels exported with it (duplicates share one)
        for x, r in shown.items():
            for key in {_rle_polys(r, h, w), r["rle_counts"]}:  # as polygons, or as the RLE itself
                exported.setdefault(key, []).append(x)
        labels, claimed = [], set()
        todo = []
        for a in anns.get(i["id"], []):
            if a.get("category_id") not in cats:
                raise ExportError(f"{source}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}")
            counts, name = _rle(a["segmentation"], h, w), cats[a["category_id"]]
            free = [x for x in exported.get(counts, []) if x not in claimed]
            if free:  # that shape, exported: of the same class if one was
                origin = next((x for x in free if shown[x]["category_name"] == name), free[0])
                claimed.add(origin)
                labels.append(ReviewedLabel(origin, name, counts, (h, w)))
            else:
                todo.append((a, counts))
        for a, counts in todo:  # edited shapes: the unclaimed label they overlap most
            free = [x for x in shown if x not in claimed]
            origin = None
            if free:
                ious = mask_utils.iou(
                    [{"size": [h, w], "counts": counts}],
                    [{"size": [h, w], "counts": shown[x]["rle_counts"]} for x in free],
                    [0] * len(free),
                )[0]
                if ious.max() >= 0.5:
                    origin = free[int(np.argmax(ious))]
                    claimed.add(origin)
            labels.append(ReviewedLabel(origin, cats[a["category_id"]], counts, (h, w)))
        out.append(ReviewedImage(im.image_id, labels, set(shown)))
    return out


def _rle_polys(row: dict, h: int, w: int) -> str:
    """The RLE a COCO reader gets back from this mask's exported polygons."""
    return polygons_to_rle(rle_to_polygons(row["rle_counts"], h, w), h, w)
