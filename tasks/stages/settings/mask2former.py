"""Settings of the ``mask2former`` stage (:mod:`segflow.tasks.stages.mask2former`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, label_map_issues

__all__ = ["Mask2FormerStage"]


class Mask2FormerStage(ModelStageSettings):
    """Panoptic model: transformers Mask2Former (things and stuff, non-overlapping segments per image)."""

    kind: Literal["mask2former"]
    weights: str = Field(
        ...,
        description="A segflow Mask2Former checkpoint file, a save_pretrained directory, or "
        "hub:<org>/<name> read from the local Hugging Face cache (never downloaded "
        "at run time).",
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the checkpoint file (of model.safetensors for a directory or hub id)."
    )
    batch_size: int = Field(4, ge=1, description="Images per forward pass.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Model dtype (bfloat16 on GPUs that have it)."
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Minimum class probability of a query to become a segment."
    )
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    overlap_threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="A query keeps its segment only if it wins at least this share of its own mask.",
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model label -> ontology class name. Other labels map by equal name, else to `unmapped`.",
    )
    unmapped: str = Field("drop", description="'drop', or the ontology class name that takes labels with no mapping.")

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        return label_map_issues(name, self.label_map, self.unmapped, names)
