"""A simulated million-image job: 1,000 committed shards, then finalize, status, an export and the gold-set check.

Rows are synthetic but real: every mask row carries a COCO RLE string of a real
mask (a pool of random ellipses at 640x480, encoded by pycocotools), QC verdicts
and reasons, and goes through segflow's own commit code (``commit_shard``: Parquet,
sha256, create-if-absent record). The job has a ``qc`` stage (so finalize writes the
QC summaries and quarantine) and a gold set of 1,000 of the images (so finalize
evaluates against it).

Each size is simulated, then each step runs in a fresh subprocess, so its peak RSS
(``ru_maxrss``) is its own:

* ``finalize`` -- merged manifests, COCO instances, review band, QC report, gold-set quality, summary;
* ``status`` -- ``segflow status OUTPUT --json``;
* ``export_coco`` -- ``segflow export OUTPUT DEST --format coco``;
* ``report`` -- ``segflow report OUTPUT``: report.html drawn again from what finalize saved (its samples are
  bounded, so its time should not grow with the rows; the simulated rows name no real image files, so the
  mosaics' tiles say "image unavailable": image reads are left out of this figure).

    python -m bench.bench_scale [--shards 1000] [--images-per-shard 1000] [--rows 1000000 10000000]

Writes ``scale_*`` keys into bench/results/latest.json (``--out``) and prints them:
``scale_finalize_peak_rss_mb`` (at the largest size), ``scale_finalize_rss_growth`` and
``scale_finalize_time_growth`` (largest / smallest), per-step seconds and RSS per size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import LATEST, environment, save_results

H, W = 480, 640
CLASSES = ["car", "person", "bicycle"]


def _pool(n: int = 256):
    """Real masks: (rle_counts, bbox xywh, area, shape values) of random ellipses."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from segflow.tasks.evaluate.novelty import shape_features

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    out = []
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(40, H - 40), rng.uniform(40, W - 40), rng.uniform(5, 40), rng.uniform(5, 60)
        m = np.asfortranarray((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8))
        r = mask_utils.encode(m)
        counts, box = r["counts"].decode(), [float(v) for v in mask_utils.toBbox(r)]
        shape = shape_features([counts], H, W, np.array([box]))[0].tolist()  # the manifest's shape column
        out.append((counts, box, int(mask_utils.area(r)), shape))
    return out


def job_dict(source: str, output: str, gold: str, shard_size: int) -> dict:
    return {
        "name": "scale-sim",
        "source": {"url": source},
        "output": output,
        "shard_size": shard_size,
        "ontology": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)],
        "stages": {
            "detector": {"kind": "yolo", "weights": "unused.pt", "device": "cpu"},
            "masks": {"kind": "sam", "needs": ["detector"], "weights": "unused.pt", "device": "cpu"},
            "qc": {"kind": "qc", "needs": ["masks"]},
        },
        "gold_set": gold,
    }


def _nulls(schema: Any, names: tuple[str, ...], n: int) -> dict[str, Any]:
    """Null columns ``names`` of ``schema`` (the video columns: the simulated images are still images)."""
    import pyarrow as pa

    return {c: pa.nulls(n, schema.field(c).type) for c in names}


def simulate(out: Path, shards: int, per_shard: int, rows: int) -> dict:
    """Plan, then commit ``shards`` shards of ``per_shard`` images and ``rows`` masks in all; write the gold set."""
    import numpy as np
    import pyarrow as pa

    from segflow.config import JobConfig
    from segflow.tasks.outputs.manifest import ANNOTATION_ID_STRIDE, IMAGES_SCHEMA, MASKS_SCHEMA
    from segflow.tasks.plan.planner import _fingerprint, plan_paths, write_plan_rows
    from segflow.tasks.shard.commit import commit_shard

    t0 = time.time()
    pool = _pool()
    source, gold = out / "src", out / "gold.json"
    source.mkdir(parents=True)
    job = JobConfig.model_validate(job_dict(str(source), str(out / "out"), str(gold), per_shard))
    output = job.output
    os.makedirs(output)
    (Path(output) / "job.json").write_text(json.dumps(job.model_dump(mode="json")))
    n_images = shards * per_shard
    keys = ((str(source / f"{i:08d}.jpg"), f"{i:08d}.jpg", 100_000, None) for i in range(n_images))
    parquet, meta = plan_paths(output)
    os.makedirs(os.path.dirname(parquet), exist_ok=True)
    with open(parquet, "wb") as f:
        shard_ids, _ = write_plan_rows(keys, per_shard, f)
    Path(meta).write_text(
        json.dumps(
            {
                "fingerprint": _fingerprint(job.source, job.shard_size),
                "source": job.source.model_dump(mode="json", exclude={"storage_options"}),
                "shard_size": per_shard,
                "num_images": n_images,
                "num_shards": len(shard_ids),
                "shard_ids": shard_ids,
                "generations": [{"generation": 0, "num_images": n_images, "shard_ids": shard_ids, "planned_at": ""}],
            }
        )
    )
    per_image = rows // n_images
    rng = np.random.default_rng(1)
    verdicts = np.array(["pass", "flag", "reject"], object)
    for s, sid in enumerate(shard_ids):
        ids = np.arange(s * per_shard + 1, (s + 1) * per_shard + 1)
        n = len(ids) * per_image
        pick = rng.integers(0, len(pool), n)
        image_id = np.repeat(ids, per_image)
        k = np.tile(np.arange(1, per_image + 1), len(ids))
        uris = np.array([str(source / f"{i - 1:08d}.jpg") for i in ids], object)
        cat = rng.integers(1, len(CLASSES) + 1, n).astype(np.int32)
        qv = verdicts[rng.choice(3, n, p=[0.8, 0.15, 0.05])]
        masks = pa.table(
            {
                "annotation_id": image_id * ANNOTATION_ID_STRIDE + k,
                "image_id": image_id,
                "image_uri": np.repeat(uris, per_image),
                "width": np.full(n, W, np.int32),
                "height": np.full(n, H, np.int32),
                "category_id": cat,
                "category_name": np.array(CLASSES, object)[cat - 1],
                "score": rng.uniform(0.05, 1, n).astype(np.float32),
                "predicted_iou": rng.uniform(0.5, 1, n).astype(np.float32),
                "stability_score": rng.uniform(0.5, 1, n).astype(np.float32),
                "bbox": [pool[p][1] for p in pick],
                "area": np.array([pool[p][2] for p in pick], np.int64),
                "rle_counts": [pool[p][0] for p in pick],
                "prompt_box": [[0.0, 0.0, 10.0, 10.0]] * n,
                "stage": ["masks"] * n,
                "model": ["sam:sim"] * n,
                "prompt_model": ["yolo:sim"] * n,
                "shard_id": [sid] * n,
                "qc_verdict": qv,
                "qc_reasons": [[] if v == "pass" else ["low_stability"] for v in qv],
                "shape": [pool[p][3] for p in pick],
                **_nulls(MASKS_SCHEMA, ("video", "frame_index", "timestamp_s", "track_id"), n),  # still images
            },
            schema=MASKS_SCHEMA,
        )
        images = pa.table(
            {
                "image_id": ids,
                "image_uri": uris,
                "file_name": [f"{i - 1:08d}.jpg" for i in ids],
                "width": np.full(len(ids), W, np.int32),
                "height": np.full(len(ids), H, np.int32),
                "status": ["ok"] * len(ids),
                "error": [None] * len(ids),
                "exif_orientation": [None] * len(ids),
                "num_masks": np.full(len(ids), per_image, np.int32),
                "shard_id": [sid] * len(ids),
                "qc_flags": [None] * len(ids),
                "brightness": rng.uniform(0.3, 0.7, len(ids)).astype(np.float32),
                "contrast": rng.uniform(0.1, 0.3, len(ids)).astype(np.float32),
                "sharpness": rng.uniform(0.01, 0.05, len(ids)).astype(np.float32),
                "jpeg_quality": np.full(len(ids), 90, np.float32),
                **_nulls(IMAGES_SCHEMA, ("video", "frame_index", "timestamp_s"), len(ids)),
            },
            schema=IMAGES_SCHEMA,
        )
        commit_shard(output, sid, {"images": images, "masks": masks}, "scale-sim", {"images": len(ids)})
    # the gold set: 1,000 images, each with its first mask as a human label (so the match is not trivially empty)
    gold_images, gold_anns = [], []
    for i in range(1, 1001):
        counts, bbox, area, _ = pool[i % len(pool)]
        gold_images.append({"id": i, "file_name": f"{i - 1:08d}.jpg", "width": W, "height": H})
        gold_anns.append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1 + i % 3,
                "iscrowd": 0,
                "bbox": bbox,
                "area": area,
                "segmentation": {"size": [H, W], "counts": counts},
            }
        )
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    gold.write_text(json.dumps({"images": gold_images, "annotations": gold_anns, "categories": cats}))
    return {"seconds": round(time.time() - t0, 1), "images": n_images, "rows": n_images * per_image}


def _step(name: str, out: Path) -> dict:
    """One measured step in a fresh process: seconds and peak RSS (MB)."""
    code = f"""
import json, resource, sys, time
t = time.perf_counter()
name, out = {name!r}, {str(out)!r}
if name == "finalize":
    from segflow.config import JobConfig
    from segflow.tasks.finalize.finalizer import finalize
    job = JobConfig.model_validate(json.load(open(out + "/out/job.json")))
    finalize(job, force=True)
elif name == "status":
    from segflow.flows import cli
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["status", out + "/out", "--json"]) == 0
elif name == "report":
    from segflow.tasks.report import write_report
    write_report(out + "/out")
else:
    from segflow.tasks.formats import export
    export(out + "/out", "coco", out + "/export")
print(json.dumps({{"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{name} failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--images-per-shard", type=int, default=1000)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", default=str(LATEST), help="results file the scale_* keys are merged into")
    ap.add_argument("--work", help="folder for the simulated outputs (default: a temporary one, removed)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="segflow-scale-"))
    by_size = {}
    try:
        for rows in args.rows:
            d = work / f"rows-{rows}"
            shutil.rmtree(d, ignore_errors=True)
            sim = simulate(d, args.shards, args.images_per_shard, rows)
            print(f"{rows:,} rows: simulated in {sim['seconds']}s", file=sys.stderr, flush=True)
            steps = {name: _step(name, d) for name in ("finalize", "status", "export_coco", "report")}
            print(f"  {steps}", file=sys.stderr, flush=True)
            by_size[rows] = {"simulate": sim, **steps}
            shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    lo, hi = min(by_size), max(by_size)
    f_lo, f_hi = by_size[lo]["finalize"], by_size[hi]["finalize"]
    results = {
        "scale_finalize_peak_rss_mb": f_hi["peak_rss_mb"],
        "scale_finalize_rss_growth": round(f_hi["peak_rss_mb"] / f_lo["peak_rss_mb"], 3),
        "scale_finalize_time_growth": round(f_hi["seconds"] / f_lo["seconds"], 2),
        "scale_status_seconds": by_size[hi]["status"]["seconds"],
        "scale_report_seconds": by_size[hi]["report"]["seconds"],
        "scale_detail": {
            "shards": args.shards,
            "images": args.shards * args.images_per_shard,
            "by_rows": {str(k): v for k, v in by_size.items()},
            "self_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    }
    print(json.dumps(results, indent=1))
    save_results(Path(args.out), results, environment())


if __name__ == "__main__":
    main()
