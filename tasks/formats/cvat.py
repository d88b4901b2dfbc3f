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

from segflow.tasks.documents import CocoDataset
from segflow.tasks.formats.labels import VERDICTS, ExportError, RunLabels, dumps
from segflow.tasks.formats.polygons import polygons_to_rle, rle_to_polygons
from segflow.tasks.formats.review_model import ReviewedImage, ReviewedLabel
from segflow.tasks.formats.untrusted import check_polygon, check_rle, read_zip_member
from segflow.tasks.io.storage import join, open_fs, write_bytes
from segflow.tasks.outputs.coco import InstancesWriter

__all__ = ["export_coco", "export_cvat", "read_coco_review"]

ANNOTATIONS = "annotations/instances_default.json"


def _coco_images_and_annotations(run: RunLabels, verdicts: str, tolerance: float) -> CocoDataset:
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
                    "attributes": {"occluded": False, "segflow_verdict": r["verdict"]}
                    | ({"segflow_check": r["annotation_id"] in run.marked} if run.marked else {}),
                }
            )
    return {"images": images, "annotations": anns}


def export_cvat(run: RunLabels, dest: str, verdicts: str, tolerance: float = 0.0) -> dict[str, int | str]:
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


def export_coco(run: RunLabels, dest: str, verdicts: str) -> dict[str, int | str]:
    """COCO instances (compressed RLE) of the masks of ``verdicts``, written shard by shard; returns counts."""
    target = dest if dest.endswith(".json") else join(dest, "instances.json")
    marked = run.marked if run.only is not None else None  # a review batch: each label's verdict, and what to check
    writer = InstancesWriter(target, run.categories, str(run.job.get("name", "")), VERDICTS[verdicts], marked=marked)
    for images, masks in run.shard_tables():
        writer.add(images, masks if masks is not None else _empty_masks())
    counts = writer.close()
    return {"images": counts["images"], "masks": counts["annotations"], "file": target}


def _empty_masks() -> Any:
    from segflow.tasks.outputs.manifest import MASKS_SCHEMA

    return MASKS_SCHEMA.empty_table().append_column("verdict", pa.array([], pa.string()))


def _load(raw: bytes, source: str) -> CocoDataset:
    if raw[:2] == b"PK":
        raw = read_zip_member(raw, source, lambda n: n.startswith("annotations/") and n.endswith(".json"))
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ExportError(f"{source}: not JSON ({str(e)[:200]})") from None
    if not isinstance(doc, dict) or not {"images", "annotations", "categories"} <= set(doc):
        raise ExportError(f"{source}: not a COCO instances file (needs images, annotations, categories)")
    if not all(isinstance(doc[k], list) and all(isinstance(x, dict) for x in doc[k]) for k in doc.keys() & _LISTS):
        raise ExportError(f"{source}: images, annotations and categories must be lists of objects")
    checked: CocoDataset = {"images": doc["images"], "annotations": doc["annotations"]}
    checked["categories"] = doc["categories"]
    return checked


_LISTS = {"images", "annotations", "categories"}


def _rle(seg: Any, h: int, w: int, where: str) -> str:
    """The compressed RLE of a COCO segmentation (polygons or RLE) on an ``h`` x ``w`` image, checked first."""
    if isinstance(seg, list):
        if len(seg) > 10_000:
            raise ExportError(f"{where}: more than 10000 polygons")
        return polygons_to_rle([check_polygon(p, h, w, where) for p in seg], h, w)
    if not isinstance(seg, dict) or "counts" not in seg:
        raise ExportError(f"{where}: segmentation must be polygons or an RLE with counts")
    if "size" in seg and seg["size"] != [h, w]:
        raise ExportError(f"{where}: RLE size {str(seg['size'])[:40]}, the image is {w}x{h}")
    return check_rle(seg["counts"], h, w, where)["counts"]


def read_coco_review(raw: bytes, source: str, run: RunLabels) -> list[ReviewedImage]:
    """The reviewed images of a COCO file (or CVAT COCO 1.0 zip), traced back to the run's masks by shape.

    Untrusted input (:mod:`segflow.tasks.formats.untrusted`): image sizes come from the run (a file's own
    ``width``/``height`` must agree), every mask is checked before it is rasterised or compared.
    """
    doc = _load(raw, source)
    cats = {c.get("id"): str(c.get("name")) for c in doc["categories"]}
    by_name = {}
    for im in run.images("all", rows=VERDICTS["all"], labelled_only=False):
        by_name[im.file_name] = im
    unknown = sorted({str(i.get("file_name")) for i in doc["images"]} - set(by_name))
    if unknown:
        raise ExportError(f"{source}: names images the run does not have: {unknown[:5]}")
    checked = _checked_masks(doc, by_name, cats, source)
    out = []
    for i in doc["images"]:
        im = by_name[i["file_name"]]
        labels, shown = _trace_labels(im, checked.get(i.get("id"), []), cats)
        out.append(ReviewedImage(im.image_id, labels, set(shown)))
    return out


def _checked_masks(doc: CocoDataset, by_name: dict, cats: dict, source: str) -> dict[Any, list[tuple[dict, str]]]:
    """Every annotation of the file with its mask as RLE (file image id -> [(annotation, counts)]), each checked
    (its image, category and shape against the run's image size) before any is compared."""
    doc_images = {i.get("id"): i for i in doc["images"]}
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        if a.get("image_id") not in doc_images:
            raise ExportError(f"{source}: annotation {str(a.get('id'))[:40]}: image_id is not an image of the file")
        anns.setdefault(a["image_id"], []).append(a)
    checked: dict[Any, list[tuple[dict, str]]] = {}
    for i in doc["images"]:
        im = by_name[i["file_name"]]
        h, w = im.height, im.width
        for key, want in (("width", w), ("height", h)):
            if key in i and i[key] != want:
                raise ExportError(f"{source}: image {i['file_name']}: {key} {str(i[key])[:20]}, the image is {w}x{h}")
        for a in anns.get(i["id"], []) if "id" in i else []:
            where = f"{source}: annotation {str(a.get('id'))[:40]}"
            if a.get("category_id") not in cats:
                raise ExportError(f"{where}: unknown category_id {str(a.get('category_id'))[:40]}")
            checked.setdefault(i.get("id"), []).append((a, _rle(a.get("segmentation"), h, w, where)))
    return checked


def _trace_labels(im: Any, anns: list[tuple[dict, str]], cats: dict) -> tuple[list[ReviewedLabel], dict[int, dict]]:
    """One image's reviewed labels, each traced to the exported label it came from: the same shape (of the same
    class if one was), else the unclaimed label it overlaps most (IoU >= 0.5), else a new label. Also the
    labels the reviewer was shown (annotation id -> manifest row)."""
    h, w = im.height, im.width
    shown = {r["annotation_id"]: r for r in im.masks if r["verdict"] in ("accept", "review")}
    exported: dict[str, list[int]] = {}  # shape -> the labels exported with it (duplicates share one)
    for x, r in shown.items():
        for key in {_rle_polys(r, h, w), r["rle_counts"]}:  # as polygons, or as the RLE itself
            exported.setdefault(key, []).append(x)
    labels, claimed = [], set()
    todo = []
    for a, counts in anns:
        name = cats[a["category_id"]]
        free = [x for x in exported.get(counts, []) if x not in claimed]
        if free:  # that shape, exported: of the same class if one was
            origin = next((x for x in free if shown[x]["category_name"] == name), free[0])
            claimed.add(origin)
            labels.append(ReviewedLabel(origin, name, counts, (h, w)))
        else:
            todo.append((a, counts))
    for a, counts in todo:  # edited shapes: the unclaimed label they overlap most
        free = [x for x in shown if x not in claimed]
        overlapped: int | None = None
        if free:
            ious = mask_utils.iou(
                [{"size": [h, w], "counts": counts}],
                [{"size": [h, w], "counts": shown[x]["rle_counts"]} for x in free],
                [0] * len(free),
            )[0]
            if ious.max() >= 0.5:
                overlapped = free[int(np.argmax(ious))]
                claimed.add(overlapped)
        labels.append(ReviewedLabel(overlapped, cats[a["category_id"]], counts, (h, w)))
    return labels, shown


def _rle_polys(row: dict, h: int, w: int) -> str:
    """The RLE a COCO reader gets back from this mask's exported polygons."""
    return polygons_to_rle(rle_to_polygons(row["rle_counts"], h, w), h, w)
