"""Settings of the ``yolo`` stage (:mod:`segflow.tasks.stages.yolo`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, Tiled

__all__ = ["YoloStage"]


class YoloStage(ModelStageSettings, Tiled):
    """Detector: ultralytics YOLO (detect or segment checkpoints; boxes are used)."""

    kind: Literal["yolo"]
    conf: float = Field(0.25, ge=0.0, le=1.0, description="Confidence threshold.")
    iou: float = Field(0.7, ge=0.0, le=1.0, description="NMS IoU threshold.")
    imgsz: int = Field(640, ge=32, description="Inference size (long side, multiple of 32).")
    max_det: int = Field(300, ge=1, description="Maximum detections per image.")
    class_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model class name -> ontology name. Unlisted classes map by equal name; "
        "classes not in the ontology are dropped.",
    )

    def input_size(self) -> int:
        return self.imgsz
