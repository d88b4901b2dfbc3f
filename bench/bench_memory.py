"""Worker memory as the number of shards grows: RSS after each shard of one in-process worker.

Runs many small shards back to back with the tiny models (loaded once) and
prints RSS after each, and the slope in MB per 1000 images (least squares over
the second half, after warm-up). Asserts nothing.

    python -m bench.bench_memory [--images 600] [--shard-size 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--shard-size", type=int, default=20)
    args = ap.parse_args()

    import numpy as np

    from bench.common import rss_mb
    from segflow.config import JobConfig
    from segflow.demo.synthetic import SHAPE_CLASSES, write_scene_set
    from segflow.tasks.plan.planner import make_plan
    from segflow.tasks.shard.runner import run_shard
    from tests.support.tiny import make_tiny_sam, make_tiny_yolo

    work = Path(tempfile.mkdtemp(prefix="segflow-mem-"))
    write_scene_set(work / "images", args.images, seed=9, size_range=(200, 480))
    job = JobConfig.model_validate(
        {
            "source": {"url": str(work / "images")},
            "output": str(work / "out"),
            "shard_size": args.shard_size,
            "ontology": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
            "stages": {
                "detector": {
                    "kind": "yolo",
                    "weights": str(make_tiny_yolo(work / "y.pt", SHAPE_CLASSES)),
                    "conf": 0.0,
                    "max_det": 8,
                    "imgsz": 256,
                    "device": "cpu",
                },
                "masks": {
                    "kind": "sam",
                    "needs": ["detector"],
                    "weights": str(make_tiny_sam(work / "s.pt")),
                    "device": "cpu",
                },
            },
        }
    )
    plan = make_plan(job)
    xs, ys = [], []
    done = 0
    for sid in plan.shard_ids:
        r = run_shard(job, sid)
        done += r.images
        xs.append(done)
        ys.append(rss_mb())
    half = len(xs) // 2
    slope = np.polyfit(xs[half:], ys[half:], 1)[0] * 1000
    print(
        f"{len(plan.shard_ids)} shards, {done} images; RSS after first shard {ys[0]:.0f} "
        f"MB, after last {ys[-1]:.0f} MB, "
        f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    print(f"rss_slope_mb_per_1k_images (second half): {slope:.2f}")


if __name__ == "__main__":
    main()
