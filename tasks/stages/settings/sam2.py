"""Settings of the ``sam2`` stage (:mod:`segflow.tasks.stages.sam2`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings

__all__ = ["Sam2Stage"]


class Sam2Stage(ModelStageSettings):
    """Promptable segmenter through transformers -- SAM 2.x, EdgeTAM, the SAM 3 tracker or SAM-HQ -- prompted with the
    boxes of the stage it needs."""

    kind: Literal["sam2"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:<org>/<name> from "
        "the local Hugging Face cache (e.g. hub:facebook/sam2.1-hiera-large).",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    family: Literal["auto", "sam2", "edgetam", "sam3_tracker", "sam_hq"] = Field(
        "auto", description="Model family; 'auto' reads model_type from the directory's config.json."
    )
    batch_size: int | Literal["auto"] = Field(  # type: ignore[assignment]  # widened: "auto" picks per device
        "auto", description="Images per image-encoder call; 'auto' = 1 on CPU, 8 on GPU."
    )
    boxes_per_call: int = Field(
        16,
        ge=1,
        description="Prompts per mask-decoder call; their masks are post-processed at full size together, "
        "so this bounds memory (boxes x candidates x H x W floats).",
    )
    mask_threshold: float = Field(0.0, description="Logit threshold of a mask pixel (the models' own: 0).")
    min_mask_area: int = Field(1, ge=0, description="Masks with fewer pixels are dropped (with their detection).")
    min_island_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Remove disconnected pieces smaller than this fraction of the mask's largest piece (0 = keep all).",
    )
    prompt: Literal["box", "point", "box+point"] = Field(
        "box", description="What prompts the model: the detector box, the box centre as a foreground point, or both."
    )
    multimask_output: bool = Field(
        False,
        description="Ask for 3 candidate masks per prompt and keep the one with the highest predicted IoU "
        "(all 3 scores go to the field multimask_ious).",
    )
    mask_margin: float | None = Field(
        0.5,
        ge=0.0,
        description="Upsample each mask only inside its box grown by this fraction of the box's longer side on "
        "every side; pixels outside are background. Inside, the logits are the model's post-processing's own. "
        "null = every mask over the whole image.",
    )
    zoom_context: float | None = Field(
        None,
        ge=0.0,
        description="Segment each box whose square window -- its longer side x (1 + 2 x zoom_context), centred on "
        "it and moved inside the image -- is smaller than the image in a crop of that window, at its own "
        "resolution (one extra encoder pass per such box): for small objects in large images. Off by default.",
    )
