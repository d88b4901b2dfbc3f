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

computed for every mask by the shard that makes it (``shape`` column of the masks manifest; one mask at a time,
cropped to its box).

**The reference** (:func:`fit_reference`, in ``calibration.json`` per class under ``novelty``): per feature, the
band between the 1% and 99% quantiles of the gold set's right masks (true positives) of the class, and its
interquartile range. **The score** (:func:`novelty`): how far the mask's most unusual feature lies outside its
band, in interquartile ranges (0 inside every band). **The limit**: the smallest score that keeps 99% of the gold
set's right masks, measured held out (the bands fitted on the other folds), and at least :data:`MIN_LIMIT`.
A mask above its class's limit is not accepted: it goes to review with the reason ``novel``
(:func:`segflow.tasks.acceptance.apply_acceptance`). Classes with fewer than :data:`MIN_REFERENCE` right masks
get no limit (the score is reported only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FEATURES", "MIN_LIMIT", "MIN_REFERENCE", "fit_reference", "novelty", "shape_features"]

FEATURES = ("extent", "solidity", "circularity", "holes", "aspect", "vertices")
MIN_LIMIT = 0.25
MIN_REFERENCE = 20
_KEEP = 0.99  # share of held-out right masks the limit keeps


def shape_features(counts: Sequence[str], height: int, width: int, boxes_xywh: np.ndarray) -> np.ndarray:
    """The features above for masks of one image: ``N x 6`` float32 (NaN for an empty mask).

    Arguments:
      counts: N COCO compressed RLE strings (``height`` x ``width``).
      boxes_xywh: N x 4 tight boxes of the masks (pixels), to crop each decoded mask.
    """
    import cv2

    out = np.full((len(counts), len(FEATURES)), np.nan, np.float32)
    for k, c in enumerate(counts):
        x, y, w, h = (int(v) for v in boxes_xywh[k])
        if w <= 0 or h <= 0:
            continue
        m = np.ascontiguousarray(_decode_box(c, height, width, x, y, w, h), dtype=np.uint8)
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
        area = float(m.sum())
        out[k] = (
            area / max(rw * rh, 1.0),
            filled / max(float(cv2.contourArea(cv2.convexHull(main))), 1.0),
            4 * np.pi * filled / perimeter**2,
            sum(float(cv2.contourArea(ct)) for ct in inner) / filled,
            min(rw, rh) / max(rw, rh, 1.0),
            np.log(len(cv2.approxPolyDP(main, 0.02 * perimeter, True))),
        )
    return out


def _decode_box(counts: str, height: int, width: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """The ``h`` x ``w`` window at ``(x, y)`` of a COCO compressed RLE, decoding only the window's columns (the
    runs are column-major: columns ``x .. x + w`` are one stretch of them). Cost: the window, not the image."""
    from segflow.tasks.formats.untrusted import rle_runs

    runs = np.asarray(rle_runs(counts, height * width) or [], np.int64)
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


def _band(x: np.ndarray) -> dict[str, list[float]]:
    lo, hi = np.nanquantile(x, 0.01, axis=0), np.nanquantile(x, 0.99, axis=0)
    iqr = np.nanquantile(x, 0.75, axis=0) - np.nanquantile(x, 0.25, axis=0)
    scale = np.maximum(iqr, 0.02)  # a feature the class never varies on still has a unit
    return {"low": lo.round(5).tolist(), "high": hi.round(5).tolist(), "scale": scale.round(5).tolist()}


def novelty(x: np.ndarray, reference: dict[str, Any]) -> np.ndarray:
    """The score of each row of ``x`` (N x 6 :func:`shape_features`) against a class's reference: how far its most
    unusual feature lies outside the band, in interquartile ranges. NaN features count as inside."""
    lo, hi, scale = (np.asarray(reference[k], np.float64) for k in ("low", "high", "scale"))
    x = np.asarray(x, np.float64).reshape(-1, len(lo))
    beyond = np.maximum(lo - x, 0) + np.maximum(x - hi, 0)
    return np.nan_to_num(beyond / scale, nan=0.0).max(axis=1) if len(x) else np.zeros(0)


def fit_reference(x: np.ndarray, fold: np.ndarray) -> dict[str, Any] | None:
    """A class's reference from its gold right masks' features (``x`` N x 6) and their folds (N ints): the bands
    on all of them, the limit that keeps :data:`_KEEP` of them held out (fold by fold), and what it kept.
    None with fewer than :data:`MIN_REFERENCE` right masks."""
    x = np.asarray(x, np.float64).reshape(-1, len(FEATURES))
    ok = np.isfinite(x).all(axis=1)
    x, fold = x[ok], np.asarray(fold)[ok]
    if len(x) < MIN_REFERENCE:
        return None
    held = np.zeros(len(x))
    for k in np.unique(fold):
        rest = fold != k
        held[~rest] = novelty(x[~rest], _band(x[rest])) if rest.sum() >= MIN_REFERENCE // 2 else 0.0
    limit = max(MIN_LIMIT, float(np.quantile(held, _KEEP)))
    return {
        **_band(x),
        "features": list(FEATURES),
        "limit": round(limit, 4),
        "right_masks": int(len(x)),
        "heldout_kept": round(float((held <= limit).mean()), 4),
    }
