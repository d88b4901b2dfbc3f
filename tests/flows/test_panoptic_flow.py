"""A real flow with a panoptic stage (tiny models): the exports follow the COCO panoptic rules,
the semantic maps and the manifest agree with them, and missing PNGs are rendered again."""

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from segflow.flows import cli
from segflow.tasks import rle
from segflow.tasks.stages.panoptic import read_panoptic_png


def panoptic_job(tiny_models):
    def mutate(j):
        j["ontology"].append({"id": 4, "name": "sky", "isthing": False})
        # random weights: keep every query so that there are segments at all
        # and map every model label to the stuff class, so the model provides the stuff and SAM the things
        j["stages"]["panoptic"] = {
            "kind": "mask2former",
            "weights": str(tiny_models["mask2former"]),
            "device": "cpu",
            "threshold": 0.0,
            "overlap_threshold": 0.0,
            "batch_size": 3,
            "label_map": {"circle": "sky", "square": "sky", "triangle": "sky"},
        }
        j["stages"]["merge"] = {"kind": "panoptic_merge", "needs": ["masks", "panoptic"], "min_area": 20}

    return mutate


@pytest.fixture(scope="module")
def panoptic_run(prefect_harness, tiny_models, tmp_path_factory, _scenes_seed1):
    """One run shared by the tests of this module (the PNG test deletes files and reruns, restoring them)."""
    import io
    import shutil
    from contextlib import redirect_stdout

    import yaml

    from tests.conftest import job_dict

    root = tmp_path_factory.mktemp("panoptic")
    images, out = root / "images", root / "out"
    shutil.copytree(_scenes_seed1, images)
    j = job_dict(images, out, tiny_models["yolo"], tiny_models["sam"])
    panoptic_job(tiny_models)(j)
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(j, sort_keys=False))
    with redirect_stdout(io.StringIO()) as printed:
        assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert f"COCO panoptic   : {out}/coco/panoptic.json" in printed.getvalue() and "semantic maps" in printed.getvalue()
    return job, out


def test_panoptic_export_follows_the_coco_rules(panoptic_run):
    from tests.support.panoptic_checks import check_coco_panoptic

    job, out = panoptic_run
    pan, seen_things, seen_stuff = check_coco_panoptic(out)
    cats = {c["id"]: c for c in pan["categories"]}
    assert {c["name"]: c["isthing"] for c in cats.values()} == {"circle": 1, "square": 1, "triangle": 1, "sky": 0}
    assert len(pan["images"]) == 20 and len(pan["annotations"]) == 20  # every decoded image, failed ones not
    assert seen_things > 0 and seen_stuff > 0


def test_panoptic_manifest_matches_the_pngs_and_links_things_to_masks(panoptic_run):
    job, out = panoptic_run
    pan = ds.dataset(str(out / "manifest" / "panoptic.parquet"), format="parquet").to_table().to_pylist()
    masks = {
        r["annotation_id"]: r
        for r in ds.dataset(str(out / "manifest" / "masks.parquet"), format="parquet").to_table().to_pylist()
    }
    assert pan and {r["source_stage"] for r in pan} == {"masks", "panoptic"}
    pngs: dict[int, np.ndarray] = {}
    for r in pan:
        ids = pngs.setdefault(
            r["image_id"], read_panoptic_png((out / "coco" / "panoptic" / f"{r['image_id']}.png").read_bytes())
        )
        m = rle.decode(r["rle_counts"], r["height"], r["width"])
        np.testing.assert_array_equal(m, ids == r["segment_id"])
        assert r["area"] == int(m.sum())
        if r["source_stage"] == "masks":  # a thing from SAM: its mask row exists, same class, covers the segment
            assert r["isthing"] and r["annotation_id"] in masks and r["model"].startswith("sam:")
            inst = masks[r["annotation_id"]]
            assert inst["category_id"] == r["category_id"] and inst["image_id"] == r["image_id"]
            assert not (m & ~rle.decode(inst["rle_counts"], r["height"], r["width"])).any()
        else:
            assert r["annotation_id"] is None and r["model"].startswith("mask2former:")


def test_missing_pngs_are_rendered_again_on_rerun(panoptic_run, capsys):
    job, out = panoptic_run
    png = out / "coco" / "panoptic" / "3.png"
    before = png.read_bytes()
    shard = ds.dataset(str(out / "manifest" / "panoptic.parquet"), format="parquet").to_table().to_pylist()
    shard_id = next(r["shard_id"] for r in shard if r["image_id"] == 3)
    png.unlink()
    (out / "shards" / shard_id / "_RENDERED.json").unlink()
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert png.read_bytes() == before
    assert json.loads((out / "shards" / shard_id / "_RENDERED.json").read_text())["attempt"]


def test_publish_includes_the_panoptic_files(panoptic_run, tmp_path):
    from segflow.tasks.ops.publish import publish

    job, out = panoptic_run
    assert publish(str(out), str(tmp_path / "datasets"), "v1").created
    root = tmp_path / "datasets" / "v1"
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {"coco/panoptic.json", "coco/panoptic/3.png", "semantic/3.png"} <= files
    assert any(f.startswith("manifest/panoptic.parquet/") for f in files)
    sums = dict(line.split("  ")[::-1] for line in (root / "SHA256SUMS").read_text().splitlines())
    assert (root / "semantic" / "3.png").read_bytes() == (
        out / "semantic" / "3.png"
    ).read_bytes() and "semantic/3.png" in sums
    card = (root / "README.md").read_text()
    assert "## Panoptic segments per class" in card and "| sky |" in card
