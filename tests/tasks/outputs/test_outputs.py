"""Unit tests of the output path without models: commit, manifest, COCO, status, QC report, finalize.

Shards are built from hand-made Detections (rectangles with known pixels), so
every expected value is computed here from the rectangles, not read back from
the code under test.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segflow.tasks.evaluate.acceptance import apply_acceptance
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.ops.status import shard_states, summarize_states
from segflow.tasks.outputs.coco import write_instances
from segflow.tasks.outputs.manifest import ANNOTATION_ID_STRIDE, ShardTables
from segflow.tasks.outputs.qc_report import QcAccumulator, write_qc_report
from segflow.tasks.plan.planner import make_plan
from segflow.tasks.records import VERDICT_COLOURS, rgb
from segflow.tasks.shard.commit import (
    IncompleteRunError,
    ShardConflict,
    clear_error,
    commit_shard,
    read_commit,
    read_committed_table,
    read_error,
    record_failure,
)
from tests.support.outputs import NAMES, H, W, commit_planned, make_job, rect_dets


def test_manifest_rows_ids_and_mask_geometry():
    t = ShardTables("shard-00000", NAMES)
    n = t.add_image(
        7,
        "mem://a.png",
        "a.png",
        (H, W),
        1,
        [("masks", "sam:x", "yolo:y", rect_dets([(2, 3, 12, 8), (20, 10, 30, 30)], [1, 2], [0.9, 0.4]))],
    )
    t.add_failed_image(8, "mem://b.png", "b.png", "zero-byte file")
    masks, images = t.tables()
    assert n == 2 and masks.num_rows == 2
    assert masks["annotation_id"].to_pylist() == [7 * ANNOTATION_ID_STRIDE + 1, 7 * ANNOTATION_ID_STRIDE + 2]
    assert masks["category_name"].to_pylist() == ["circle", "square"]
    assert masks["bbox"].to_pylist() == [[2, 3, 10, 5], [20, 10, 10, 20]]  # from the mask, not the looser box
    assert masks["area"].to_pylist() == [50, 200]
    assert masks["prompt_box"].to_pylist()[0] == [1, 2, 13, 9]
    assert images["status"].to_pylist() == ["ok", "failed"] and images["error"].to_pylist()[1] == "zero-byte file"
    assert images["num_masks"].to_pylist() == [2, 0] and images["width"].to_pylist() == [W, None]


def test_commit_is_create_if_absent_and_reads_are_verified(tmp_path):
    out = str(tmp_path / "out")
    t = ShardTables("s0", NAMES)
    t.add_image(1, "u", "k", (H, W), 1, [("masks", "m", None, rect_dets([(0, 0, 5, 5)], [1], [0.5]))])
    masks, images = t.tables()
    record_failure(out, "s0", "boom")
    assert read_error(out, "s0")["error"] == "boom"
    first, won = commit_shard(out, "s0", {"masks": masks, "images": images}, "fp", {"images": 1, "masks": 1})
    assert won and read_error(out, "s0") is None  # a commit clears the shard's last failure
    assert first["files"]["masks"]["rows"] == 1 and len(first["files"]["masks"]["sha256"]) == 64
    second, won2 = commit_shard(out, "s0", {"masks": masks, "images": images}, "fp", {"images": 1, "masks": 1})
    assert not won2 and second["attempt"] == first["attempt"] == read_commit(out, "s0")["attempt"]
    assert len(list((tmp_path / "out" / "shards" / "s0" / "attempts").iterdir())) == 1  # the loser cleaned up
    assert read_committed_table(out, first, "masks").equals(masks)
    path = tmp_path / "out" / first["files"]["masks"]["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardConflict, match="does not match its commit record"):
        read_committed_table(out, first, "masks")
    clear_error(out, "s0")  # clearing an absent error is fine


def verdict_dets():
    """Three masks, one per QC verdict."""
    boxes = [(2, 3, 12, 8), (20, 10, 30, 30), (40, 5, 50, 15)]
    return rect_dets(boxes, [1, 2, 2], [0.9, 0.4, 0.3], verdicts=["pass", "flag", "reject"])


def test_coco_export_keeps_verdicts_and_loads_in_pycocotools(tmp_path):
    t = ShardTables("s0", NAMES)
    dets = verdict_dets()
    t.add_image(1, "mem://a.png", "a.png", (H, W), 1, [("qc", "m", None, dets)])
    t.add_failed_image(2, "mem://b.png", "b.png", "bad")
    masks, images = t.tables()
    masks = apply_acceptance(masks, None)  # no calibration: QC pass -> accept, flag -> review, reject -> reject
    assert masks["verdict"].to_pylist() == ["accept", "review", "reject"]
    url = str(tmp_path / "coco.json")
    counts = write_instances(url, NAMES, [(images, masks)], keep_verdicts=("accept",))
    coco = COCO(url)
    assert counts["annotations"] == 1 and counts["images"] == 1 and list(coco.imgs) == [1]
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert ann["bbox"] == [2, 3, 10, 5] and ann["area"] == 50 and coco.annToMask(ann).sum() == 50
    counts = write_instances(url, NAMES, [(images, masks)], keep_verdicts=("accept", "review"))
    assert counts["annotations"] == 2 and sorted(COCO(url).getCatIds()) == [1, 2]


def _calibration(**classes):
    """A calibration dict (detector score) with ``name=(threshold, review_threshold)`` per class."""
    ids = {n: i for i, n in NAMES.items()}
    return {
        "score": "detector",
        "ontology": {str(i): n for i, n in NAMES.items()},
        "classes": {
            n: {"category_id": ids[n], "status": "calibrated", "threshold": t, "review_threshold": r}
            for n, (t, r) in classes.items()
        },
    }


def test_calibrated_verdicts_keep_qc_rejects_and_band_the_rest():
    t = ShardTables("s0", NAMES)
    boxes = [(2, 3, 12, 8), (20, 10, 30, 30), (40, 5, 50, 15), (2, 20, 10, 28)]
    dets = rect_dets(boxes, [1, 2, 2, 1], [0.9, 0.4, 0.3, 0.95], verdicts=["pass", "pass", "reject", "flag"])
    t.add_image(1, "mem://a.png", "a.png", (H, W), 1, [("qc", "m", None, dets)])
    masks, _ = t.tables()
    out = apply_acceptance(masks, _calibration(**{NAMES[1]: (0.5, 0.2), NAMES[2]: (0.5, 0.35)}))
    assert out["verdict"].to_pylist() == ["accept", "review", "reject", "review"]
    assert out["verdict_reasons"].to_pylist() == [[], ["below_accept"], ["stability", "below_review"], ["stability"]]
    assert out["calibrated_score"].to_pylist() == pytest.approx([0.9, 0.4, 0.3, 0.95])
    low = apply_acceptance(masks, _calibration(**{NAMES[1]: (0.5, 0.2), NAMES[2]: (0.5, 0.45)}))
    assert low["verdict"].to_pylist()[1] == "reject" and low["verdict_reasons"].to_pylist()[1] == ["below_review"]
    none = _calibration(**{NAMES[1]: (None, 0.2)})  # class 1 uncalibrated, class 2 absent from the calibration
    assert apply_acceptance(masks, none)["verdict"].to_pylist() == ["review", "review", "reject", "review"]
    assert apply_acceptance(masks, none)["verdict_reasons"].to_pylist()[0] == ["uncalibrated"]


def test_qc_report_counts_verdicts_and_draws_outlined_sheets(tmp_path):
    t = ShardTables("s0", NAMES)
    dets = verdict_dets()
    img = tmp_path / "a.png"
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(img)
    t.add_image(1, str(img), "a.png", (H, W), 1, [("qc", "m", None, dets)])
    masks, images = t.tables()
    acc = QcAccumulator(samples_per_verdict=1)
    acc.add("s0", apply_acceptance(masks, None), images)
    out = write_qc_report(str(tmp_path / "out"), acc, "job")
    assert out["verdicts"] == {"accept": 1, "review": 1, "reject": 1} and out["rules"]["stability"] == 2
    qc = tmp_path / "out" / "qc"
    assert sorted(p.name for p in (qc / "sheets").iterdir()) == ["accepted.jpg", "rejected.jpg", "review.jpg"]
    accept, reject = rgb(VERDICT_COLOURS["accept"]), rgb(VERDICT_COLOURS["reject"])
    for name, colour, other in (("accepted", accept, reject), ("rejected", reject, accept)):
        tile = np.asarray(Image.open(qc / "sheets" / f"{name}.jpg").convert("RGB"))[:200, :200].astype(int)
        outline = np.abs(tile - colour).max(-1) <= 40  # JPEG (quality 85) moves a colour a little
        assert outline.sum() > 100, name  # the mask's edge is drawn in the verdict's colour
        assert (np.abs(tile - other).max(-1) <= 40).sum() < outline.sum() / 10, name  # not in the other's
        assert not outline[tile.shape[0] // 2 - 5 : tile.shape[0] // 2 + 5, 95:105].all()  # the inside is not
    summary = pq.read_table(qc / "summary.parquet").to_pylist()
    assert sum(r["count"] for r in summary) == 3 and "| stability | 2 |" in (qc / "report.md").read_text()


@pytest.fixture()
def planned(tmp_path):
    job = make_job(tmp_path, str(tmp_path / "out"))
    return job, make_plan(job)


def test_status_lists_committed_failed_and_pending(planned):
    job, plan = planned
    assert plan.shard_ids == ["shard-00000", "shard-00001", "shard-00002"]
    commit_planned(job, "shard-00000", k=2)
    record_failure(job.output, "shard-00001", "out of memory")
    states = {s["shard_id"]: s for s in shard_states(job.output)}
    assert [states[s]["state"] for s in plan.shard_ids] == ["committed", "failed", "pending"]
    assert states["shard-00001"]["error"] == "out of memory"
    counts = summarize_states(list(states.values()))
    assert counts == {"committed": 1, "failed": 1, "pending": 1, "images_committed": 2, "masks_committed": 4}


def test_finalize_merges_committed_shards_once(planned):
    job, plan = planned
    commits = [commit_planned(job, s, k=1 + n % 2) for n, s in enumerate(plan.shard_ids[:2])]
    with pytest.raises(IncompleteRunError, match="shard-00002"):
        finalize(job)
    commits.append(commit_planned(job, "shard-00002"))
    summary = finalize(job)
    out = job.output
    assert summary.images == 5 and summary.masks == 2 * 1 + 2 * 2 + 1
    for c in commits:  # images parts are the committed bytes; masks parts the committed rows + their verdicts
        part = f"{out}/manifest/images.parquet/part-{c['shard_id']}.parquet"
        assert open(part, "rb").read() == open(f"{out}/{c['files']['images']['path']}", "rb").read()
        masks = pq.read_table(f"{out}/manifest/masks.parquet/part-{c['shard_id']}.parquet")
        committed = pq.read_table(f"{out}/{c['files']['masks']['path']}")
        assert masks.drop_columns(["verdict", "verdict_reasons", "calibrated_score", "novelty"]).equals(committed)
        assert set(masks["verdict"].to_pylist()) == {"accept"} and masks["calibrated_score"].null_count == len(masks)
    coco = COCO(f"{out}/coco/instances.json")
    assert len(coco.anns) == summary.masks and len(coco.imgs) == 5
    stamp = open(f"{out}/summary.json").read()
    assert (
        finalize(job).to_dict() == json.loads(stamp) and open(f"{out}/summary.json").read() == stamp
    )  # nothing rewritten


class CountingMemoryFS(MemoryFileSystem):
    """fsspec's memory store, counting whole-file reads per path (the storage layer, not segflow's code)."""

    protocol = "countmem"
    reads: Counter = Counter()

    def cat_file(self, path, start=None, end=None, **kwargs):
        CountingMemoryFS.reads[self._strip_protocol(path)] += 1
        return super().cat_file(path, start, end, **kwargs)


def test_finalize_reads_each_committed_file_once_and_measures_gold(tmp_path):
    fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)
    gold = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H} for i in range(5)],
        "categories": [{"id": i, "name": n} for i, n in NAMES.items()],
        "annotations": [],
    }
    for i in range(5):  # image_id i + 1 gets one rectangle at x = i + 1 (as commit_planned draws it)
        m = np.zeros((H, W), np.uint8, order="F")
        m[1:9, i + 1 : i + 5] = 1
        rle_obj = mask_utils.encode(np.asfortranarray(m))
        gold["annotations"].append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": int(m.sum()),
                "bbox": [i + 1, 1, 4, 8],
                "segmentation": {"size": [H, W], "counts": rle_obj["counts"].decode()},
            }
        )
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    job = make_job(tmp_path, f"countmem://run-{uuid.uuid4().hex}", gold_set=str(tmp_path / "gold.json"))
    commits = [commit_planned(job, s) for s in make_plan(job).shard_ids]
    CountingMemoryFS.reads.clear()
    summary = finalize(job)
    data_files = [f"{job.output}/{e['path']}" for c in commits for e in c["files"].values()]
    assert len(data_files) == 6 and all(CountingMemoryFS.reads[f] == 1 for f in data_files), CountingMemoryFS.reads
    assert summary.quality["mask_ap50"] == 1.0 and summary.quality["gold_instances"] == 5
