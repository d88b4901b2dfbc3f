"""`segflow demo --semantic`: the demo U-Net's class maps as stuff for the panoptic merge, the semantic manifest and
the audit against the scenes' exact maps."""

import json

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image, ImageOps

from segflow.tasks import rle


@pytest.fixture(scope="module")
def semantic_demo(tmp_path_factory, demo_run):
    """10 scenes of seed 7 (the U-Net trains on its own seeded stream: it never saw them), at the operating point
    the session's demo run fitted (10 images are too few to fit one)."""
    from segflow.flows import cli

    out = tmp_path_factory.mktemp("demo-semantic")
    cal = str(demo_run / "out" / "calibration.json")
    args = ["demo", "--semantic", "--output", str(out), "--images", "10", "--seed", "7", "--calibration", cal]
    assert cli.main([*args, "--no-progress"]) == 0
    return out


def test_the_demo_unet_labels_unseen_scenes(semantic_demo):
    q = json.loads((semantic_demo / "out" / "quality.json").read_text())["semantic"]
    assert q["images"] == 10
    # the merged map: things from SAM at the operating point, stuff from the U-Net (measured 0.82)
    assert q["miou"] >= 0.78, q["per_class_iou"]
    assert min(q["per_class_iou"][n] for n in ("sky", "grass", "water", "road")) >= 0.95, q["per_class_iou"]
    assert set(q["per_class_iou"]) == {"circle", "square", "triangle", "sky", "grass", "water", "road"}
    conf = np.array(q["confusion"]["matrix"])
    assert q["confusion"]["labels"][0] == "void" and conf.shape == (7, 8)
    assert q["pixel_accuracy"] == pytest.approx(np.trace(conf[:, 1:]) / conf.sum(), abs=1e-4)
    heat = Image.open(semantic_demo / "out" / "qc" / "semantic_confusion.png")
    assert heat.format == "PNG" and heat.width > 200
    summary = json.loads((semantic_demo / "out" / "summary.json").read_text())
    assert summary["quality"]["semantic_miou"] == q["miou"]


def test_a_transposed_map_fails_the_audit(semantic_demo, tmp_path):
    """Negative control: the same run scored against each gold map transposed. Non-square scenes are refused by
    name; square crops of them score far below the real maps."""
    from segflow.config import load_config
    from segflow.tasks.evaluate.semantic_audit import SemanticAudit
    from segflow.tasks.outputs.panoptic_export import png_name

    out = semantic_demo / "out"
    job = load_config(out / "job.json")
    images = ds.dataset(out / "manifest" / "images.parquet").to_table()
    gold = semantic_demo / "ground_truth" / "semantic"
    bad = tmp_path / "transposed"
    bad.mkdir()
    for p in gold.iterdir():
        Image.fromarray(np.asarray(Image.open(p)).T.copy()).save(bad / p.name)
    audit = SemanticAudit(str(bad), job.category_names())
    audit.add(images)
    with pytest.raises(ValueError, match=r"transposed/.*\.png: gold map is"):
        audit.evaluate(str(out / "semantic"), png_name)
    # square crops: the right maps score high, the transposed ones do not
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    crops = tmp_path / "crops"
    for d in (right, wrong, crops):
        d.mkdir()
    for r in images.filter(ds.field("status") == "ok").to_pylist():
        stem = r["file_name"].rsplit(".", 1)[0]
        k = min(r["width"], r["height"])
        g = np.asarray(Image.open(gold / f"{stem}.png"))[:k, :k]
        Image.fromarray(g.copy()).save(right / f"{stem}.png")
        Image.fromarray(g.T.copy()).save(wrong / f"{stem}.png")
        pred = np.asarray(Image.open(out / "semantic" / png_name(r["image_id"])))[:k, :k]
        Image.fromarray(pred.copy()).save(crops / png_name(r["image_id"]))
    scores = {}
    for name, folder in (("right", right), ("wrong", wrong)):
        a = SemanticAudit(str(folder), job.category_names())
        a.add(images)
        scores[name] = a.evaluate(str(crops), png_name)[0]["miou"]
    assert scores["right"] > 0.5 and scores["wrong"] < scores["right"] / 2, scores


def test_semantic_stuff_merges_with_sam_things_into_valid_panoptic_maps(semantic_demo):
    from tests.support.panoptic_checks import check_coco_panoptic

    out = semantic_demo / "out"
    pan, things, stuff = check_coco_panoptic(out)
    assert len(pan["annotations"]) == 10 and things > 0 and stuff > 0
    segs = ds.dataset(out / "manifest" / "panoptic.parquet").to_table().to_pylist()
    by_image = {}
    for s in segs:
        by_image.setdefault(s["image_id"], []).append(s)
    for rows in by_image.values():  # no pixel in two segments
        h, w = rows[0]["height"], rows[0]["width"]
        cover = sum(rle.decode(s["rle_counts"], h, w).astype(np.int32) for s in rows)
        assert cover.max() == 1
    stages = {s["source_stage"] for s in segs}
    assert stages == {"masks", "semantic"}  # things from SAM, stuff from the U-Net


def test_semantic_manifest_counts_each_class_of_each_map(semantic_demo):
    from segflow.tasks.outputs.panoptic_export import png_name

    out = semantic_demo / "out"
    t = ds.dataset(out / "manifest" / "semantic.parquet").to_table()
    assert t.column_names == ["image_id", "category_id", "category_name", "pixels", "share"]
    images = {r["image_id"]: r for r in ds.dataset(out / "manifest" / "images.parquet").to_table().to_pylist()}
    rows = t.to_pylist()
    assert {r["image_id"] for r in rows} == {i for i, r in images.items() if r["status"] == "ok"}
    for image_id in {r["image_id"] for r in rows}:
        sem = np.asarray(Image.open(out / "semantic" / png_name(image_id)))
        got = {r["category_id"]: (r["pixels"], r["share"]) for r in rows if r["image_id"] == image_id}
        ids, counts = np.unique(sem, return_counts=True)
        assert {int(i): int(n) for i, n in zip(ids, counts, strict=True) if i} == {c: p for c, (p, _) in got.items()}
        for p, share in got.values():
            assert share == pytest.approx(p / sem.size, rel=1e-6)


def test_gold_semantic_must_be_a_folder(tmp_path):
    from segflow.config import ConfigError, load_config
    from segflow.demo.prepare import DEMO_CONFIG

    cfg = DEMO_CONFIG.with_name("demo-semantic.yaml")
    with pytest.raises(ConfigError, match="gold_semantic: folder not found"):
        over = {"source": str(tmp_path), "output": str(tmp_path / "o"), "gold_semantic": str(tmp_path / "nope")}
        load_config(cfg, overrides=over)


def test_previews_blend_the_unet_map_over_each_image(semantic_demo):
    """`preview: true` (configs/demo-semantic.yaml): one JPEG per labelled image, the image with the U-Net's class
    colours blended in. Checked on stuff pixels away from class borders, where the merged map's class is the
    U-Net's; negative control: the same blend with the stuff classes swapped round is far off."""
    from scipy.ndimage import binary_erosion

    from segflow.tasks.outputs.panoptic_export import png_name
    from segflow.tasks.stages.panoptic import palette

    out = semantic_demo / "out"
    pal = np.asarray(palette([]), np.float64).reshape(-1, 3)
    ok = [r for r in ds.dataset(out / "manifest" / "images.parquet").to_table().to_pylist() if r["status"] == "ok"]
    assert sorted(p.name for p in (out / "semantic" / "preview").iterdir()) == sorted(
        f"{r['image_id']}.jpg" for r in ok
    )
    errors, swapped = [], []
    for r in ok:
        preview = np.asarray(Image.open(out / "semantic" / "preview" / f"{r['image_id']}.jpg"), np.float64)
        image = np.asarray(ImageOps.exif_transpose(Image.open(r["image_uri"])).convert("RGB"), np.float64)
        sem = np.asarray(Image.open(out / "semantic" / png_name(r["image_id"])))
        assert preview.shape == image.shape
        stuff = binary_erosion(np.isin(sem, [4, 5, 6, 7]), iterations=3)
        for cls_map, into in ((sem, errors), (np.where(stuff, (sem - 4 + 1) % 4 + 4, sem), swapped)):
            expected = 0.45 * image + 0.55 * pal[cls_map]
            into.append(np.abs(preview - expected)[stuff].mean())
    assert max(errors) < 8, errors
    assert np.mean(swapped) > 4 * np.mean(errors), (errors, swapped)


def test_one_stage_writes_the_previews(tmp_path):
    import yaml

    from segflow.config import ConfigError, load_config
    from segflow.demo.prepare import DEMO_CONFIG

    job = yaml.safe_load(DEMO_CONFIG.with_name("demo-semantic.yaml").read_text())
    job["stages"]["semantic2"] = dict(job["stages"]["semantic"])
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(job))
    (tmp_path / "models").symlink_to(DEMO_CONFIG.parent / "models")
    with pytest.raises(ConfigError, match=r"stages\.semantic2\.preview: one stage writes semantic/preview/"):
        load_config(cfg, overrides={"source": str(tmp_path), "output": str(tmp_path / "o")})
    job["stages"]["semantic2"]["preview"] = False  # control: the same job with one preview stage loads
    cfg.write_text(yaml.safe_dump(job))
    assert "semantic2" in load_config(cfg, overrides={"source": str(tmp_path), "output": str(tmp_path / "o")}).stages
