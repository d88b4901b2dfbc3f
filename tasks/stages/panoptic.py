"""Panoptic maps: the merge policy, the COCO panoptic / semantic formats, PQ and mIoU.

Format (what segflow writes; COCO panoptic as defined by Kirillov et al. and
the ``panopticapi`` reference)
-----------------------------------------------------------------------------
* ``OUTPUT/coco/panoptic/<image_id>.png`` -- RGB, one per decoded image; a
  pixel's segment id is ``R + 256 * G + 256**2 * B``; ``0`` is void
  (unlabelled). Segment ids run ``1..n`` per image in paint order (things by
  score, then stuff).
* ``OUTPUT/coco/panoptic.json`` -- ``images``, ``annotations`` (one per image:
  ``image_id``, ``file_name`` of the PNG, ``segments_info`` with ``id``,
  ``category_id``, ``iscrowd`` (0), ``area`` (pixel count in the PNG) and
  ``bbox`` ``[x, y, w, h]``), ``categories`` (ontology, with ``isthing``).
* ``OUTPUT/semantic/<image_id>.png`` -- palette ("P") PNG whose byte per
  pixel is the ontology category id, 0 = void; the palette colours are only
  for viewing (see :func:`palette`).
* ``OUTPUT/semantic/preview/<image_id>.jpg`` -- with a semantic stage's
  ``preview: true``: that stage's class map blended over the image, for eyes
  only (:func:`semantic_preview`).
* ``OUTPUT/manifest/panoptic.parquet/`` -- one row per segment, RLE (see
  :mod:`segflow.tasks.outputs.manifest`), with the stage the segment came from.

Merge policy (:func:`merge`)
----------------------------
One map per image; no pixel belongs to two segments:

1. thing candidates -- the instance masks (``things: instances``, from the
   detector -> SAM (-> QC) chain; QC-rejected rows never, flagged rows only
   with ``include_flagged``) or the panoptic model's thing segments
   (``things: panoptic``);
2. things are painted in descending score order onto free pixels; a thing
   whose free part is below ``overlap`` of its own mask is dropped (it is
   mostly hidden by a more confident one);
3. the panoptic model's stuff segments fill the pixels still free, in
   descending score order;
4. a segment left with fewer than ``min_area`` pixels goes to void.

Quality (:class:`PanopticQuality`)
----------------------------------
PQ/SQ/RQ follow the COCO panoptic definition: a predicted and a ground-truth
segment of the same category match when their IoU > 0.5 (IoU computed with
the prediction's pixels on ground-truth void left out); unmatched predictions
that lie more than half on void are ignored. ``PQ = sum(IoU of matches) /
(TP + FP/2 + FN/2)`` per category, averaged over the categories present.
mIoU is the mean over categories of the semantic IoU, void pixels ignored.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from segflow.tasks import rle
from segflow.tasks.documents import PanopticScores, SemanticScores
from segflow.tasks.record import Detections

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.panoptic import PanopticMergeStage


__all__ = [
    "MergePolicy",
    "merge",
    "segment_map",
    "panoptic_png",
    "read_panoptic_png",
    "borders",
    "semantic_png",
    "semantic_preview",
    "palette",
    "PanopticQuality",
    "SemanticQuality",
]


@dataclass(frozen=True)
class MergePolicy:
    things: str = "instances"  # instances | panoptic
    overlap: float = 0.5
    min_area: int = 64
    include_flagged: bool = False


def _thing_candidates(
    instances: Detections | None,
    segments: Detections,
    policy: MergePolicy,
    instance_stage: str | None,
    panoptic_stage: str,
) -> list[tuple[float, str, int, Detections]]:
    if policy.things == "panoptic" or instances is None:
        isthing = segments.fields["isthing"].astype(bool)
        return [(float(segments.scores[i]), panoptic_stage, int(i), segments) for i in np.flatnonzero(isthing)]
    keep = np.ones(len(instances), bool)
    verdicts = instances.fields.get("qc_verdict")
    if verdicts is not None:
        ok = ("pass", "flag") if policy.include_flagged else ("pass",)
        keep = np.isin(verdicts.astype(str), ok)
    return [
        (float(instances.scores[i]), instance_stage or "instances", int(i), instances) for i in np.flatnonzero(keep)
    ]


def merge(
    instances: Detections | None,
    segments: Detections,
    policy: MergePolicy,
    instance_stage: str | None = None,
    panoptic_stage: str = "panoptic",
) -> Detections:
    """One panoptic map per image as non-overlapping segments (see the module docstring).

    Arguments:
      instances: instance masks of the image (rows with RLE), or None.
      segments: the panoptic model's segments (field ``isthing``).

    Returns:
      Rows in paint order (row ``k`` is segment id ``k + 1``), RLE masks that
      never overlap, ``boxes`` tight around them, fields ``isthing``,
      ``source`` (stage name) and ``source_index`` (row in that stage's record).
    """
    h, w = segments.image_size
    canvas = np.zeros((w, h), np.int32)  # transposed, so segment masks come out N x W x H for free
    things = sorted(_thing_candidates(instances, segments, policy, instance_stage, panoptic_stage), key=lambda t: -t[0])
    isthing = segments.fields["isthing"].astype(bool)
    stuff = sorted(
        ((float(segments.scores[i]), panoptic_stage, int(i), segments) for i in np.flatnonzero(~isthing)),
        key=lambda t: -t[0],
    )
    rows: list[tuple[int, float, str, int, bool]] = []  # (class, score, source, index, isthing)
    for group, is_thing in ((things, True), (stuff, False)):
        for score, source, i, rec in group:
            m = rle.decode(rec.rle_counts[i], h, w).T
            full = int(m.sum())
            if full == 0:
                continue
            free = m & (canvas == 0)
            n = int(free.sum())
            if n < policy.min_area or (is_thing and n < policy.overlap * full):
                continue
            canvas[free] = len(rows) + 1
            rows.append((int(rec.class_ids[i]), score, source, i, is_thing))
    if not rows:
        return Detections.empty((h, w), with_masks=True).with_fields(
            isthing=np.zeros(0, bool), source=np.empty(0, object), source_index=np.zeros(0, np.int64)
        )
    masks_nwh = canvas[None] == np.arange(1, len(rows) + 1, dtype=np.int32)[:, None, None]
    counts = rle.encode_nwh(masks_nwh)
    xywh = rle.bbox_xywh(counts, h, w)
    return Detections(
        (h, w),
        np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows], np.float32),
        rle_counts=counts,
        fields={
            "isthing": np.array([r[4] for r in rows]),
            "source": np.array([r[2] for r in rows], object),
            "source_index": np.array([r[3] for r in rows], np.int64),
        },
    )


# -- maps and files --------------------------------------------------------------------------


def segment_map(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """``H x W`` int32 segment ids (row k of ``counts`` = id k + 1, 0 = void) from non-overlapping masks."""
    out = np.zeros((height, width), np.int32)
    for k, c in enumerate(counts):
        out[rle.decode(c, height, width)] = k + 1
    return out


def panoptic_png(ids: np.ndarray) -> bytes:
    """An ``H x W`` id map as a COCO panoptic PNG (id = R + 256 G + 256^2 B)."""
    from PIL import Image

    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("panoptic segment ids must be in [0, 256^3)")
    ids = ids.astype(np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def read_panoptic_png(data: bytes) -> np.ndarray:
    """A COCO panoptic PNG back to an ``H x W`` int64 id map."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


#: Viewing colours of category ids 1-20 (matplotlib's tab20, dark shades first): neighbouring ids differ.
_TAB20 = (
    "1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
    "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5"
).split()


def palette(categories: Iterable[dict]) -> list[int]:
    """768 palette entries: category id -> its ``color`` (or a fixed distinct colour: tab20 for ids 1-20, then
    pseudo-random), 0 = black."""
    rng = np.random.default_rng(12345)
    pal = [0, 0, 0] + [int(h[i : i + 2], 16) for h in _TAB20 for i in (0, 2, 4)]
    pal += rng.integers(40, 256, 768 - len(pal)).tolist()
    for c in categories:
        if 0 < int(c["id"]) < 256 and c.get("color"):
            pal[int(c["id"]) * 3 : int(c["id"]) * 3 + 3] = list(c["color"])
    return pal


def borders(ids: np.ndarray) -> np.ndarray:
    """H x W bool: pixels whose id differs from the pixel above or to the left (outlines of an id map)."""
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    return edge


def semantic_preview(pixels: np.ndarray, class_map: np.ndarray, pal: list[int], max_side: int = 1024) -> bytes:
    """A JPEG for eyes: ``class_map`` (H x W category ids, 0 = void) in the palette's colours blended over
    ``pixels`` (H x W x 3 uint8 RGB), class borders in white, void left as the image; long side at most
    ``max_side`` px."""
    from PIL import Image

    if class_map.shape != pixels.shape[:2]:
        raise ValueError(f"class map is {class_map.shape}, image is {pixels.shape[:2]}: expected the same H x W")
    h, w = class_map.shape
    k = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * k)), max(1, round(h * k)))
    image = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR)) if k < 1 else pixels
    ids = np.asarray(Image.fromarray(class_map.astype(np.uint8)).resize(size, Image.NEAREST)) if k < 1 else class_map
    colours = np.asarray(pal, np.float32).reshape(-1, 3)[ids]
    blend = np.where((ids > 0)[..., None], 0.45 * image + 0.55 * colours, image).astype(np.uint8)
    blend[borders(ids)] = 255
    buf = io.BytesIO()
    Image.fromarray(blend).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def semantic_png(class_map: np.ndarray, pal: list[int]) -> bytes:
    """An ``H x W`` category-id map (0 = void, ids < 256) as a palette PNG whose bytes are the ids."""
    from PIL import Image

    if class_map.max(initial=0) > 255:
        raise ValueError("semantic maps hold category ids below 256")
    im = Image.fromarray(class_map.astype(np.uint8), mode="L")
    im.putpalette(pal)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -- quality ---------------------------------------------------------------------------------


@dataclass
class PanopticQuality:
    """Accumulates PQ statistics over images (COCO panoptic definition)."""

    categories: dict[int, bool]  # category id -> isthing
    tp: dict[int, int] = field(default_factory=dict)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)
    iou: dict[int, float] = field(default_factory=dict)

    def add(self, gt_ids: np.ndarray, gt_cats: dict[int, int], pred_ids: np.ndarray, pred_cats: dict[int, int]) -> None:
        """One image: id maps (0 = void) and segment id -> category id for each side."""
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"panoptic maps differ in size: ground truth {gt_ids.shape}, prediction {pred_ids.shape}")
        g = gt_ids.astype(np.int64).ravel()
        p = pred_ids.astype(np.int64).ravel()
        big = int(max(p.max(initial=0), 0)) + 1
        pairs, inter = np.unique(g * big + p, return_counts=True)
        gid, pid = pairs // big, pairs % big
        g_area = dict(zip(*np.unique(g, return_counts=True)))
        p_area = dict(zip(*np.unique(p, return_counts=True)))
        void_of_pred = {int(b): int(n) for a, b, n in zip(gid, pid, inter) if a == 0}
        matched_g, matched_p = set(), set()
        for a, b, n in zip(gid, pid, inter):
            a, b = int(a), int(b)
            if a == 0 or b == 0 or gt_cats.get(a) != pred_cats.get(b):
                continue
            union = g_area[a] + p_area[b] - n - void_of_pred.get(b, 0)
            v = n / union
            if v > 0.5:
                c = gt_cats[a]
                matched_g.add(a)
                matched_p.add(b)
                self.tp[c] = self.tp.get(c, 0) + 1
                self.iou[c] = self.iou.get(c, 0.0) + float(v)
        for a, c in gt_cats.items():
            if a not in matched_g and g_area.get(a, 0) > 0:
                self.fn[c] = self.fn.get(c, 0) + 1
        for b, c in pred_cats.items():
            if b in matched_p or p_area.get(b, 0) == 0:
                continue
            if void_of_pred.get(b, 0) / p_area[b] > 0.5:
                continue  # mostly on void: ignored
            self.fp[c] = self.fp.get(c, 0) + 1

    def summary(self, names: dict[int, str] | None = None) -> PanopticScores:
        """``pq``, ``sq``, ``rq`` (all, things, stuff) and ``per_class``."""
        per: dict[int, dict] = {}
        for c in sorted(set(self.tp) | set(self.fp) | set(self.fn)):
            tp, fp, fn, iou = self.tp.get(c, 0), self.fp.get(c, 0), self.fn.get(c, 0), self.iou.get(c, 0.0)
            denom = tp + 0.5 * fp + 0.5 * fn
            sq = iou / tp if tp else 0.0
            rq = tp / denom if denom else 0.0
            per[c] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}

        def avg(cs: list[int]) -> dict[str, float | int | None]:
            if not cs:
                return {"pq": None, "sq": None, "rq": None, "n": 0}
            return {k: round(float(np.mean([per[c][k] for c in cs])), 4) for k in ("pq", "sq", "rq")} | {"n": len(cs)}

        everything = avg(list(per))
        return {
            "pq": everything["pq"],
            "sq": everything["sq"],
            "rq": everything["rq"],
            "things": avg([c for c in per if self.categories.get(c, True)]),
            "stuff": avg([c for c in per if not self.categories.get(c, True)]),
            "per_class": {
                (names or {}).get(c, str(c)): {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
                for c, d in per.items()
            },
        }


@dataclass
class SemanticQuality:
    """Accumulates a confusion matrix of category-id maps (0 = void, ignored in ground truth)."""

    num: int = 256
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((256, 256), np.int64))

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(f"semantic maps differ in size: ground truth {gt.shape}, prediction {pred.shape}")
        g = gt.astype(np.int64).ravel()
        p = pred.astype(np.int64).ravel()
        sel = g > 0
        self.confusion += np.bincount(g[sel] * self.num + p[sel], minlength=self.num * self.num).reshape(
            self.num, self.num
        )

    def summary(self, names: dict[int, str] | None = None) -> SemanticScores:
        c = self.confusion
        present = [i for i in range(1, self.num) if c[i].sum() > 0 or c[1:, i].sum() > 0]
        per = {}
        for i in present:
            inter = c[i, i]
            union = c[i].sum() + c[1:, i].sum() - inter
            per[i] = float(inter / union) if union else 0.0
        names = names or {}
        scored = c[1:].sum()
        return {
            "miou": round(float(np.mean(list(per.values()))), 4) if per else None,
            "per_class_iou": {names.get(i, str(i)): round(v, 4) for i, v in per.items()},
            "pixel_accuracy": round(float(np.trace(c[1:, 1:]) / scored), 4) if scored else None,
            "confusion": {  # rows: gold class; columns: predicted void, then the same classes
                "labels": ["void"] + [names.get(i, str(i)) for i in present],
                "matrix": c[np.ix_(present, [0, *present])].tolist(),
            },
        }


def semantic_from_segments(ids: np.ndarray, cats: dict[int, int]) -> np.ndarray:
    """A category-id map from a segment-id map and segment id -> category id."""
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
    for s, c in cats.items():
        if s < len(lut):
            lut[s] = c
    return lut[ids]


def evaluate_in_memory(
    pairs: Iterable[tuple[np.ndarray, dict[int, int], np.ndarray, dict[int, int]]],
    categories: dict[int, bool],
    names: dict[int, str] | None = None,
) -> PanopticScores:
    """PQ and mIoU over ``(gt_ids, gt_cats, pred_ids, pred_cats)`` per image."""
    pq, sem = PanopticQuality(categories), SemanticQuality()
    for gt_ids, gt_cats, pred_ids, pred_cats in pairs:
        pq.add(gt_ids, gt_cats, pred_ids, pred_cats)
        sem.add(semantic_from_segments(gt_ids, gt_cats), semantic_from_segments(pred_ids, pred_cats))
    out = pq.summary(names)
    s = sem.summary(names)
    out["miou"] = s["miou"]
    out["per_class_iou"] = s["per_class_iou"]
    return out


def detections_to_map(dets: Detections) -> tuple[np.ndarray, dict[int, int]]:
    """Non-overlapping segments (row k = id k + 1) -> (id map, id -> category)."""
    h, w = dets.image_size
    return segment_map(list(dets.rle_counts), h, w), {k + 1: int(c) for k, c in enumerate(dets.class_ids)}


class PanopticMerger:
    """The ``panoptic_merge`` stage: :func:`merge` for each image, with the stage's policy."""

    role = "merge"

    def __init__(
        self, stage: PanopticMergeStage, weights_path: str | None = None, ontology: dict[int, str] | None = None
    ):
        self.stage = stage
        self.policy = MergePolicy(
            things=stage.things, overlap=stage.overlap, min_area=stage.min_area, include_flagged=stage.include_flagged
        )

    def merge(
        self,
        images: Sequence[np.ndarray],
        instances: Sequence[Detections] | None,
        segments: Sequence[Detections],
        instance_stage: str | None,
        panoptic_stage: str,
    ) -> list[Detections]:
        return [
            merge(None if instances is None else instances[i], segments[i], self.policy, instance_stage, panoptic_stage)
            for i in range(len(images))
        ]
