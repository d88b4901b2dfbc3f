"""Real Prefect flow runs (prefect_test_harness) on synthetic images with tiny models loaded from files."""

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segflow.flows import cli
from segflow.tasks import rle
from tests.support.cli import segflow_command


def read(output: Path, name: str):
    return (
        ds.dataset(str(output / "manifest" / f"{name}.parquet"), format="parquet")
        .to_table()
        .sort_by("annotation_id" if name == "masks" else "image_id")
    )


@pytest.fixture()
def finished_run(prefect_harness, write_job, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    job = write_job(image_dir, out)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "images labelled : 20 of 22" in printed and f"COCO instances  : {out}/coco/instances.json" in printed
    assert printed.rstrip().endswith(f"report          : {out}/report.html")  # the summary ends with the report
    assert (out / "report.html").exists()
    return job, out


def test_flow_writes_manifests_and_coco(finished_run, image_dir):
    job, out = finished_run
    masks, images = read(out, "masks"), read(out, "images")

    # images table: every source file, good ones labelled, bad ones recorded with reasons
    assert images.num_rows == 22
    rows = {Path(r["image_uri"]).name: r for r in images.to_pylist()}
    assert rows["broken_empty.jpg"]["status"] == "failed" and rows["broken_empty.jpg"]["error"] == "zero-byte file"
    assert rows["broken_truncated.jpg"]["status"] == "failed" and "truncated" in rows["broken_truncated.jpg"]["error"]
    good = [r for r in rows.values() if r["status"] == "ok"]
    assert len(good) == 20 and all(r["error"] is None for r in good)
    for r in good:
        w, h = ImageOps.exif_transpose(Image.open(r["image_uri"])).size  # upright size
        assert (r["width"], r["height"]) == (w, h)
    assert sorted(images["image_id"].to_pylist()) == list(range(1, 23))

    # masks table: unique ids, geometry from the RLE, sizes of the image
    assert masks.num_rows > 0
    ann_ids = masks["annotation_id"].to_pylist()
    assert len(set(ann_ids)) == len(ann_ids)
    by_image = {r["image_id"]: r for r in good}
    for r in masks.to_pylist()[:40]:
        m = rle.decode(r["rle_counts"], r["height"], r["width"])
        img = by_image[r["image_id"]]
        assert (r["width"], r["height"]) == (img["width"], img["height"])
        assert r["area"] == int(m.sum()) > 0
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert r["category_name"] in {"square", "circle", "triangle"} and r["stage"] == "masks"
        assert r["model"].startswith("sam:sam-tiny.pt@sha256:") and r["prompt_model"].startswith(
            "yolo:yolo-tiny.pt@sha256:"
        )
        assert 0 <= r["predicted_iou"] <= 1.5 and r["annotation_id"] // 100000 == r["image_id"]

    # COCO: loads in pycocotools, one annotation per manifest row, accepted by COCOeval
    coco = COCO(str(out / "coco" / "instances.json"))
    assert len(coco.anns) == masks.num_rows
    assert len(coco.imgs) == 20
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"square", "circle", "triangle"}
    a = coco.anns[ann_ids[0]]
    np.testing.assert_array_equal(
        mask_utils.decode(coco.annToRLE(a)),
        rle.decode(masks["rle_counts"][0].as_py(), a["segmentation"]["size"][0], a["segmentation"]["size"][1]),
    )
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(list(coco.anns.values()))), "segm")  # loadRes mutates its input
    ev.evaluate(), ev.accumulate()
    assert ev.eval is not None

    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 22 and summary["failed_images"] == 2 and summary["masks"] == masks.num_rows
    assert summary["labelled_images"] == len({r["image_id"] for r in masks.to_pylist()})


def test_same_job_gives_same_ids_and_rerun_skips_committed_shards(finished_run, write_job, image_dir, tmp_path):
    job, out = finished_run
    first = read(out, "masks")
    commits = {p: p.read_text() for p in out.glob("shards/*/_COMMIT.json")}
    attempts = sorted(out.glob("shards/*/attempts/*"))
    assert len(commits) == 4  # 22 images / 6 per shard

    assert cli.main(["run", str(job), "--no-progress"]) == 0  # same output: nothing is redone
    assert {p: p.read_text() for p in out.glob("shards/*/_COMMIT.json")} == commits
    assert sorted(out.glob("shards/*/attempts/*")) == attempts
    assert read(out, "masks").equals(first)

    out2 = tmp_path / "out2"
    assert cli.main(["run", str(job), "--output", str(out2), "--no-progress"]) == 0
    second = read(out2, "masks")
    for col in ["annotation_id", "image_id", "category_id", "rle_counts", "area"]:
        assert second[col].to_pylist() == first[col].to_pylist()


def test_failed_shard_is_named_and_rerun_alone(prefect_harness, write_job, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    job = write_job(image_dir, out)
    blocker = out / "shards" / "shard-00001"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")  # this shard cannot write its files
    assert cli.main(["run", str(job), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1 shard(s) not committed: shard-00001" in err
    assert not (out / "manifest").exists() and not (out / "coco").exists()  # no partial dataset
    done = {p.parent.name: p.read_text() for p in out.glob("shards/*/_COMMIT.json")}
    assert set(done) == {"shard-00000", "shard-00002", "shard-00003"}

    assert cli.main(["status", str(out)]) == 1
    status = capsys.readouterr().out
    assert "4 shards -- 3 committed, 1 failed, 0 pending" in status
    assert "shard-00001  failed" in status and "NotADirectoryError" in status

    blocker.unlink()
    assert cli.main(["rerun", str(out), "--no-progress"]) == 0  # the job is read back from OUTPUT/job.json
    assert {
        p.parent.name: p.read_text() for p in out.glob("shards/*/_COMMIT.json") if p.parent.name != "shard-00001"
    } == done
    assert read(out, "images").num_rows == 22
    assert not (out / "shards" / "_errors" / "shard-00001.json").exists()
    capsys.readouterr()
    assert cli.main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["committed"] == 4

    # a rerun of a complete output writes nothing
    before = {
        p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file() and p.name != "job.json"
    }
    assert cli.main(["rerun", str(out), "--no-progress"]) == 0
    after = {
        p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file() and p.name != "job.json"
    }
    assert after == before


def test_missing_and_empty_sources_fail_before_any_work(write_job, tmp_path, capsys):
    out = tmp_path / "out"
    job = write_job(tmp_path / "nowhere", out)
    assert cli.main(["run", str(job), "--no-progress"]) == 2
    assert "source.url: not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    job = write_job(empty, out, name="empty.yaml")
    assert cli.main(["run", str(job), "--no-progress"]) == 2
    assert "has no images matching" in capsys.readouterr().err
    assert not (out / "plan").exists()


def test_sha256_mismatch_stops_before_the_flow(write_job, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    job = write_job(image_dir, out, mutate=lambda j: j["stages"]["masks"].update(sha256="0" * 64))
    assert cli.main(["run", str(job), "--no-progress"]) == 2
    assert "stages.masks.weights: sha256 mismatch" in capsys.readouterr().err
    assert not out.exists()


def test_shard_with_too_many_failed_images_does_not_commit(prefect_harness, write_job, tmp_path, capsys):
    src = tmp_path / "mostly-broken"
    src.mkdir()
    for i in range(3):
        (src / f"bad_{i}.jpg").write_bytes(b"")
    from segflow.demo.synthetic import write_scene_set

    write_scene_set(src, 1, seed=3, size_range=(160, 200))
    out = tmp_path / "out"
    job = write_job(src, out, shard_size=4, runtime={"max_workers": 1, "max_failed_fraction": 0.5})
    assert cli.main(["run", str(job), "--no-progress"]) == 1
    assert "3 of 4 images failed (75% > runtime.max_failed_fraction 50%)" in capsys.readouterr().err
    assert not list(out.glob("shards/*/_COMMIT.json"))


@pytest.mark.parametrize("kind", ["yolo_seg", "maskrcnn"])
def test_direct_instance_labelers_give_the_same_outputs(
    kind, prefect_harness, write_job, image_dir, tmp_path, tiny_models
):
    """A one-stage job with a direct instance labeler (+ qc): same manifests and COCO as detector -> SAM."""
    out = tmp_path / "out"

    def mutate(j):
        weights = tiny_models["yolo"] if kind == "yolo_seg" else tiny_models["maskrcnn"]
        extra = {"imgsz": 160} if kind == "yolo_seg" else {}
        j["stages"] = {
            "labeler": {"kind": kind, "weights": str(weights), "conf": 0.0, "max_det": 4, "device": "cpu", **extra},
            "qc": {
                "kind": "qc",
                "needs": ["labeler"],
                "predicted_iou": {"min": 0.0, "action": "off"},
                "stability": {"min": 0.0, "action": "off"},
            },
        }

    assert cli.main(["run", str(write_job(image_dir, out, mutate=mutate)), "--no-progress"]) == 0
    masks = read(out, "masks")
    assert masks.num_rows > 0
    rows = masks.to_pylist()
    assert {r["stage"] for r in rows} == {"labeler"} and all(
        r["model"].startswith(f"{kind}:") and r["prompt_model"] is None for r in rows
    )
    assert all(r["qc_verdict"] in ("pass", "flag", "reject") for r in rows)
    coco = COCO(str(out / "coco" / "instances.json"))
    assert len(coco.anns) == sum(r["qc_verdict"] == "pass" for r in rows)


def test_open_vocabulary_detector_prompts_sam_in_a_flow(prefect_harness, write_job, image_dir, tmp_path, tiny_models):
    """owlv2 (tiny, random) -> SAM: text prompts from the ontology, classes only from the ontology."""
    out = tmp_path / "out"

    def mutate(j):
        j["ontology"] = [
            {"id": 7, "name": "forklift", "prompts": ["forklift", "fork lift truck"]},
            {"id": 9, "name": "pallet"},
        ]
        j["stages"]["detector"] = {
            "kind": "owlv2",
            "weights": str(tiny_models["owlv2"]),
            "device": "cpu",
            "conf": 0.0,
            "max_det": 3,
        }

    assert cli.main(["run", str(write_job(image_dir, out, mutate=mutate)), "--no-progress"]) == 0
    masks = read(out, "masks").to_pylist()
    assert (
        masks
        and {m["category_id"] for m in masks} <= {7, 9}
        and all(m["prompt_model"].startswith("owlv2:") for m in masks)
    )


def test_a_damaged_commit_fails_with_one_clear_message(finished_run):
    """Integrity errors end as one line naming the shard and file (plus the verify hint), no traceback."""
    import os
    import subprocess

    from prefect.settings import PREFECT_API_URL

    _, out = finished_run
    masks = sorted((out / "shards").glob("shard-00000/attempts/*/masks.parquet"))[0]
    data = bytearray(masks.read_bytes())
    data[len(data) // 2] ^= 0xFF
    masks.write_bytes(bytes(data))
    (out / "summary.json").unlink()  # finalize runs again and reads the damaged file
    env = {**os.environ, "SEGFLOW_DEBUG": "0", "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test server
    cmd = [segflow_command(), "rerun", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shard-00000" in errors[0] and "does not match its commit record" in errors[0]
    assert f"segflow verify {out}" in r.stderr
