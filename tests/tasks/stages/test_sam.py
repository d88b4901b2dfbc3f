"""The batched SAM path against the reference SamPredictor, box by box, same weights."""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from segflow.config import SamStage
from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError
from segflow.tasks.record import Detections
from segflow.tasks.stages.sam import SamBoxSegmenter
from segflow.tasks.stages.sam_checkpoint import build_sam, load_sam


def stage(**kw):
    return SamStage(kind="sam", weights="unused", device="cpu", **kw)


@pytest.fixture(scope="module")
def segmenter(tiny_models):
    return SamBoxSegmenter(
        stage(boxes_per_call=3, min_mask_area=0, mask_margin=None), str(tiny_models["sam"])
    )  # whole-frame masks, as SamPredictor


def test_batched_equals_per_box_predictor_on_non_square_image(segmenter, tiny_models, rng):
    image = rng.integers(0, 256, (213, 377, 3), dtype=np.uint8)  # landscape, odd sizes
    boxes = np.array(
        [[5, 7, 120, 90], [100, 50, 370, 210], [0, 0, 377, 213], [300, 20, 360, 80], [40, 150, 90, 200]], np.float32
    )
    logits, iou = segmenter.box_logits(image, boxes)  # 5 boxes in 2 decoder calls (boxes_per_call=3)

    predictor = SamPredictor(
        load_sam(str(tiny_models["sam"]))
    )  # the library's model as loaded, eager attention and decoder
    predictor.set_image(image)
    for k, box in enumerate(boxes):
        ref, ref_iou, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
        assert ref.shape == (1, 213, 377)
        np.testing.assert_allclose(logits[k], ref[0], atol=1e-4)
        np.testing.assert_allclose(iou[k], ref_iou[0], atol=1e-4)
        ours_mask, ref_mask = logits[k] > 0, ref[0] > 0
        differ = ours_mask != ref_mask
        assert not differ.any() or np.abs(ref[0][differ]).max() < 1e-3


def test_segment_returns_rle_of_the_thresholded_logits(segmenter, rng):
    images = [rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), rng.integers(0, 256, (64, 200, 3), dtype=np.uint8)]
    prompts = [
        Detections((120, 90), [[0, 0, 60, 100], [10, 20, 80, 110]], [1, 2], [0.9, 0.8]),
        Detections.empty((64, 200)),
    ]
    out = segmenter.segment(images, prompts)
    assert len(out[1]) == 0 and out[1].has_masks
    logits, iou = segmenter.box_logits(images[0], prompts[0].boxes)
    expected = logits > 0
    keep = expected.reshape(2, -1).sum(1) > 0
    assert len(out[0]) == int(keep.sum())
    np.testing.assert_array_equal(rle.decode_many(list(out[0].rle_counts), 120, 90), expected[keep])
    np.testing.assert_array_equal(out[0].class_ids, prompts[0].class_ids[keep])  # classes stay with their masks
    np.testing.assert_allclose(out[0].fields["predicted_iou"], iou[keep], atol=1e-6)
    assert ((out[0].fields["stability_score"] >= 0) & (out[0].fields["stability_score"] <= 1)).all()


def test_chunk_size_does_not_change_results(tiny_models, rng):
    image = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    boxes = rng.uniform(0, 90, (7, 2)).repeat(2, axis=1)[:, [0, 2, 1, 3]] + np.array([0, 0, 50, 40])
    a = SamBoxSegmenter(stage(boxes_per_call=1), str(tiny_models["sam"])).box_logits(image, boxes)[0]
    b = SamBoxSegmenter(stage(boxes_per_call=64), str(tiny_models["sam"])).box_logits(image, boxes)[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_plain_state_dict_needs_known_architecture(tmp_path):
    torch.manual_seed(0)
    sam = build_sam(
        {
            "encoder_embed_dim": 64,
            "encoder_depth": 1,
            "encoder_num_heads": 2,
            "encoder_global_attn_indexes": [0],
            "img_size": 128,
            "prompt_embed_dim": 32,
            "decoder_mlp_dim": 64,
            "decoder_num_heads": 2,
            "iou_head_hidden_dim": 32,
            "window_size": 4,
        }
    )
    path = tmp_path / "plain.pth"
    torch.save(sam.state_dict(), path)
    with pytest.raises(WeightsError, match="cannot infer SAM model type from encoder width 64"):
        load_sam(str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a module object, not tensors
    with pytest.raises(WeightsError, match="refusing to load"):
        load_sam(str(path))


def test_remove_small_islands_keeps_the_main_piece():
    from segflow.tasks.stages.sam import remove_small_islands

    m = np.zeros((2, 40, 30), bool)
    m[0, 5:25, 5:20] = True  # main piece, 300 px
    m[0, 30:33, 25:28] = True  # 9 px speck: < 10%
    m[0, 30:37, 0:5] = True  # 35 px piece: >= 10%, kept
    m[1, 0:10, 0:10] = True
    out = remove_small_islands(m, 0.1)
    assert out[0, 5:25, 5:20].all() and not out[0, 30:33, 25:28].any() and out[0, 30:37, 0:5].all()
    np.testing.assert_array_equal(out[1], m[1])
    assert out.flags.c_contiguous and out.shape == m.shape


def test_remove_small_islands_equals_labelling_the_whole_frame():
    """Labelling inside each mask's bounding box gives what labelling the whole frame gives."""
    from scipy import ndimage

    from segflow.tasks.stages.sam import remove_small_islands

    def whole_frame(masks, frac):  # the plain algorithm, every mask over the full frame
        out = masks.copy()
        for i in range(len(out)):
            lab, n = ndimage.label(out[i], structure=np.ones((3, 3), bool))
            if n > 1:
                areas = ndimage.sum_labels(out[i], lab, range(1, n + 1))
                out[i] = np.isin(lab, 1 + np.flatnonzero(areas >= frac * areas.max()))
        return out

    rng = np.random.default_rng(5)
    m = np.zeros((6, 90, 70), bool)
    for i in range(5):  # blobs and specks in a corner of the frame each
        y, x = rng.integers(0, 50), rng.integers(0, 30)
        m[i, y : y + 40, x : x + 40] = rng.random((40, 40)) < 0.55
    m[5, 89, 69] = True  # one pixel in the far corner; and see below for an empty mask
    m = np.concatenate([m, np.zeros((1, 90, 70), bool)])
    out = remove_small_islands(m, 0.3)
    np.testing.assert_array_equal(out, whole_frame(m, 0.3))
    assert out[:5].sum() < m[:5].sum()  # pieces were removed: the comparison is not of two no-ops


def test_thresholding_inside_the_bounds_equals_the_whole_frame():
    """Stability scores and masks computed inside each mask's bounds = over the whole frame (logits -20 outside)."""
    import torch
    from segment_anything.utils.amg import calculate_stability_score

    from segflow.tasks.stages.sam import SamBoxSegmenter

    gen = torch.Generator().manual_seed(3)
    n, w, h = 4, 50, 40
    bounds = np.array([[5, 30, 2, 20], [0, 50, 0, 40], [44, 50, 30, 40], [10, 10, 5, 25]])  # the last one is empty
    logits = torch.full((n, w, h), -20.0)
    for k, (x0, x1, y0, y1) in enumerate(bounds):
        logits[k, x0:x1, y0:y1] = torch.randn(x1 - x0, y1 - y0, generator=gen) * 3
    stability, masks = SamBoxSegmenter._threshold(logits, bounds, 0.0)
    np.testing.assert_array_equal(masks, (logits > 0).numpy())
    np.testing.assert_allclose(stability, calculate_stability_score(logits, 0.0, 1.0).numpy(), equal_nan=True)
    assert np.isnan(stability[3]) and masks[:3].any(axis=(1, 2)).all()
    # negative control: bounds one pixel short lose mask pixels
    _, short = SamBoxSegmenter._threshold(logits, bounds - np.array([0, 1, 0, 0]), 0.0)
    assert (short != masks).any()


def test_zoom_windows_are_square_inside_the_image_and_snap_to_the_grid():
    from segflow.tasks.stages.sam import zoom_windows_xyxy

    boxes = np.array(
        [[100, 60, 130, 80], [0, 0, 20, 30], [580, 380, 600, 400], [0, 0, 500, 90], [101.4, 60.6, 130.3, 80.2]]
    )
    windows, zoom = zoom_windows_xyxy(boxes, (400, 600), context=1.0)
    assert zoom.tolist() == [True, True, True, False, True]
    side = windows[:, 2:] - windows[:, :2]
    assert (side[:, 0] == side[:, 1])[:3].all()  # square where the image allows
    assert (windows[:, :2] >= 0).all() and (windows[:, 2] <= 600).all() and (windows[:, 3] <= 400).all()
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert (side[:3, 0] >= 3 * longer[:3]).all()  # at least 3 x the longer box side
    bx = boxes[:3]
    assert ((windows[:3, :2] <= bx[:, :2]) & (windows[:3, 2:] >= bx[:, 2:])).all()  # the box lies in its window
    np.testing.assert_array_equal(windows[4], windows[0])  # a box moved by under a pixel keeps its window
    assert windows[0, 0] % 16 == 0 and windows[0, 1] % 16 == 0


def test_zoomed_boxes_are_segmented_in_their_crop(tiny_models, rng):
    """With zoom_context a small box's logits are those of its crop, pasted at the window; big boxes are unchanged."""
    from segflow.tasks.stages.sam import zoom_windows_xyxy

    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    boxes = np.array([[40, 50, 80, 90], [10, 10, 490, 290]], np.float32)
    zoomed = SamBoxSegmenter(stage(zoom_context=1.0), str(tiny_models["sam"]))
    plain = SamBoxSegmenter(stage(), str(tiny_models["sam"]))
    logits, iou = zoomed.box_logits(image, boxes)
    (x0, y0, x1, y1), _ = zoom_windows_xyxy(boxes, (300, 500), 1.0)[0]
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    ref, ref_iou = plain.box_logits(crop, boxes[:1] - np.array([x0, y0, x0, y0], np.float32))
    np.testing.assert_allclose(logits[0, y0:y1, x0:x1], ref[0], atol=1e-4)
    np.testing.assert_allclose(iou[0], ref_iou[0], atol=1e-5)
    outside = np.ones((300, 500), bool)
    outside[y0:y1, x0:x1] = False
    assert (logits[0][outside] < 0).all()  # nothing outside the window
    big, big_iou = plain.box_logits(image, boxes[1:])
    np.testing.assert_allclose(logits[1], big[0], atol=1e-4)


def _encoder_batches(segmenter):
    """The batch size of every image-encoder call of ``segmenter`` (a forward hook, appended to the returned list)."""
    seen = []
    segmenter.model.image_encoder.register_forward_hook(lambda mod, args, out: seen.append(int(args[0].shape[0])))
    return seen


def test_zoom_crops_of_a_batch_are_encoded_together_with_the_per_image_result(tiny_models, rng):
    """Zoomed boxes' crops go through the encoder ``batch_size`` at a time across a batch's images, and an image
    whose boxes are all zoomed is not encoded whole; the masks and scores are those of one image at a time. Negative
    control: an image with a large box is encoded whole (once, alone)."""
    images = [rng.integers(0, 256, (120 + 10 * k, 200, 3), dtype=np.uint8) for k in range(3)]
    small = [[10, 10, 40, 45], [120, 60, 150, 100], [60, 70, 95, 110]]
    prompts = [Detections(im.shape[:2], small[: 3 - k], [1, 2, 3][: 3 - k], [0.9, 0.8, 0.7][: 3 - k]) for k, im in
               enumerate(images)]  # fmt: skip
    together = SamBoxSegmenter(stage(min_mask_area=0, zoom_context=0.25, batch_size=4), str(tiny_models["sam"]))
    alone = SamBoxSegmenter(stage(min_mask_area=0, zoom_context=0.25, batch_size=1), str(tiny_models["sam"]))
    calls = _encoder_batches(together)
    a = together.segment(images, prompts)
    assert calls == [4, 2]  # six crops of three images in two calls; no whole-image encoding
    b = [alone.segment([im], [p])[0] for im, p in zip(images, prompts)]
    for x, y in zip(a, b):
        assert len(x) == len(y) > 0
        masks_x, masks_y = (rle.decode_many(list(d.rle_counts), *d.image_size) for d in (x, y))
        assert (masks_x != masks_y).sum() <= 2  # float rounding of the batched encoder may flip a pixel on the edge
        for f in x.fields:
            np.testing.assert_allclose(x.fields[f], y.fields[f], atol=1e-4)
    calls.clear()
    big = Detections(images[0].shape[:2], [[0, 0, 200, 120], *small], [1, 1, 2, 3], [0.9, 0.9, 0.8, 0.7])
    together.segment(images, [big, *prompts[1:]])
    assert calls == [1, 4, 2]  # the first image whole, then the six crops: its three and the others' three


def test_mask_margin_keeps_sam_logits_inside_the_window(tiny_models, rng):
    """``mask_margin``: inside each box's window the logits are the whole-frame ones; outside they are background (-20);
    the window holds the box grown by the margin. The random model's masks do spill outside (the clipping is real)."""
    image = rng.integers(0, 256, (213, 377, 3), dtype=np.uint8)
    boxes = np.array(
        [[5, 7, 60, 50], [100, 50, 370, 210], [300, 20, 330, 80], [40, 150, 90, 200], [0, 0, 377, 213]], np.float32
    )
    full, iou_full = SamBoxSegmenter(stage(mask_margin=None, boxes_per_call=2), str(tiny_models["sam"])).box_logits(
        image, boxes
    )
    win, iou_win = SamBoxSegmenter(stage(mask_margin=0.5, boxes_per_call=2), str(tiny_models["sam"])).box_logits(
        image, boxes
    )
    np.testing.assert_allclose(iou_win, iou_full, atol=1e-5)
    inside = win != -20
    np.testing.assert_allclose(win[inside], full[inside], atol=1e-4)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        g = 0.5 * max(x1 - x0, y1 - y0)
        ys, xs = slice(int(max(y0 - g, 0)), int(min(y1 + g, 213))), slice(int(max(x0 - g, 0)), int(min(x1 + g, 377)))
        assert inside[k][ys, xs].all(), k
    assert inside[4].all()  # the whole-image box: its window is the image
    assert not inside[0].all() and ((full > 0) & ~inside).any()


def test_mask_margin_segment_matches_its_logits(tiny_models, rng):
    """The stage's masks with a margin are its thresholded (windowed) logits, also with multimask candidates."""
    image = rng.integers(0, 256, (150, 220, 3), dtype=np.uint8)
    prompts = Detections(
        (150, 220), [[10, 10, 60, 70], [100, 40, 200, 140], [5, 90, 40, 145]], [1, 2, 3], [0.9, 0.8, 0.7]
    )
    for multimask in (False, True):
        seg = SamBoxSegmenter(
            stage(mask_margin=0.25, min_mask_area=0, multimask_output=multimask), str(tiny_models["sam"])
        )
        out = seg.segment([image], [prompts])[0]
        logits, iou = seg.box_logits(image, prompts.boxes)
        keep = (logits > 0).reshape(3, -1).any(1)
        np.testing.assert_array_equal(rle.decode_many(list(out.rle_counts), 150, 220), (logits > 0)[keep])
        np.testing.assert_allclose(out.fields["predicted_iou"], iou[keep], atol=1e-6)


def test_default_mask_margin_only_removes_spill_on_the_trained_demo_sam():
    """Against ground truth, on held-out synthetic scenes with their true boxes: the default margin never adds a pixel,
    does not lower mean mask IoU (what it cuts is spill far outside the box), and with the demo job's zoom it changes
    nothing."""
    from pathlib import Path

    from segflow.config import load_config
    from segflow.demo.synthetic import make_scene

    root = Path(__file__).resolve().parents[3]
    masks_stage = load_config(
        root / "configs" / "demo.yaml", overrides={"source": str(root), "output": "/tmp/unused"}
    ).stages["masks"]
    w = masks_stage.weights
    assert SamStage.model_fields["mask_margin"].default == 0.5
    for zoom in (None, masks_stage.zoom_context):
        whole = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", mask_margin=None, zoom_context=zoom), w)
        windowed = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", zoom_context=zoom), w)
        rng = np.random.default_rng(5)
        iou_whole, iou_windowed, cut = [], [], 0
        for i in range(8):
            s = make_scene(rng, *[(320, 240), (400, 300), (256, 256), (500, 200)][i % 4])
            a, b = (
                whole.box_logits(s.pixels, np.asarray(s.boxes))[0] > 0,
                windowed.box_logits(s.pixels, np.asarray(s.boxes))[0] > 0,
            )
            assert not (b & ~a).any()
            cut += int((a & ~b).sum())
            for x, y, g in zip(a, b, np.asarray(s.masks, bool)):
                iou_whole.append((x & g).sum() / max((x | g).sum(), 1))
                iou_windowed.append((y & g).sum() / max((y | g).sum(), 1))
        print(
            f"zoom {zoom}: mean GT IoU whole frame {np.mean(iou_whole):.3f}, with margin "
            f"{np.mean(iou_windowed):.3f}, {cut} pixels cut"
        )
        if zoom is None:
            assert cut > 0 and np.mean(iou_windowed) >= np.mean(iou_whole)
        else:
            assert cut == 0 and iou_windowed == iou_whole


@pytest.mark.parametrize(
    "kw",
    [{}, {"mask_margin": None, "multimask_output": True, "min_island_frac": 0.2}],
    ids=["defaults", "whole-frame-multimask-islands"],
)
def test_many_boxes_are_decoded_in_parts_with_the_same_result(tiny_models, rng, kw):
    """An image's boxes in parts whose full-frame logits fit ``logits_bytes``: the same rows, masks and scores as in
    one piece."""
    image = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    xy = rng.uniform(0, 80, (9, 2))
    prompts = Detections(
        (90, 140),
        np.concatenate([xy, xy + rng.uniform(8, 50, (9, 2))], 1).clip(0, [140, 90, 140, 90]),
        np.arange(9) % 3 + 1,
        np.linspace(0.9, 0.1, 9),
    )
    whole = SamBoxSegmenter(stage(min_mask_area=0, **kw), str(tiny_models["sam"]))
    parts = SamBoxSegmenter(stage(min_mask_area=0, **kw), str(tiny_models["sam"]))
    parts.logits_bytes = 2 * 4 * 90 * 140 + 1  # two boxes a part: 5 parts, the last one short
    a, b = whole.segment([image], [prompts])[0], parts.segment([image], [prompts])[0]
    assert len(a) == len(b) > 0
    assert list(a.rle_counts) == list(b.rle_counts)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    for f in a.fields:
        np.testing.assert_allclose(a.fields[f], b.fields[f], atol=1e-6)


def test_resize_matrices_are_kept_for_the_64_last_image_sizes(tiny_models):
    """A job over many image sizes does not grow the per-size upsampling cache without bound."""
    seg = SamBoxSegmenter(stage(), str(tiny_models["sam"]))
    first = seg._resize_matrix(200, 300)[0].clone()
    for n in range(100, 170):
        seg._resize_matrix(200, n)
    assert len(seg._resize_cache) == 64 and (200, 169) in seg._resize_cache and (200, 300) not in seg._resize_cache
    assert torch.equal(seg._resize_matrix(200, 300)[0], first)  # recomputed when needed again, the same
