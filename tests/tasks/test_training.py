"""Smoke tests of the training code: a few steps each, and the results load through the user-facing loaders."""

import numpy as np

from flows.config import SamStage, YoloStage
from tasks.models.sam import SamBoxSegmenter
from tasks.models.yolo import YoloDetector
from tasks.record import Detections
from tasks.training import DEMO_SAM_ARCH, train_detector, train_sam


def test_sam_training_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "sam.pt"
    result = train_sam(out, minutes=0.08, scenes=4, batch_images=2, log=lambda m: None)
    assert result["steps"] >= 1
    seg = SamBoxSegmenter(SamStage(kind="sam", weights=str(out), device="cpu", min_mask_area=0), str(out))
    assert seg.img_size == DEMO_SAM_ARCH["img_size"]
    logits, iou = seg.box_logits(np.zeros((90, 120, 3), np.uint8), np.array([[10, 10, 60, 50]], np.float32))
    assert logits.shape == (1, 90, 120) and iou.shape == (1,)


def test_detector_training_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "yolo.pt"
    result = train_detector(out, images=8, epochs=1, imgsz=64, size_range=(200, 240), log=lambda m: None)
    assert 0.0 <= result["box_map50_val"] <= 1.0
    det = YoloDetector(YoloStage(kind="yolo", weights=str(out), device="cpu", conf=0.0, imgsz=64), str(out), {1: "circle", 2: "square", 3: "triangle"})
    assert det.model_names == {0: "circle", 1: "square", 2: "triangle"}
    (dets,) = det.detect([np.zeros((80, 100, 3), np.uint8)])
    assert isinstance(dets, Detections) and dets.image_size == (80, 100)


def test_mask2former_training_lowers_the_loss_and_loads_through_the_adapter(tmp_path):
    from flows.config import Mask2FormerStage
    from tasks.models.mask2former import Mask2FormerPanoptic
    from tasks.synthetic import CATEGORIES
    from tasks.training import train_mask2former

    out = tmp_path / "m2f.pt"
    losses = []
    result = train_mask2former(out, minutes=0.25, scenes=6, batch_images=2, log=losses.append)
    assert result["steps"] >= 5
    ontology = {c["id"]: c["name"] for c in CATEGORIES}
    m = Mask2FormerPanoptic(Mask2FormerStage(kind="mask2former", weights=str(out), device="cpu"), str(out), ontology, {c["id"]: bool(c["isthing"]) for c in CATEGORIES})
    assert [m.model.config.id2label[i] for i in range(len(CATEGORIES))] == [c["name"] for c in CATEGORIES]  # labels map by name
    (segs,) = m.panoptic([np.zeros((70, 90, 3), np.uint8)])
    assert segs.image_size == (70, 90) and segs.has_masks


def test_yolo_seg_training_writes_a_loadable_instance_labeler(tmp_path):
    from flows.config import YoloSegStage
    from tasks.models.instances import YoloSegLabeler

    out = tmp_path / "yolo-seg.pt"
    result = train_detector(out, images=8, epochs=1, imgsz=64, size_range=(200, 240), segment=True, log=lambda m: None)
    assert 0.0 <= result["mask_map50_val"] <= 1.0
    lab = YoloSegLabeler(YoloSegStage(kind="yolo_seg", weights=str(out), device="cpu", conf=0.0, imgsz=64), str(out), {1: "circle", 2: "square", 3: "triangle"})
    (dets,) = lab.label([np.zeros((80, 100, 3), np.uint8)])
    assert isinstance(dets, Detections) and dets.image_size == (80, 100) and dets.has_masks
