"""The demo job reading and writing an object store vs local disk: ``python -m bench --only e2e_s3``.

An S3 server (moto's, in its own process on 127.0.0.1, so it does not share this
process's interpreter lock) holds the same demo scenes as a local folder. Each
round runs one whole shard (list, read, decode, YOLO, SAM, manifests, commit) with
source and output on S3, and the same shard on local disk: best of 3 interleaved
rounds, each into a fresh output, plans made before timing.

* ``e2e_s3_vs_local`` = local seconds / S3 seconds (1.0: the object store costs nothing;
  ``runtime.prefetch`` reads and decodes images ahead of the models, so reads overlap compute);
* ``s3_commit_latency_ms`` -- median of 10 shard commits (``commit_shard``: two Parquet files,
  the commit record create-if-absent) to S3, and ``local_commit_latency_ms`` the same on disk.

Latencies to a server on 127.0.0.1 are a floor: a real bucket adds its round trips
(tens of ms per request in-region), which prefetch hides for reads but not for the commit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start")


def _commit_latency(output: str, n: int = 10) -> float:
    import numpy as np
    import pyarrow as pa

    from segflow.tasks.shard.commit import commit_shard

    table = pa.table({"a": np.arange(100), "b": [f"row-{i}" for i in range(100)]})
    times = []
    for i in range(n):
        t = time.perf_counter()
        commit_shard(output, f"shard-{i:05d}", {"images": table, "masks": table}, "bench", {})
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def bench_e2e_s3(work: Path, n_images: int) -> dict:
    import s3fs

    from bench.common import demo_job, timed_interleaved
    from segflow.demo.synthetic import write_scene_set
    from segflow.tasks.plan.planner import make_plan
    from segflow.tasks.shard.runner import run_shard

    port = _free_port()
    server = _moto(port)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret"
    )
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}")
        fs.mkdir("bench-src")
        fs.mkdir("bench-out")
        local = work / "s3-scenes"
        write_scene_set(local, n_images, seed=99, exif_fraction=0.25)
        fs.put(str(local) + "/", "bench-src/images/", recursive=True)
        jobs = {
            "local": [demo_job(local, work / f"s3-local-out-{i}", shard_size=n_images) for i in range(3)],
            "s3": [demo_job(local, work / "unused", shard_size=n_images) for _ in range(3)],
        }
        jobs["s3"] = [
            j.model_copy(
                update={
                    "source": j.source.model_copy(update={"url": "s3://bench-src/images"}),
                    "output": f"s3://bench-out/run-{i}",
                }
            )
            for i, j in enumerate(jobs["s3"])
        ]
        shards = {k: iter([(j, make_plan(j).shard_ids[0]) for j in v]) for k, v in jobs.items()}
        warm = demo_job(local, work / "s3-warm-out", shard_size=n_images)
        run_shard(warm, make_plan(warm).shard_ids[0])  # models loaded, kernels warmed, before any timing
        t = timed_interleaved({k: (lambda k=k: run_shard(*next(shards[k]))) for k in ("local", "s3")}, 3)
        s3_ms = _commit_latency("s3://bench-out/commits")
        local_ms = _commit_latency(str(work / "commits"))
    finally:
        server.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
    return {
        "e2e_s3_vs_local": round(t["local"] / t["s3"], 3),
        "s3_commit_latency_ms": round(s3_ms, 1),
        "local_commit_latency_ms": round(local_ms, 1),
        "e2e_s3_detail": {"images": n_images, "local_s": round(t["local"], 3), "s3_s": round(t["s3"], 3)},
    }
