"""Settings of the ``track`` stage (:mod:`segflow.tasks.stages.track`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from segflow.tasks.stages.settings import StageSettings

__all__ = ["TrackStage", "TrackJoin", "TrackAcceptance"]


class TrackJoin(BaseModel):
    """How finalize joins a stage's tracks across a gap (segflow.tasks.outputs.tracks, step 2b)."""

    rejoin_gap: int = Field(
        15,
        ge=0,
        description="A new track continues the video's track of its class last seen up to this many labelled "
        "frames before it (an object hidden longer than the tracker waits, or across a clip boundary) when it "
        "starts where that track was heading (`rejoin_distance`). 0: never.",
    )
    rejoin_distance: float = Field(
        1.5,
        gt=0.0,
        description="How far (in the larger box's sizes, the square root of its area) the new track's first box "
        "centre may be from the ended track's last centre carried on at its velocity over the gap.",
    )


class TrackAcceptance(BaseModel):
    """What a stage's track needs to be exported (segflow.tasks.outputs.tracks.TrackRule)."""

    min_frames: int = Field(
        3, ge=1, description="Labelled frames a track needs to be exported (shorter ones go to review)."
    )
    min_mean_score: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Score a track needs to be exported (lower ones go to review): its masks' mean score, counting "
        "`score_prior_frames` more frames at 0. A track of low-scored masks is mostly a false detection followed "
        "from frame to frame. With `gold_video` the fitted threshold may raise it, never lower it (0: leave it to "
        "the gold set).",
    )
    score_prior_frames: int = Field(
        5,
        ge=0,
        description="Frames at score 0 a track's score counts besides its own, so that a short track needs a "
        "higher mean: its mean rests on few frames, and short tracks are mostly pieces of another (an identity "
        "switch, a class given for a few frames, an object's edge). 0: the plain mean.",
    )


class TrackStage(StageSettings, TrackJoin, TrackAcceptance):
    """Tracking by detection on a video's frames: the instance stage it needs labels each frame, a tracker from the
    `trackers` library links its masks from frame to frame by their boxes, across classes (`classes: vote`, the
    track's class is its frames' vote) or one tracker per class. Each mask gets `track_id`, global per video (clips
    are joined on the frames they share); masks no track took keep none. Each track gets a verdict
    (`manifest/tracks.parquet`): only accepted tracks are exported as tracks (YouTube-VIS, MOTS). Needs
    `source.video`."""

    kind: Literal["track"]
    tracker: Literal["bytetrack", "sort", "ocsort"] = Field(
        "bytetrack", description="The tracker (`trackers`: ByteTrackTracker, SORTTracker, OCSORTTracker)."
    )
    classes: Literal["vote", "per_class"] = Field(
        "vote",
        description="`vote`: one tracker for every class (of two masks of one object, mask IoU >= `duplicate_iou`, "
        "only the higher-scored is tracked); in each clip a track's masks take the class its frames vote for (each "
        "mask of the object votes its score), their score the object's (its masks' scores in the frame summed, at "
        "most 1) times the winner's share of the votes; the tracker, too, sees the object's score. A detector "
        "that calls a half-hidden object by another class for a few frames then makes one track, not several. "
        "`per_class`: one tracker per class, masks keep the detector's class.",
    )
    duplicate_iou: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="`classes: vote`: mask IoU (box IoU for rows without masks) at which two rows of a frame are "
        "one object.",
    )
    lost_track_buffer: int = Field(
        30, ge=0, description="Labelled frames a track survives unseen (an occlusion) before it ends."
    )
    track_activation_threshold: float = Field(0.3, ge=0.0, le=1.0, description="Score a mask needs to start a track.")
    high_conf_det_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="ByteTrack: masks at or above this score are matched first."
    )
    minimum_iou_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="Box IoU a mask needs with a track's predicted box to continue it."
    )
    minimum_consecutive_frames: int = Field(
        1, ge=1, description="Frames a new track must be seen in a row before it gets an id."
    )
