"""Capacity model: FLOPs per image of the official models, and GPU-hours and wall-clock for N images.

    python -m bench.capacity [--images 1000000 10000000] [--gpu H100] [--gpus 8] [--utilisation 0.35]
                             [--boxes 10] [--pipeline yolo11x-seg,sam2.1-large] [--markdown]

FLOPs are **counted here**, not quoted: each official architecture is built from its
published configuration on PyTorch's ``meta`` device (no weights, no download, no
compute) and one forward at the model's usual input size runs under
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add). Parameter
counts come from the same builds. GPU peaks are the vendors' published dense bf16
figures (no sparsity); ``--utilisation`` (share of that peak a stage sustains) is an
assumption until ``python -m bench --gpu`` measures it on the GPU at hand.

GPU-seconds per image = sum over the pipeline's stages of FLOPs / (peak x utilisation);
wall-clock = GPU-hours / GPUs. The other limits (JPEG decode, object-store bandwidth,
Prefect's API) are in docs/scaling.md with the settings that move them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.common import GPU_PEAK_BF16_TFLOPS  # published dense bf16 peaks, TFLOP/s


def _count(fn: Callable[[], object], device: str | None = "meta") -> float:
    """GFLOPs of one call; tensors the call creates go to ``device`` (meta: shapes only, no compute)."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device(device) if device else contextlib.nullcontext(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def _params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def sam1(variant: str) -> dict:
    import torch
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        sam = sam_model_registry[variant]().requires_grad_(False)
        emb = torch.empty(1, 256, 64, 64)
        boxes = torch.empty(1, 4)
    image = _count(lambda: sam.image_encoder(torch.empty(1, 3, 1024, 1024, device="meta")))

    def decode():
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False)

    return {"params_m": _params(sam), "image_gflops": image, "per_box_gflops": _count(decode), "input": "1024²"}


_HIERA = {  # SAM 2.1 image encoders (sam2 repo configs); the image model, without the video memory modules
    "tiny": dict(blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9], hidden_size=96),
    "small": dict(blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13], hidden_size=96),
    "base-plus": dict(
        blocks_per_stage=[2, 3, 16, 3],
        global_attention_blocks=[12, 16, 20],
        hidden_size=112,
        window_positional_embedding_background_size=[14, 14],
        num_attention_heads=2,
    ),
    "large": dict(
        blocks_per_stage=[2, 6, 36, 4],
        global_attention_blocks=[23, 33, 43],
        hidden_size=144,
        window_size_per_stage=[8, 4, 16, 8],
        num_attention_heads=2,
    ),
}


def sam2(variant: str) -> dict:
    import torch
    import transformers as T

    c = dict(_HIERA[variant])
    d = c["hidden_size"]
    heads = c.pop("num_attention_heads", 1)
    c.update(
        embed_dim_per_stage=[d, 2 * d, 4 * d, 8 * d],
        num_attention_heads_per_stage=[heads, 2 * heads, 4 * heads, 8 * heads],
    )
    vision = T.Sam2VisionConfig(
        backbone_config=T.Sam2HieraDetConfig(**c), backbone_channel_list=[8 * d, 4 * d, 2 * d, d]
    )
    with torch.device("meta"):
        m = T.Sam2Model(T.Sam2Config(vision_config=vision)).eval().requires_grad_(False)
    image = _count(lambda: m.get_image_embeddings(torch.empty(1, 3, 1024, 1024, device="meta")))
    with torch.device("meta"):
        emb = m.get_image_embeddings(torch.empty(1, 3, 1024, 1024))
        boxes = torch.empty(1, 1, 4)
    per_box = _count(lambda: m(image_embeddings=emb, input_boxes=boxes, multimask_output=False))
    return {"params_m": _params(m), "image_gflops": image, "per_box_gflops": per_box, "input": "1024²"}


def sam3() -> dict:
    import torch
    import transformers as T

    with torch.device("meta"):
        m = T.Sam3Model(T.Sam3Config()).eval().requires_grad_(False)
    image = _count(lambda: m.get_vision_features(torch.empty(1, 3, 1008, 1008, device="meta")))
    with torch.device("meta"):
        vision = m.get_vision_features(torch.empty(1, 3, 1008, 1008))
    # the prompt decoder reads shapes from tensors (not possible on meta): run it on the CPU with uninitialised
    # weights and zero vision features of the right shapes (FLOPs do not depend on values)
    from transformers.initialization import no_init_weights

    params = _params(m)
    with no_init_weights():  # parameters allocated, not initialised; buffers (position ids, ...) as built
        m = T.Sam3Model(T.Sam3Config()).eval().requires_grad_(False)

    def zeros(x):
        if isinstance(x, (list, tuple)):
            return type(x)(zeros(e) for e in x)
        return torch.zeros(x.shape, dtype=x.dtype) if isinstance(x, torch.Tensor) else x

    vision = type(vision)(**{k: zeros(v) for k, v in vision.items()})
    per_prompt = _count(lambda: m(vision_embeds=vision, input_ids=torch.zeros(1, 32, dtype=torch.long)), device=None)
    return {"params_m": params, "image_gflops": image, "per_prompt_gflops": per_prompt, "input": "1008²"}


def mask2former_swin_l() -> dict:
    import torch
    import transformers as T

    swin = T.SwinConfig(
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    from transformers.initialization import no_init_weights

    with no_init_weights():  # some of its positional tensors are made on the CPU: count a real (unweighted) run
        m = T.Mask2FormerForUniversalSegmentation(T.Mask2FormerConfig(backbone_config=swin, num_queries=200))
    m = m.eval().requires_grad_(False)
    g = _count(lambda: m(pixel_values=torch.zeros(1, 3, 800, 1344)), device=None)
    return {"params_m": _params(m), "image_gflops": g, "input": "800x1344"}


def owlv2_base() -> dict:
    import torch
    import transformers as T

    cfg = T.Owlv2Config(vision_config={"image_size": 960, "patch_size": 16})
    with torch.device("meta"):
        m = T.Owlv2ForObjectDetection(cfg).eval().requires_grad_(False)
        ids = torch.zeros(3, 16, dtype=torch.long)
    g = _count(lambda: m(input_ids=ids, pixel_values=torch.empty(1, 3, 960, 960, device="meta")))
    return {"params_m": _params(m), "image_gflops": g, "input": "960² (3 prompts)"}


def yolo11x_seg() -> dict:
    import torch
    from ultralytics import YOLO

    import segflow.tasks.stages.yolo  # noqa: F401 - ultralytics' offline settings first

    model = YOLO("yolo11x-seg.yaml").model.eval().requires_grad_(False)
    g = _count(lambda: model(torch.zeros(1, 3, 640, 640)), device=None)
    return {"params_m": _params(model), "image_gflops": g, "input": "640²"}


MODELS: dict[str, Callable[[], dict]] = {
    "sam-vit-b": lambda: sam1("vit_b"),
    "sam-vit-l": lambda: sam1("vit_l"),
    "sam-vit-h": lambda: sam1("vit_h"),
    "sam2.1-tiny": lambda: sam2("tiny"),
    "sam2.1-base-plus": lambda: sam2("base-plus"),
    "sam2.1-large": lambda: sam2("large"),
    "sam3": sam3,
    "mask2former-swin-l": mask2former_swin_l,
    "owlv2-base-16": owlv2_base,
    "yolo11x-seg": yolo11x_seg,
}


def gflops_per_image(row: dict, boxes: int) -> float:
    """A stage's GFLOPs for one image: the image encoder, plus the decoder per box (or per prompt)."""
    return row["image_gflops"] + boxes * row.get("per_box_gflops", 0.0) + 3 * row.get("per_prompt_gflops", 0.0)


def plan(rows: dict[str, dict], pipeline: list[str], images: int, gpu: str, gpus: int, util: float, boxes: int):
    flops = sum(gflops_per_image(rows[m], boxes) for m in pipeline) * 1e9
    seconds_per_image = flops / (GPU_PEAK_BF16_TFLOPS[gpu] * 1e12 * util)
    gpu_hours = images * seconds_per_image / 3600
    return {
        "tflops_per_image": flops / 1e12,
        "images_per_gpu_s": 1 / seconds_per_image,
        "gpu_hours": gpu_hours,
        "wall_hours": gpu_hours / gpus,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="segflow capacity model (see the module docstring)")
    ap.add_argument("--images", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--gpu", choices=sorted(GPU_PEAK_BF16_TFLOPS), default="H100")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--utilisation", type=float, default=0.35)
    ap.add_argument("--boxes", type=int, default=10, help="boxes per image for the promptable decoders")
    ap.add_argument("--pipeline", default="yolo11x-seg,sam2.1-large", help="comma-separated model names")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    pipeline = args.pipeline.split(",")
    unknown = [m for m in pipeline if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    rows = {}
    for name, fn in MODELS.items():
        print(f"counting {name} ...", file=sys.stderr, flush=True)
        rows[name] = fn()
    sep = " | " if args.markdown else "  "
    print(
        ("| " if args.markdown else "")
        + sep.join(["model", "input", "params (M)", "image GFLOPs", "decoder GFLOPs"])
        + (" |" if args.markdown else "")
    )
    if args.markdown:
        print("|---|---|---:|---:|---:|")
    for name, r in rows.items():
        dec = r.get("per_box_gflops")
        dec_text = (
            f"{dec:.1f} per box"
            if dec
            else (f"{r['per_prompt_gflops']:.0f} per prompt" if "per_prompt_gflops" in r else "-")
        )
        cells = [name, r["input"], f"{r['params_m']:.1f}", f"{r['image_gflops']:.0f}", dec_text]
        print(("| " if args.markdown else "") + sep.join(cells) + (" |" if args.markdown else ""))
    print()
    print(
        f"pipeline {' -> '.join(pipeline)}, {args.boxes} boxes an image, {args.gpus} x {args.gpu} "
        f"(bf16 peak {GPU_PEAK_BF16_TFLOPS[args.gpu]:.0f} TFLOP/s) at {args.utilisation:.0%} utilisation:"
    )
    for n in args.images:
        p = plan(rows, pipeline, n, args.gpu, args.gpus, args.utilisation, args.boxes)
        print(
            f"  {n:>12,} images: {p['tflops_per_image']:.2f} TFLOP an image, {p['images_per_gpu_s']:.0f} images/s "
            f"a GPU, {p['gpu_hours']:,.1f} GPU-hours, {p['wall_hours']:,.1f} h wall-clock"
        )


if __name__ == "__main__":
    main()
