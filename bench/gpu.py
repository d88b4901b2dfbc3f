"""``python -m bench --gpu``: the GPU check, one command, a few minutes on one CUDA device.

Measures, on ``cuda:0``:

* ``gpu_sam_vit_h_images_per_s`` (bf16) and ``..._fp32``: the official SAM ViT-H image
  encoder (architecture of ``sam_vit_h``, random weights: speed does not depend on them),
  batches of 8 images at 1024², best of 5 timed batches after 2 warm-up batches;
* ``gpu_sam_vit_h_utilisation``: bf16 images/s x the encoder's counted FLOPs (bench/capacity.py)
  / the GPU's published dense bf16 peak;
* ``gpu_bf16_mask_iou``: mean mask IoU of the SAM stage at ``dtype: bfloat16`` against
  ``float32``, same images and boxes (the demo's trained detector and SAM on demo scenes);
* ``gpu_e2e_images_per_s``: a whole demo shard (read, decode, YOLO, SAM, manifest, commit)
  on the GPU, images/s.

On a machine without CUDA it says so and measures nothing (exit status 0).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import peak_tflops

#: SAM ViT-H image encoder at 1024², counted by bench/capacity.py (FlopCounterMode, 2 FLOPs per multiply-add)
SAM_VIT_H_GFLOPS = 5961.0


def _encoder_images_per_s(dtype) -> float:
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    enc = sam_model_registry["vit_h"]().image_encoder.to("cuda", dtype).eval()
    x = torch.randn(8, 3, 1024, 1024, device="cuda", dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        for i in range(7):
            torch.cuda.synchronize()
            t = time.perf_counter()
            enc(x)
            torch.cuda.synchronize()
            if i >= 2:
                best = min(best, time.perf_counter() - t)
    del enc
    torch.cuda.empty_cache()
    return 8 / best


def _bf16_mask_iou(work: Path, n_images: int) -> float:
    import numpy as np

    from bench.common import demo_job
    from segflow.demo.synthetic import write_scene_set
    from segflow.tasks import rle
    from segflow.tasks.io.images import decode_image
    from segflow.tasks.stages.cache import get_model

    write_scene_set(work / "gpu-iou", n_images, seed=55, exif_fraction=0.0)
    job = demo_job(work / "gpu-iou", work / "gpu-iou-out", shard_size=n_images)
    images = [decode_image(f.read_bytes()).pixels for f in sorted((work / "gpu-iou").iterdir())]
    det = get_model(job.stages["detector"].model_copy(update={"device": "cuda"}), job.category_names()).adapter
    boxes = det.detect(images)
    masks = {}
    for dtype in ("float32", "bfloat16"):
        stage = job.stages["masks"].model_copy(update={"device": "cuda", "dtype": dtype})
        out = get_model(stage, job.category_names()).adapter.segment(images, boxes)
        masks[dtype] = [(o.rle_counts, o.image_size) for o in out]
    ious = []
    for (a, size), (b, _) in zip(masks["float32"], masks["bfloat16"]):
        for ca, cb in zip(a, b):
            ma, mb = rle.decode(ca, *size), rle.decode(cb, *size)
            ious.append((ma & mb).sum() / max(1, (ma | mb).sum()))
    return float(np.mean(ious)) if ious else float("nan")


def _e2e_images_per_s(work: Path, n_images: int) -> float:
    from bench.common import demo_job
    from segflow.demo.synthetic import write_scene_set
    from segflow.tasks.plan.planner import make_plan
    from segflow.tasks.shard.runner import run_shard

    write_scene_set(work / "gpu-e2e", n_images, seed=77, exif_fraction=0.25)
    best = float("inf")
    for i in range(3):  # the first round loads the models and warms the kernels
        job = demo_job(work / "gpu-e2e", work / f"gpu-e2e-out-{i}", shard_size=n_images)
        stages = {k: v.model_copy(update={"device": "cuda"}) for k, v in job.stages.items()}
        job = job.model_copy(update={"stages": stages})
        sid = make_plan(job).shard_ids[0]
        t = time.perf_counter()
        run_shard(job, sid)
        if i:
            best = min(best, time.perf_counter() - t)
    return n_images / best


def gpu_check(work: Path) -> dict:
    """The GPU figures (see the module docstring); ``{"gpu": None, ...}`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_note": "no CUDA device here: the GPU check measured nothing"}

    name = torch.cuda.get_device_name(0)
    t0 = time.time()
    bf16 = _encoder_images_per_s(torch.bfloat16)
    fp32 = _encoder_images_per_s(torch.float32)
    peak = peak_tflops(name)
    out = {
        "gpu": name,
        "gpu_peak_bf16_tflops": peak,
        "gpu_sam_vit_h_images_per_s": round(bf16, 2),
        "gpu_sam_vit_h_images_per_s_fp32": round(fp32, 2),
        "gpu_sam_vit_h_utilisation": round(bf16 * SAM_VIT_H_GFLOPS / (peak * 1e3), 3) if peak else None,
        "gpu_bf16_mask_iou": round(_bf16_mask_iou(work, 24), 4),
        "gpu_e2e_images_per_s": round(_e2e_images_per_s(work, 96), 2),
    }
    out["gpu_seconds"] = round(time.time() - t0, 1)
    return out
