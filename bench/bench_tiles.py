"""Tiled detection's cost against image area: time per megapixel and peak RSS at 1, 4 and 16 MP.

Each size runs in a fresh process (so its peak RSS is its own): the shipped demo YOLO at imgsz 320 over 640-px
windows (overlap 0.25, no whole-image pass) through the stage call the flow makes (``AdapterSpec.run``), on
images made of the demo's scenes. The model is loaded and warmed up first; then each size is timed on 16 MP of
images in one call (16 images of 1 MP, 4 of 4 MP, one of 16 MP: windows of many images are batched together, as
in a shard), ``--repeat`` times. Targets: seconds per megapixel within 1.3x across the sizes (the cost is linear
in the area: windows, not the image, go to the model) and peak RSS growing with the tile batch, not with the
image (16 MP adds the image itself, 48 MB of pixels, and little else).

    python -m bench.bench_tiles [--sizes 1 4 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

CHILD = r"""
import json, resource, sys, time
import numpy as np
import torch
torch.set_grad_enabled(False)
from segflow.config.schema import YoloStage
from segflow.demo.synthetic import make_scene
from segflow.tasks.stages.registry import ADAPTERS
from segflow.tasks.stages.yolo import YoloDetector
side, repeat, weights = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
tile = make_scene(rng, 1024, 1024).pixels
image = np.tile(tile, (side // 1024 + 1, side // 1024 + 1, 1))[:side, :side].copy()
stage = YoloStage(kind="yolo", weights=weights, conf=0.05, imgsz=320, max_det=50, batch_size=8, device="cpu",
                  tiles={"size": 640, "overlap": 0.25, "whole_image": False, "min_side": 1})
det = YoloDetector(stage, weights, {1: "circle", 2: "square", 3: "triangle"})
count = max(1, round(16e6 / (side * side)))  # the same area at every size: as a shard batches many images' windows
ADAPTERS["yolo"].run(det, [tile], {}, stage)  # warm up
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
for _ in range(repeat):
    out = ADAPTERS["yolo"].run(det, [image] * count, {}, stage)
seconds = (time.perf_counter() - t) / repeat / count
print(json.dumps({"side": side, "megapixels": side * side / 1e6, "seconds": seconds, "images_per_call": count,
                  "windows": out[0].meta.get("tiles"), "detections": len(out[0]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_warmup_mb": rss_before / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", type=float, default=[1, 4, 16], help="megapixels (square images)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tiles.json"))
    args = ap.parse_args(argv)
    weights = str(ROOT / "configs" / "models" / "demo-yolo.pt")
    rows = []
    for mp in args.sizes:
        side = int(round((mp * 1e6) ** 0.5 / 32) * 32)
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(side), str(args.repeat), weights], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-3000:])
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["seconds_per_mp"] = row["seconds"] / row["megapixels"]
        row["ms_per_window"] = 1000 * row["seconds"] / row["windows"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    per_mp = [r["seconds_per_mp"] for r in rows]
    result = {
        "rows": rows,
        "seconds_per_mp_spread": round(max(per_mp) / min(per_mp), 3),
        "peak_rss_growth": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| MP | side | windows | s / image | s / MP | ms / window | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['megapixels']:.1f} | {r['side']} | {r['windows']} | {r['seconds']:.2f} | {r['seconds_per_mp']:.3f} "
            f"| {r['ms_per_window']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print(f"\nseconds per MP, largest / smallest: {result['seconds_per_mp_spread']} (target <= 1.3)")
    print(f"peak RSS, largest / smallest image: {result['peak_rss_growth']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
