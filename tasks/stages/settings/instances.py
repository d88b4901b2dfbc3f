"""Settings of the ``yolo_seg`` and ``maskrcnn`` stages (:mod:`segflow.tasks.stages.instances`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings, Tiled
from segflow.tasks.stages.settings.yolo import YoloStage

__all__ = ["YoloSegStage", "MaskRcnnStage"]


class YoloSegStage(YoloStage):
    """Direct instance labeler: ultralytics YOLO segmentation checkpoint (boxes and masks in one model); settings as
    ``yolo``."""

    kind: Literal["yolo_seg"]  # type: ignore[assignment]  # its own kind: the union is discriminated by it


class MaskRcnnStage(ModelStageSettings, Tiled):
    """Direct instance labeler: torchvision Mask R-CNN (torchvision COCO state dicts or segflow checkpoints)."""

    kind: Literal["maskrcnn"]
    batch_size: int = Field(2, ge=1, description="Images per model call.")
    conf: float = Field(0.5, ge=0.0, le=1.0, description="Box score threshold.")
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    max_det: int = Field(100, ge=1, description="Maximum detections per image.")
    class_map: dict[str, str] = Field(
        default_factory=dict, description="Model class name -> ontology name (unlisted: same name; others dropped)."
    )
