"""Sliced inference (segflow.tasks.stages.tiling): windows, the merge on its own, and a whole run over a large image
with objects placed across the seams, by a detector and an instance labeler that find bright squares (real, simple
models: a threshold and connected components, so every part a window sees is found, cut or not)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segflow.config.schema import TilesConfig
from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.tiling import merge, plan_tiles, run_tiled, windows


def find_squares(images, masks=False):
    """A detector (and, with ``masks``, an instance labeler): every bright connected region is an object of class 1,
    scored by its size (larger: surer), box XYXY tight; red regions are class 2."""
    out = []
    for im in images:
        bright = im.max(axis=2) > 200
        labels, n = ndimage.label(bright)
        boxes, cls, scores, counts = [], [], [], []
        for k, sl in enumerate(ndimage.find_objects(labels), 1):
            ys, xs = sl
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
            region = labels[sl] == k
            red = im[sl][region][:, 1].mean() < 100
            cls.append(2 if red else 1)
            scores.append(min(0.99, region.sum() / 5000))
            if masks:
                counts.append(rle.encode_nhw((labels == k)[None])[0])
        out.append(
            Detections(im.shape[:2], np.array(boxes, np.float32).reshape(-1, 4), cls, scores, counts if masks else None)
        )
    return out


def big_image(squares, size=(1500, 2000)):
    im = np.full((*size, 3), 40, np.uint8)
    for x0, y0, x1, y1, colour in squares:
        im[y0:y1, x0:x1] = colour
    return im


WHITE, RED = (255, 255, 255), (255, 0, 0)


def test_windows_cover_the_image_with_the_overlap_asked():
    w = windows(1500, 2000, 640, 0.25)
    assert w[:, 0].min() == 0 and w[:, 2].max() == 2000 and w[:, 1].min() == 0 and w[:, 3].max() == 1500
    assert ((w[:, 2] - w[:, 0]) == 640).all() and ((w[:, 3] - w[:, 1]) == 640).all()
    xs = np.unique(w[:, 0])
    assert (np.diff(xs) <= 480).all()  # neighbours share at least a quarter
    assert windows(300, 400, 640, 0.25).tolist() == [[0, 0, 400, 300]]  # smaller than a window: one


def test_plan_auto_tiles_only_images_much_larger_than_the_model_input():
    plan = plan_tiles("auto", 320)
    assert plan.size == 640 and not plan.tiles(900, 900) and plan.tiles(1000, 800)
    custom = plan_tiles(TilesConfig(size=512), 640)
    assert custom.min_side == 768 and plan_tiles(None, 640) is None


@pytest.mark.parametrize("with_masks", [False, True])
def test_objects_across_seams_come_back_whole_and_once(with_masks):
    squares = [
        (600, 100, 700, 200, WHITE),  # across the first vertical seam (windows at x 0-640, 480-1120)
        (1080, 1000, 1180, 1150, WHITE),  # across another seam
        (100, 1000, 180, 1080, RED),  # whole in one window, class 2
        (1400, 1200, 1480, 1280, WHITE),
        (900, 400, 1400, 900, WHITE),  # larger than the overlap: cut by every window it touches
    ]
    im = big_image(squares)
    plan = plan_tiles(TilesConfig(size=640, overlap=0.25, whole_image=False), 640)
    (dets,) = run_tiled(lambda crops: find_squares(crops, with_masks), [im], plan, batch=4)
    truth = sorted([x0, y0, x1, y1] for x0, y0, x1, y1, _ in squares)
    assert sorted(dets.boxes.astype(int).tolist()) == truth  # each object once, whole (the large one from its parts)
    assert sorted(dets.class_ids.tolist()) == [1, 1, 1, 1, 2]
    assert dets.meta["tiles"] == len(windows(1500, 2000, 640, 0.25))
    if with_masks:
        for box, counts in zip(dets.boxes.astype(int), dets.rle_counts, strict=True):
            m = rle.decode(counts, 1500, 2000).astype(bool)
            x0, y0, x1, y1 = box
            assert m.sum() == (x1 - x0) * (y1 - y0) and m[y0:y1, x0:x1].all()  # the union of the parts: exact
    # negative control: without merging, the seams leave parts and duplicates
    raw = find_squares([im[y0:y1, x0:x1] for x0, y0, x1, y1 in windows(1500, 2000, 640, 0.25)])
    assert sum(len(d) for d in raw) > len(squares) + 4


def test_merge_keeps_neighbours_apart_and_classes_apart():
    def dets(boxes, cls, scores, wins):
        return Detections((1000, 1000), np.array(boxes, np.float32), cls, scores, None, {"window": np.array(wins)})

    w1, w2, full = [0, 0, 600, 600], [400, 0, 1000, 600], [0, 0, 1000, 1000]
    # two touching objects of one class, each whole in a window: both stay
    m = merge(dets([[100, 100, 200, 200], [200, 100, 300, 200]], [1, 1], [0.9, 0.8], [w1, w1]))
    assert len(m) == 2
    # one object whole in w1 and cut by w2's left edge: one, the whole box
    m = merge(dets([[420, 100, 520, 200], [400, 100, 520, 200]], [1, 1], [0.7, 0.9], [w1, w2]))
    assert m.boxes.tolist() == [[420, 100, 520, 200]]
    # a fragment of another class inside a whole object: dropped; a whole object of another class elsewhere: kept
    m = merge(
        dets(
            [[420, 100, 520, 200], [400, 110, 450, 190], [100, 300, 150, 350]], [1, 2, 2], [0.7, 0.9, 0.6], [w1, w2, w1]
        )
    )
    assert sorted(m.class_ids.tolist()) == [1, 2] and len(m) == 2
    # a coarse whole-image box over two objects never swallows them
    m = merge(
        dets(
            [[100, 100, 200, 200], [300, 100, 400, 200], [90, 90, 410, 210]],
            [1, 1, 1],
            [0.5, 0.5, 0.99],
            [w1, w1, full],
        )
    )
    assert sorted(m.boxes.tolist()) == [[100, 100, 200, 200], [300, 100, 400, 200]]
    # nms keeps the best part instead of uniting
    parts = dets([[300, 100, 600, 200], [400, 100, 700, 200]], [1, 1], [0.9, 0.8], [w1, w2])
    assert merge(parts, "greedy").boxes.tolist() == [[300, 100, 700, 200]]
    assert merge(parts, "nms").boxes.tolist() == [[300, 100, 600, 200]]


def test_the_demo_detector_finds_the_small_objects_of_a_large_mosaic_only_with_tiles(tmp_path):
    """Through the stage call the flow makes (AdapterSpec.run): the shipped demo YOLO on a 2,800-px mosaic of demo
    scenes: 0.97 of the objects found (box IoU >= 0.5) on seed 505. Negative control: the same image without tiles,
    where every object shrinks about nine times (0.59)."""
    import json
    from pathlib import Path

    from PIL import Image

    from segflow.config.schema import YoloStage
    from segflow.demo.synthetic import write_large_scene_set
    from segflow.tasks.stages.registry import ADAPTERS
    from segflow.tasks.stages.yolo import YoloDetector

    (name,) = write_large_scene_set(tmp_path / "images", 1, seed=505, gt_dir=tmp_path / "gt")
    gt = json.loads((tmp_path / "gt" / "instances.json").read_text())
    truth = np.array(
        [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in gt["annotations"]
        ]
    )
    pixels = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"))
    weights = str(Path(__file__).resolve().parents[3] / "configs" / "models" / "demo-yolo.pt")
    ontology = {1: "circle", 2: "square", 3: "triangle"}

    def found(**tiles):
        st = YoloStage(kind="yolo", weights=weights, conf=0.3, imgsz=320, max_det=50, device="cpu", **tiles)
        (d,) = ADAPTERS["yolo"].run(YoloDetector(st, weights, ontology), [pixels], {}, st)
        ix = np.clip(
            np.minimum(d.boxes[:, None, 2], truth[None, :, 2]) - np.maximum(d.boxes[:, None, 0], truth[None, :, 0]),
            0,
            None,
        )
        iy = np.clip(
            np.minimum(d.boxes[:, None, 3], truth[None, :, 3]) - np.maximum(d.boxes[:, None, 1], truth[None, :, 1]),
            0,
            None,
        )
        inter = ix * iy
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        iou = inter / (area(d.boxes)[:, None] + area(truth)[None] - inter)
        return (iou.max(axis=0) >= 0.5).mean() if len(d) else 0.0, len(d)

    tiled, n_tiled = found(tiles={"size": 1024, "overlap": 0.4, "whole_image": False})
    whole, n_whole = found()
    assert len(truth) > 20 and tiled >= 0.9 and whole <= tiled - 0.25, (tiled, n_tiled, whole, n_whole)
