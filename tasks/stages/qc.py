"""Quality checks as a stage: every mask gets a verdict and the rules that fired.

Verdicts: ``pass``, ``flag`` (kept, marked for review) or ``reject`` (kept in
the manifest and the quarantine table with its reasons, left out of COCO).
Nothing is dropped silently. A rule fires with its configured action; a mask's
verdict is the strongest action among its rules (reject > flag > pass).

Mask rules (thresholds and actions in the ``qc`` stage, defaults below):

==================  ==============================================================  =======================
rule                fires when                                                      default
==================  ==============================================================  =======================
``predicted_iou``   SAM's predicted IoU < ``predicted_iou_min``                     0.88, reject (SA-1B)
``stability``       stability score < ``stability_min`` (logits thresholded at      0.95, reject (SA-1B)
                    0 +- 1.0: area(>+1) / area(>-1))
``min_area``        area < ``min_area_px`` pixels or < ``min_area_frac`` of image   25 px / 0, reject
``max_area``        area > ``max_area_frac`` of the image                           0.9, flag
``mask_box_iou``    IoU of the mask's tight box with its prompt box < min           0.6, reject
``components``      more than ``max_components`` 8-connected components            3, flag
``duplicate``       mask IoU > ``iou`` with a higher-scoring mask of the same       0.85, reject
                    class in the image (greedy NMS by detector score)
``class_conflict``  mask IoU > ``iou`` with a higher-scoring mask of another class  0.85, flag
                    (the detector is unsure of the class; a reviewer decides)
``panoptic_``       IoU with the best panoptic segment of the same class < min      0.5, flag
``agreement``       (only when the qc stage also needs a panoptic stage: two
                    independent models disagree about the object)
==================  ==============================================================  =======================

Image rules (``qc_flags`` in the images table): ``no_labels`` -- a decoded image
with no mask; ``label_count_outlier`` -- more masks than the shard's median +
``count_outlier_mads`` x MAD (and at least ``count_outlier_min``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.records import QcVerdict

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.qc import QcStage


__all__ = ["QcChecker", "RULES", "VERDICTS", "check_masks", "count_outliers", "box_iou_xyxy"]

VERDICTS = tuple(v.value for v in QcVerdict)  # pass, flag, reject
RULES = (
    "predicted_iou",
    "stability",
    "min_area",
    "max_area",
    "mask_box_iou",
    "components",
    "duplicate",
    "class_conflict",
    "panoptic_agreement",
)
_RANK = {"pass": 0, "flag": 1, "reject": 2}


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two N x 4 XYXY box arrays."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of XYXY boxes (``a`` N x 4, ``b`` M x 4): N x M, as :func:`box_iou_xyxy` of each pair."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    n, m = len(a), len(b)
    return box_iou_xyxy(np.repeat(a, m, 0), np.tile(b, (n, 1))).reshape(n, m)


def _components(counts: str, h: int, w: int) -> int:
    from scipy import ndimage

    _, n = ndimage.label(rle.decode(counts, h, w), structure=np.ones((3, 3), bool))
    return int(n)


def panoptic_agreement(dets: Detections, segments: Detections) -> np.ndarray:
    """Per mask: the best mask IoU with a panoptic segment of the same class (0 when there is none). Shape N."""
    n = len(dets)
    out = np.zeros(n, np.float64)
    if n == 0 or len(segments) == 0:
        return out
    h, w = dets.image_size
    a = [{"size": [h, w], "counts": c.encode("ascii")} for c in dets.rle_counts]
    b = [{"size": [h, w], "counts": c.encode("ascii")} for c in segments.rle_counts]
    ious = np.asarray(mask_utils.iou(a, b, [0] * len(b))).reshape(n, len(b))
    same = dets.class_ids[:, None] == segments.class_ids[None, :]
    return np.where(same, ious, 0.0).max(1)


def check_masks(dets: Detections, cfg: QcStage, segments: Detections | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Verdict and fired rules per row of a record with masks (``segments``: a panoptic stage's, or None).

    Returns:
      verdicts: N, object (``pass`` | ``flag`` | ``reject``).
      reasons: N, object, comma-separated rule names ("" when none fired).
    """
    n = len(dets)
    if n == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=object)
    h, w = dets.image_size
    fired: list[list[str]] = [[] for _ in range(n)]
    actions: dict[str, str] = {}

    def fire(rule: str, mask: np.ndarray) -> None:
        action = getattr(cfg, rule).action
        if action == "off":
            return
        actions[rule] = action
        for i in np.flatnonzero(mask):
            fired[i].append(rule)

    counts = list(dets.rle_counts)
    area = dets.mask_areas().astype(np.float64)
    boxes_xywh = dets.mask_bboxes_xywh()
    mask_xyxy = np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], 1)

    if "predicted_iou" in dets.fields:
        fire("predicted_iou", dets.fields["predicted_iou"] < cfg.predicted_iou.min)
    if "stability_score" in dets.fields:
        fire("stability", dets.fields["stability_score"] < cfg.stability.min)
    fire("min_area", (area < cfg.min_area.min_px) | (area < cfg.min_area.min_frac * h * w))
    fire("max_area", area > cfg.max_area.max_frac * h * w)
    fire("mask_box_iou", box_iou_xyxy(mask_xyxy, dets.boxes.astype(np.float64)) < cfg.mask_box_iou.min)
    if cfg.components.action != "off":
        fire("components", np.array([_components(c, h, w) > cfg.components.max for c in counts]))
    if (cfg.duplicate.action != "off" or cfg.class_conflict.action != "off") and n > 1:
        objs = [{"size": [h, w], "counts": c.encode("ascii")} for c in counts]
        ious = np.asarray(mask_utils.iou(objs, objs, [0] * n))
        same = dets.class_ids[:, None] == dets.class_ids[None, :]
        fire("duplicate", _greedy_overlaps(ious, same, dets.scores, cfg.duplicate.iou))
        fire("class_conflict", _greedy_overlaps(ious, ~same, dets.scores, cfg.class_conflict.iou))

    if segments is not None:
        fire("panoptic_agreement", panoptic_agreement(dets, segments) < cfg.panoptic_agreement.min)

    verdicts = np.empty(n, dtype=object)
    reasons = np.empty(n, dtype=object)
    for i in range(n):
        v = "pass"
        for r in fired[i]:
            if _RANK[actions[r]] > _RANK[v]:
                v = actions[r]
        verdicts[i] = v
        reasons[i] = ",".join(fired[i])
    return verdicts, reasons


def _greedy_overlaps(ious: np.ndarray, eligible: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS by score: rows overlapping (> threshold) an earlier kept, eligible row."""
    kept: list[int] = []
    hit = np.zeros(len(scores), bool)
    for i in np.argsort(-scores, kind="stable"):
        if any(eligible[i, k] and ious[i, k] > threshold for k in kept):
            hit[i] = True
        else:
            kept.append(int(i))
    return hit


def count_outliers(counts: Sequence[int], mads: float, minimum: int) -> np.ndarray:
    """Which per-image mask counts are outliers: > median + ``mads`` x MAD and >= ``minimum``."""
    c = np.asarray(counts, dtype=np.float64)
    if len(c) == 0:
        return np.zeros(0, bool)
    med = float(np.median(c))
    mad = float(np.median(np.abs(c - med))) or 1.0
    return (c > med + mads * mad) & (c >= minimum)


class QcChecker:
    """The ``qc`` stage: adds ``qc_verdict`` and ``qc_reasons`` to each row, ``no_labels`` to empty images."""

    role = "qc"

    def __init__(self, stage: QcStage, weights_path: str | None = None, ontology: dict[int, str] | None = None):
        self.stage = stage

    def check(
        self, images: Sequence[np.ndarray], records: Sequence[Detections], panoptic: Sequence[Detections] | None = None
    ) -> list[Detections]:
        out = []
        for i, dets in enumerate(records):
            verdicts, reasons = check_masks(dets, self.stage, None if panoptic is None else panoptic[i])
            flags = ["no_labels"] if len(dets) == 0 and self.stage.no_labels.action != "off" else []
            out.append(dets.with_fields(meta={"qc_image_flags": flags}, qc_verdict=verdicts, qc_reasons=reasons))
        return out
