"""Settings of the ``panoptic_merge`` stage (:mod:`segflow.tasks.stages.panoptic`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.records import INSTANCE_ROLES
from segflow.tasks.stages.settings import StageSettings

__all__ = ["PanopticMergeStage"]


class PanopticMergeStage(StageSettings):
    """One panoptic map per image from a panoptic stage and (optionally) an instance stage (stages/panoptic.py)."""

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        if self.things == "instances" and not any(r in INSTANCE_ROLES for r in needs_roles):
            return [
                (
                    f"stages.{name}.needs",
                    "things: instances needs an instance stage (sam, qc, sam_auto, yolo_seg "
                    "or maskrcnn) in needs; or set things: panoptic",
                )
            ]
        return []

    kind: Literal["panoptic_merge"]
    things: Literal["instances", "panoptic"] = Field(
        "instances",
        description="Where things come from: the instance stage it needs (detector -> SAM -> "
        "QC) or the panoptic model.",
    )
    overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A thing is dropped when less than this share of its mask is still free "
        "(hidden by a higher-scoring one).",
    )
    min_area: int = Field(64, ge=0, description="Segments left with fewer pixels become void.")
    include_flagged: bool = Field(
        False, description="Use QC-flagged instance masks as things (rejected ones never are)."
    )
