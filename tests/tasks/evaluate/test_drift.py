"""The drift check's parts on their own: image statistics, histograms that merge exactly, the two-sample test with
its negative control, the reliability curve, the mask check and the `review` action. The check on the demo's
shifted scenes is tests/flows/test_drift_flow.py."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from segflow.tasks.evaluate.acceptance import apply_acceptance, box_agreement, correct_probability
from segflow.tasks.evaluate.calibration import reliability
from segflow.tasks.evaluate.drift import compare, histograms, merge, reference
from segflow.tasks.io.image_stats import image_stats
from segflow.tasks.io.images import decode_image
from segflow.tasks.outputs.manifest import IMAGES_SCHEMA, MASKS_SCHEMA

NAMES = {1: "circle", 2: "square"}


def _images(rng, n, brightness=0.45, start=0):
    rows = []
    for i in range(n):
        rows.append(
            {
                "image_id": start + i,
                "status": "ok",
                "width": 400,
                "height": 300,
                "num_masks": int(rng.integers(2, 8)),
                "brightness": float(np.clip(rng.normal(brightness, 0.05), 0, 1)),
                "contrast": float(np.clip(rng.normal(0.1, 0.02), 0, 1)),
                "sharpness": float(rng.normal(2.7, 0.2)),
                "jpeg_quality": 92.0 if i % 3 else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=pa.schema([IMAGES_SCHEMA.field(k) for k in rows[0]]))


def _masks(rng, image_ids, per_image=4, score=0.8):
    rows = []
    for i in image_ids:
        for k in range(per_image):
            rows.append(
                {
                    "annotation_id": i * 100000 + k + 1,
                    "image_id": i,
                    "category_id": 1 + k % 2,
                    "score": float(np.clip(rng.normal(score, 0.1), 0, 1)),
                    "predicted_iou": 0.95,
                    "stability_score": float(np.clip(rng.normal(0.95, 0.02), 0, 1)),
                    "area": int(rng.integers(500, 3000)),
                    "width": 400,
                    "height": 300,
                }
            )
    return pa.Table.from_pylist(rows, schema=pa.schema([MASKS_SCHEMA.field(k) for k in rows[0]]))


def test_image_stats_see_darkening_blur_and_jpeg_quality():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    im = Image.fromarray(base).filter(ImageFilter.GaussianBlur(0.5))

    def stats(img, **save):
        buf = io.BytesIO()
        img.save(buf, **save)
        d = decode_image(buf.getvalue())
        return image_stats(d.pixels, d.jpeg_quality)

    plain = stats(im, format="PNG")
    assert plain.jpeg_quality is None
    assert (
        stats(im, format="JPEG", quality=92).jpeg_quality == 92
        and stats(im, format="JPEG", quality=25).jpeg_quality == 25
    )
    dark = stats(Image.fromarray((np.asarray(im) * 0.55).astype(np.uint8)), format="PNG")
    assert abs(dark.brightness - 0.55 * plain.brightness) < 0.01 and dark.contrast < plain.contrast
    assert stats(im.filter(ImageFilter.GaussianBlur(2)), format="PNG").sharpness < plain.sharpness - 0.5


def test_histograms_of_parts_merge_into_the_histograms_of_the_whole():
    rng = np.random.default_rng(1)
    images = _images(rng, 40)
    masks = _masks(rng, range(40))
    whole = histograms(images, masks)
    a = histograms(images.slice(0, 15), masks)  # masks of other images are left out by image id
    b = histograms(images.slice(15), masks)
    assert merge(merge(None, a), b) == whole
    assert whole["images"] == 40 and whole["classes"]["1"]["masks"] == 80


def test_the_same_distribution_holds_and_a_darkened_one_drifts():
    rng = np.random.default_rng(2)
    ref = reference(histograms(_images(rng, 60), _masks(rng, range(60))))
    same = histograms(_images(rng, 200, start=100), _masks(rng, range(100, 300)))
    held = compare(ref, same, NAMES)
    assert held.holds and held.verdict == "holds" and len(held.features) == 6 + 2 * 4
    dark = histograms(_images(rng, 200, brightness=0.25, start=100), _masks(rng, range(100, 300), score=0.6))
    drift = compare(ref, dark, NAMES)
    assert "brightness" in drift.drifted and "score[circle]" in drift.drifted and "contrast" not in drift.drifted
    assert drift.verdict.startswith("drifted: ")
    # too few masks of a class on a side: said, not tested
    few = compare(ref, histograms(_images(rng, 5, start=400), _masks(rng, range(400, 405))), NAMES)
    assert any("circle" in u for u in few.untested) and not any(f.name.startswith("score[") for f in few.features)


def test_reliability_is_a_monotone_probability_of_being_right():
    rng = np.random.default_rng(3)
    s = rng.random(2000)
    tp = rng.random(2000) < s  # right with probability = score
    curve = reliability(s, tp)
    y = np.interp([0.1, 0.5, 0.9], curve["x"], curve["y"])
    assert np.all(np.diff(curve["y"]) >= 0) and len(curve["x"]) <= 64
    assert np.allclose(y, [0.1, 0.5, 0.9], atol=0.08)


def test_a_mask_that_does_not_fill_its_box_counts_as_wrong_and_drift_sends_accepted_masks_to_review():
    masks = pa.table(
        {
            "annotation_id": pa.array([1, 2], pa.int64()),
            "image_id": pa.array([1, 1], pa.int64()),
            "category_id": pa.array([1, 1], pa.int32()),
            "score": pa.array([0.9, 0.9], pa.float32()),
            "predicted_iou": pa.array([0.9, 0.9], pa.float32()),
            "stability_score": pa.array([0.9, 0.9], pa.float32()),
            "bbox": pa.array([[10.0, 10.0, 40.0, 40.0], [10.0, 10.0, 6.0, 6.0]], pa.list_(pa.float64(), 4)),
            "prompt_box": pa.array([[10, 10, 50, 50], [10, 10, 50, 50]], pa.list_(pa.float32(), 4)),
            "area": pa.array([1600, 36], pa.int64()),
            "width": pa.array([100, 100], pa.int32()),
            "height": pa.array([100, 100], pa.int32()),
            "qc_verdict": pa.array([None, None], pa.string()),
            "qc_reasons": pa.array([None, None], pa.list_(pa.string())),
        }
    )
    assert box_agreement(masks) == pytest.approx([1.0, 36 / 1600])
    entry = {"category_id": 1, "threshold": 0.5, "review_threshold": 0.2, "model": None}
    cal = {"score": "detector", "classes": {"circle": entry}}
    cal["classes"]["circle"]["reliability"] = {"x": [0.0, 1.0], "y": [0.5, 0.95]}
    cal["classes"]["circle"]["mask_check"] = {"box_agreement_min": 0.6}
    out = apply_acceptance(masks, cal)
    assert out["verdict"].to_pylist() == ["accept", "accept"]
    assert correct_probability(out, cal).tolist() == pytest.approx([0.905, 0.0])
    drifted = apply_acceptance(masks, cal, drifted=True)
    assert drifted["verdict"].to_pylist() == ["review", "review"]
    assert all(r == ["drift"] for r in drifted["verdict_reasons"].to_pylist())
