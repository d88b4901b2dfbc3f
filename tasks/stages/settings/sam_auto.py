"""Settings of the ``sam_auto`` stage (:mod:`segflow.tasks.stages.sam_auto`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings

__all__ = ["SamAutoStage"]


class SamAutoStage(ModelStageSettings):
    """Segment Anything's automatic mode: class-agnostic masks from a point grid (SA-1B defaults), all of class
    `category`."""

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        if self.category in names:
            return []
        hint = f"add it, e.g. {{id: 99, name: {self.category}}}"
        return [(f"stages.{name}.category", f"{self.category!r} is not a class of the ontology; {hint}")]

    kind: Literal["sam_auto"]
    model_type: Literal["auto", "vit_b", "vit_l", "vit_h"] = Field(
        "auto", description="Architecture of a plain SAM state dict; 'auto' infers it."
    )
    category: str = Field("object", description="Ontology class every mask gets.")
    points_per_side: int = Field(32, ge=1, description="Point grid per side (SA-1B: 32).")
    points_per_batch: int = Field(64, ge=1, description="Points per decoder call.")
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0, description="Predicted IoU minimum (SA-1B: 0.88).")
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0, description="Stability score minimum (SA-1B: 0.95).")
    stability_score_offset: float = Field(1.0, ge=0.0, description="Logit offset of the stability score.")
    box_nms_thresh: float = Field(
        0.7, ge=0.0, le=1.0, description="Box IoU above which the lower-scoring mask is dropped."
    )
    crop_n_layers: int = Field(0, ge=0, description="Extra crop layers (0 = whole image only).")
    crop_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="Box NMS between crops.")
    min_mask_region_area: int = Field(
        0, ge=0, description="Remove holes and islands smaller than this (pixels; needs OpenCV)."
    )
