"""`kind: sam2` (SAM 2.x, EdgeTAM, the SAM 3 tracker, SAM-HQ through transformers) against transformers' documented
reference use -- processor -> model -> post_process_masks, one box per call -- on a non-square image, with negative
controls; tiny random-weight models built offline from configs (tests/support/tiny.py)."""

import numpy as np
import pytest
import torch
import transformers as T

from segflow.config.schema import Sam2Stage
from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError, sha256_file
from segflow.tasks.record import Detections
from segflow.tasks.stages.cache import get_model
from segflow.tasks.stages.sam2 import FAMILIES, TransformersBoxSegmenter, stability_scores
from segflow.tasks.stages.upsample import grown_windows
from tests.support.tiny import make_tiny_promptable

H, W = 90, 150  # not square: a swapped axis shows
BOXES = np.array([[10, 10, 60, 50], [70, 20, 140, 80], [5, 40, 50, 88]], np.float32)  # XYXY pixels


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("promptable")
    return {f: tiny_models["sam2"] if f == "sam2" else make_tiny_promptable(root / f, f) for f in FAMILIES}


@pytest.fixture()
def image():
    return np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)


def reference(directory, family, image, box, multimask=False, point=None):
    """transformers' documented single-prompt use: logits N x K x H x W and IoU scores K."""
    model_cls, proc_cls = (getattr(T, n) for n in FAMILIES[family])
    model, proc = model_cls.from_pretrained(directory).eval(), proc_cls.from_pretrained(directory)
    kwargs = {"input_boxes": [[list(map(float, box))]]} if point is None else {}
    if point is not None:
        kwargs.update(input_points=[[[list(map(float, point))]]], input_labels=[[[1]]])
    with torch.inference_mode():
        inp = proc(images=image, return_tensors="pt", **kwargs)
        out = model(**inp, multimask_output=multimask)
        post = {"reshaped_input_sizes": inp["reshaped_input_sizes"]} if "reshaped_input_sizes" in inp else {}
        masks = proc.post_process_masks(out.pred_masks, inp["original_sizes"], binarize=False, **post)[0]
    return masks[0].numpy(), out.iou_scores[0, 0].numpy()


def segment(directory, image, boxes=BOXES, **settings):
    stage = Sam2Stage(kind="sam2", weights=str(directory), device="cpu", **settings)
    dets = Detections((H, W), boxes, np.arange(1, len(boxes) + 1), np.linspace(0.9, 0.5, len(boxes), dtype=np.float32))
    (out,) = TransformersBoxSegmenter(stage, str(directory)).segment([image], [dets])
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_equals_the_reference_box_by_box(models, image, family):
    """All boxes of the image from one embedding in chunked decoder calls == one reference call per box."""
    out = segment(models[family], image, boxes_per_call=2, mask_margin=None)
    assert len(out) == len(BOXES) and out.image_size == (H, W)
    for k, box in enumerate(BOXES):
        logits, iou = reference(models[family], family, image, box)
        expected = logits[0] > 0
        assert expected.any() and not expected.all()
        assert rle.decode(out.rle_counts[k], H, W).tolist() == expected.tolist(), k
        assert out.fields["predicted_iou"][k] == pytest.approx(float(iou[0]), abs=1e-5)
        stab = float(stability_scores(logits, 0.0)[0])
        assert out.fields["stability_score"][k] == pytest.approx(stab, abs=1e-6, nan_ok=True)
    # negative control: the same boxes read as (y, x) give other masks, so the comparison above can fail
    swapped = segment(models[family], image, boxes=BOXES[:, [1, 0, 3, 2]].copy(), mask_margin=None)
    assert any(a != b for a, b in zip(swapped.rle_counts, out.rle_counts))


@pytest.mark.parametrize("family", ["sam2", "sam_hq"])  # both frames: stretched, and resized into a padded square
def test_mask_margin_upsamples_inside_the_grown_box_only(models, image, family):
    """Inside each box grown by mask_margin the mask is the reference's (to float rounding at the threshold);
    outside it is background. The random model's masks spill out of the window, so the outside can fail."""
    out = segment(models[family], image, mask_margin=0.1)
    spilled = 0
    for k, box in enumerate(BOXES):
        logits, _ = reference(models[family], family, image, box)
        x0, y0, x1, y1 = grown_windows(box[None], (H, W), 0.1)[0]
        inside = np.zeros((H, W), bool)
        inside[y0:y1, x0:x1] = True
        got, expected = rle.decode(out.rle_counts[k], H, W), logits[0] > 0
        clear = np.abs(logits[0]) > 1e-4  # not at the threshold within float rounding
        assert (got == expected)[inside & clear].all(), k
        assert not got[~inside].any(), k
        spilled += int(expected[~inside].sum())
        assert out.fields["stability_score"][k] == pytest.approx(
            float(stability_scores(np.where(inside, logits[0], -1e4)[None], 0.0)[0]), abs=1e-5, nan_ok=True
        )
    assert spilled > 0  # the reference has mask pixels outside the windows: a whole-frame result would fail above


def test_multimask_keeps_the_candidate_the_model_rates_best(models, image):
    out = segment(models["sam2"], image, multimask_output=True, mask_margin=None)
    for k, box in enumerate(BOXES):
        logits, iou = reference(models["sam2"], "sam2", image, box, multimask=True)
        best = int(iou.argmax())
        assert rle.decode(out.rle_counts[k], H, W).tolist() == (logits[best] > 0).tolist()
        np.testing.assert_allclose(out.fields["multimask_ious"][k], iou, atol=1e-5)


def test_point_prompt_is_the_box_centre(models, image):
    out = segment(models["sam2"], image, prompt="point", mask_margin=None)
    for k, (x0, y0, x1, y1) in enumerate(BOXES):
        logits, _ = reference(models["sam2"], "sam2", image, None, point=((x0 + x1) / 2, (y0 + y1) / 2))
        assert rle.decode(out.rle_counts[k], H, W).tolist() == (logits[0] > 0).tolist()


def test_sam_hq_passes_its_intermediate_embeddings_back(models, image):
    """Without the intermediate ViT embeddings SAM-HQ skips its HQ fusion silently: the masks differ."""
    seg_dir = str(models["sam_hq"])
    seg = TransformersBoxSegmenter(Sam2Stage(kind="sam2", weights=seg_dir, device="cpu"), seg_dir)
    with torch.inference_mode():
        inputs = seg._inputs(image, BOXES)
        emb, inter = seg._embed([inputs["pixel_values"]])
        full = seg.model(image_embeddings=emb, intermediate_embeddings=inter, input_boxes=inputs["input_boxes"])
        plain = seg.model(image_embeddings=emb, input_boxes=inputs["input_boxes"])
    assert not torch.allclose(full.pred_masks, plain.pred_masks)
    with_hq = segment(models["sam_hq"], image, mask_margin=None)
    logits, _ = reference(models["sam_hq"], "sam_hq", image, BOXES[0])
    assert rle.decode(with_hq.rle_counts[0], H, W).tolist() == (logits[0] > 0).tolist()


def test_each_image_is_encoded_once_for_all_of_its_boxes(models, image):
    stage = Sam2Stage(kind="sam2", weights=str(models["sam2"]), device="cpu", batch_size=2, boxes_per_call=2)
    seg = TransformersBoxSegmenter(stage, str(models["sam2"]))
    calls = []
    seg.model.vision_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    many = np.tile(BOXES, (3, 1))  # 9 boxes: 5 decoder calls
    dets = [Detections((H, W), b, np.ones(len(b), int), np.ones(len(b), np.float32)) for b in (many, BOXES)]
    out = seg.segment([image, image[::-1].copy()], dets)
    assert calls == [2] and [len(o) for o in out] == [9, 3]  # one encoder call for the batch of two images


def test_loads_through_the_stage_cache_with_its_sha256(models):
    """The path users take: `weights` a save_pretrained directory, its model.safetensors checked when sha256 is
    given; `family: auto` read from config.json; a wrong sha256 is refused before loading."""
    d = models["sam3_tracker"]
    sha = sha256_file(d / "model.safetensors")
    loaded = get_model(Sam2Stage(kind="sam2", weights=str(d), sha256=sha, device="cpu"), {1: "circle"})
    assert loaded.adapter.family == "sam3_tracker" and loaded.identity.startswith("sam2:")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        get_model(Sam2Stage(kind="sam2", weights=str(d), sha256="0" * 64, device="cpu"), {1: "circle"})
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        get_model(Sam2Stage(kind="sam2", weights="hub:nobody/no-sam2", device="cpu"), {1: "circle"})


def test_zoom_context_segments_small_boxes_in_a_crop_and_pastes_them_back(models):
    """A small box of a large image: its mask is the one the crop around it gives (the box in the crop's frame),
    pasted at the crop's place; a box as large as the image is segmented in the whole image, as without zoom."""
    from segflow.tasks.stages.sam import zoom_windows_xyxy

    big = np.random.default_rng(1).integers(0, 255, (300, 500, 3), np.uint8)
    boxes = np.array([[200, 100, 240, 130], [0, 0, 500, 300]], np.float32)
    stage = Sam2Stage(kind="sam2", weights=str(models["sam2"]), device="cpu", zoom_context=0.5, min_mask_area=0)
    seg = TransformersBoxSegmenter(stage, str(models["sam2"]))
    dets = Detections((300, 500), boxes, [1, 2], [0.9, 0.8])
    (zoomed,) = seg.segment([big], [dets])
    plain = Sam2Stage(kind="sam2", weights=str(models["sam2"]), device="cpu", min_mask_area=0)
    (whole,) = TransformersBoxSegmenter(plain, str(models["sam2"])).segment([big], [dets])
    (win,), zoom = zoom_windows_xyxy(boxes[:1], (300, 500), 0.5)
    assert zoom.tolist() == [True] and (win[2] - win[0]) < 500
    x0, y0, x1, y1 = (int(v) for v in win)
    crop = np.ascontiguousarray(big[y0:y1, x0:x1])
    one = Detections(crop.shape[:2], boxes[:1] - np.array([x0, y0, x0, y0], np.float32), [1], [0.9])
    (ref,) = TransformersBoxSegmenter(plain, str(models["sam2"])).segment([crop], [one])
    expected = np.zeros((300, 500), bool)
    expected[y0:y1, x0:x1] = rle.decode(ref.rle_counts[0], *crop.shape[:2]).astype(bool)
    assert np.array_equal(rle.decode(zoomed.rle_counts[0], 300, 500).astype(bool), expected)
    assert zoomed.rle_counts[1] == whole.rle_counts[1] and zoomed.boxes.tolist() == boxes.tolist()
    assert zoomed.fields["predicted_iou"][0] == pytest.approx(ref.fields["predicted_iou"][0])
    # negative control: the small box in the whole image gives another mask
    assert zoomed.rle_counts[0] != whole.rle_counts[0]
