"""Video propagation (``kind: sam2_video``): peak memory against video length, and speed, against transformers' stock
session loop on the same frames.

Each measurement runs in a fresh process (peak RSS only grows), with a tiny random-weight SAM 2.1 video model
(tests/support/tiny.py; 256-px input, so that a frame's state weighs as a real model's does, relative to the model)
on synthetic 240 x 320 frames and two objects prompted on the first frame:

* ``ours``  -- segflow's :class:`~segflow.tasks.stages.sam2_video.ClipPropagation`: frames enter the session one at a
  time and what the model will not read again is released;
* ``stock`` -- the same streaming loop with nothing released (``model(inference_session=..., frame=...)`` frame
  after frame, as transformers documents it): the session keeps every frame and every output.

Targets (issue #39): ours at 10x the frames <= 1.2x the peak RSS; ours >= 0.95x the stock loop's frames/s; ours <=
0.3x the stock session's peak at 2,000 frames. Prints a table and writes ``bench/results/video.json``.

    python -m bench.bench_video [--frames 2000] [--short 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "video.json"


def _one(kind: str, frames: int, model_dir: str) -> dict:
    import numpy as np
    import torch

    from bench.common import peak_rss_mb
    from segflow.tasks.record import Detections
    from segflow.tasks.stages.sam2_video import VideoPropagator
    from segflow.tasks.stages.settings.sam2_video import Sam2VideoStage

    torch.set_num_threads(1)
    h, w = 240, 320
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[20, 20, 120, 140], [160, 60, 300, 200]], np.float32)
    first = Detections((h, w), boxes=boxes, class_ids=np.array([1, 2]), scores=np.array([0.9, 0.9]))
    none = Detections((h, w), boxes=np.zeros((0, 4)), class_ids=np.zeros(0, np.int64), scores=np.zeros(0))
    stage = Sam2VideoStage(
        kind="sam2_video", weights=model_dir, keyframe_every=10**9, prompt_score=0.0, end_after=10**9, device="cpu"
    )
    adapter = VideoPropagator(stage, model_dir)
    clip = adapter.session()
    if kind == "stock":
        clip._release = lambda frame_idx: None  # type: ignore[method-assign]  # transformers' session as it is
    before = peak_rss_mb()
    t0 = time.perf_counter()
    n_masks = 0
    for t in range(frames):
        frame = np.roll(base, 2 * t, axis=1)  # a panning frame, made on the fly: no video held in memory
        n_masks += len(clip.segment([frame], [first if t == 0 else none])[0])
    seconds = time.perf_counter() - t0
    return {
        "kind": kind,
        "frames": frames,
        "frames_per_s": round(frames / seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_rss_before_mb": round(before, 1),
        "masks": n_masks,
    }


def _run(kind: str, frames: int, model_dir: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_video", "--one", kind, "--frames", str(frames), "--model", model_dir],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--short", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=256, help="the tiny model's input side (a multiple of 64)")
    ap.add_argument("--one", choices=["ours", "stock"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.frames, args.model)))
        return
    from tests.support.tiny import make_tiny_video_model

    work = Path(tempfile.mkdtemp(prefix="segflow-video-")) / "sam2v"
    model = str(make_tiny_video_model(work, "sam2_video", image_size=args.image_size))
    runs = {
        "ours_short": _run("ours", args.short, model),
        "ours_long": _run("ours", args.frames, model),
        "stock_long": _run("stock", args.frames, model),
    }
    ours_s, ours_l, stock_l = runs["ours_short"], runs["ours_long"], runs["stock_long"]
    res = {
        "runs": runs,
        "rss_long_over_short": round(ours_l["peak_rss_mb"] / ours_s["peak_rss_mb"], 3),
        "speed_vs_stock": round(ours_l["frames_per_s"] / stock_l["frames_per_s"], 3),
        "rss_vs_stock": round(ours_l["peak_rss_mb"] / stock_l["peak_rss_mb"], 3),
        "growth_mb_per_1000_frames": {
            "ours": round((ours_l["peak_rss_mb"] - ours_s["peak_rss_mb"]) / (args.frames - args.short) * 1000, 1),
            "stock": round((stock_l["peak_rss_mb"] - stock_l["peak_rss_before_mb"]) / args.frames * 1000, 1),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(f"{'run':<12}{'frames':>8}{'frames/s':>10}{'peak RSS MB':>13}")
    for name, r in runs.items():
        print(f"{name:<12}{r['frames']:>8}{r['frames_per_s']:>10}{r['peak_rss_mb']:>13}")
    print(f"peak RSS at {args.frames} / {args.short} frames: {res['rss_long_over_short']} (target <= 1.2)")
    print(f"frames/s against the stock loop: {res['speed_vs_stock']} (target >= 0.95)")
    print(f"peak RSS against the stock session at {args.frames} frames: {res['rss_vs_stock']} (target <= 0.3)")


if __name__ == "__main__":
    main()
