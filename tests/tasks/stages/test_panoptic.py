"""The merge policy, the PNG formats and PQ / mIoU against hand-computed cases."""

import numpy as np
import pytest

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.panoptic import (
    MergePolicy,
    PanopticQuality,
    SemanticQuality,
    detections_to_map,
    evaluate_in_memory,
    merge,
    panoptic_png,
    read_panoptic_png,
    semantic_png,
    semantic_preview,
)


def rec(masks, classes, scores, isthing=None, **fields):
    masks = np.asarray(masks, bool)
    h, w = masks.shape[1:]
    ys = [np.nonzero(m.any(1))[0] for m in masks]
    xs = [np.nonzero(m.any(0))[0] for m in masks]
    boxes = [[x.min(), y.min(), x.max() + 1, y.max() + 1] for x, y in zip(xs, ys)]
    f = dict(fields)
    if isthing is not None:
        f["isthing"] = np.asarray(isthing, bool)
    return Detections((h, w), boxes, classes, scores, rle_counts=rle.encode_nhw(masks), fields=f)


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


H, W = 40, 60


@pytest.fixture()
def scene():
    """Two overlapping things (the lower-scoring one mostly hidden), a third thing, stuff covering everything."""
    things = rec(
        [box(H, W, 5, 25, 5, 25), box(H, W, 8, 24, 8, 24), box(H, W, 28, 38, 40, 58)], [1, 2, 1], [0.6, 0.9, 0.7]
    )
    stuff = rec([box(H, W, 0, 20, 0, W), box(H, W, 20, H, 0, W)], [4, 5], [0.95, 0.9], isthing=[False, False])
    return things, stuff


def test_merge_assigns_each_pixel_once_in_score_order(scene):
    things, stuff = scene
    out = merge(things, stuff, MergePolicy(min_area=1, overlap=0.2))
    masks = rle.decode_many(list(out.rle_counts), H, W)
    assert masks.sum(0).max() == 1 and masks.sum(0).min() == 1  # stuff fills every free pixel
    # things first by score (0.9, 0.7, 0.6), then stuff by score
    assert out.class_ids.tolist() == [2, 1, 1, 4, 5] and out.fields["isthing"].tolist() == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert out.fields["source_index"].tolist() == [1, 2, 0, 0, 1]
    assert masks[0].sum() == 16 * 16  # the 0.9 thing keeps all of its pixels
    assert masks[2].sum() == 20 * 20 - 16 * 16  # the 0.6 thing keeps only what is free


def test_merge_drops_hidden_things_and_tiny_fragments(scene):
    things, stuff = scene
    out = merge(things, stuff, MergePolicy(min_area=1, overlap=0.5))  # the 0.6 thing keeps 36% < 50%: dropped
    assert out.class_ids.tolist() == [2, 1, 4, 5]
    tiny = rec([box(H, W, 0, 2, 0, 2)], [3], [0.99])
    out = merge(tiny, stuff, MergePolicy(min_area=5))
    assert 3 not in out.class_ids.tolist()
    only_tiny_stuff = rec([box(H, W, 0, 2, 0, 2)], [4], [0.9], isthing=[False])
    out = merge(None, only_tiny_stuff, MergePolicy(min_area=5, things="panoptic"))
    assert len(out) == 0 and out.has_masks  # everything became void


def test_merge_never_uses_rejected_masks_and_flagged_only_on_request(scene):
    things, stuff = scene
    verdicts = np.array(["reject", "flag", "pass"], object)
    t = things.with_fields(qc_verdict=verdicts)
    assert merge(t, stuff, MergePolicy(min_area=1)).fields["source_index"].tolist()[:1] == [2]
    assert sorted(
        merge(t, stuff, MergePolicy(min_area=1, include_flagged=True)).fields["source_index"].tolist()[:2]
    ) == [1, 2]


def test_merge_with_things_from_the_panoptic_model():
    segs = rec([box(H, W, 5, 15, 5, 15), box(H, W, 0, H, 0, W)], [1, 4], [0.8, 0.9], isthing=[True, False])
    out = merge(None, segs, MergePolicy(things="panoptic", min_area=1))
    assert out.class_ids.tolist() == [1, 4] and set(out.fields["source"]) == {"panoptic"}
    assert rle.decode_many(list(out.rle_counts), H, W).sum(0).max() == 1


def test_panoptic_png_round_trip_and_id_encoding():
    ids = np.arange(12).reshape(3, 4) * 70_000  # needs all three channels
    data = panoptic_png(ids)
    np.testing.assert_array_equal(read_panoptic_png(data), ids)
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(data)))
    assert (rgb[..., 0] + 256 * rgb[..., 1].astype(int) + 65536 * rgb[..., 2].astype(int) == ids).all()
    with pytest.raises(ValueError):
        panoptic_png(np.array([[-1]]))


def test_semantic_png_bytes_are_category_ids():
    import io

    from PIL import Image

    m = np.array([[0, 4, 7], [255, 1, 2]])
    im = Image.open(io.BytesIO(semantic_png(m, [0] * 768)))
    assert im.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), m)


def test_semantic_preview_blends_class_colours_and_caps_the_side():
    import io

    from PIL import Image

    pixels = np.full((40, 60, 3), 100, np.uint8)
    m = np.zeros((40, 60), np.int64)
    m[:, 30:] = 2  # left void (the image as it is), right class 2 (red in this palette)
    pal = [0, 0, 0] * 2 + [255, 0, 0] + [0, 0, 0] * 253
    got = np.asarray(Image.open(io.BytesIO(semantic_preview(pixels, m, pal))), np.float64)
    assert got.shape == (40, 60, 3)
    np.testing.assert_allclose(got[5:35, 5:25].mean((0, 1)), [100, 100, 100], atol=3)
    np.testing.assert_allclose(got[5:35, 35:55].mean((0, 1)), [45 + 140, 45, 45], atol=3)
    assert got[20, 30].min() > 200  # the class border is white
    big = semantic_preview(np.zeros((3000, 1500, 3), np.uint8), np.ones((3000, 1500), np.int64), pal, max_side=512)
    assert Image.open(io.BytesIO(big)).size == (256, 512)
    with pytest.raises(ValueError, match=r"class map is \(60, 40\), image is \(40, 60\)"):
        semantic_preview(pixels, m.T, pal)


def test_pq_hand_computed():
    gt = np.zeros((10, 10), int)
    gt[:, :5] = 1  # class 1, 50 px
    gt[:, 5:] = 2  # class 2, 50 px
    pred = np.zeros((10, 10), int)
    pred[:, :4] = 1  # class 1, 40 px inside gt 1: IoU 0.8
    pred[:, 4:] = 2  # class 2 predicted, 60 px: IoU 50/60
    q = PanopticQuality({1: True, 2: False})
    q.add(gt, {1: 1, 2: 2}, pred, {1: 1, 2: 2})
    s = q.summary()
    assert s["per_class"]["1"]["pq"] == pytest.approx(0.8) and s["per_class"]["2"]["pq"] == pytest.approx(
        50 / 60, abs=1e-4
    )
    assert s["pq"] == pytest.approx((0.8 + 50 / 60) / 2, abs=1e-4)
    # wrong class: no match -> one FP and one FN for each
    q = PanopticQuality({1: True, 2: False, 3: True})
    q.add(gt, {1: 1, 2: 2}, pred, {1: 3, 2: 2})
    s = q.summary()
    assert s["per_class"]["1"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert s["per_class"]["3"]["fp"] == 1


def test_pq_ignores_predictions_on_void_and_void_pixels_of_predictions():
    gt = np.zeros((10, 10), int)
    gt[:, :5] = 1
    pred = np.zeros((10, 10), int)
    pred[:, :7] = 1  # 20 extra pixels on gt void: left out of the union
    pred[:, 8:] = 2  # entirely on void: ignored, not a false positive
    q = PanopticQuality({1: True})
    q.add(gt, {1: 1}, pred, {1: 1, 2: 1})
    s = q.summary()["per_class"]["1"]
    assert s["tp"] == 1 and s["fp"] == 0 and s["sq"] == pytest.approx(1.0)


def test_miou_and_negative_control():
    rng = np.random.default_rng(0)
    gt = rng.integers(1, 4, (20, 20))
    sem = SemanticQuality()
    sem.add(gt, gt)
    assert sem.summary()["miou"] == 1.0
    sem = SemanticQuality()
    sem.add(gt, np.roll(gt, 7, axis=1))
    assert sem.summary()["miou"] < 0.5


def test_evaluate_in_memory_perfect_vs_shifted(scene):
    things, stuff = scene
    out = merge(things, stuff, MergePolicy(min_area=1, overlap=0.2))
    ids, cats = detections_to_map(out)
    isthing = {1: True, 2: True, 4: False, 5: False}
    perfect = evaluate_in_memory([(ids, cats, ids, cats)], isthing)
    assert perfect["pq"] == 1.0 and perfect["miou"] == 1.0
    shifted = evaluate_in_memory([(ids, cats, np.roll(ids, 20, axis=1), cats)], isthing)
    assert shifted["pq"] < 0.5 * perfect["pq"]


def test_at_operating_point_leaves_out_things_not_exported_and_renumbers():
    """A thing whose mask is not exported leaves the map (its pixels void), stuff and other things keep their rows,
    ids run 1..n again per image; with every thing exported the committed table comes back untouched."""
    import pyarrow as pa

    from segflow.tasks.outputs.panoptic_export import at_operating_point

    pan = pa.table(
        {
            "image_id": [7, 7, 7, 8, 8],
            "segment_id": pa.array([1, 2, 3, 1, 2], pa.int32()),
            "category_id": [1, 2, 5, 1, 5],
            "annotation_id": pa.array([700001, 700002, None, 800001, None], pa.int64()),
        }
    )
    masks = pa.table({"annotation_id": [700001, 700002, 800001], "verdict": ["review", "accept", "accept"]})
    kept, left_out = at_operating_point(pan, masks, ("accept",))
    assert left_out == [700001]
    assert kept["annotation_id"].to_pylist() == [700002, None, 800001, None]
    assert kept["segment_id"].to_pylist() == [1, 2, 1, 2] and kept["category_id"].to_pylist() == [2, 5, 1, 5]
    same, none = at_operating_point(pan, masks, ("accept", "review"))
    assert same is pan and none == []
