"""Settings of the ``sam2_video`` stage (:mod:`segflow.tasks.stages.sam2_video`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from segflow.tasks.stages.settings import ModelStageSettings
from segflow.tasks.stages.settings.track import TrackAcceptance, TrackJoin

__all__ = ["Sam2VideoStage"]


class Sam2VideoStage(ModelStageSettings, TrackJoin, TrackAcceptance):
    """Masks propagated through a video's frames by a SAM 2-style video model through transformers -- SAM 2.1, EdgeTAM
    or the SAM 3 tracker -- prompted with the boxes of the detector it needs on keyframes (the clip's first frame and
    every `keyframe_every` frames): a box no live track covers starts a track; a track whose object score stays
    below 0 for `end_after` frames ends. Frames enter the model's session one at a time and are released once
    done; the session keeps only what the model reads back (its memory bank), so memory does not grow with the
    clip. Each mask gets `track_id` (global per video: clips are joined as for `kind: track`). Needs
    `source.video`."""

    kind: Literal["sam2_video"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory of a video model and its processor (Sam2VideoModel, "
        "EdgeTamVideoModel, Sam3TrackerVideoModel), or hub:<org>/<name> from the local Hugging Face cache (e.g. "
        "hub:facebook/sam2.1-hiera-large).",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    family: Literal["auto", "sam2_video", "edgetam_video", "sam3_tracker_video"] = Field(
        "auto", description="Model family; 'auto' reads model_type from the directory's config.json."
    )
    keyframe_every: int = Field(
        8, ge=1, description="Frames between the detector's prompts (the clip's first frame is always one)."
    )
    prompt_score: float = Field(0.5, ge=0.0, le=1.0, description="Detector score a box needs to start a track.")
    cover_iou: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A keyframe's box whose IoU with a live track's mask box reaches this is that track already.",
    )
    end_after: int = Field(
        3, ge=1, description="Frames a track's object score stays below 0 (the object is gone) before it ends."
    )
    max_cond_frames: int = Field(
        2,
        ge=1,
        description="Prompted frames kept per track in the memory bank (the most recent); each keeps a track on "
        "its object, and all of them are read at every frame.",
    )
    mask_threshold: float = Field(0.0, description="Logit threshold of a mask pixel (the models' own: 0).")
