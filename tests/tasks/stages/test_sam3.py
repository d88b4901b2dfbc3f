"""`kind: sam3`: text prompts -> instances through transformers' Sam3Model, against its documented single-prompt
use (processor(images, text) -> model -> post_process_instance_segmentation) on a non-square image; the image
encoded once for all prompts, the prompts' text encoded once per worker; overlaps resolved as documented."""

import numpy as np
import pytest
import torch
import transformers as T

from segflow.config.schema import Sam3Stage
from segflow.tasks import rle
from segflow.tasks.stages.sam3 import Sam3TextLabeler, resolve_overlaps

H, W = 90, 150
ONTOLOGY = {1: "circle", 2: "square"}
PROMPTS = {1: ["circle", "round disc"], 2: ["square"]}


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (H, W, 3), np.uint8), rng.integers(0, 255, (W, H, 3), np.uint8)]


def labeler(d, **settings):
    settings = {"conf": 0.0, "nms_iou": 1.0, "conflict_iou": None, "max_det": 1000, **settings}
    return Sam3TextLabeler(Sam3Stage(kind="sam3", weights=str(d), device="cpu", **settings), str(d), ONTOLOGY, PROMPTS)


def reference(d, image, text, threshold=0.0):
    model, proc = T.Sam3Model.from_pretrained(d).eval(), T.Sam3Processor.from_pretrained(d)
    with torch.inference_mode():
        inp = proc(images=image, text=text, return_tensors="pt")
        out = model(**inp)
    (r,) = proc.post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=0.5, target_sizes=inp["original_sizes"].tolist()
    )
    return r


def test_all_prompts_from_one_image_encoding_equal_one_call_per_prompt(tiny_models, images):
    d = tiny_models["sam3"]
    lab = labeler(d, batch_size=2)
    vision_calls = []
    lab.model.vision_encoder.register_forward_hook(lambda m, i, o: vision_calls.append(1))
    out = lab.label(images)
    assert len(vision_calls) == 1  # both images in one vision-encoder call, every prompt decoded from it
    for im, dets in zip(images, out):
        h, w = im.shape[:2]
        assert dets.image_size == (h, w) and len(dets) > 0
        expected = []
        for cid, texts in PROMPTS.items():
            for t in texts:
                r = reference(d, im, t)
                for box, score, mask in zip(r["boxes"].numpy(), r["scores"].numpy(), r["masks"].numpy()):
                    if mask.any():  # boxes clipped to the image, as the stage gives them
                        xyxy = tuple(np.round(box.astype(np.float64).clip(0, [w, h, w, h]), 2).tolist())
                        m = rle.encode_nhw(mask[None].astype(bool))[0]
                        expected.append((t, cid, round(float(score), 5), xyxy, m))
        got = [
            (p, int(c), round(float(s), 5), tuple(np.round(b.astype(np.float64), 2).tolist()), m)
            for p, c, s, b, m in zip(dets.fields["prompt"], dets.class_ids, dets.scores, dets.boxes, dets.rle_counts)
        ]
        assert sorted(got) == sorted(expected)
    # negative control: another prompt gives other instances, so the comparison can fail
    other = reference(d, images[0], "triangle")
    assert not np.allclose(other["scores"].numpy(), reference(d, images[0], "circle")["scores"].numpy())


def test_text_features_are_computed_once_per_worker(tiny_models, images):
    lab = labeler(tiny_models["sam3"])
    calls = []
    lab.model.text_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    lab.label(images)
    lab.label(images[:1])
    assert calls == []  # encoded when the stage loaded, reused for every image
    assert lab.texts == ["circle", "round disc", "square"] and lab.owners.tolist() == [1, 1, 2]


def test_thresholds_per_class(tiny_models, images):
    everything = labeler(tiny_models["sam3"]).label(images[:1])[0]
    cut = float(np.median(everything.scores[everything.class_ids == 1]))
    some = labeler(tiny_models["sam3"], thresholds={"circle": cut}).label(images[:1])[0]
    assert (some.scores[some.class_ids == 1] >= cut).all() and (some.class_ids == 2).sum() == (
        everything.class_ids == 2
    ).sum()
    assert (some.class_ids == 1).sum() < (everything.class_ids == 1).sum()


def _square(x0, y0, side, h=40, w=60):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_overlaps_synonyms_collapse_and_a_class_conflict_keeps_the_better_label():
    boxes = np.array([[10, 10, 30, 30], [11, 10, 31, 30], [10, 10, 30, 30], [40, 5, 55, 20]], np.float32)
    cls = np.array([1, 1, 2, 2])  # rows 0 and 1: synonyms of one class on one object; row 2: another class on it
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    masks = np.stack([_square(10, 10, 20), _square(11, 10, 20), _square(10, 10, 20), _square(40, 5, 15)])
    keep, counts = resolve_overlaps(boxes, cls, scores, masks, nms_iou=0.5, conflict_iou=0.85, max_det=10)
    assert keep.tolist() == [0, 3] and counts == rle.encode_nhw(masks[[0, 3]])
    both, _ = resolve_overlaps(boxes, cls, scores, masks, nms_iou=0.5, conflict_iou=None, max_det=10)
    assert both.tolist() == [0, 2, 3]  # left for the qc stage's class_conflict rule
    one, counts = resolve_overlaps(boxes, cls, scores, masks, 0.5, None, max_det=1)
    assert one.tolist() == [0] and len(counts) == 1
