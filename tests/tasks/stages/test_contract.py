"""One contract every registered adapter passes, loaded through the model cache from tiny offline weights."""

import numpy as np
import pytest

from segflow.config import (
    Mask2FormerStage,
    MaskRcnnStage,
    OwlStage,
    PanopticMergeStage,
    QcStage,
    Sam2Stage,
    Sam3Stage,
    SamAutoStage,
    SamStage,
    SemanticStage,
    YoloSegStage,
    YoloStage,
)
from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.cache import get_model
from segflow.tasks.stages.registry import ADAPTERS, MissingDependencyError, adapter_class

ONTOLOGY = {1: "square", 2: "circle", 3: "triangle"}


def stage_for(kind, tiny_models):
    if kind == "yolo":
        return YoloStage(
            kind="yolo", weights=str(tiny_models["yolo"]), device="cpu", conf=0.0, imgsz=160, max_det=6, batch_size=2
        )
    if kind == "sam":
        return SamStage(
            kind="sam",
            weights=str(tiny_models["sam"]),
            device="cpu",
            needs=["detector"],
            batch_size=2,
            boxes_per_call=4,
        )
    if kind == "sam2":
        return Sam2Stage(
            kind="sam2", weights=str(tiny_models["sam2"]), device="cpu", needs=["detector"], boxes_per_call=1
        )
    if kind == "sam3":  # random weights: scores near 0.25, so a low threshold keeps instances
        return Sam3Stage(kind="sam3", weights=str(tiny_models["sam3"]), device="cpu", conf=0.0, batch_size=2)
    if kind == "qc":
        return QcStage(kind="qc", needs=["masks"])
    if kind == "track":
        from segflow.tasks.stages.settings.track import TrackStage

        return TrackStage(kind="track", needs=["masks"])
    if kind == "sam2_video":  # a clip of these frames; random weights: every box prompts, tracks never end
        from segflow.tasks.stages.settings.sam2_video import Sam2VideoStage

        return Sam2VideoStage(
            kind="sam2_video",
            weights=str(tiny_models["sam2_video"]),
            device="cpu",
            needs=["detector"],
            prompt_score=0.0,
            end_after=100,
        )
    if kind in ("owlv2", "owlvit", "grounding_dino"):  # random weights: scores near 0.5, so a low threshold keeps boxes
        return OwlStage(kind=kind, weights=str(tiny_models[kind]), device="cpu", conf=0.0, max_det=5, batch_size=2)
    if kind == "sam_auto":  # random weights: no score filters, a coarse grid
        return SamAutoStage(
            kind="sam_auto",
            weights=str(tiny_models["sam"]),
            device="cpu",
            category="circle",
            points_per_side=4,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=0.7,
        )
    if kind == "yolo_seg":  # the tiny YOLO is a segmentation model
        return YoloSegStage(
            kind="yolo_seg",
            weights=str(tiny_models["yolo"]),
            device="cpu",
            conf=0.0,
            imgsz=160,
            max_det=6,
            batch_size=2,
        )
    if kind == "maskrcnn":
        return MaskRcnnStage(
            kind="maskrcnn", weights=str(tiny_models["maskrcnn"]), device="cpu", conf=0.0, max_det=5, batch_size=2
        )
    if kind == "mask2former":  # random weights: every query kept, so the test sees segments
        return Mask2FormerStage(
            kind="mask2former",
            weights=str(tiny_models["mask2former"]),
            device="cpu",
            threshold=0.0,
            overlap_threshold=0.0,
            batch_size=2,
        )
    if kind == "semantic":
        return SemanticStage(kind="semantic", weights=str(tiny_models["semantic"]), device="cpu", batch_size=2)
    if kind == "panoptic_merge":
        return PanopticMergeStage(kind="panoptic_merge", needs=["masks", "panoptic"], min_area=1)
    raise AssertionError(f"add a tiny stage for new adapter kind {kind!r} to the contract suite")


def images(rng):
    # non-square, both orientations, one tiny
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in [(90, 170, 3), (150, 60, 3), (33, 47, 3)]]


def prompts_for(imgs):
    out = []
    for im in imgs:
        h, w = im.shape[:2]
        out.append(Detections((h, w), [[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]], [1, 3], [0.9, 0.4]))
    return out


def with_box_masks(dets):
    h, w = dets.image_size
    masks = np.zeros((len(dets), h, w), bool)
    for m, (x0, y0, x1, y1) in zip(masks, dets.boxes.astype(int)):
        m[y0:y1, x0:x1] = True
    return dets.with_masks(
        rle.encode_nhw(masks), predicted_iou=np.full(len(dets), 0.9), stability_score=np.full(len(dets), 0.97)
    )


def stuff_segments(imgs):
    """One stuff segment per image (class 2 on the bottom half), as a panoptic model gives them."""
    out = []
    for im in imgs:
        h, w = im.shape[:2]
        m = np.zeros((1, h, w), bool)
        m[:, h // 2 :] = True
        out.append(
            Detections(
                (h, w),
                [[0, h // 2, w, h]],
                [2],
                [0.8],
                rle_counts=rle.encode_nhw(m),
                fields={"isthing": np.array([False])},
            )
        )
    return out


def run(adapter, role, imgs):
    session = getattr(adapter, "session", None)
    if callable(session):  # state per clip (trackers, video propagation): each run is a fresh clip of these frames
        adapter = session()
    if role == "detector":
        return adapter.detect(imgs)
    if role == "qc":
        return adapter.check(imgs, [with_box_masks(d) for d in prompts_for(imgs)])
    if role == "tracker":
        return adapter.track(imgs, [with_box_masks(d) for d in prompts_for(imgs)])
    if role == "panoptic":
        return adapter.panoptic(imgs)
    if role == "instances":
        return adapter.label(imgs)
    if role == "merge":
        return adapter.merge(
            imgs, [with_box_masks(d) for d in prompts_for(imgs)], stuff_segments(imgs), "masks", "panoptic"
        )
    return adapter.segment(imgs, prompts_for(imgs))


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_adapter_contract(kind, tiny_models, rng):
    spec = ADAPTERS[kind]
    loaded = get_model(stage_for(kind, tiny_models), ONTOLOGY)
    assert loaded is get_model(stage_for(kind, tiny_models), ONTOLOGY)  # loaded once per process
    assert loaded.identity.startswith(f"{kind}:") and "@sha256:" in loaded.identity
    imgs = images(rng)
    out = run(loaded.adapter, spec.role, imgs)
    assert len(out) == len(imgs)
    for im, dets in zip(imgs, out):
        h, w = im.shape[:2]
        assert isinstance(dets, Detections) and dets.image_size == (h, w)
        assert dets.boxes.dtype == np.float32 and dets.class_ids.dtype == np.int64
        assert set(dets.class_ids.tolist()) <= set(ONTOLOGY)
        if len(dets):
            assert (dets.boxes[:, [0, 2]] >= 0).all() and (dets.boxes[:, [0, 2]] <= w).all()
            assert (dets.boxes[:, [1, 3]] >= 0).all() and (dets.boxes[:, [1, 3]] <= h).all()
        assert dets.has_masks == spec.produces_masks
        if dets.has_masks and len(dets):
            decoded = rle.decode_many(list(dets.rle_counts), h, w)
            assert decoded.shape == (len(dets), h, w) and decoded.reshape(len(dets), -1).any(1).all()
        if spec.role in ("panoptic", "merge"):  # segments of one map: never overlapping, thing/stuff known
            assert len(dets) > 0 and dets.fields["isthing"].dtype == bool
            assert decoded.sum(0).max() <= 1
    again = run(loaded.adapter, spec.role, imgs)  # deterministic
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        if a.has_masks:
            assert list(a.rle_counts) == list(b.rle_counts)
    assert [len(d) for d in run(loaded.adapter, spec.role, [])] == []


def test_unknown_kind_and_missing_package_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown stage kind 'nope'"):
        adapter_class("nope")
    from segflow.tasks.stages import registry

    monkeypatch.setitem(
        registry.ADAPTERS,
        "fake",
        registry.AdapterSpec(
            "segflow.tasks.stages.yolo:YoloDetector",
            "segflow.config.schema:YoloStage",
            "detector",
            "segflow_not_installed_pkg",
            "segflow-extra-pkg",
        ),
    )
    with pytest.raises(MissingDependencyError, match="pip install segflow-extra-pkg"):
        adapter_class("fake")
