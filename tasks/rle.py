"""Masks as COCO run-length encoding (RLE) -- the one mask format segflow stores.

Format
------
A mask of an image of height H and width W is a boolean array ``m[y, x]``.
COCO RLE flattens it in **column-major** (Fortran) order -- ``y`` varies
fastest -- and stores alternating run lengths, starting with a run of zeros
(which may be 0 long). The *compressed* form used everywhere in segflow is
pycocotools' ASCII string (``rle["counts"]`` as ``str``); together with
``(H, W)`` it is a complete mask::

    {"size": [H, W], "counts": "<compressed string>"}

This is exactly what COCO ``segmentation`` fields, ``pycocotools.mask.decode``
and the manifest column ``rle_counts`` hold.

Layout without copies
---------------------
``pycocotools.mask.encode`` wants ``uint8`` arrays of shape ``HxWxN`` in
Fortran order. A C-contiguous stack of masks of shape ``NxWxH`` *is* that
memory layout, so ``masks_nwh.transpose(2, 1, 0)`` hands it over for free,
whereas ``np.asfortranarray`` on a C-ordered ``NxHxW`` stack copies and costs
several times the encode itself. Producers that can (the SAM stage upsamples
transposed logits) build ``NxWxH`` directly and call :func:`encode_nwh`.

Functions here are small and pure; names say the layout they take.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from segflow.tasks.documents import CompressedRle

__all__ = [
    "encode_nwh",
    "encode_nhw",
    "decode",
    "decode_many",
    "area",
    "bbox_xywh",
    "to_coco_segmentation",
    "rle_runs",
    "rle_runs_array",
    "iou",
]


def _rle_objects(counts: Sequence[str], height: int, width: int) -> list[dict]:
    return [{"size": [int(height), int(width)], "counts": c.encode("ascii")} for c in counts]


def encode_nwh(masks_nwh: np.ndarray) -> list[str]:
    """Encode masks given as ``N x W x H`` (C-contiguous, transposed) to RLE strings.

    Arguments:
      masks_nwh: N x W x H, bool or uint8, C-contiguous. ``masks_nwh[i, x, y]``
        is pixel (x, y) of mask i.

    Returns:
      N compressed COCO RLE count strings for images of size (H, W).
    """
    if masks_nwh.ndim != 3:
        raise ValueError(f"masks must be N x W x H, got shape {masks_nwh.shape}")
    if masks_nwh.shape[0] == 0:
        return []
    arr = (
        np.ascontiguousarray(masks_nwh).view(np.uint8)
        if masks_nwh.dtype == np.bool_
        else np.ascontiguousarray(masks_nwh, dtype=np.uint8)
    )
    fortran_hwn = arr.transpose(2, 1, 0)  # H x W x N, Fortran-ordered view, no copy
    return [r["counts"].decode("ascii") for r in mask_utils.encode(fortran_hwn)]


def encode_nhw(masks_nhw: np.ndarray) -> list[str]:
    """Encode masks given as ``N x H x W`` (the usual layout) to RLE strings.

    One transpose copy is made; prefer :func:`encode_nwh` on hot paths.
    """
    if masks_nhw.ndim == 2:
        masks_nhw = masks_nhw[None]
    if masks_nhw.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {masks_nhw.shape}")
    return encode_nwh(np.ascontiguousarray(masks_nhw.transpose(0, 2, 1)))


def decode(counts: str, height: int, width: int) -> np.ndarray:
    """Decode one RLE string to an ``H x W`` bool mask."""
    return mask_utils.decode(_rle_objects([counts], height, width)[0]).astype(bool)


def decode_many(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """Decode RLE strings of one image to an ``N x H x W`` bool stack."""
    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=bool)
    hwn = mask_utils.decode(_rle_objects(counts, height, width))
    return np.ascontiguousarray(hwn.transpose(2, 0, 1)).astype(bool)


def area(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """Pixel count of each mask, computed from the RLE. Shape N, int64."""
    if len(counts) == 0:
        return np.zeros((0,), dtype=np.int64)
    return np.asarray(mask_utils.area(_rle_objects(counts, height, width)), dtype=np.int64)


def bbox_xywh(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """Tight box of each mask, ``N x 4``, XYWH in pixels (COCO ``bbox``); zeros for empty masks."""
    if len(counts) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(mask_utils.toBbox(_rle_objects(counts, height, width)), dtype=np.float64).reshape(-1, 4)


def iou(a: Sequence[str], b: Sequence[str], height: int, width: int) -> np.ndarray:
    """Mask IoU of every pair: ``len(a) x len(b)`` float64 (masks of one image size, from their RLE strings)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    ra, rb = _rle_objects(a, height, width), _rle_objects(b, height, width)
    return np.asarray(mask_utils.iou(ra, rb, [0] * len(rb)), dtype=np.float64).reshape(len(a), len(b))


def to_coco_segmentation(counts: str, height: int, width: int) -> CompressedRle:
    """The COCO ``segmentation`` value of one mask (compressed RLE, JSON-ready)."""
    return {"size": [int(height), int(width)], "counts": counts}


def rle_runs(counts: str, limit: int) -> list[int] | None:
    """The runs of a COCO compressed RLE string, or None when it is malformed or its runs pass ``limit`` pixels.

    The decoding is pycocotools' ``rleFrString``: 5 bits a character (offset 48), a continuation bit,
    a sign bit on the last character, and each run after the second stored as a difference to the run
    two before it.
    """
    runs = rle_runs_array(counts, limit)
    return None if runs is None else runs.tolist()


def rle_runs_array(counts: str, limit: int) -> np.ndarray | None:
    """:func:`rle_runs` as an int64 array, decoded with numpy (a string's characters at once, not one by one)."""
    c = np.frombuffer(counts.encode("utf-32-le"), np.uint32).astype(np.int64) - 48
    if not len(c):
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() >= 64 or c[-1] & 0x20:  # a character out of range, or the last one continues
        return None
    ends = np.flatnonzero((c & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # over 60 bits: pycocotools' own bound (13) and the exact sum in Python
        return _rle_runs_python(counts, limit)
    shift = 5 * (np.arange(len(c)) - np.repeat(starts, lengths))
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    x -= np.where(c[ends] & 0x10, np.int64(1) << (5 * lengths), 0)  # the sign bit extends to the left
    # a run is at most `limit` and at least 0, so no stored difference is more than `limit` either way (which
    # also keeps the sums below in range)
    if np.abs(x).max() > limit:
        return None
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # runs[i] = x[i] + runs[i - 2] from i = 3 on
    runs[2::2] = np.cumsum(x[2::2])
    if runs.min() < 0 or runs.sum() > limit:
        return None
    return runs


def _rle_runs_python(counts: str, limit: int) -> np.ndarray | None:
    """:func:`rle_runs_array` one character at a time (for runs stored in more than 12 characters)."""
    runs: list[int] = []
    total, p, n = 0, 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 13:  # more than 64 bits
                return None
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        total += x
        if total > limit:
            return None
        runs.append(x)
    return np.asarray(runs, np.int64)
