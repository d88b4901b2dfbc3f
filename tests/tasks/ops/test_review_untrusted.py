"""`segflow import-review` treats review files as hostile: each case of docs/security.md runs the installed CLI in its
own process under a time limit and a 2 GiB address-space limit, and must end as one `error:` line naming the task or
annotation, exit 2, with nothing written under ``reviews/``. Built on a model-free finished output (5 images, 60x40)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.formats.untrusted import MAX_BYTES, check_rle, rle_runs
from segflow.tasks.plan.planner import make_plan
from tests.support.outputs import H, W, commit_planned, make_job

LIMIT_BYTES = 2 << 30


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review-untrusted")
    job = make_job(tmp, str(tmp / "out"))
    for sid in make_plan(job).shard_ids:
        commit_planned(job, sid)
    finalize(job)
    import pyarrow.dataset as ds

    images = ds.dataset(str(tmp / "out" / "manifest" / "images.parquet")).to_table().to_pylist()
    return tmp / "out", sorted(images, key=lambda r: r["image_id"])


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def import_review(output, review, fmt, timeout=60):
    """The CLI in its own process: at most ``timeout`` seconds and 2 GiB of address space."""
    code = "import sys; from segflow.flows import cli; sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "import-review", str(output), str(review), "--format", fmt],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limits,
    )


def _rle(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def coco_doc(images, segmentation, image=None):
    im = images[0] if image is None else image
    return {
        "images": [{"id": 1, "file_name": im["file_name"], "width": W, "height": H}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": segmentation, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "circle"}],
    }


def ls_task(image_id, region):
    return [{"id": 3, "data": {"segflow_image_id": image_id}, "annotations": [{"id": 1, "result": [region]}]}]


def ls_region(**over):
    region = {
        "id": "new1",
        "type": "polygonlabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[10, 10], [50, 10], [50, 60]], "polygonlabels": ["circle"]},
    }
    region.update(over)
    return region


def _check_refused(r, output, *needles):
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    assert all(n in lines[0] for n in needles), lines[0]
    assert not (output / "reviews").exists()


def test_rle_whose_runs_exceed_the_image_is_refused_before_pycocotools(finished, tmp_path):
    """pycocotools' iou never returns on it; decode writes past its buffer."""
    output, images = finished
    big = np.zeros((100, 100), bool)
    big[10:90, 10:90] = True
    doc = coco_doc(images, {"size": [H, W], "counts": _rle(big)})
    (tmp_path / "r.json").write_text(json.dumps(doc))
    _check_refused(import_review(output, tmp_path / "r.json", "coco"), output, "annotation 7", "RLE counts")


def test_rle_of_another_size_is_refused(finished, tmp_path):
    """Stored before as a mask of area 1,000,000 on a 60x40 image, which no reader could decode later."""
    output, images = finished
    doc = coco_doc(images, {"size": [1000, 1000], "counts": _rle(np.ones((1000, 1000), bool))})
    (tmp_path / "r.json").write_text(json.dumps(doc))
    _check_refused(import_review(output, tmp_path / "r.json", "coco"), output, "annotation 7", "RLE size")


def test_rle_counts_with_a_quote_cannot_inject_json(finished, tmp_path):
    output, images = finished
    m = np.zeros((H, W), bool)
    m[5:20, 5:30] = True
    evil = _rle(m) + '"}, "area": 1}, {"id": 5, "image_id": 999, "category_id": 77, "segmentation": {"counts": "'
    doc = coco_doc(images, {"size": [H, W], "counts": evil})
    (tmp_path / "r.json").write_text(json.dumps(doc))
    _check_refused(import_review(output, tmp_path / "r.json", "coco"), output, "annotation 7", "malformed")


def test_label_studio_size_far_beyond_the_image_is_refused_before_allocating(finished, tmp_path):
    """200,000 x 200,000 allocated 37 GiB before any check."""
    output, images = finished
    tasks = ls_task(images[0]["image_id"], ls_region(original_width=200_000, original_height=200_000))
    (tmp_path / "r.json").write_text(json.dumps(tasks))
    r = import_review(output, tmp_path / "r.json", "label-studio")
    _check_refused(r, output, "task 0", "region new1", "original_width 200000", f"the image is {W}x{H}")


def test_label_studio_points_far_outside_the_image_are_refused(finished, tmp_path):
    """Points at 3e7 % crashed the process (a segfault in the rasteriser)."""
    output, images = finished
    region = ls_region(value={"points": [[1, 1], [3e7, 2], [5, 3e7]], "polygonlabels": ["circle"]})
    (tmp_path / "r.json").write_text(json.dumps(ls_task(images[0]["image_id"], region)))
    r = import_review(output, tmp_path / "r.json", "label-studio")
    _check_refused(r, output, "task 0", "region new1", "outside the 60x40 image")


def test_a_zip_that_expands_past_the_cap_is_refused_unread(finished, tmp_path):
    """A few hundred KB that expand to more than MAX_BYTES (883 MB before): refused from the archive's sizes."""
    output, _ = finished
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("annotations/instances.json", "w") as f:
        block = b" " * (1 << 20)
        for _ in range(MAX_BYTES // len(block) + 1):
            f.write(block)
    assert path.stat().st_size < 2 << 20
    _check_refused(import_review(output, path, "coco"), output, "bomb.zip", "expands to")


def test_a_label_studio_region_without_its_size_takes_the_run_s(finished, tmp_path):
    """It ended in a KeyError traceback; sizes come from the output's own image records."""
    output, images = finished
    region = ls_region()
    del region["original_width"], region["original_height"]
    (tmp_path / "r.json").write_text(json.dumps(ls_task(images[0]["image_id"], region)))
    r = import_review(output, tmp_path / "r.json", "label-studio")
    assert r.returncode == 0, r.stderr[-3000:]
    changes = json.loads((output / "reviews" / "v0001" / "changes.json").read_text())
    assert changes["counts"]["added"] == 1
    # the added polygon, 10..50 % x 10..60 % of 60x40, is where it was drawn
    import pyarrow.dataset as ds

    rows = ds.dataset(str(output / "reviews" / "v0001" / "masks.parquet")).to_table().to_pylist()
    (added,) = [x for x in rows if x["review_action"] == "added"]
    x, y, w, h = added["bbox"]
    assert abs(x - 6) <= 1 and abs(y - 4) <= 1 and abs(x + w - 30) <= 1 and abs(y + h - 24) <= 1
    import shutil

    shutil.rmtree(output / "reviews")


def test_the_rle_parser_agrees_with_pycocotools_and_refuses_what_it_cannot_hold():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        counts = _rle(m)
        runs = rle_runs(counts, h * w)
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert np.array_equal(flat.reshape(w, h).T, m)
        assert check_rle(counts, h, w, "x")["counts"] == counts
    for bad in ['"', "", "0" * 5, _rle(np.ones((50, 50), bool))]:
        with pytest.raises(ValueError, match="x: RLE counts"):
            check_rle(bad, H, W, "x")
    with pytest.raises(ValueError, match="sum to"):
        check_rle([2399, 2], H, W, "x")
    assert check_rle([2398, 2], H, W, "x")["size"] == [H, W]  # negative control: a valid uncompressed RLE
