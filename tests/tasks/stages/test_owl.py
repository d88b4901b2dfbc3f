"""Open-vocabulary detection (OWLv2 / OWL-ViT): the text-prompt ontology and box placement on non-square images."""

import numpy as np
import pytest

from segflow.config import OwlStage
from segflow.tasks.stages.cache import get_model
from segflow.tasks.stages.owl import boxes_to_pixels, prompt_table

ONTOLOGY = {1: "forklift", 2: "pallet"}
PROMPTS = {1: ["forklift", "fork lift truck", "Forklift"], 2: ["pallet"]}


def test_synonyms_map_to_one_class_and_a_prompt_names_one_class():
    texts, owners = prompt_table(PROMPTS)
    assert texts == ["forklift", "fork lift truck", "pallet"]  # case-insensitive duplicates asked once
    assert owners.tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="belongs to two ontology classes"):
        prompt_table({1: ["box"], 2: ["Box"]})


def test_box_conversion_on_a_non_square_image():
    """A known object at XYXY (30, 20, 90, 60) of a 100 x 300 (H x W) image, as each model family encodes it."""
    h, w = 100, 300
    truth = np.array([[30, 20, 90, 60]], np.float32)
    side = max(h, w)  # OWLv2: relative to the padded square
    owlv2 = np.array([[60 / side, 40 / side, 60 / side, 40 / side]])
    np.testing.assert_allclose(boxes_to_pixels(owlv2, (h, w), padded_square=True), truth, atol=1e-4)
    owlvit = np.array([[60 / w, 40 / h, 60 / w, 40 / h]])  # OWL-ViT: relative to the image itself
    np.testing.assert_allclose(boxes_to_pixels(owlvit, (h, w), padded_square=False), truth, atol=1e-4)
    # the pitfall: treating OWLv2 boxes as relative to (W, H) puts this one far off
    wrong = boxes_to_pixels(owlv2, (h, w), padded_square=False)
    assert abs(wrong[0, 1] - truth[0, 1]) > 10


@pytest.mark.parametrize("portrait", [False, True])
def test_owlv2_processor_pads_bottom_right_as_the_conversion_assumes(tiny_models, portrait):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(str(tiny_models["owlv2"]), local_files_only=True)
    img = np.full((120, 60, 3) if portrait else (60, 120, 3), 255, np.uint8)
    pv = proc(images=[img], text=[["x"]], return_tensors="pt")["pixel_values"][0].numpy()  # 3 x S x S
    s = pv.shape[-1]
    content = pv[:, : s // 2 - 2, : s // 2 - 2]
    pad = pv[:, -(s // 2 - 2) :, -(s // 2 - 2) :]
    for c in range(3):  # white image top-left, padding bottom-right
        assert np.allclose(content[c], content[c].max()) and pad[c].max() < content[c].max() - 0.5
        if portrait:
            assert pv[c, :, -2].max() < content[c].max() - 0.5  # right columns are padding
        else:
            assert pv[c, -2, :].max() < content[c].max() - 0.5  # bottom rows are padding


@pytest.mark.parametrize("kind", ["owlv2", "owlvit"])
def test_detections_only_carry_ontology_classes_and_per_class_thresholds_apply(kind, tiny_models, rng):
    images = [rng.integers(0, 256, (90, 200, 3), dtype=np.uint8), rng.integers(0, 256, (160, 70, 3), dtype=np.uint8)]

    def detect(**kw):
        stage = OwlStage(kind=kind, weights=str(tiny_models[kind]), device="cpu", conf=0.0, max_det=50, **kw)
        return get_model(stage, ONTOLOGY, prompts=PROMPTS).adapter.detect(images)

    out = detect()
    assert sum(len(d) for d in out) > 0
    for im, d in zip(images, out):
        assert d.image_size == im.shape[:2] and set(d.class_ids.tolist()) <= {1, 2}
        assert (d.boxes[:, 2] <= im.shape[1]).all() and (d.boxes[:, 3] <= im.shape[0]).all()
    only_forklifts = detect(thresholds={"pallet": 1.0})
    assert all(set(d.class_ids.tolist()) <= {1} for d in only_forklifts)
    per_class = detect(agnostic_nms=False, nms_iou=1.0)
    assert sum(len(d) for d in per_class) >= sum(len(d) for d in out)  # agnostic NMS removes at least as much


def test_grounding_dino_spans_synonyms_and_rejected_tokens(tiny_models):
    from transformers import AutoProcessor

    from segflow.tasks.stages.gdino import caption_spans, query_classes

    tok = AutoProcessor.from_pretrained(str(tiny_models["grounding_dino"]), local_files_only=True).tokenizer
    texts, owners = prompt_table(PROMPTS)
    caption, spans = caption_spans(tok, texts)
    assert caption == "forklift . fork lift truck . pallet ."
    ids = tok(caption)["input_ids"]
    assert [tok.convert_ids_to_tokens(ids[a:b]) for a, b in spans] == [
        ["forklift"],
        ["fork", "lift", "truck"],
        ["pallet"],
    ]
    # four queries: strongest on "lift" (a synonym of forklift), on "pallet", on a separator ".", on [SEP]
    probs = np.full((4, len(ids) + 3), 0.01)
    probs[0, spans[1][0] + 1] = 0.9
    probs[1, spans[2][0]] = 0.8
    sep_dot = spans[0][1]  # the "." after the first prompt
    probs[2, sep_dot] = 0.95
    probs[2, spans[2][0]] = 0.4
    probs[3, len(ids) - 1] = 0.7
    cls, score = query_classes(probs, spans, owners)
    assert cls.tolist() == [1, 2, -1, -1]  # the synonym maps to forklift; separator / special tokens are rejected
    assert score[:2].tolist() == pytest.approx([0.9, 0.8])


def test_grounding_dino_detects_only_ontology_classes(tiny_models, rng):
    images = [rng.integers(0, 256, (90, 200, 3), dtype=np.uint8), rng.integers(0, 256, (160, 70, 3), dtype=np.uint8)]
    stage = OwlStage(
        kind="grounding_dino", weights=str(tiny_models["grounding_dino"]), device="cpu", conf=0.0, max_det=50
    )
    det = get_model(stage, ONTOLOGY, prompts=PROMPTS).adapter
    out = det.detect(images)
    for im, d in zip(images, out):
        assert d.image_size == im.shape[:2] and set(d.class_ids.tolist()) <= {1, 2}
        assert (d.boxes >= 0).all() and (d.boxes[:, 2] <= im.shape[1]).all() and (d.boxes[:, 3] <= im.shape[0]).all()
    assert sum(len(d) for d in out) + det.rejected > 0
