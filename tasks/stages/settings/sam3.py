"""Settings of the ``sam3`` stage (:mod:`segflow.tasks.stages.sam3`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, Tiled

__all__ = ["Sam3Stage"]


class Sam3Stage(ModelStageSettings, Tiled):
    """Instances labeler from text: SAM 3 finds every instance of each ontology class's text prompts (names and
    synonyms) -- detector and segmenter in one model."""

    kind: Literal["sam3"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:facebook/sam3 from the local "
        "Hugging Face cache (gated: accept the licence on the Hub, download once).",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    batch_size: int = Field(1, ge=1, description="Images per vision-encoder call.")
    conf: float = Field(
        0.5, ge=0.0, le=1.0, description="Score threshold: sigmoid(query logit) x sigmoid(presence logit)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-class score thresholds (ontology name -> threshold), overriding conf."
    )
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    nms_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Box NMS within a class (synonyms that found the same object)."
    )
    conflict_iou: float | None = Field(
        0.85,
        ge=0.0,
        le=1.0,
        description="Drop a mask whose IoU with a higher-scoring mask of another class exceeds this (one label "
        "per object); null keeps both for the qc stage's class_conflict rule.",
    )
    max_det: int = Field(100, ge=1, description="Maximum instances per image.")
