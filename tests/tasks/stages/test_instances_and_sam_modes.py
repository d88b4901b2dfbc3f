"""Direct instance labelers (YOLO-seg, Mask R-CNN) and SAM beyond boxes (points, multimask, automatic mode)."""

import numpy as np
import pytest
from segment_anything import SamPredictor

from segflow.config import MaskRcnnStage, SamAutoStage, SamStage, YoloSegStage, load_config
from segflow.demo.synthetic import make_scene
from segflow.tasks.record import Detections
from segflow.tasks.stages.cache import get_model
from segflow.tasks.stages.qc import box_iou_xyxy
from segflow.tasks.stages.sam import SamBoxSegmenter
from segflow.tasks.stages.sam_checkpoint import load_sam

ONTOLOGY = {1: "circle", 2: "square", 3: "triangle"}


def masks_inside_boxes(dets, slack=2.0):
    """Each row's mask lies inside its own box: rows and masks stayed aligned, in the right frame."""
    if not len(dets):
        return True
    xywh = dets.mask_bboxes_xywh()
    mb = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    b = dets.boxes
    return bool(((mb[:, :2] >= b[:, :2] - slack) & (mb[:, 2:] <= b[:, 2:] + slack)).all())


@pytest.mark.parametrize("kind", ["yolo_seg", "maskrcnn"])
def test_direct_labelers_keep_rows_and_masks_together_on_non_square_images(kind, tiny_models, rng):
    stage = (
        YoloSegStage(kind="yolo_seg", weights=str(tiny_models["yolo"]), device="cpu", conf=0.0, imgsz=160, max_det=8)
        if kind == "yolo_seg"
        else MaskRcnnStage(kind="maskrcnn", weights=str(tiny_models["maskrcnn"]), device="cpu", conf=0.0, max_det=8)
    )
    labeler = get_model(stage, ONTOLOGY).adapter
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(120, 260, 3), (250, 90, 3)]]
    out = labeler.label(images)
    assert sum(len(d) for d in out) > 0
    for im, dets in zip(images, out):
        assert dets.image_size == im.shape[:2] and dets.has_masks
        assert set(dets.class_ids.tolist()) <= set(ONTOLOGY)
        assert masks_inside_boxes(dets), kind


def test_yolo_seg_needs_a_segmentation_checkpoint(tmp_path):
    from segflow.tasks.io.weights import WeightsError
    from tests.support.tiny import make_tiny_yolo

    det_only = make_tiny_yolo(tmp_path / "det.pt", list(ONTOLOGY.values()), cfg="yolo11n.yaml")
    with pytest.raises(WeightsError, match="needs a segmentation checkpoint"):
        get_model(YoloSegStage(kind="yolo_seg", weights=str(det_only), device="cpu"), ONTOLOGY)


def _demo_sam_weights():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    return (
        load_config(root / "configs" / "demo.yaml", overrides={"source": str(root), "output": "/tmp/unused"})
        .stages["masks"]
        .weights
    )


def test_point_prompts_and_multimask_match_the_reference_predictor():
    """Box centres as points, and multimask with the best candidate kept, equal SamPredictor.predict."""
    weights = _demo_sam_weights()
    rng = np.random.default_rng(11)
    scene = make_scene(rng, 300, 200)
    boxes = np.asarray(scene.boxes, np.float32)
    prompts = Detections(scene.pixels.shape[:2], boxes, np.ones(len(boxes)), np.ones(len(boxes)))
    predictor = None
    for prompt, multimask in (("point", False), ("box", True), ("box+point", True)):
        seg = SamBoxSegmenter(
            SamStage(
                kind="sam", weights=weights, device="cpu", prompt=prompt, multimask_output=multimask, mask_margin=None
            ),
            weights,
        )
        logits, iou = seg.box_logits(scene.pixels, boxes)
        if multimask:
            out = seg.segment([scene.pixels], [prompts])[0]
            cand = out.fields["multimask_ious"]
            assert cand.shape == (len(out), 3)
            np.testing.assert_allclose(out.fields["predicted_iou"], cand.max(1), atol=1e-6)
        predictor = predictor or SamPredictor(load_sam(weights))  # the library as loaded: eager attention and decoder
        predictor.set_image(scene.pixels)
        for i, b in enumerate(boxes):
            centre = ((b[:2] + b[2:]) / 2)[None]
            ref_logits, ref_iou, _ = predictor.predict(
                point_coords=centre if "point" in prompt else None,
                point_labels=np.array([1]) if "point" in prompt else None,
                box=b if "box" in prompt else None,
                multimask_output=multimask,
                return_logits=True,
            )
            best = int(np.argmax(ref_iou))
            assert abs(float(iou[i]) - float(ref_iou[best])) < 1e-4, (prompt, i)
            assert ((ref_logits[best] > 0) ^ (logits[i] > 0)).sum() <= 0.001 * ref_logits[best].size, (prompt, i)


def test_automatic_mode_filters_drop_what_they_should(tiny_models, tmp_path):
    """Thresholds set inside the observed score range: what is kept meets every filter, and something was dropped.
    (A random SAM with its IoU head shifted to spread predicted IoUs over [0, 1].)"""
    import torch

    from segflow.tasks.stages.sam_checkpoint import load_sam

    ckpt = torch.load(tiny_models["sam"], weights_only=True)
    ckpt["state_dict"]["mask_decoder.iou_prediction_head.layers.2.bias"] += 0.5
    weights = tmp_path / "sam-shifted.pt"
    torch.save(ckpt, weights)
    load_sam(str(weights))  # loads through the normal path
    scene = make_scene(np.random.default_rng(12), 320, 240)
    onto = {1: "circle", 9: "object"}

    def run(**kw):
        stage = SamAutoStage(kind="sam_auto", weights=str(weights), device="cpu", points_per_side=8, **kw)
        return get_model(stage, onto).adapter.label([scene.pixels])[0]

    everything = run(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    assert len(everything) > 10
    iou_t = float(np.clip(np.median(everything.fields["predicted_iou"]), 0.01, 0.99))
    stab_t = float(np.clip(np.quantile(everything.fields["stability_score"], 0.25), 0.0, 0.99))
    kept = run(pred_iou_thresh=iou_t, stability_score_thresh=stab_t, box_nms_thresh=0.7)
    assert 0 < len(kept) < len(everything)
    assert set(kept.class_ids.tolist()) == {9}  # every mask is the configured category
    assert (kept.fields["predicted_iou"] > iou_t).all() and (kept.fields["stability_score"] >= stab_t).all()
    b = kept.boxes.astype(np.float64)
    for i in range(len(b)):  # box NMS: no two kept boxes overlap more than 0.7
        others = np.delete(b, i, axis=0)
        if len(others):
            assert box_iou_xyxy(np.repeat(b[i : i + 1], len(others), 0), others).max() <= 0.7 + 1e-6
    xywh = kept.mask_bboxes_xywh()  # boxes are the masks' own extents, in the image frame
    np.testing.assert_allclose(kept.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), atol=1.0)
