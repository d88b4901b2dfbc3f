"""Settings of the ``sam`` stage (:mod:`segflow.tasks.stages.sam`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from segflow.tasks.stages.settings import ModelStageSettings

__all__ = ["SamStage"]


class SamStage(ModelStageSettings):
    """Promptable segmenter: Segment Anything, prompted with the boxes of the stage it needs."""

    kind: Literal["sam"]
    model_type: Literal["auto", "vit_b", "vit_l", "vit_h"] = Field(
        "auto", description="Architecture of a plain SAM state dict; 'auto' infers it."
    )
    batch_size: int | Literal["auto"] = Field(  # type: ignore[assignment]  # widened: "auto" picks per device
        "auto",
        description="Images per image-encoder call, and zoomed boxes' crops per call (`zoom_context`; taken across "
        "the batch's images); 'auto' = 1 on CPU (batching a ViT there is slower), 8 on GPU.",
    )
    boxes_per_call: int | Literal["auto"] = Field(
        "auto",
        description="Boxes per mask-decoder call (bounds decoder memory). 'auto': 64 on GPU; on CPU as many as keep "
        "the per-box image tokens within 16 MB (8 MB with runtime.malloc_tuning off).",
    )

    @field_validator("boxes_per_call")
    @classmethod
    def _bpc(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    min_mask_area: int = Field(1, ge=0, description="Masks with fewer pixels are dropped (with their detection).")
    min_island_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Remove disconnected pieces smaller than this fraction of the mask's largest "
        "piece (0 = keep all, as SAM does).",
    )
    prompt: Literal["box", "point", "box+point"] = Field(
        "box", description="What prompts SAM: the detector box, the box centre as a foreground point, or both."
    )
    multimask_output: bool = Field(
        False,
        description="Ask SAM for 3 candidate masks per prompt and keep the one with the highest "
        "predicted IoU (all 3 scores go to the field multimask_ious).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="'auto': bfloat16 autocast on GPUs that support it (never float16: it breaks "
        "the large SAMs), float32 on CPU. 'bfloat16' pays on CPUs with AVX512-BF16 or AMX; "
        "elsewhere CPU bfloat16 is emulated and slow.",
    )
    attention: Literal["auto", "sdpa", "blocked", "eager"] = Field(
        "auto",
        description="Image-encoder attention, queries in blocks so the relative-position bias "
        "is never built whole: 'sdpa' (fused scaled_dot_product_attention, the "
        "bias as each block's mask), 'blocked' (each block's scores biased and "
        "soft-maxed in place in one reused buffer), 'auto' = blocked for float32 "
        "on a CPU, sdpa otherwise (GPUs, bfloat16), "
        "'eager' (the library's: the whole bias at once). All give the library's "
        "output to float rounding (timings: bench/README.md).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the image encoder (fixed input size; the first batch of "
        "each batch size pays the compilation). For long GPU jobs.",
    )
    mask_margin: float | None = Field(
        0.5,
        ge=0.0,
        description="Compute each mask only inside its box grown by this fraction of the box's "
        "longer side on every side (plus one embedding token); pixels outside are "
        "background. Inside, the logits are SAM's own. Saves the decoder's upscaling "
        "and the upsampling outside the window. null = every mask over the whole image, "
        "as SamPredictor does.",
    )
    zoom_context: float | None = Field(
        None,
        ge=0.0,
        description="Segment each box whose square window -- its longer side x (1 + 2 x zoom_context), "
        "centred on it and moved inside the image -- is smaller than the image "
        "in a crop of that window instead of the whole image: more model pixels "
        "per small object (one extra encoder pass per such box). For SAMs with "
        "a small input size on large images; off (null) by default.",
    )
