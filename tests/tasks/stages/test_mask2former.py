"""The Mask2Former adapter: loading (checkpoint, save_pretrained directory, hub cache), label mapping,
and the panoptic post-processing geometry on padded, non-square inputs."""

import shutil

import numpy as np
import pytest
import torch

from segflow.config import Mask2FormerStage
from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError, resolve_model_dir, sha256_file, weights_location_issue
from segflow.tasks.stages.cache import get_model
from segflow.tasks.stages.mask2former import Mask2FormerPanoptic, label_table

ONTOLOGY = {1: "circle", 2: "square", 3: "triangle", 4: "ground"}
ISTHING = {1: True, 2: True, 3: True, 4: False}


def stage(weights, **kw):
    return Mask2FormerStage(
        kind="mask2former", weights=str(weights), device="cpu", **({"threshold": 0.0, "overlap_threshold": 0.0} | kw)
    )


def test_label_table_by_name_explicit_and_unmapped():
    id2label = {0: "circle", 1: "square", 2: "triangle", 3: "sky", 4: "grass"}
    assert label_table(id2label, ONTOLOGY, {}, "drop").tolist() == [1, 2, 3, 0, 0]
    assert label_table(id2label, ONTOLOGY, {"sky": "ground", "square": "circle"}, "drop").tolist() == [1, 1, 3, 4, 0]
    assert label_table(id2label, ONTOLOGY, {}, "ground").tolist() == [1, 2, 3, 4, 4]


def test_checkpoint_directory_and_hub_cache_load_the_same_model(tiny_models, tmp_path, monkeypatch, rng):
    img = [rng.integers(0, 256, (70, 130, 3), dtype=np.uint8)]
    ref = get_model(stage(tiny_models["mask2former"]), ONTOLOGY, ISTHING).adapter.panoptic(img)[0]
    d = tiny_models["mask2former_dir"]
    from_dir = get_model(stage(d, sha256=sha256_file(d / "model.safetensors")), ONTOLOGY, ISTHING)
    assert from_dir.identity.startswith("mask2former:m2f-tiny@sha256:")
    out = from_dir.adapter.panoptic(img)[0]
    assert len(ref) > 0 and list(out.rle_counts) == list(ref.rle_counts)

    # a hub id resolves from the local Hugging Face cache only
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hub"
    snap = cache / "models--segflow--tiny-m2f" / "snapshots" / ("a" * 40)
    shutil.copytree(d, snap)
    (cache / "models--segflow--tiny-m2f" / "refs").mkdir()
    (cache / "models--segflow--tiny-m2f" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("hub:segflow/tiny-m2f") == str(snap)
    out = get_model(stage("hub:segflow/tiny-m2f"), ONTOLOGY, ISTHING).adapter.panoptic(img)[0]
    assert list(out.rle_counts) == list(ref.rle_counts)
    problem = weights_location_issue("hub:segflow/not-there", dir_ok=True)
    assert "not in the local Hugging Face cache" in problem and "huggingface-cli download segflow/not-there" in problem


def test_directory_sha256_mismatch_names_the_file(tiny_models):
    with pytest.raises(WeightsError, match=r"sha256 mismatch .*model.safetensors"):
        resolve_model_dir(str(tiny_models["mask2former_dir"]), "0" * 64)


def test_not_a_mask2former_checkpoint(tiny_models):
    with pytest.raises(WeightsError, match="not a segflow Mask2Former checkpoint"):
        Mask2FormerPanoptic(stage(tiny_models["sam"]), str(tiny_models["sam"]), ONTOLOGY, ISTHING)


def test_segments_land_in_place_on_a_padded_non_square_input(tiny_models):
    """Post-processing crops the padding and resizes to the original size: a block of mask logits
    at a known place of the valid region must come back at the matching place of the image."""
    m = get_model(stage(tiny_models["mask2former"], threshold=0.5, overlap_threshold=0.8), ONTOLOGY, ISTHING).adapter
    num_labels = m.model.config.num_labels  # tiny model labels: circle, square, triangle, sky
    cls = torch.full((3, num_labels + 1), -10.0)
    cls[0, 0] = 10.0  # query 0: circle
    cls[1, 3] = 10.0  # query 1: sky, which this ontology does not have -> dropped
    cls[2, -1] = 10.0  # query 2: no object
    pixel_mask = torch.zeros(256, 256, dtype=torch.long)
    pixel_mask[:, :128] = 1  # a portrait image resized to 256 x 128, padded to 256 x 256
    masks = torch.full((3, 64, 64), -10.0)
    masks[0, 16:32, 8:16] = 10.0  # rows 1/4..1/2, cols 1/4..1/2 of the valid 64 x 32 region
    masks[1] = 10.0
    out = m.segments(cls, masks, pixel_mask, (200, 100))
    assert out.class_ids.tolist() == [1] and out.image_size == (200, 100)
    x0, y0, x1, y1 = out.boxes[0]
    assert abs(x0 - 25) <= 2 and abs(x1 - 50) <= 2 and abs(y0 - 50) <= 3 and abs(y1 - 100) <= 3
    mask = rle.decode(out.rle_counts[0], 200, 100)
    truth = np.zeros((200, 100), bool)
    truth[50:100, 25:50] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9

    # the sky query mapped to "ground" (stuff) now covers the rest, without overlapping the circle
    m2 = Mask2FormerPanoptic(
        stage(tiny_models["mask2former"], threshold=0.5, overlap_threshold=0.5, label_map={"sky": "ground"}),
        str(tiny_models["mask2former"]),
        ONTOLOGY,
        ISTHING,
    )
    out = m2.segments(cls, masks, pixel_mask, (200, 100))
    assert sorted(out.class_ids.tolist()) == [1, 4] and out.fields["isthing"].tolist() == [
        ISTHING[c] for c in out.class_ids.tolist()
    ]
    dec = rle.decode_many(list(out.rle_counts), 200, 100)
    assert dec.sum(0).max() == 1 and dec.sum() == 200 * 100


def test_nothing_above_threshold_gives_an_empty_record(tiny_models, rng):
    m = get_model(stage(tiny_models["mask2former"], threshold=0.99), ONTOLOGY, ISTHING).adapter
    out = m.panoptic([rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)])[0]
    assert len(out) == 0 and out.has_masks and out.image_size == (50, 80)
