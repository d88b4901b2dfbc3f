"""Smoke tests of the training code: a few steps each, and the results load through the user-facing loaders."""

from pathlib import Path

import numpy as np

from segflow.config import SamStage, YoloStage
from segflow.demo.synthetic import make_scene
from segflow.demo.training import DEMO_SAM_ARCH, _zoom_crop_sample, finetune_sam_zoom, train_detector, train_sam
from segflow.tasks.record import Detections
from segflow.tasks.stages.sam import SamBoxSegmenter
from segflow.tasks.stages.yolo import YoloDetector

ROOT = Path(__file__).resolve().parents[2]


def test_sam_training_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "sam.pt"
    result = train_sam(out, minutes=0.08, scenes=4, batch_images=2, log=lambda m: None)
    assert result["steps"] >= 1
    seg = SamBoxSegmenter(SamStage(kind="sam", weights=str(out), device="cpu", min_mask_area=0), str(out))
    assert seg.img_size == DEMO_SAM_ARCH["img_size"]
    logits, iou = seg.box_logits(np.zeros((90, 120, 3), np.uint8), np.array([[10, 10, 60, 50]], np.float32))
    assert logits.shape == (1, 90, 120) and iou.shape == (1,)


def test_zoom_crop_sample_frames_the_object_as_the_zoomed_stage_does():
    """The crop target is the prompted object's mask, aligned with the crop pixels and the box; another object's is
    not."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from segflow.tasks.stages.sam import zoom_windows_xyxy

    scene = make_scene(np.random.default_rng(3), 700, 500)
    assert len(scene.masks) >= 2
    transform = ResizeLongestSide(256)
    for k in range(len(scene.masks)):
        img, box, target = _zoom_crop_sample(
            np.random.default_rng(0), scene, k, 0.5, transform, 256, 64, box_noise=0.0, full_res_target=True
        )
        x0, y0, x1, y1 = (int(v) for v in zoom_windows_xyxy(np.asarray(scene.boxes[k])[None], (500, 700), 0.5)[0][0])
        scale = 256 / max(x1 - x0, y1 - y0)
        ih, iw = img.shape[:2]
        assert max(ih, iw) == 256 and target.shape == (256, 256)
        hard = target.numpy() > 0.5
        assert not hard[ih:].any() and not hard[:, iw:].any()  # nothing in the padding
        # the object's own pixels, resized the same way (nearest), agree with the target
        crop_mask = scene.masks[k][y0:y1, x0:x1]
        yy = np.minimum((np.arange(ih) + 0.5) / scale, crop_mask.shape[0] - 1).astype(int)
        xx = np.minimum((np.arange(iw) + 0.5) / scale, crop_mask.shape[1] - 1).astype(int)
        nearest = crop_mask[yy][:, xx]
        iou = (nearest & hard[:ih, :iw]).sum() / (nearest | hard[:ih, :iw]).sum()
        assert iou > 0.9, (k, iou)
        ys, xs = np.nonzero(hard)
        assert np.allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2.5), (k, box)
        # negative control: another object's mask, cut by the same window, does not match
        other = scene.masks[(k + 1) % len(scene.masks)][y0:y1, x0:x1][yy][:, xx]
        assert (other & hard[:ih, :iw]).sum() / max((other | hard[:ih, :iw]).sum(), 1) < 0.5


def test_zoom_fine_tune_changes_the_weights_and_keeps_the_checkpoint_loadable(tmp_path):
    import torch

    init, out = tmp_path / "sam.pt", tmp_path / "sam-zoom.pt"
    train_sam(init, minutes=0.02, scenes=3, batch_images=2, log=lambda m: None)
    result = finetune_sam_zoom(init, out, minutes=0.1, scenes=3, crops_per_step=2, log=lambda m: None)
    assert result["steps"] >= 1
    before, after = (torch.load(p, weights_only=True)["state_dict"] for p in (init, out))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    seg = SamBoxSegmenter(
        SamStage(kind="sam", weights=str(out), device="cpu", min_mask_area=0, zoom_context=0.5), str(out)
    )
    logits, iou = seg.box_logits(np.zeros((300, 400, 3), np.uint8), np.array([[10, 10, 60, 50]], np.float32))
    assert logits.shape == (1, 300, 400) and iou.shape == (1,)


def test_detector_training_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "yolo.pt"
    result = train_detector(out, images=8, epochs=1, imgsz=64, size_range=(200, 240), log=lambda m: None)
    assert 0.0 <= result["box_map50_val"] <= 1.0
    det = YoloDetector(
        YoloStage(kind="yolo", weights=str(out), device="cpu", conf=0.0, imgsz=64),
        str(out),
        {1: "circle", 2: "square", 3: "triangle"},
    )
    assert det.model_names == {0: "circle", 1: "square", 2: "triangle"}
    (dets,) = det.detect([np.zeros((80, 100, 3), np.uint8)])
    assert isinstance(dets, Detections) and dets.image_size == (80, 100)


def test_detector_fine_tune_starts_from_every_weight_of_its_init(tmp_path):
    """A continued training (``init``) begins at the given checkpoint, its 3-class head included: with a learning rate
    of ~0 every weight comes back as it went in (batch-norm statistics aside), far closer than a fresh model's."""
    from segflow.tasks.io.weights import load_checkpoint

    init = ROOT / "configs" / "models" / "demo-yolo.pt"
    out = tmp_path / "ft.pt"
    train_detector(out, images=8, epochs=1, imgsz=64, size_range=(200, 240), init=init, lr0=1e-12, log=lambda m: None)
    before, after = (load_checkpoint(str(p))["state_dict"] for p in (init, out))
    weights = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(".cv3." in k for k in weights)  # the class head is among them
    diff = max(float((before[k].float() - after[k].float()).abs().max()) for k in weights)
    assert diff < 1e-2, diff
    # negative control: the weights of a freshly built model of the same architecture are far from the init
    from segflow.tasks.stages.yolo import load_yolo

    fresh = load_yolo("yolo11n.yaml").model.state_dict()
    same = [k for k in weights if k in fresh and fresh[k].shape == before[k].shape]  # (its head has 80 classes)
    assert max(float((before[k].float() - fresh[k].float()).abs().max()) for k in same) > 0.1


def test_mask2former_training_lowers_the_loss_and_loads_through_the_adapter(tmp_path):
    from segflow.config import Mask2FormerStage
    from segflow.demo.synthetic import CATEGORIES
    from segflow.demo.training import train_mask2former
    from segflow.tasks.stages.mask2former import Mask2FormerPanoptic

    out = tmp_path / "m2f.pt"
    losses = []
    result = train_mask2former(out, minutes=0.25, scenes=6, batch_images=2, log=losses.append)
    assert result["steps"] >= 5
    ontology = {c["id"]: c["name"] for c in CATEGORIES}
    m = Mask2FormerPanoptic(
        Mask2FormerStage(kind="mask2former", weights=str(out), device="cpu"),
        str(out),
        ontology,
        {c["id"]: bool(c["isthing"]) for c in CATEGORIES},
    )
    assert [m.model.config.id2label[i] for i in range(len(CATEGORIES))] == [
        c["name"] for c in CATEGORIES
    ]  # labels map by name
    (segs,) = m.panoptic([np.zeros((70, 90, 3), np.uint8)])
    assert segs.image_size == (70, 90) and segs.has_masks


def test_yolo_seg_training_writes_a_loadable_instance_labeler(tmp_path):
    from segflow.config import YoloSegStage
    from segflow.tasks.stages.instances import YoloSegLabeler

    out = tmp_path / "yolo-seg.pt"
    result = train_detector(out, images=8, epochs=1, imgsz=64, size_range=(200, 240), segment=True, log=lambda m: None)
    assert 0.0 <= result["mask_map50_val"] <= 1.0
    lab = YoloSegLabeler(
        YoloSegStage(kind="yolo_seg", weights=str(out), device="cpu", conf=0.0, imgsz=64),
        str(out),
        {1: "circle", 2: "square", 3: "triangle"},
    )
    (dets,) = lab.label([np.zeros((80, 100, 3), np.uint8)])
    assert isinstance(dets, Detections) and dets.image_size == (80, 100) and dets.has_masks


def test_video_detector_labels_are_the_boxes_of_the_visible_objects(tmp_path):
    """The video detector's training frames: one label line per object the video demo's truth labels in that frame,
    its box the visible part's extent (what the demo scores against); objects hidden past MIN_VISIBLE have none."""
    from PIL import Image

    from segflow.demo.synthetic import THING_CLASSES
    from segflow.demo.training import _yolo_video_split
    from segflow.demo.video import make_video

    _yolo_video_split(tmp_path, "train", 3, seed=5, every=6, frames=12)
    rng = np.random.default_rng(5)  # the same draws as the writer: the video, then the first frame taken
    truth = make_video(rng, 12, things=int(rng.integers(4, 7)))
    start = int(rng.integers(6))
    for k, t in enumerate(range(start, 12, 6)):
        img = np.asarray(Image.open(tmp_path / "images" / "train" / f"frame-{k:05d}.png"))
        assert np.abs(img.astype(int) - truth.frames[t]).max() == 0  # lossless, RGB
        lines = (tmp_path / "labels" / "train" / f"frame-{k:05d}.txt").read_text().split()
        got = sorted(tuple(round(float(v), 4) for v in lines[i : i + 5]) for i in range(0, len(lines), 5))
        want = []
        for tid, m in truth.masks[t].items():
            ys, xs = np.nonzero(m)
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            cls = THING_CLASSES.index(truth.classes[tid - 1])
            want.append((cls, (x0 + x1) / 2 / 320, (y0 + y1) / 2 / 240, (x1 - x0) / 320, (y1 - y0) / 240))
        assert got == sorted(tuple(round(float(v), 4) for v in w) for w in want)
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3
