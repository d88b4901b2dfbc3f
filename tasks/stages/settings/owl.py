"""Settings of the ``owlv2``, ``owlvit`` and ``grounding_dino`` stages (:mod:`segflow.tasks.stages.owl`,
:mod:`segflow.tasks.stages.gdino`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, Tiled

__all__ = ["OwlStage"]


class OwlStage(ModelStageSettings, Tiled):
    """Open-vocabulary detector: OWLv2, OWL-ViT or Grounding DINO (transformers), queried with the ontology's text
    prompts."""

    kind: Literal["owlv2", "owlvit", "grounding_dino"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:<org>/<name> from "
        "the local Hugging Face cache.",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    batch_size: int = Field(4, ge=1, description="Images per forward pass.")
    conf: float = Field(0.1, ge=0.0, le=1.0, description="Score threshold (sigmoid of the best prompt's logit).")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per ontology class score thresholds (override conf)."
    )
    nms_iou: float = Field(0.5, ge=0.0, le=1.0, description="NMS IoU threshold.")
    agnostic_nms: bool = Field(True, description="NMS across classes (one box per object even when two prompts fire).")
    max_det: int = Field(100, ge=1, description="Maximum detections per image.")
