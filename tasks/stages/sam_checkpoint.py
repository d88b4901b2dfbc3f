"""Segment Anything models: build from an architecture, save and load checkpoints.

Weights:

* a plain SAM state dict (the official ``sam_vit_*.pth`` files); the
  architecture comes from ``model_type`` or is inferred from tensor shapes;
* a segflow SAM checkpoint ``{"format": "segflow.sam/1", "arch": {...},
  "state_dict": ...}`` for custom (small) architectures, see :func:`build_sam`.

Checkpoints load with ``torch.load(weights_only=True)`` (:func:`segflow.tasks.io.weights.load_checkpoint`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from segflow.tasks.io.weights import WeightsError, build_to_fit, load_checkpoint

__all__ = ["FORMAT", "OFFICIAL_ARCHS", "build_sam", "save_sam_checkpoint", "load_sam"]

FORMAT = "segflow.sam/1"

#: Architecture of the official ViT-B/L/H SAM models (1024-px input).
OFFICIAL_ARCHS = {
    "vit_b": dict(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]
    ),
    "vit_l": dict(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]
    ),
    "vit_h": dict(
        encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=[7, 15, 23, 31]
    ),
}


def build_sam(arch: dict[str, Any]) -> Any:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given architecture.

    ``arch`` keys (defaults = official SAM): img_size (1024), patch_size (16),
    encoder_embed_dim, encoder_depth, encoder_num_heads,
    encoder_global_attn_indexes, window_size (14), prompt_embed_dim (256),
    decoder_depth (2), decoder_mlp_dim (2048), decoder_num_heads (8),
    iou_head_hidden_dim (256), mask_in_chans (16).
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = dict(
        img_size=1024,
        patch_size=16,
        window_size=14,
        prompt_embed_dim=256,
        decoder_depth=2,
        decoder_mlp_dim=2048,
        decoder_num_heads=8,
        iou_head_hidden_dim=256,
        mask_in_chans=16,
    )
    a.update(arch)
    emb = a["img_size"] // a["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"],
            embed_dim=a["encoder_embed_dim"],
            img_size=a["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a["encoder_num_heads"],
            patch_size=a["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(a["encoder_global_attn_indexes"]),
            window_size=a["window_size"],
            out_chans=a["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(emb, emb),
            input_image_size=(a["img_size"], a["img_size"]),
            mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"],
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def save_sam_checkpoint(sam: Any, arch: dict[str, Any], path: str | Path, half: bool = False) -> None:
    """Write a SAM of a custom architecture as a weights-only segflow checkpoint."""
    import torch

    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in sam.state_dict().items()
    }
    torch.save({"format": FORMAT, "arch": dict(arch), "state_dict": sd}, str(path))


def _infer_official_type(sd: dict) -> str:
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        raise WeightsError("not a SAM state dict (no image_encoder.patch_embed.proj.weight)")
    dim = int(w.shape[0])
    for name, arch in OFFICIAL_ARCHS.items():
        if arch["encoder_embed_dim"] == dim:
            return name
    raise WeightsError(f"cannot infer SAM model type from encoder width {dim}; set model_type")


def load_sam(weights: str, model_type: str = "auto") -> Any:
    """A ``Sam`` in eval mode with weights from a segflow checkpoint or an official state dict."""
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{weights}: expected a state dict or a segflow SAM checkpoint")
    if ckpt.get("format") == FORMAT:
        arch, sd = ckpt["arch"], ckpt["state_dict"]
    else:
        sd = ckpt
        try:
            mt = model_type if model_type != "auto" else _infer_official_type(sd)
        except WeightsError as e:
            raise WeightsError(f"{weights}: {e}") from None
        arch = OFFICIAL_ARCHS[mt]
    if ckpt.get("format") == FORMAT:
        if not isinstance(arch, dict) or not all(
            isinstance(v, (int, float, list)) and not isinstance(v, bool) for v in arch.values()
        ):
            raise WeightsError(f"{weights}: the checkpoint's arch must be a mapping of numbers")
        sam = build_to_fit(lambda: build_sam(arch), sd, weights, "SAM")
    else:
        sam = build_sam(arch)
    try:
        sam.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: weights do not fit the SAM architecture: {str(e).splitlines()[0]}") from None
    return sam.float().eval()
