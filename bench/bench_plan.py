"""Planning at scale: time and peak memory to plan 1M keys.

Runs each variant in a fresh subprocess (so peak RSS is its own) on the same
synthetic key stream, shaped like an S3 listing (key, size, ETag):

* ``segflow``: the streaming planner (``segflow.tasks.plan.planner.write_plan_rows``), which
  holds one shard of rows at a time -- what ``segflow run`` does for object
  stores, which list page by page in key order;
* ``materialised``: the usual way -- collect the whole listing as info dicts
  (as ``fs.find(detail=True)`` returns it), sort, build one table.

Optionally (``--s3 N``) also lists N real keys from moto's S3 server through
s3fs with segflow's paged lister and reports keys/s.

    python -m bench.bench_plan [--keys 1000000] [--shard-size 1000] [--s3 20000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time


def stream(n: int):
    for i in range(n):
        key = f"camera-{i % 97:02d}/2026/11/{i:09d}.jpg"
        yield f"s3://bucket/raw/{key}", key, 150_000 + i % 5000, f"{i:032x}"


def run_variant(variant: str, n: int, shard_size: int) -> dict:
    from segflow.tasks.plan.planner import write_plan_rows

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    buf = io.BytesIO()
    if variant == "segflow":
        shard_ids, count = write_plan_rows(stream(n), shard_size, buf)
    else:
        listing = {
            f"bucket/raw/{k}": {
                "name": f"bucket/raw/{k}",
                "size": s,
                "ETag": e,
                "type": "file",
                "StorageClass": "STANDARD",
            }
            for _, k, s, e in stream(n)
        }
        items = sorted((f"s3://{p}", p[len("bucket/raw/") :], i["size"], i["ETag"]) for p, i in listing.items())
        del listing
        shard_ids, count = write_plan_rows(iter(items), shard_size, buf)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "keys": count,
        "shards": len(shard_ids),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - base) / 1024, 1),
        "plan_mb": round(len(buf.getvalue()) / 1e6, 1),
    }


def s3_listing(n: int) -> dict:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    for i in range(n):
        client.put_object(Bucket="bench", Key=f"imgs/{i:08d}.jpg", Body=b"x")
    from segflow.config import SourceConfig
    from segflow.tasks.plan.planner import iter_source

    t = time.perf_counter()
    count = sum(1 for _ in iter_source(SourceConfig(url="s3://bench/imgs/")))
    seconds = time.perf_counter() - t
    server.stop()
    return {
        "variant": "s3 paged listing (moto)",
        "keys": count,
        "seconds": round(seconds, 2),
        "keys_per_s": round(count / seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--s3", type=int, default=0, help="also list this many keys from moto's S3 server")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.keys, args.shard_size)))
        return
    rows = []
    for variant in ("segflow", "materialised"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--keys",
                str(args.keys),
                "--shard-size",
                str(args.shard_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"planning {args.keys:,} keys, {args.shard_size} per shard")
    print(f"{'variant':<14}{'seconds':>9}{'peak RSS MB':>13}{'RSS growth MB':>15}{'plan MB':>9}")
    for r in rows:
        print(f"{r['variant']:<14}{r['seconds']:>9}{r['peak_rss_mb']:>13}{r['rss_growth_mb']:>15}{r['plan_mb']:>9}")
    a, b = rows
    print(
        f"memory growth ratio (segflow / materialised): {a['rss_growth_mb'] / max(b['rss_growth_mb'], 0.1):.3f}; "
        f"time ratio: {a['seconds'] / b['seconds']:.2f}"
    )
    if args.s3:
        r = s3_listing(args.s3)
        print(f"{r['variant']}: {r['keys']:,} keys in {r['seconds']}s ({r['keys_per_s']:,} keys/s)")


if __name__ == "__main__":
    main()
