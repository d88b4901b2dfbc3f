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
from segflow.tasks.formats.untrusted import check_polygon
from segflow.tasks.io.storage import join, open_fs, write_bytes

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
                "data": {"image": url, "segflow_image_id": im.image_id, "segflow_file": im.file_name}
                | (
                    {"segflow_check": [r["annotation_id"] for r in rows if r["annotation_id"] in run.marked]}
                    if run.marked
                    else {}
                ),
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


def _latest_annotation(task: dict) -> dict[str, object] | None:
    anns = task.get("annotations") or []
    done = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")] if isinstance(anns, list) else []
    if not done:
        return None
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), _int(a.get("id"))))


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


#: regions per task a review may hold
_MAX_REGIONS = 10_000


def read_label_studio_review(raw: bytes, source: str, run: RunLabels) -> list[ReviewedImage]:
    """The reviewed images of a Label Studio JSON export (a list of tasks), in the format-neutral review model.

    Untrusted input (:mod:`segflow.tasks.formats.untrusted`): image sizes come from the run, a region's
    ``original_width``/``original_height`` must agree with them when given, and polygon points must lie in
    the image, before anything is rasterised.
    """
    try:
        tasks = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ExportError(f"{source}: not JSON ({str(e)[:200]})") from None
    if not isinstance(tasks, list):
        raise ExportError(f"{source}: not a Label Studio JSON export (expected a list of tasks)")
    sizes = run.image_sizes()
    out = []
    for t, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        name = f"{source}: task {t}" + (f" (id {str(task.get('id'))[:40]})" if isinstance(task, dict) else "")
        if not isinstance(data, dict) or "segflow_image_id" not in data:
            raise ExportError(f"{name}: has no data.segflow_image_id")
        image_id = data["segflow_image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id not in sizes:
            raise ExportError(f"{name}: data.segflow_image_id {str(image_id)[:40]!r} is not an image of the run")
        ann = _latest_annotation(task)
        if ann is None:
            continue
        # the regions the reviewer was shown: the predictions' (an export lists them by id only; the annotation
        # made from a prediction carries it), else None: the image's accept and review masks, as exported
        preds = task.get("predictions") if isinstance(task.get("predictions"), list) else []
        preds = [
            p for p in [*preds, ann.get("prediction")] if isinstance(p, dict) and isinstance(p.get("result"), list)
        ]
        ids = [
            m.group(1)
            for p in preds
            for r in p["result"]
            if isinstance(r, dict) and (m := _REGION.match(str(r.get("id", ""))))
        ]
        shown = {int(i) for i in ids} or None
        results = ann.get("result") or []
        if not isinstance(results, list) or len(results) > _MAX_REGIONS:
            raise ExportError(f"{name}: the annotation's result must be a list of at most {_MAX_REGIONS} regions")
        h, w = sizes[image_id]
        groups: dict[str, list[dict]] = {}
        for r in results:
            if not isinstance(r, dict) or r.get("type") != "polygonlabels":
                kind = r.get("type") if isinstance(r, dict) else type(r).__name__
                raise ExportError(f"{name}: region type {str(kind)[:40]!r} is not supported")
            where = f"{name}: region {str(r.get('id'))[:40]}"
            for key, want in (("original_width", w), ("original_height", h)):
                if key in r and r[key] != want:
                    raise ExportError(f"{where}: {key} {str(r[key])[:20]}, the image is {w}x{h}")
            m = _REGION.match(str(r.get("id", "")))
            groups.setdefault(f"a{m.group(1)}" if m else f"new-{r.get('id')}", []).append(r)
        labels = []
        for key, regions in groups.items():
            where = f"{name}: region {str(regions[0].get('id'))[:40]}"
            values = [v for r in regions if isinstance(v := r.get("value"), dict)]
            if len(values) != len(regions):
                raise ExportError(f"{where}: no value")
            names = [n for v in values for n in v.get("polygonlabels") or [] if isinstance(n, str)]
            if not names:
                raise ExportError(f"{where}: has no label")
            polys = [check_polygon(v.get("points"), h, w, where, (w / 100.0, h / 100.0)) for v in values]
            labels.append(
                ReviewedLabel(
                    origin=int(key[1:]) if key.startswith("a") else None,
                    category=max(set(names), key=names.count),
                    rle_counts=polygons_to_rle(polys, h, w),
                    size=(h, w),
                )
            )
        out.append(ReviewedImage(image_id, labels, shown))
    return out
