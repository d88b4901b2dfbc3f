"""Label Studio: the run's labels as tasks with predictions for review, and a reviewer's JSON export read back.

Written to DEST (``segflow export OUTPUT --format label-studio DEST``):

* ``tasks.json`` -- Label Studio's import format, one task per image::

      {"data": {"image": URL, "segflow_image_id": 17, "segflow_file": "a/b.jpg"},
       "predictions": [{"model_version": "segflow:<job>", "score": <mean mask score>,
                        "result": [<region>, ...]}]}

  Each mask becomes one ``polygonlabels`` region per outer boundary
  (:mod:`segflow.tasks.formats.polygons`; exact to the pixel, holes filled),
  points in **percent** of the image (Label Studio's convention), with
  ``original_width``/``original_height`` and the mask's score. Region ids
  are ``m<annotation_id>-<part>``: they survive a reviewer's edits, so an
  edited region is traced back to the mask it came from.
* ``labeling-config.xml`` -- the project's labeling config, from the ontology's
  thing classes (``PolygonLabels`` named ``label`` on the ``Image`` named ``image``).

``URL`` is the image's source URI, or ``image_url_prefix`` + its path relative to the
source root (e.g. ``/data/local-files/?d=images/`` for Label Studio's local file
serving, or an HTTPS mirror).

Polygons, not brush RLE: the SDK's brush encoder pins numpy and OpenCV versions that
conflict with this package's other dependencies, and polygons can be edited
vertex by vertex. What is lost: holes, and parts thinner than one pixel.

A review (``segflow import-review OUTPUT FILE --format label-studio``) is Label Studio's
JSON export of the project: per task, its latest annotation that was not skipped. Tasks
without one were not reviewed and change nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from segflow.tasks.formats.labels import VERDICTS, ExportError, RunLabels, dumps
from segflow.tasks.formats.polygons import polygons_to_rle, rle_to_polygons
from segflow.tasks.formats.review_model import ReviewedImage, ReviewedLabel
from segflow.tasks.storage import join, open_fs, write_bytes

__all__ = ["export_label_studio", "labeling_config", "read_label_studio_review"]

_REGION = re.compile(r"^m(\d+)-\d+$")


def labeling_config(categories: dict[int, str]) -> str:
    """The labeling config XML for the thing classes (``PolygonLabels`` ``label`` on ``Image`` ``image``)."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for _, name in sorted(categories.items()))
    return (
        '<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
        f'  <PolygonLabels name="label" toName="image" strokeWidth="2">\n{labels}\n  </PolygonLabels>\n</View>\n'
    )


def _regions(mask: dict[str, Any], width: int, height: int, tolerance: float) -> list[dict]:
    scale = np.array([100.0 / width, 100.0 / height])
    return [
        {
            "id": f"m{mask['annotation_id']}-{k}",
            "from_name": "label",
            "to_name": "image",
            "type": "polygonlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {
                "points": np.round(poly * scale, 6).tolist(),
                "polygonlabels": [mask["category_name"]],
                "closed": True,
            },
            "score": None if mask.get("score") is None else round(float(mask["score"]), 4),
        }
        for k, poly in enumerate(rle_to_polygons(mask["rle_counts"], height, width, tolerance))
    ]


def export_label_studio(
    run: RunLabels, dest: str, verdicts: str, image_url_prefix: str | None = None, tolerance: float = 0.0
) -> dict[str, int]:
    """Write ``tasks.json`` and ``labeling-config.xml`` under ``dest``; returns counts."""
    tasks, masks = [], 0
    shown = VERDICTS["all"] if verdicts == "all" else ("accept", "review")  # the image's labels, in context
    for im in run.images(verdicts, rows=shown):
        rows = im.masks
        result = [reg for r in rows for reg in _regions(r, im.width, im.height, tolerance)]
        scores = [r["score"] for r in rows if r.get("score") is not None]
        url = im.uri if image_url_prefix is None else image_url_prefix + im.file_name
        tasks.append(
            {
                "data": {"image": url, "segflow_image_id": im.image_id, "segflow_file": im.file_name},
                "predictions": [
                    {
                        "model_version": f"segflow:{run.job.get('name', 'job')}",
                        "score": round(float(np.mean(scores)), 4) if scores else None,
                        "result": result,
                    }
                ],
            }
        )
        masks += len(rows)
    fs, _ = open_fs(dest)
    write_bytes(fs, open_fs(join(dest, "tasks.json"))[1], dumps(tasks))
    write_bytes(fs, open_fs(join(dest, "labeling-config.xml"))[1], labeling_config(run.categories).encode())
    return {"images": len(tasks), "masks": masks}


def _latest_annotation(task: dict) -> dict | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))


def read_label_studio_review(raw: bytes, source: str, run: RunLabels | None = None) -> list[ReviewedImage]:
    """The reviewed images of a Label Studio JSON export (a list of tasks), in the format-neutral review model."""
    try:
        tasks = json.loads(raw)
    except ValueError as e:
        raise ExportError(f"{source}: not JSON ({e})") from None
    if not isinstance(tasks, list):
        raise ExportError(f"{source}: not a Label Studio JSON export (expected a list of tasks)")
    out = []
    for t, task in enumerate(tasks):
        data = task.get("data") or {}
        if "segflow_image_id" not in data:
            raise ExportError(f"{source}: task {t} (id {task.get('id')}) has no data.segflow_image_id")
        ann = _latest_annotation(task)
        if ann is None:
            continue
        # the regions the reviewer was shown: the predictions' (an export lists them by id only; the annotation
        # made from a prediction carries it), else None: the image's accept and review masks, as exported
        preds = [p for p in (task.get("predictions") or []) + [ann.get("prediction")] if isinstance(p, dict)]
        ids = [m.group(1) for p in preds for r in p.get("result") or [] if (m := _REGION.match(str(r.get("id", ""))))]
        shown = {int(i) for i in ids} or None
        groups: dict[str, list[dict]] = {}
        for r in ann.get("result") or []:
            if r.get("type") != "polygonlabels":
                raise ExportError(f"{source}: task {task.get('id')}: region type {r.get('type')!r} is not supported")
            m = _REGION.match(str(r.get("id", "")))
            groups.setdefault(f"a{m.group(1)}" if m else f"new-{r.get('id')}", []).append(r)
        labels = []
        for key, regions in groups.items():
            w, h = int(regions[0]["original_width"]), int(regions[0]["original_height"])
            names = [n for r in regions for n in r["value"].get("polygonlabels", [])]
            if not names:
                raise ExportError(f"{source}: task {task.get('id')}: region {regions[0].get('id')} has no label")
            polys = [np.asarray(r["value"]["points"], np.float64) * [w / 100.0, h / 100.0] for r in regions]
            labels.append(
                ReviewedLabel(
                    origin=int(key[1:]) if key.startswith("a") else None,
                    category=max(set(names), key=names.count),
                    rle_counts=polygons_to_rle(polys, h, w),
                    size=(h, w),
                )
            )
        out.append(ReviewedImage(int(data["segflow_image_id"]), labels, shown))
    return out
