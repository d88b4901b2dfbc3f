"""Panoptic and semantic exports (format: :mod:`segflow.tasks.stages.panoptic`), and their quality against a gold set.

* :func:`render_shard` -- a committed shard's PNGs (``coco/panoptic/<image_id>.png``
  and ``semantic/<image_id>.png``), drawn from its committed ``panoptic`` table,
  then ``shards/<id>/_RENDERED.json`` naming the attempt. The shard task
  renders right after its commit; finalize renders any committed shard whose
  marker is missing or names another attempt, and again the images whose
  things changed with the operating point, so the PNGs always come from the
  same rows as the JSON and the manifest.
* :func:`at_operating_point` -- a shard's segments as exported: a thing taken
  from an instance stage stays only while its mask's verdict is exported
  (:mod:`segflow.tasks.evaluate.acceptance`). Its pixels otherwise become void; the
  map is not merged again, so no other segment moves (a thing the merge had
  dropped under a more confident one that is now left out stays out).
* :class:`PanopticJsonWriter` -- ``coco/panoptic.json``, streamed shard by shard.
* :func:`evaluate_panoptic_files` -- PQ/SQ/RQ and mIoU of exported files
  against a COCO panoptic gold set (JSON + PNG folder), images matched by file name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import CocoDataset, PanopticScores
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import join, open_fs, read_bytes, redact, write_bytes
from segflow.tasks.outputs.coco import StreamedCocoJson
from segflow.tasks.stages.panoptic import (
    PanopticQuality,
    SemanticQuality,
    palette,
    panoptic_png,
    read_panoptic_png,
    segment_map,
    semantic_from_segments,
    semantic_png,
)

__all__ = [
    "panoptic_categories",
    "at_operating_point",
    "render_shard",
    "rendered_marker",
    "PanopticJsonWriter",
    "evaluate_panoptic_files",
    "png_name",
]


def png_name(image_id: int) -> str:
    return f"{int(image_id)}.png"


def panoptic_categories(ontology: Iterable[Any]) -> list[dict]:
    """COCO panoptic categories of the ontology, with ``isthing`` and the viewing colour of the semantic palette."""
    cats = [
        {
            "id": int(c.id),
            "name": c.name,
            "isthing": int(bool(c.isthing)),
            "supercategory": "thing" if c.isthing else "stuff",
        }
        for c in ontology
    ]
    pal = palette([])
    for c in cats:
        c["color"] = pal[c["id"] * 3 : c["id"] * 3 + 3] if c["id"] < 256 else [0, 0, 0]
    return cats


def _marker(output: str, shard_id: str) -> str:
    return OutputLayout(output).rendered_record(shard_id)


class RenderedMarker(TypedDict):
    """A shard's ``_RENDERED.json``: the ``attempt`` whose panoptic PNGs finalize drew, and the annotation ids of
    the things it ``left_out`` (not accepted at the operating point)."""

    attempt: str
    left_out: list[int]


def rendered_marker(output: str, shard_id: str) -> RenderedMarker | None:
    """The shard's ``_RENDERED.json``: ``attempt`` rendered and ``left_out`` (annotation ids of things not drawn)."""
    fs, path = open_fs(_marker(output, shard_id))
    try:
        return json.loads(read_bytes(fs, path))
    except (FileNotFoundError, ValueError):
        return None


def at_operating_point(panoptic: pa.Table, masks: pa.Table, keep: Sequence[str]) -> tuple[pa.Table, list[int]]:
    """The rows of a shard's committed ``panoptic`` table that are exported, and the things left out.

    Arguments:
      panoptic: committed segments (``annotation_id`` set on things taken from an instance stage).
      masks: the shard's masks with ``verdict`` (finalize's).
      keep: the verdicts whose things are drawn.

    Returns:
      ``(rows, left_out)``: the table itself when nothing is left out, else the kept rows sorted by image and
      renumbered ``1..n`` per image in paint order; ``left_out`` the sorted annotation ids of the things dropped.
    """
    ann = panoptic["annotation_id"].to_numpy(zero_copy_only=False)
    has = ~np.isnan(ann.astype(np.float64))
    if not has.any():
        return panoptic, []
    verdict = dict(zip(masks["annotation_id"].to_pylist(), masks["verdict"].to_pylist(), strict=True))
    drop = np.zeros(len(ann), bool)
    drop[has] = [verdict.get(int(a)) not in keep for a in ann[has]]
    if not drop.any():
        return panoptic, []
    kept = panoptic.filter(pa.array(~drop)).sort_by([("image_id", "ascending"), ("segment_id", "ascending")])
    image = kept["image_id"].to_numpy(zero_copy_only=False)
    starts = np.r_[0, np.flatnonzero(image[1:] != image[:-1]) + 1] if len(image) else np.zeros(0, int)
    first = np.repeat(starts, np.diff(np.r_[starts, len(image)]))
    ids = pa.array(np.arange(len(image)) - first + 1, pa.int32())
    kept = kept.set_column(kept.schema.get_field_index("segment_id"), "segment_id", ids)
    return kept, sorted(int(a) for a in ann[drop])


def _by_image(panoptic: pa.Table) -> dict[int, dict[str, list]]:
    out: dict[int, dict[str, list]] = {}
    cols = panoptic.select(
        ["image_id", "segment_id", "category_id", "rle_counts", "area", "bbox", "isthing"]
    ).to_pydict()
    for i, image_id in enumerate(cols["image_id"]):
        d = out.setdefault(image_id, {k: [] for k in cols})
        for k in cols:
            d[k].append(cols[k][i])
    return out


def render_shard(
    output: str,
    shard_id: str,
    attempt: str,
    images: pa.Table,
    panoptic: pa.Table,
    workers: int = 8,
    left_out: Sequence[int] = (),
    only: Collection[int] | None = None,
) -> int:
    """Write the PNGs of one committed shard (``only``: of these image ids), then its ``_RENDERED.json`` recording
    ``attempt`` and ``left_out`` (see :func:`at_operating_point`). Returns the number of images drawn."""
    fs, _ = open_fs(output)
    layout = OutputLayout(output)
    pal = palette([])
    segs = _by_image(panoptic)
    ok = images.filter(pc.equal(images["status"], "ok")).select(["image_id", "width", "height"]).to_pylist()
    if only is not None:
        ok = [r for r in ok if r["image_id"] in only]

    def one(r: dict) -> None:
        h, w = r["height"], r["width"]
        s = segs.get(r["image_id"], {"segment_id": [], "category_id": [], "rle_counts": []})
        order = np.argsort(s["segment_id"]) if s["segment_id"] else np.zeros(0, np.int64)
        counts = [s["rle_counts"][i] for i in order]
        if [s["segment_id"][i] for i in order] != list(range(1, len(counts) + 1)):
            raise ValueError(f"{shard_id}: image {r['image_id']}: segment ids are not 1..n")
        ids = segment_map(counts, h, w)
        cats = {k + 1: int(s["category_id"][i]) for k, i in enumerate(order)}
        for folder, data in (
            (layout.coco_panoptic_pngs, panoptic_png(ids)),
            (layout.semantic_pngs, semantic_png(semantic_from_segments(ids, cats), pal)),
        ):
            _, path = open_fs(join(folder, png_name(r["image_id"])))
            write_bytes(fs, path, data)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segflow-png") as pool:
        list(pool.map(one, ok))
    _, marker = open_fs(_marker(output, shard_id))
    write_bytes(
        fs,
        marker,
        json.dumps(
            {
                "shard_id": shard_id,
                "attempt": attempt,
                "images": len(ok),
                "left_out": list(left_out),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).encode(),
    )
    return len(ok)


class PanopticJsonWriter:
    """``coco/panoptic.json`` from one shard's ``(images, panoptic)`` tables at a time (one pass, then published)."""

    def __init__(self, url: str, categories: list[dict], description: str = ""):
        self.out = StreamedCocoJson(url, description, categories, ("images", "annotations"))
        self.segments = 0

    def add(self, images: pa.Table, panoptic: pa.Table) -> None:
        ok = images.filter(pc.equal(images["status"], "ok"))
        for r in ok.select(["image_id", "file_name", "width", "height"]).to_pylist():
            self.out.add(
                "images", {"id": r["image_id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"]}
            )
        segs = _by_image(panoptic)
        for image_id in ok["image_id"].to_pylist():
            s = segs.get(image_id)
            rows = [] if s is None else sorted(zip(s["segment_id"], s["category_id"], s["area"], s["bbox"]))
            infos = [
                {"id": sid, "category_id": cid, "iscrowd": 0, "area": int(a), "bbox": [round(v, 2) for v in bb]}
                for sid, cid, a, bb in rows
            ]
            self.segments += len(infos)
            self.out.add("annotations", {"image_id": image_id, "file_name": png_name(image_id), "segments_info": infos})

    def close(self) -> dict[str, int]:
        """Publish the file; returns ``{"images": n, "segments": n}``."""
        counts = self.out.close()
        return {"images": counts["images"], "segments": self.segments}


def _load_json(url: str) -> CocoDataset:
    fs, path = open_fs(url)
    return json.loads(read_bytes(fs, path))


def _png_dir(json_url: str) -> str:
    """COCO convention: ``panoptic_val2017.json`` has its PNGs in ``panoptic_val2017/``."""
    return json_url[: -len(".json")] if json_url.endswith(".json") else json_url + "_png"


def evaluate_panoptic_files(
    gold_json: str,
    pred_json: str,
    gold_png_dir: str | None = None,
    pred_png_dir: str | None = None,
) -> PanopticScores:
    """PQ/SQ/RQ (all, things, stuff, per class) and mIoU of a predicted COCO panoptic export against a gold one.

    Images are matched by ``file_name`` of their ``images`` entry (exact, or a
    unique base name); categories by name. Only gold images found in the
    prediction are evaluated; the count is reported as ``images``.
    """
    gold, pred = _load_json(gold_json), _load_json(pred_json)
    gold_dir, pred_dir = gold_png_dir or _png_dir(gold_json), pred_png_dir or _png_dir(pred_json)
    pred_cat_name = {c["id"]: c["name"] for c in pred["categories"]}
    name_to_pred = {c["name"]: c["id"] for c in pred["categories"]}
    gold_to_pred = {c["id"]: name_to_pred.get(c["name"], -c["id"]) for c in gold["categories"]}
    isthing = {c["id"]: bool(c.get("isthing", 1)) for c in pred["categories"]}
    for c in gold["categories"]:
        isthing.setdefault(gold_to_pred[c["id"]], bool(c.get("isthing", 1)))
    pred_images = {im["file_name"]: im["id"] for im in pred["images"]}
    by_base: dict[str, list[int]] = {}
    for name, i in pred_images.items():
        by_base.setdefault(PurePosixPath(name).name, []).append(i)
    pred_anns = {a["image_id"]: a for a in pred["annotations"]}
    gold_anns = {a["image_id"]: a for a in gold["annotations"]}
    pq, sem = PanopticQuality(isthing), SemanticQuality()
    fs_g, _ = open_fs(gold_dir)
    fs_p, _ = open_fs(pred_dir)
    n = 0
    for im in gold["images"]:
        pid = pred_images.get(im["file_name"])
        if pid is None:
            cands = by_base.get(PurePosixPath(im["file_name"]).name, [])
            pid = cands[0] if len(cands) == 1 else None
        if pid is None or pid not in pred_anns or im["id"] not in gold_anns:
            continue
        ga, pa_ = gold_anns[im["id"]], pred_anns[pid]
        _, gp = open_fs(join(gold_dir, ga["file_name"]))
        _, pp = open_fs(join(pred_dir, pa_["file_name"]))
        g_ids = read_panoptic_png(read_bytes(fs_g, gp))
        p_ids = read_panoptic_png(read_bytes(fs_p, pp))
        g_cats = {s["id"]: gold_to_pred[s["category_id"]] for s in ga["segments_info"]}
        p_cats = {s["id"]: s["category_id"] for s in pa_["segments_info"]}
        _check_segments(p_ids, p_cats, pred_json, pa_["file_name"])
        pq.add(g_ids, g_cats, p_ids, p_cats)
        sem.add(semantic_from_segments(g_ids, g_cats), semantic_from_segments(p_ids, p_cats))
        n += 1
    out = pq.summary(pred_cat_name)
    s = sem.summary(pred_cat_name)
    return {
        "images": n,
        **out,
        "miou": s.get("miou"),
        "per_class_iou": s.get("per_class_iou", {}),
        "gold": redact(gold_json),
    }


def _check_segments(ids: np.ndarray, cats: dict[int, int], where: str, file_name: str) -> None:
    present = set(np.unique(ids).tolist()) - {0}
    if present != set(cats):
        raise ValueError(
            f"{redact(where)}: {file_name}: PNG ids {sorted(present)[:10]} do not match "
            f"segments_info ids {sorted(cats)[:10]}"
        )
