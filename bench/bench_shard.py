"""Shard throughput: segflow's shard task against a per-box ``SamPredictor.predict`` loop.

Both sides use the same weights, the same images and the same detector boxes,
and run in this one process. Prints images/s of each and their ratio; asserts
nothing (targets are read off the printed figures).

    python -m bench.bench_shard [--images 24] [--boxes 16] [--sam tiny|small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np
import torch

SMALL_SAM_ARCH = dict(
    img_size=512,
    patch_size=16,
    encoder_embed_dim=192,
    encoder_depth=6,
    encoder_num_heads=6,
    encoder_global_attn_indexes=[2, 5],
    window_size=8,
    prompt_embed_dim=128,
    decoder_depth=2,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--boxes", type=int, default=16, help="detector max_det (boxes per image)")
    ap.add_argument("--sam", choices=["tiny", "small"], default="small")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pycocotools import mask as mask_utils
    from segment_anything import SamPredictor

    from segflow.config import JobConfig
    from segflow.demo.synthetic import SHAPE_CLASSES, write_scene_set
    from segflow.tasks.io.images import decode_image
    from segflow.tasks.plan.planner import make_plan
    from segflow.tasks.shard.runner import run_shard
    from segflow.tasks.stages.cache import get_model
    from segflow.tasks.stages.sam_checkpoint import build_sam, load_sam, save_sam_checkpoint
    from tests.support.tiny import TINY_SAM_ARCH, make_tiny_yolo

    work = Path(tempfile.mkdtemp(prefix="segflow-bench-"))
    write_scene_set(work / "images", args.images, seed=7, size_range=(200, 500))
    yolo = make_tiny_yolo(work / "yolo.pt", SHAPE_CLASSES)
    torch.manual_seed(0)
    arch = TINY_SAM_ARCH if args.sam == "tiny" else SMALL_SAM_ARCH
    save_sam_checkpoint(build_sam(arch), arch, work / "sam.pt")
    job = JobConfig.model_validate(
        {
            "source": {"url": str(work / "images")},
            "output": str(work / "out"),
            "shard_size": args.images,
            "ontology": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
            "stages": {
                "detector": {
                    "kind": "yolo",
                    "weights": str(yolo),
                    "conf": 0.0,
                    "max_det": args.boxes,
                    "imgsz": 320,
                    "batch_size": 8,
                    "device": "cpu",
                },
                "masks": {
                    "kind": "sam",
                    "needs": ["detector"],
                    "weights": str(work / "sam.pt"),
                    "batch_size": 4,
                    "device": "cpu",
                },
            },
            "runtime": {"max_workers": 1},
        }
    )
    ontology = job.category_names()
    det = get_model(job.stages["detector"], ontology).adapter
    sam = get_model(job.stages["masks"], ontology).adapter  # load once, outside both timings
    plan = make_plan(job)

    # warm-up (first-call allocations, ultralytics predictor setup)
    files = sorted((work / "images").iterdir())
    warm = [decode_image(files[0].read_bytes()).pixels]
    sam.segment(warm, det.detect(warm))

    t = time.perf_counter()
    result = run_shard(job, plan.shard_ids[0])
    segflow_s = time.perf_counter() - t

    t = time.perf_counter()
    predictor = SamPredictor(load_sam(str(work / "sam.pt")))  # the library's model as loaded (eager attention)
    n_masks = 0
    for f in files:
        img = decode_image(f.read_bytes()).pixels
        dets = det.detect([img])[0]
        predictor.set_image(img)
        for box in dets.boxes:
            m, _, _ = predictor.predict(box=box, multimask_output=False)
            if m[0].any():
                mask_utils.encode(np.asfortranarray(m[0].astype(np.uint8)))
                n_masks += 1
    loop_s = time.perf_counter() - t

    n = len(files)
    print(
        f"shard benchmark: {n} images, up to {args.boxes} boxes each, SAM '{args.sam}' "
        f"({sum(p.numel() for p in sam.model.parameters()) / 1e6:.1f}M params), "
        f"{args.threads} threads"
    )
    print(f"{'pipeline':<34}{'seconds':>9}{'images/s':>10}{'masks':>8}")
    print(f"{'segflow shard task (end to end)':<34}{segflow_s:>9.2f}{n / segflow_s:>10.2f}{result.masks:>8}")
    print(f"{'per-box SamPredictor.predict loop':<34}{loop_s:>9.2f}{n / loop_s:>10.2f}{n_masks:>8}")
    print(f"ratio (segflow / loop images/s): {loop_s / segflow_s:.2f}x")


if __name__ == "__main__":
    main()
