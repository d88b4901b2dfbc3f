"""Outputs without models: hand-made Detections (rectangles with known pixels), a planned job, committed shards."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segflow.config import parse_config
from segflow.tasks import rle
from segflow.tasks.outputs.manifest import ShardTables
from segflow.tasks.plan.planner import read_shard_rows
from segflow.tasks.record import Detections
from segflow.tasks.shard.commit import commit_shard

NAMES = {1: "circle", 2: "square"}
H, W = 40, 60


def rect_dets(rects, classes, scores, verdicts=None):
    """Detections whose masks are the given rectangles (x0, y0, x1, y1, exclusive ends); boxes 1 px looser."""
    masks = np.zeros((len(rects), H, W), bool)
    for m, (x0, y0, x1, y1) in zip(masks, rects, strict=True):
        m[y0:y1, x0:x1] = True
    fields = {"predicted_iou": np.full(len(rects), 0.9), "stability_score": np.full(len(rects), 0.95)}
    if verdicts is not None:
        fields["qc_verdict"] = np.array(verdicts, object)
        fields["qc_reasons"] = np.array(["" if v == "pass" else "stability" for v in verdicts], object)
    boxes = np.array([[x0 - 1, y0 - 1, x1 + 1, y1 + 1] for x0, y0, x1, y1 in rects], np.float32)
    return Detections((H, W), boxes, classes, scores, rle.encode_nhw(masks), fields)


def make_job(tmp_path, output, **extra):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(5):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    return parse_config(
        {
            "name": "unit",
            "source": {"url": str(src)},
            "output": output,
            "shard_size": 2,
            "ontology": [{"id": i, "name": n} for i, n in NAMES.items()],
            "stages": {
                "detector": {"kind": "yolo", "weights": "det.pt"},
                "masks": {"kind": "sam", "needs": ["detector"], "weights": "sam.pt"},
            },
            **extra,
        },
        check_files=False,
    )


def commit_planned(job, shard_id, k=1, generation=0, rows=None):
    """Commit a shard of the plan with k rectangles per image (image i's rectangles offset by i); ``rows``: the
    shard's plan rows when the caller has them."""
    t = ShardTables(shard_id, job.category_names())
    for row in read_shard_rows(job.output, shard_id) if rows is None else rows:
        i = row["image_id"]
        rects = [(i + 2 * j, 1, i + 2 * j + 4, 9) for j in range(k)]
        t.add_image(i, row["uri"], row["key"], (H, W), 1, [("masks", "m", None, rect_dets(rects, [1] * k, [0.5] * k))])
    masks, images = t.tables()
    stats = {"images": images.num_rows, "masks": masks.num_rows}
    return commit_shard(job.output, shard_id, {"masks": masks, "images": images}, "fp", stats, generation)[0]


# -- damage, as bit rot, a stray sync tool or a half-finished copy does it (verify and repair tests)


def damage(fs, path: str, how: str) -> None:
    """``flip`` one byte, ``truncate`` to half, or ``delete`` the file at ``path`` on ``fs``."""
    data = fs.cat_file(path)
    if how == "flip":
        data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
    elif how == "truncate":
        data = data[: len(data) // 2]
    if how == "delete":
        fs.rm_file(path)
    else:
        fs.pipe_file(path, data)


def point_at_missing_attempt(fs, output: str, shard_id: str, name: str = "images") -> str:
    """Make the shard's commit record name a file of an attempt that is not there; returns that path."""
    import json

    from segflow.tasks.io.storage import open_fs

    _, rec = open_fs(f"{output}/shards/{shard_id}/_COMMIT.json")
    record = json.loads(fs.cat_file(rec))
    record["files"][name]["path"] = f"shards/{shard_id}/attempts/gone/{name}.parquet"
    fs.pipe_file(rec, json.dumps(record).encode())
    return record["files"][name]["path"]


def add_unplanned_shard(fs, output: str, shard_id: str = "shard-09999", record: bytes = b"{}") -> None:
    """A shard folder the plan does not name, with a commit record."""
    from segflow.tasks.io.storage import open_fs

    _, path = open_fs(f"{output}/shards/{shard_id}/_COMMIT.json")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # no-op on S3
    fs.pipe_file(path, record)
