"""How unlike the gold set's examples of its class a mask is: a per-mask novelty score beside the calibrated score.

A detector scores a look-alike of a known class high (a ring called a circle, a star called a triangle), so a
threshold on its score cannot catch it. The gold set holds what each class looks like; this module measures a
mask against that, in a feature space the segmenting stage already computes -- the mask itself:

==========  =======================================================================================
extent      mask area over its minimum-area rotated rectangle
solidity    filled outline area over its convex hull's
circularity 4 pi area / perimeter^2 of the outer outline
holes       hole area over the filled outline area
aspect      short over long side of the minimum-area rectangle
vertices    log of the vertices of the outline simplified at 2% of its perimeter
==========  =======================================================================================

plus ``contact``: 1 when the mask touches another mask of its image (one it does not duplicate) or the image's
border, else 0. Computed for every mask by the shard that makes it (``shape`` column of the masks manifest, the
seven values in :data:`COLUMNS` order; one mask at a time, cropped to its box).

**Why contact.** An object cut by a neighbour or by the frame has any outline: a square with a corner bitten off
has five vertices like a pentagon. Measured against all of a class's examples, a free-standing look-alike hides
among the cut ones. So each class keeps two references, of free-standing and of touching right masks, and a
mask is measured against the one of its own kind (the pooled one when that kind has too few examples).

**The reference** (:func:`fit_reference`, in ``calibration.json`` per class under ``novelty``): per group, the
gold set's right masks (true positives) of the class as points in the six features standardised (centre and
scale saved; at most :data:`MAX_POINTS` points, a few KB; no gold images needed later). **The score**
(:func:`novelty`): the mean distance to the :data:`K` nearest points, over the group's limit -- so 1.0 is the
limit for every class and the manifest's ``novelty`` reads the same everywhere. **The limit**: the distance
that keeps :data:`KEEP` of the group's right masks measured held out (each fold against the other folds'
points), and at least :data:`MIN_LIMIT`. A mask above 1.0 is not accepted: it goes to review with the reason
``novel`` (:func:`segflow.tasks.evaluate.acceptance.apply_acceptance`). Classes with fewer than :data:`MIN_REFERENCE`
right masks get no reference (the score is not computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segflow.tasks.documents import NoveltyReference
from segflow.tasks.rle import rle_runs_array

__all__ = [
    "COLUMNS",
    "FEATURES",
    "K",
    "KEEP",
    "MAX_POINTS",
    "MIN_LIMIT",
    "MIN_REFERENCE",
    "fit_reference",
    "novelty",
    "shape_features",
    "shape_matrix",
]

FEATURES = ("extent", "solidity", "circularity", "holes", "aspect", "vertices")
COLUMNS = (*FEATURES, "contact")
K = 5  # neighbours a score averages over
KEEP = 0.96  # share of held-out right masks the limit keeps
MIN_LIMIT = 0.25  # in standardised units
MIN_REFERENCE = 20  # right masks a class needs for a reference
MIN_GROUP = 7  # right masks a group (free / contact) needs for its own reference; else the pooled one
MAX_POINTS = 400  # points kept a group
_SCALE_FLOOR = 0.05  # a feature the class hardly varies on (holes) still has a unit: a stray hole is not novel
_TOUCH_PX = 3  # outlines this close count as touching
_GROUPS = ("free", "contact")


def shape_features(counts: Sequence[str], height: int, width: int, boxes_xywh: np.ndarray) -> np.ndarray:
    """The :data:`COLUMNS` of masks of one image: ``N x 7`` float32 (the six features NaN for an empty mask).

    Arguments:
      counts: N COCO compressed RLE strings (``height`` x ``width``).
      boxes_xywh: N x 4 tight boxes of the masks (XYWH, pixels), to crop each decoded mask.
    """
    import cv2

    n = len(counts)
    out = np.full((n, len(COLUMNS)), np.nan, np.float32)
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4).astype(int)
    areas = np.zeros(n, np.int64)
    runs = [_runs(c, height, width) for c in counts]  # each string parsed once
    for k in range(n):
        x, y, w, h = boxes[k]
        if w <= 0 or h <= 0:
            continue
        m = np.ascontiguousarray(_decode_box(runs[k], height, width, x, y, w, h), dtype=np.uint8)
        areas[k] = int(m.sum())
        m = np.pad(m, 1)  # outlines never touch the crop's border
        contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if not contours:
            continue
        outer = [ct for ct, hr in zip(contours, hierarchy[0], strict=True) if hr[3] < 0]
        inner = [ct for ct, hr in zip(contours, hierarchy[0], strict=True) if hr[3] >= 0]
        main = max(outer, key=cv2.contourArea)
        filled = max(float(cv2.contourArea(main)), 1.0)
        perimeter = max(float(cv2.arcLength(main, True)), 1.0)
        (_, _), (rw, rh), _ = cv2.minAreaRect(main)
        out[k, : len(FEATURES)] = (
            areas[k] / max(rw * rh, 1.0),
            filled / max(float(cv2.contourArea(cv2.convexHull(main))), 1.0),
            4 * np.pi * filled / perimeter**2,
            sum(float(cv2.contourArea(ct)) for ct in inner) / filled,
            min(rw, rh) / max(rw, rh, 1.0),
            np.log(len(cv2.approxPolyDP(main, 0.02 * perimeter, True))),
        )
    out[:, -1] = _contact(runs, height, width, boxes, areas)
    return out


def shape_matrix(values: Sequence[Sequence[float] | None], width: int | None = None) -> np.ndarray:
    """The ``shape`` column's values as an N x ``width`` float64 array, NaN rows where a value is missing or of
    another width. ``width`` defaults to the widest value present (6 in manifests written before ``contact``)."""
    if width is None:
        width = max((len(v) for v in values if v), default=len(COLUMNS))
    out = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        if v and len(v) == width:
            out[i] = v
    return out


def _contact(runs: list[np.ndarray], height: int, width: int, boxes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """1.0 where a mask (its :func:`_runs`, N x 4 ``boxes`` XYWH, ``areas`` pixels) lies within :data:`_TOUCH_PX`
    of the image's border or of another mask it overlaps by less than half the smaller one (a duplicate does not
    count); else 0.0. Each pair is looked at only where their boxes come that close, in the window around the
    first one's box."""
    import cv2

    g = _TOUCH_PX
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    out = ((x0 <= g) | (y0 <= g) | (x1 >= width - g) | (y1 >= height - g)).astype(np.float32)
    out[areas == 0] = 0.0
    near = (x0[:, None] - g < x1[None]) & (x1[:, None] + g > x0[None]) & (y0[:, None] - g < y1[None])
    near &= y1[:, None] + g > y0[None]
    np.fill_diagonal(near, False)
    kernel = np.ones((2 * g + 1, 2 * g + 1), np.uint8)
    for i in np.flatnonzero(near.any(axis=1) & (out == 0) & (areas > 0)):
        wx0, wy0 = max(int(x0[i]) - g, 0), max(int(y0[i]) - g, 0)
        wx1, wy1 = min(int(x1[i]) + g, width), min(int(y1[i]) + g, height)
        mine = _decode_box(runs[i], height, width, wx0, wy0, wx1 - wx0, wy1 - wy0)
        grown = cv2.dilate(mine.astype(np.uint8), kernel).astype(bool)
        for j in np.flatnonzero(near[i] & (areas > 0)):
            theirs = _decode_box(runs[j], height, width, wx0, wy0, wx1 - wx0, wy1 - wy0)
            if (grown & theirs).any() and (mine & theirs).sum() < 0.5 * min(areas[i], areas[j]):
                out[i] = 1.0
                break
    return out


def _runs(counts: str, height: int, width: int) -> np.ndarray:
    """The run lengths of a COCO compressed RLE (bounded by the image's pixels; none when malformed)."""
    runs = rle_runs_array(counts, height * width)
    return np.zeros(0, np.int64) if runs is None else runs


def _decode_box(counts: str | np.ndarray, height: int, width: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The ``h`` x ``w`` window at ``(x, y)`` of a COCO compressed RLE (or its :func:`_runs`), decoding only the
    window's columns (the runs are column-major: columns ``x .. x + w`` are one stretch of them). Cost: the
    window, not the image."""
    runs = _runs(counts, height, width) if isinstance(counts, str) else counts
    ends = np.cumsum(runs)
    lo, hi = x * height, (x + w) * height
    starts = ends - runs
    keep = (ends > lo) & (starts < hi)
    values = (np.flatnonzero(keep) % 2).astype(bool)  # runs alternate 0, 1, 0, ...
    lengths = np.minimum(ends[keep], hi) - np.maximum(starts[keep], lo)
    flat = np.repeat(values, lengths)
    if len(flat) != hi - lo:  # a malformed string: nothing to measure
        return np.zeros((h, w), bool)
    return flat.reshape(w, height).T[y : y + h]


def _knn(points: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each row of ``x`` (M x D) to its ``k`` nearest rows of ``points`` (P x D)."""
    if not len(x):
        return np.zeros(0)
    d = np.sqrt(((x[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    k = min(k, points.shape[0])
    return np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)


def _fit_group(x: np.ndarray, fold: np.ndarray) -> tuple[dict[str, Any], np.ndarray] | None:
    """One group's reference from its right masks' six features (``x`` N x 6) and folds, with each one's held-out
    score (distance over the limit). None with fewer than :data:`MIN_GROUP` of them."""
    if len(x) < MIN_GROUP:
        return None
    center, scale = x.mean(axis=0), np.maximum(x.std(axis=0), _SCALE_FLOOR)
    z = (x - center) / scale
    held = np.zeros(len(z))
    for f in np.unique(fold):
        rest = fold != f
        held[~rest] = _knn(z[rest], z[~rest], K) if rest.sum() >= K else 0.0
    limit = max(MIN_LIMIT, float(np.quantile(held, KEEP)))
    keep = np.arange(len(z)) if len(z) <= MAX_POINTS else np.linspace(0, len(z) - 1, MAX_POINTS).round().astype(int)
    group = {
        "center": center.round(5).tolist(),
        "scale": scale.round(5).tolist(),
        "points": z[keep].round(4).tolist(),
        "limit": round(limit, 4),
        "right_masks": int(len(z)),
        "heldout_kept": round(float((held <= limit).mean()), 4),
    }
    return group, held / limit


def _score(x: np.ndarray, group: dict[str, Any]) -> np.ndarray:
    z = (x - np.asarray(group["center"])) / np.asarray(group["scale"])
    return _knn(np.asarray(group["points"], np.float64), z, K) / group["limit"]


def novelty(x: np.ndarray, reference: NoveltyReference) -> np.ndarray:
    """The score of each row of ``x`` (N x 7 :func:`shape_features`; N x 6 without ``contact`` is measured
    against the pooled reference) against a class's reference: the mean distance to its :data:`K` nearest
    right masks of its group, over the group's limit (above 1.0: novel). Rows with a NaN feature score 0."""
    x = np.atleast_2d(np.asarray(x, np.float64))
    if x.shape[1] not in (len(FEATURES), len(COLUMNS)):
        raise ValueError(f"novelty: rows of {len(FEATURES)} or {len(COLUMNS)} shape values expected, not {x.shape[1]}")
    feats = x[:, : len(FEATURES)]
    contact = x[:, len(FEATURES)] if x.shape[1] == len(COLUMNS) else np.full(len(x), np.nan)
    ok = np.isfinite(feats).all(axis=1)
    out = np.zeros(len(x))
    groups = reference.get("groups") or {}
    for name, rows in (
        ("free", ok & (contact == 0)),
        ("contact", ok & (contact == 1)),
        ("all", ok & ~np.isin(contact, (0.0, 1.0))),
    ):
        group = groups.get(name) or reference["all"]
        if rows.any():
            out[rows] = _score(feats[rows], group)
    return out


def fit_reference(x: np.ndarray, fold: np.ndarray) -> NoveltyReference | None:
    """A class's reference from its gold right masks' :data:`COLUMNS` (``x`` N x 7) and their folds (N ints): the
    pooled group and the free-standing and touching ones (those with at least :data:`MIN_GROUP` right masks),
    each with its held-out limit, and the share of right masks kept held out. None with fewer than
    :data:`MIN_REFERENCE` right masks."""
    x = np.asarray(x, np.float64).reshape(-1, len(COLUMNS))
    ok = np.isfinite(x[:, : len(FEATURES)]).all(axis=1)
    x, fold = x[ok], np.asarray(fold)[ok]
    if len(x) < MIN_REFERENCE:
        return None
    feats, contact = x[:, : len(FEATURES)], x[:, -1]
    pooled = _fit_group(feats, fold)
    if pooled is None:  # only if MIN_GROUP were above MIN_REFERENCE
        return None
    groups: dict[str, Any] = {}
    held = pooled[1].copy()
    for value, name in enumerate(_GROUPS):
        rows = contact == value
        fitted = _fit_group(feats[rows], fold[rows])
        groups[name] = fitted[0] if fitted else None
        if fitted:
            held[rows] = fitted[1]
    return {
        "features": list(FEATURES),
        "k": K,
        "limit": 1.0,
        "all": pooled[0],
        "groups": groups,
        "right_masks": int(len(x)),
        "heldout_kept": round(float((held <= 1.0).mean()), 4),
    }
