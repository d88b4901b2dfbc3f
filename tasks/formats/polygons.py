"""Masks as polygons and back, exact to the pixel for masks without holes.

A polygon here is ``K x 2`` float, XY in pixels of the image, with COCO's pixel
convention: pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)``. A mask's outer
boundaries are traced on the mask upsampled 2x (OpenCV's ``findContours``,
corners only), and each traced point ``q`` is placed at ``(q + 0.5) / 2``: a
quarter pixel inside the mask's true edge. Rasterising the polygons again
(pycocotools' ``frPyObjects``, as every COCO reader does) gives back the
mask exactly -- except holes, which polygons of these formats cannot carry
(a hole comes back filled). ``tolerance`` > 0 simplifies the polygons
(Douglas-Peucker, in pixels) for smaller files at the cost of exactness.

Polygons of fewer than 3 points (a one-pixel-wide sliver traced as a line) are
dropped.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_polygons", "polygons_to_rle", "rle_to_polygons"]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """The outer boundaries of an H x W bool mask: a list of K x 2 float arrays (XY pixels), largest first."""
    import cv2

    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if not len(rows):
        return []
    # traced on the mask's box and a pixel of margin (the image's edge where the mask touches it): the same
    # contours as on the whole image, moved by the box's corner, at the cost of the box
    y0, x0 = max(int(rows[0]) - 1, 0), max(int(cols[0]) - 1, 0)
    y1, x1 = min(int(rows[-1]) + 2, m.shape[0]), min(int(cols[-1]) + 2, m.shape[1])
    up = m[y0:y1, x0:x1].astype(np.uint8).repeat(2, axis=0).repeat(2, axis=1)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True):
        if tolerance > 0:
            c = cv2.approxPolyDP(c, 2 * tolerance, True)
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) / 2 + (x0, y0)
        if len(pts) >= 3:
            out.append(pts)
    return out


def rle_to_polygons(counts: str, height: int, width: int, tolerance: float = 0.0) -> list[np.ndarray]:
    """:func:`mask_to_polygons` of a COCO compressed RLE string."""
    from pycocotools import mask as mask_utils

    m = mask_utils.decode({"size": [height, width], "counts": counts}).astype(bool)
    return mask_to_polygons(m, tolerance)


def polygons_to_rle(polygons: list[np.ndarray], height: int, width: int) -> str:
    """COCO compressed RLE counts of the union of polygons (each K x 2, XY pixels); empty mask for none."""
    from pycocotools import mask as mask_utils

    flat = [np.asarray(p, np.float64).reshape(-1).tolist() for p in polygons if len(p) >= 3]
    if not flat:
        rle = mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(flat, height, width))
    counts = rle["counts"]
    return counts.decode() if isinstance(counts, bytes) else counts
