"""A scheduled job over a growing prefix: each run labels only the new images, finalize merges
everything, and publish makes a new version only when something changed."""

import json
import shutil

import pyarrow.dataset as ds
from pycocotools.coco import COCO

from segflow.config import load_config
from segflow.demo.synthetic import write_scene_set
from segflow.flows import cli
from segflow.tasks.plan.planner import iter_plan, load_plan, make_plan


def test_growing_prefix_labels_only_new_images_and_publishes_versions(prefect_harness, write_job, tmp_path, capsys):
    src, out, dest = tmp_path / "src", tmp_path / "out", tmp_path / "datasets"
    batch1 = write_scene_set(tmp_path / "b1", 7, seed=21, size_range=(160, 300))
    batch2 = write_scene_set(tmp_path / "b2", 5, seed=22, size_range=(160, 300))
    src.mkdir()
    for name, _ in batch1:
        shutil.copy(tmp_path / "b1" / name, src / f"a_{name}")
    job = write_job(src, out, shard_size=3, mutate=lambda j: j.update(incremental=True, publish={"dest": str(dest)}))

    assert cli.main(["run", str(job), "--no-progress"]) == 0
    first = json.loads((out / "summary.json").read_text())
    v1 = (dest / "LATEST").read_text().strip()
    assert first["images"] == 7 and load_plan(str(out))["shard_ids"] == ["shard-00000", "shard-00001", "shard-00002"]
    committed_before = {p.name: p.read_text() for p in out.glob("shards/*/_COMMIT.json")}
    capsys.readouterr()

    # nothing new: nothing labelled, nothing rewritten, no new version
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert "0 new images planned" in capsys.readouterr().out
    assert (dest / "LATEST").read_text().strip() == v1 and len([d for d in dest.iterdir() if d.is_dir()]) == 1

    # new files arrive, some sorting before the old ones: a new generation holds exactly them
    for name, _ in batch2:
        shutil.copy(tmp_path / "b2" / name, src / (("0_" if name.endswith("1.jpg") else "z_") + name))
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert "5 new images planned" in capsys.readouterr().out
    plan = load_plan(str(out))
    new_shards = [s for s in plan["shard_ids"] if s.startswith("shard-g0001-")]
    assert len(new_shards) == 2 and len(plan["generations"]) == 2
    rows = list(iter_plan(str(out)))
    assert sorted(r["image_id"] for r in rows) == list(range(1, 13))  # ids continue, never reused
    assert {r["key"] for r in rows if r["shard_id"] in new_shards} == {
        p.name for p in src.iterdir() if not p.name.startswith("a_")
    }
    # earlier shards were not labelled again
    assert {p.name: p.read_text() for p in out.glob("shards/shard-0000*/_COMMIT.json")} == committed_before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 12 and summary["shards"] == 5
    images = ds.dataset(str(out / "manifest" / "images.parquet")).to_table()
    assert sorted(images["file_name"].to_pylist()) == sorted(p.name for p in src.iterdir())
    assert len(COCO(str(out / "coco" / "instances.json")).imgs) == 12

    # a new dataset version holding everything; the old one is untouched
    v2 = (dest / "LATEST").read_text().strip()
    assert v2 != v1 and (dest / v1 / "_PUBLISHED.json").exists() and (dest / v2 / "_PUBLISHED.json").exists()
    assert len(COCO(str(dest / v2 / "coco" / "instances.json")).imgs) == 12
    assert len(COCO(str(dest / v1 / "coco" / "instances.json")).imgs) == 7


def test_without_incremental_the_plan_stays_fixed(write_job, image_dir, tmp_path):
    out = tmp_path / "out"
    job = load_config(write_job(image_dir, out))
    before = make_plan(job)
    write_scene_set(image_dir, 2, seed=99)  # new files (other names) arrive
    again = make_plan(job)
    assert again.reused and again.shard_ids == before.shard_ids and again.num_images == before.num_images
