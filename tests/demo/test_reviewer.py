"""The simulated reviewer (segflow.demo.reviewer) answers as a careful person would, so the review loop's measured
figures are about segflow, not about the simulation."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from segflow.demo.reviewer import _answer

H = W = 40


def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def _square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _label(name: str, m: np.ndarray, verdict: str = "accept") -> dict:
    return {"name": name, "segmentation": _rle(m), "attributes": {"segflow_verdict": verdict}}


def test_a_label_of_the_right_class_is_kept_before_another_is_relabelled():
    """A circle labelled both circle (IoU 0.95) and square (IoU 1.0): the circle label stays and the square one is
    deleted (one error, as the ground truth counts it), not the square relabelled and the circle deleted (two)."""
    obj = _square(10, 30, 10, 30)
    circle, square = _label("circle", _square(11, 30, 10, 30)), _label("square", obj)
    answer, lost = _answer([circle, square], [{"name": "circle", "segmentation": _rle(obj)}], H, W)
    assert [n for _, n in answer] == ["circle", None] and not lost
    # with no label of its class on it, the best-fitting one is relabelled (negative control)
    answer, _ = _answer([square], [{"name": "circle", "segmentation": _rle(obj)}], H, W)
    assert [n for _, n in answer] == ["circle"]


def test_exported_labels_are_matched_before_review_labels_and_misses_are_returned():
    a, b = _square(0, 10, 0, 10), _square(20, 30, 20, 30)
    objects = [{"name": "square", "segmentation": _rle(a)}, {"name": "circle", "segmentation": _rle(b)}]
    labels = [_label("square", a, "review"), _label("square", _square(0, 10, 1, 10))]
    answer, lost = _answer(labels, objects, H, W)
    assert [n for _, n in answer] == [None, "square"]  # the exported one keeps the object
    assert [o["name"] for o, _ in lost] == ["circle"]
