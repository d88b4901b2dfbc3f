"""Masks -> polygons -> masks (tasks/formats/polygons.py), read back the way every COCO reader does (pycocotools)."""

import numpy as np
import pytest

from segflow.tasks import rle
from segflow.tasks.formats.polygons import mask_to_polygons, polygons_to_rle, rle_to_polygons


def shapes(rng, n=60, h=70, w=110):
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n):
        cy, cx = rng.uniform(5, h - 5), rng.uniform(5, w - 5)
        ry, rx = rng.uniform(1.5, 20), rng.uniform(1.5, 30)
        m = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1
        if rng.random() < 0.3:  # a second part
            m |= (yy >= 2) & (yy < 6) & (xx >= w - 9) & (xx < w - 2)
        yield m


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_masks_without_holes_come_back_exactly():
    for m in shapes(np.random.default_rng(0)):
        counts = polygons_to_rle(mask_to_polygons(m), *m.shape)
        assert np.array_equal(rle.decode(counts, *m.shape), m)
    # negative control: the usual tracing (OpenCV's contour through boundary pixel indices) loses pixels
    import cv2

    m = next(shapes(np.random.default_rng(1)))
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    naive = [c.reshape(-1, 2).astype(float) for c in contours if len(c) >= 3]
    assert iou(rle.decode(polygons_to_rle(naive, *m.shape), *m.shape), m) < 0.97


def test_holes_come_back_filled_and_parts_separately():
    m = np.zeros((40, 60), bool)
    m[5:35, 5:35] = True
    m[15:25, 15:25] = False  # a hole
    m[10:20, 45:55] = True  # a second part
    polys = mask_to_polygons(m)
    assert len(polys) == 2 and len(polys[0]) >= 4  # largest first
    back = rle.decode(polygons_to_rle(polys, 40, 60), 40, 60)
    filled = m.copy()
    filled[15:25, 15:25] = True
    assert np.array_equal(back, filled) and iou(back, m) == pytest.approx(900 / 1000)


def test_tolerance_trades_points_for_exactness():
    m = next(shapes(np.random.default_rng(2), n=1))
    m[:] = False
    yy, xx = np.mgrid[:70, :110]
    m |= ((yy - 35) / 25) ** 2 + ((xx - 55) / 40) ** 2 <= 1
    exact, coarse = mask_to_polygons(m), mask_to_polygons(m, tolerance=1.0)
    assert sum(map(len, coarse)) < sum(map(len, exact)) / 2
    assert iou(rle.decode(polygons_to_rle(coarse, 70, 110), 70, 110), m) > 0.97
    counts = rle.encode_nhw(m[None])[0]
    assert [p.tolist() for p in rle_to_polygons(counts, 70, 110)] == [p.tolist() for p in exact]


def test_empty_masks():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert not rle.decode(polygons_to_rle([], 5, 5), 5, 5).any()


def _whole_image_polygons(m):
    """The tracing on the whole image, 2x (before masks were traced on their box): the reference."""
    import cv2

    up = np.kron(m.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c.reshape(-1, 2) + 0.5) / 2 for c in sorted(contours, key=cv2.contourArea, reverse=True) if len(c) >= 3]


def test_tracing_on_the_box_gives_the_whole_images_polygons_at_every_edge():
    rng = np.random.default_rng(5)
    masks = list(shapes(rng, 40))
    for m in masks[:10]:  # touching each edge and corner of the image
        m[0, 3:9] = m[-1, -7:-1] = m[2:5, 0] = m[-6:-2, -1] = True
    masks.append(np.pad(np.ones((3, 3), bool), ((0, 67), (107, 0))))  # in the top-right corner
    for m in masks:
        got, want = mask_to_polygons(m), _whole_image_polygons(m)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    # negative control: without moving the points by the box's corner they are not the same polygons
    m = masks[-1]
    assert not np.array_equal(mask_to_polygons(m[:, 100:])[0], _whole_image_polygons(m)[0])
