"""COCO instances export, streamed shard by shard.

``OUTPUT/coco/instances.json`` follows the COCO detection format:

* ``images``: ``id`` (= manifest ``image_id``), ``file_name`` (key relative to
  the source root), ``width``, ``height``, plus ``segflow_uri`` (full URI).
  Only images that decoded (``status == "ok"``) are listed.
* ``annotations``: ``id`` (= manifest ``annotation_id``), ``image_id``,
  ``category_id``, ``segmentation`` (compressed RLE: ``{"size": [H, W],
  "counts": str}``), ``area`` and ``bbox`` (XYWH) computed from the mask,
  ``iscrowd`` 0, ``score`` (detector confidence; lets the file be used as
  COCOeval results too), ``predicted_iou``.
* ``categories``: the ontology (``id``, ``name``, ``supercategory``).

With a ``qc`` stage only masks that passed (and flagged ones with
``export_flagged``) are exported; rejected masks stay in the manifest and the
quarantine table.

The file is written to a temporary file and published in one step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.storage import local_tempfile, open_fs, publish_file

__all__ = ["write_instances", "coco_header"]


def coco_header(description: str, categories: list[dict]) -> str:
    """The opening of a streamed COCO JSON object (``info``, ``licenses``, ``categories``), left open for more keys."""
    header = {
        "info": {
            "description": description,
            "version": "1.0",
            "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "contributor": "segflow",
        },
        "licenses": [],
        "categories": categories,
    }
    return json.dumps(header)[:-1]


def _f(x: Any) -> Any:
    return None if x is None else round(float(x), 4)


def write_instances(
    url: str,
    categories: dict[int, str],
    image_tables: Callable[[], Iterable[pa.Table]],
    mask_tables: Callable[[], Iterable[pa.Table]],
    description: str = "",
    keep_verdicts: tuple[str, ...] = ("pass",),
) -> dict[str, int]:
    """Stream images then annotations into ``url``. Returns counts.

    Masks with a QC verdict are exported only when it is in ``keep_verdicts``
    (masks without a QC stage have no verdict and are always exported).
    """
    fs, path = open_fs(url)
    tmp = local_tempfile(fs, path, ".json")
    n_images = n_anns = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(
                coco_header(
                    description,
                    [{"id": int(i), "name": n, "supercategory": "object"} for i, n in sorted(categories.items())],
                )
            )
            f.write(', "images": [')
            first = True
            for t in image_tables():
                for r in (
                    t.filter(pc.equal(t["status"], "ok"))
                    .select(["image_id", "file_name", "image_uri", "width", "height"])
                    .to_pylist()
                ):
                    f.write(
                        ("" if first else ",")
                        + "\n"
                        + json.dumps(
                            {
                                "id": r["image_id"],
                                "file_name": r["file_name"],
                                "width": r["width"],
                                "height": r["height"],
                                "segflow_uri": r["image_uri"],
                            }
                        )
                    )
                    first = False
                    n_images += 1
            f.write('\n], "annotations": [')
            first = True
            cols = [
                "annotation_id",
                "image_id",
                "category_id",
                "rle_counts",
                "width",
                "height",
                "area",
                "bbox",
                "score",
                "predicted_iou",
            ]
            for t in mask_tables():
                if "qc_verdict" in t.column_names:
                    keep = pc.or_kleene(
                        pc.is_null(t["qc_verdict"]),
                        pc.is_in(t["qc_verdict"], value_set=pa.array(list(keep_verdicts), pa.string())),
                    )
                    t = t.filter(keep)
                for r in t.select(cols).to_pylist():
                    f.write(
                        ("" if first else ",")
                        + "\n"
                        + json.dumps(
                            {
                                "id": r["annotation_id"],
                                "image_id": r["image_id"],
                                "category_id": r["category_id"],
                                "segmentation": {"size": [r["height"], r["width"]], "counts": r["rle_counts"]},
                                "area": int(r["area"]),
                                "bbox": [round(v, 2) for v in r["bbox"]],
                                "iscrowd": 0,
                                "score": _f(r["score"]),
                                "predicted_iou": _f(r["predicted_iou"]),
                            }
                        )
                    )
                    first = False
                    n_anns += 1
            f.write("\n]}\n")
        publish_file(fs, tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"images": n_images, "annotations": n_anns}
