"""Settings of the ``qc`` stage (:mod:`segflow.tasks.stages.qc`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import StageSettings, Strict

__all__ = ["QcStage"]

_Action = Literal["reject", "flag", "off"]


class _MinRule(Strict):
    min: float
    action: _Action


class _AreaMin(Strict):
    min_px: float = Field(25, ge=0)
    min_frac: float = Field(0.0, ge=0, le=1)
    action: _Action = "reject"


class _AreaMax(Strict):
    max_frac: float = Field(0.9, ge=0, le=1)
    action: _Action = "flag"


class _Components(Strict):
    max: int = Field(3, ge=1)
    action: _Action = "flag"


class _Duplicate(Strict):
    iou: float = Field(0.85, ge=0, le=1)
    action: _Action = "reject"


class _ImageRule(Strict):
    action: Literal["flag", "off"] = "flag"


class _CountOutlier(Strict):
    mads: float = Field(5.0, gt=0)
    min: int = Field(10, ge=1)
    action: Literal["flag", "off"] = "flag"


class QcStage(StageSettings):
    """Quality checks on the masks of the segmenter stage it needs (see tasks/stages/qc.py for each rule)."""

    kind: Literal["qc"]
    predicted_iou: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.88, action="reject"),
        description="SAM predicted IoU minimum (SA-1B: 0.88).",
    )
    stability: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.95, action="reject"),
        description="Stability score minimum, offset 1.0 (SA-1B: 0.95).",
    )
    min_area: _AreaMin = Field(default_factory=_AreaMin)
    max_area: _AreaMax = Field(default_factory=_AreaMax)
    mask_box_iou: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.6, action="reject"),
        description="IoU of the mask's box with its prompt box.",
    )
    components: _Components = Field(default_factory=_Components)
    duplicate: _Duplicate = Field(default_factory=_Duplicate)
    class_conflict: _Duplicate = Field(default_factory=lambda: _Duplicate(iou=0.85, action="flag"))
    panoptic_agreement: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.5, action="flag"),
        description="Mask IoU of each thing with the best panoptic segment of its class (only "
        "when the qc stage also needs a panoptic stage).",
    )
    no_labels: _ImageRule = Field(default_factory=_ImageRule)
    count_outlier: _CountOutlier = Field(default_factory=_CountOutlier)
    export_review: bool = Field(
        False,
        description="Also put the masks with verdict `review` in coco/instances.json (they are always in "
        "review/; accepted masks are always exported, rejected ones never).",
    )
    review_samples: int = Field(24, ge=0, description="Masks per verdict drawn on the contact sheets.")
