"""The semantic stage against each library's own inference, sliding windows, label mapping."""

import numpy as np
import pytest
import torch

from segflow.config.schema import SemanticStage
from segflow.tasks.stages.semantic import (
    SemanticSegmenter,
    _Smp,
    build_smp,
    save_semantic_checkpoint,
    window_starts,
)

ONTOLOGY = {1: "circle", 2: "sky", 3: "grass"}
LABELS = ["void", "circle", "sky", "grass"]
ARCH = {"encoder_name": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def _stage(weights, **kw):
    return SemanticStage(kind="semantic", weights=str(weights), device="cpu", **kw)


@pytest.fixture(scope="module")
def smp_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_smp("Unet", ARCH, len(LABELS)).eval()
    with torch.no_grad():  # random BatchNorm statistics, so that the classes vary over an image
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    d = tmp_path_factory.mktemp("semantic")
    save_semantic_checkpoint(model, "Unet", ARCH, LABELS, d / "unet.pt", tile=96)
    model.save_pretrained(str(d / "unet-dir"))
    return d / "unet.pt", d / "unet-dir", model


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(1)
    cfg = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        num_attention_heads=[1, 1],
        decoder_hidden_size=16,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    d = tmp_path_factory.mktemp("segformer") / "segformer"
    SegformerForSemanticSegmentation(cfg).eval().save_pretrained(str(d))
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(str(d))
    return d


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(yy / 7.0), np.cos(xx / 5.0), np.sin((xx + yy) / 9.0)], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _ids(seg, image):
    dets = seg.panoptic([image])[0]
    from segflow.tasks.stages.panoptic import detections_to_map, semantic_from_segments

    return semantic_from_segments(*detections_to_map(dets))


TO_ONTOLOGY = np.array([0, 1, 2, 3])  # model label index -> ontology id (LABELS in the ontology's order)
# The bar for the demo U-Net alone on unseen scenes (measured: 0.93; docs/demo-models.md).
DEMO_UNET_MIOU = 0.85


def test_smp_checkpoint_and_directory_equal_the_model_forward(smp_checkpoint):
    ckpt, folder, model = smp_checkpoint
    image = _image(64, 96)  # non-square, fits in one 96-px window
    x = (
        torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
        - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        reference = TO_ONTOLOGY[model(x)[0].argmax(0).numpy()]
    assert len(np.unique(reference)) >= 3  # a map with several classes, not a constant
    got = _ids(SemanticSegmenter(_stage(ckpt), str(ckpt), ONTOLOGY, {1: True, 2: False, 3: False}), image)
    np.testing.assert_array_equal(got, reference)
    got_dir = _ids(SemanticSegmenter(_stage(folder, labels=LABELS, tile=96), str(folder), ONTOLOGY), image)
    np.testing.assert_array_equal(got_dir, reference)
    # negative control: the same map read in the other axis order is not the answer
    assert (got.T.shape != reference.shape) or not np.array_equal(got.T, reference)


def test_segformer_equals_post_process_semantic_segmentation(segformer_dir):
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    image = _image(50, 62, seed=2)  # non-square, inside the 64-px input: one window, resized as the library does
    processor = SegformerImageProcessor.from_pretrained(str(segformer_dir))
    model = SegformerForSemanticSegmentation.from_pretrained(str(segformer_dir)).eval()
    with torch.no_grad():
        out = model(**processor(images=[image], return_tensors="pt"))
    reference = TO_ONTOLOGY[processor.post_process_semantic_segmentation(out, target_sizes=[(50, 62)])[0].numpy()]
    assert len(np.unique(reference)) >= 2
    got = _ids(SemanticSegmenter(_stage(segformer_dir), str(segformer_dir), ONTOLOGY), image)
    np.testing.assert_array_equal(got, reference)


def test_window_starts_cover_the_side_and_end_flush():
    assert window_starts(50, 64, 0.25) == [0]
    assert window_starts(64, 64, 0.25) == [0]
    assert window_starts(200, 64, 0.25) == [0, 48, 96, 136]
    for n, t, o in [(1000, 512, 0.25), (513, 512, 0.5), (97, 32, 0.0)]:
        s = window_starts(n, t, o)
        assert s[0] == 0 and s[-1] == n - t and all(b - a <= t for a, b in zip(s, s[1:], strict=False))


def test_sliding_windows_equal_one_pass_for_a_pixelwise_model(smp_checkpoint):
    """With a model that looks at each pixel alone (a 1x1 convolution), windows of any size and overlap must give
    exactly the single pass's logits: what the windowing adds is only where each window's logits go."""
    ckpt, _, _ = smp_checkpoint
    torch.manual_seed(3)
    pointwise = torch.nn.Conv2d(3, len(LABELS), 1).eval()
    image = _image(150, 230, seed=4)
    maps = {}
    for tile, overlap in [(512, 0.25), (64, 0.25), (48, 0.5), (96, 0.0)]:
        seg = SemanticSegmenter(_stage(ckpt, tile=tile, overlap=overlap), str(ckpt), ONTOLOGY)
        seg.backend = _Smp(pointwise, LABELS, tile, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        with torch.no_grad():
            maps[tile] = seg.class_logits([image])[0]
    for tile in (64, 48, 96):
        torch.testing.assert_close(maps[tile], maps[512], rtol=0, atol=1e-5)


def test_large_images_are_tiled_not_squashed(smp_checkpoint):
    ckpt, _, model = smp_checkpoint
    image = _image(96, 288, seed=5)  # three 96-px windows side by side, no overlap
    seg = SemanticSegmenter(_stage(ckpt, tile=96, overlap=0.0), str(ckpt), ONTOLOGY)
    got = _ids(seg, image)
    assert got.shape == (96, 288)
    for x0 in (0, 96, 192):  # each window is the model's own answer on that window
        np.testing.assert_array_equal(got[:, x0 : x0 + 96], _ids(seg, np.ascontiguousarray(image[:, x0 : x0 + 96])))
    shrunk = _ids(SemanticSegmenter(_stage(ckpt, tile=96, max_side=96), str(ckpt), ONTOLOGY), image)
    assert shrunk.shape == (96, 288) and not np.array_equal(shrunk, got)  # max_side: one pass on a smaller image


def test_label_map_and_ignore(smp_checkpoint):
    ckpt, _, _ = smp_checkpoint
    image = _image(64, 96)
    plain = _ids(SemanticSegmenter(_stage(ckpt), str(ckpt), ONTOLOGY), image)
    seg = SemanticSegmenter(_stage(ckpt, label_map={"sky": "grass"}, ignore=["circle"]), str(ckpt), ONTOLOGY)
    mapped = _ids(seg, image)
    expect = np.where(plain == 2, 3, plain)
    expect[plain == 1] = 0
    np.testing.assert_array_equal(mapped, expect)
    dets = seg.panoptic([image])[0]
    assert set(dets.class_ids.tolist()) == set(np.unique(mapped).tolist()) - {0}
    assert (dets.scores > 0).all() and (dets.scores <= 1).all()


def test_the_demo_unet_on_unseen_scenes(tmp_path):
    """The shipped demo U-Net (configs/demo-semantic.yaml, sha256 checked) through the stage, on scenes it never saw
    (seed 2024; it trains on seeds >= 10000), against their exact maps; negative control: the same maps flipped."""
    from segflow.config import load_config
    from segflow.demo.prepare import DEMO_CONFIG
    from segflow.demo.synthetic import make_scene, scene_size
    from segflow.tasks.stages.cache import get_model
    from segflow.tasks.stages.panoptic import SemanticQuality, detections_to_map, semantic_from_segments

    job = load_config(DEMO_CONFIG.with_name("demo-semantic.yaml"), {"source": str(tmp_path), "output": str(tmp_path)})
    isthing = {c.id: c.isthing for c in job.ontology}
    seg = get_model(job.stages["semantic"], job.category_names(), isthing).adapter
    rng = np.random.default_rng(2024)
    good, flipped = SemanticQuality(), SemanticQuality()
    for _ in range(12):
        w, h = scene_size(rng, (200, 600))
        scene = make_scene(rng, w, h)
        pred = semantic_from_segments(*detections_to_map(seg.panoptic([scene.pixels])[0]))
        good.add(scene.semantic, pred)
        flipped.add(np.flipud(scene.semantic), pred)
    q, names = good.summary(job.category_names()), job.category_names()
    stuff = [names[c.id] for c in job.ontology if not c.isthing]
    assert all(q["per_class_iou"][n] >= 0.95 for n in stuff), q["per_class_iou"]
    things = [names[c.id] for c in job.ontology if c.isthing]  # the shape classes, told apart by their outline
    assert all(q["per_class_iou"][n] >= 0.75 for n in things), q["per_class_iou"]
    assert q["miou"] >= DEMO_UNET_MIOU, q["per_class_iou"]
    assert flipped.summary(names)["miou"] < 0.5 * q["miou"]
