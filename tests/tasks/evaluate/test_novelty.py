"""The novelty score on its own: mask shape features, the reference fitted on a gold set's right masks with its
held-out limit, and acceptance sending masks over the limit to review (with novelty off as the negative control).
Through the demo with shapes outside the ontology: tests/flows/test_drift_flow.py."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from segflow.demo.synthetic import _shape_layer
from segflow.tasks import rle
from segflow.tasks.evaluate.acceptance import apply_acceptance
from segflow.tasks.evaluate.novelty import COLUMNS, FEATURES, KEEP, fit_reference, novelty, shape_features

H, W = 200, 200


def features_of(kind, size=120.0, angle=0.3):
    m = _shape_layer(kind, 100, 100, size, angle, H, W)
    counts = rle.encode_nhw(m[None])
    return shape_features(counts, H, W, rle.bbox_xywh(counts, H, W))[0]


def test_shape_features_tell_the_demo_shapes_apart():
    f = {k: dict(zip(COLUMNS, features_of(k), strict=True)) for k in ("circle", "square", "ring", "star", "pentagon")}
    assert f["ring"]["holes"] > 0.2 and f["circle"]["holes"] == 0
    assert f["star"]["solidity"] < 0.7 < f["square"]["solidity"]
    assert f["circle"]["circularity"] > 0.85 > f["square"]["circularity"]
    assert round(np.exp(f["square"]["vertices"])) == 4 and round(np.exp(f["pentagon"]["vertices"])) == 5
    empty = shape_features([rle.encode_nhw(np.zeros((1, H, W), bool))[0]], H, W, np.zeros((1, 4)))
    assert np.isnan(empty[:, : len(FEATURES)]).all() and empty[0, -1] == 0
    assert all(v["contact"] == 0 for v in f.values())  # alone in the frame, clear of its border


def test_contact_means_touching_another_mask_or_the_border_not_a_duplicate():
    def contact(*masks):
        counts = rle.encode_nhw(np.stack(masks))
        return shape_features(counts, H, W, rle.bbox_xywh(counts, H, W))[:, -1].tolist()

    a = _shape_layer("square", 60, 100, 50, 0.0, H, W)
    near = _shape_layer("circle", 60 + 25 + 22, 100, 40, 0.0, H, W)  # 2 px from the square's right side
    far = _shape_layer("circle", 150, 100, 40, 0.0, H, W)
    assert contact(a, far) == [0, 0]
    assert contact(a, near) == [1, 1]
    assert contact(a, a.copy()) == [0, 0]  # a duplicate of the same object does not cut it
    assert contact(_shape_layer("circle", 15, 100, 40, 0.0, H, W))[0] == 1  # cut by the frame


def _circles(rng, n):
    return np.array([features_of("circle", rng.uniform(60, 160), rng.uniform(0, 6)) for _ in range(n)])


def test_the_reference_keeps_held_out_right_masks_and_flags_other_shapes():
    rng = np.random.default_rng(0)
    x = _circles(rng, 60)
    ref = fit_reference(x, np.arange(60) % 5)
    assert ref["limit"] == 1.0 and ref["heldout_kept"] >= KEEP - 0.02 and ref["right_masks"] == 60
    assert ref["groups"]["free"]["right_masks"] == 60 and ref["groups"]["contact"] is None  # none touch
    fresh = _circles(np.random.default_rng(1), 40)
    assert (novelty(fresh, ref) <= 1.0).mean() >= 0.95  # new circles: not novel
    others = np.array([features_of(k, 120, a) for k in ("ring", "star", "pentagon") for a in (0.1, 0.9, 2.0)])
    assert (novelty(others, ref) > 1.0).all()
    assert fit_reference(x[:5], np.zeros(5)) is None  # too few right masks: no limit
    json.dumps(ref)  # stored in calibration.json as it is


def test_the_limit_is_fitted_held_out():
    """The limit comes from right masks scored against the other folds: with one dented circle in each fold, each
    is measured against the other folds' dented ones, and the limit reaches them; a reference that never saw a
    dent flags them all (negative control)."""
    rng = np.random.default_rng(3)
    x = _circles(rng, 50)
    odd = np.array([features_of("circle", 60, 0.0) for _ in range(5)])
    odd[:, 1] -= 0.05  # a dent: lower solidity
    fold = np.r_[np.arange(50) % 5, np.arange(5)]
    ref = fit_reference(np.r_[x, odd], fold)
    held_out = novelty(odd, ref)
    assert (held_out <= 1.0).sum() >= 4  # the dented ones were seen held out, so the limit reaches them
    alone = fit_reference(x, np.arange(50) % 5)  # negative control: a reference that never saw a dent
    assert (novelty(odd, alone) > 1.0).all()


def test_touching_masks_are_measured_against_touching_examples():
    """A square with a corner bitten off by a neighbour looks like a pentagon; among the gold set's touching
    squares it is ordinary, while a free-standing pentagon is measured against free-standing squares only."""
    rng = np.random.default_rng(4)
    free = np.array([features_of("square", rng.uniform(60, 140), rng.uniform(0, 6)) for _ in range(40)])
    bitten = []
    while len(bitten) < 40:
        sq = _shape_layer("square", 100, 100, rng.uniform(60, 120), rng.uniform(0, 6), H, W)
        cut = _shape_layer("circle", 100 + rng.uniform(20, 50), 100 + rng.uniform(20, 50), 40, 0.0, H, W)
        if (sq & cut).sum() < 100:  # the neighbour missed it
            continue
        counts = rle.encode_nhw(np.stack([sq & ~cut, cut]))
        bitten.append(shape_features(counts, H, W, rle.bbox_xywh(counts, H, W))[0])
    bitten = np.array(bitten)
    assert (bitten[:, -1] == 1).all()
    ref = fit_reference(np.r_[free, bitten], np.arange(80) % 5)
    assert ref["groups"]["free"] and ref["groups"]["contact"]
    pentagon = features_of("pentagon", 110, 0.4)
    assert novelty(pentagon, ref)[0] > 1.0  # free-standing: unlike every free square
    assert (novelty(bitten[:10], ref) <= 1.0).mean() >= 0.8  # touching squares among touching ones


def _masks(shapes):
    rows = []
    for k, kind in enumerate(shapes):
        counts = rle.encode_nhw(_shape_layer(kind, 100, 100, 120, 0.3, H, W)[None])[0]
        x, y, w, h = rle.bbox_xywh([counts], H, W)[0]
        rows.append(
            {
                "annotation_id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "score": 0.95,
                "predicted_iou": 0.95,
                "stability_score": 0.95,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": int(_shape_layer(kind, 100, 100, 120, 0.3, H, W).sum()),
                "width": W,
                "height": H,
                "rle_counts": counts,
                "qc_verdict": None,
                "qc_reasons": None,
                "shape": features_of(kind).tolist(),
            }
        )
    t = pa.Table.from_pylist(rows)
    t = t.set_column(t.schema.get_field_index("qc_verdict"), "qc_verdict", pa.nulls(len(rows), pa.string()))
    return t.set_column(
        t.schema.get_field_index("qc_reasons"), "qc_reasons", pa.nulls(len(rows), pa.list_(pa.string()))
    )


@pytest.mark.parametrize("use_novelty", [True, False])
def test_acceptance_sends_a_novel_mask_to_review(use_novelty):
    ref = fit_reference(_circles(np.random.default_rng(0), 60), np.arange(60) % 5)
    cal = {"score": "detector", "classes": {"circle": {"category_id": 1, "threshold": 0.5, "novelty": ref}}}
    out = apply_acceptance(_masks(["circle", "ring"]), cal, use_novelty=use_novelty)
    nov = out["novelty"].to_pylist()
    assert nov[0] <= 1.0 < nov[1]  # the score is there either way
    if use_novelty:
        assert out["verdict"].to_pylist() == ["accept", "review"] and out["verdict_reasons"].to_pylist()[1] == ["novel"]
    else:  # negative control: the ring is accepted as a circle
        assert out["verdict"].to_pylist() == ["accept", "accept"]


def test_a_mask_is_decoded_only_in_its_box_and_exactly():
    from segflow.tasks.evaluate.novelty import _decode_box

    rng = np.random.default_rng(2)
    for kind in ("circle", "ring", "star", "pentagon", "square"):
        m = _shape_layer(kind, rng.uniform(40, 160), rng.uniform(40, 160), rng.uniform(30, 90), rng.uniform(0, 6), H, W)
        (counts,) = rle.encode_nhw(m[None])
        x, y, w, h = (int(v) for v in rle.bbox_xywh([counts], H, W)[0])
        assert np.array_equal(_decode_box(counts, H, W, x, y, w, h), m[y : y + h, x : x + w]), kind
        assert np.array_equal(_decode_box(counts, H, W, 0, 0, W, H), m)  # the whole frame too
    assert not _decode_box('"broken', H, W, 0, 0, 10, 10).any()  # a malformed string measures nothing


def _look_alike_labels(seed, images=80):
    """Labels of one class (circle) on ``images`` images: 3 right circles each (score ~ Beta(6, 2)), one wrong
    label of an ordinary circle's shape (a wrong place, score ~ Beta(2, 4)) and one star look-alike the detector
    scores almost as high as the right ones (Beta(4, 3)); ``tp`` marks the right ones, ``row.shape`` their shapes."""
    rng = np.random.default_rng(seed)
    circles = _circles(rng, 40)
    stars = np.array([features_of("star", rng.uniform(80, 150), rng.uniform(0, 6)) for _ in range(12)])
    labels, gold = [], {}
    for img in range(images):
        gold[(img, 1)] = 3
        for tp, law, pool in ((True, (6, 2), circles),) * 3 + ((False, (2, 4), circles), (False, (4, 3), stars)):
            shape = pool[rng.integers(len(pool))].tolist()
            labels.append(
                {"image_id": img, "category_id": 1, "score": float(rng.beta(*law)), "tp": tp, "row": {"shape": shape}}
            )
    return labels, gold, stars


def _exported(labels, cal):
    entry = cal["classes"]["circle"]
    shapes = np.array([r["row"]["shape"] for r in labels])
    keep = np.array([r["score"] >= entry["threshold"] for r in labels])
    if cal["novelty_in_thresholds"]:
        keep &= novelty(shapes, entry["novelty"]) <= 1.0
    tp = np.array([r["tp"] for r in labels])
    return tp[keep].sum() / keep.sum(), tp[keep].sum() / (3 * len({r["image_id"] for r in labels}))


def test_thresholds_are_fitted_on_the_labels_that_pass_the_novelty_limit():
    """Look-alikes never pass acceptance with novelty on, so a threshold fitted on every label is set too high for
    what is exported: fitted on the labels under the limit (held out) it keeps more right labels at the target,
    and its held-out estimate agrees with a fresh draw. Negative control: fitted without novelty, the look-alikes
    force the threshold up; and thresholds fitted with novelty but exported without it let the look-alikes in."""
    from segflow.tasks.evaluate.calibration import calibrate

    labels, gold, _ = _look_alike_labels(seed=5)
    on = calibrate(labels, gold, {1: "circle"}, target=0.9, novelty=True)
    off = calibrate(labels, gold, {1: "circle"}, target=0.9, novelty=False)
    assert on["novelty_in_thresholds"] is True and off["novelty_in_thresholds"] is False
    t_on, t_off = on["classes"]["circle"]["threshold"], off["classes"]["circle"]["threshold"]
    assert t_on < t_off - 0.05
    fresh, _, _ = _look_alike_labels(seed=6)
    (p_on, r_on), (p_off, r_off) = _exported(fresh, on), _exported(fresh, off)
    assert p_on >= 0.87 and p_off >= 0.85 and r_on > r_off + 0.1
    lo, hi = on["classes"]["circle"]["heldout"]["precision_ci95"]
    assert lo - 0.03 <= p_on <= hi + 0.03
    # the thresholds fitted with novelty, exported without it: the look-alikes come back and precision falls
    p_mixed, _ = _exported(fresh, {**on, "novelty_in_thresholds": False})
    assert p_mixed < 0.8
