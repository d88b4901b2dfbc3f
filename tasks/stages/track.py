"""Tracking by detection (``kind: track``): any instance stage's masks linked across a clip's frames.

The tracker comes from Roboflow's ``trackers`` library (ByteTrack, SORT, OC-SORT over boxes, with a Kalman filter
per track). One tracker runs per class, so a track keeps its class; the clip's ids are numbered 1, 2, ... in the
order tracks start, across classes.

State belongs to a clip, not to the adapter: the adapter is shared by every shard a worker runs (several at once
with threads), so the runner asks it for a fresh :meth:`Tracker.session` per shard (a clip of one video, frames
in order) and calls that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segflow.tasks.record import Detections
from segflow.tasks.stages.settings.track import TrackStage

__all__ = ["Tracker", "ClipTracker"]


def _make(stage: TrackStage) -> Any:
    import trackers

    if stage.tracker == "bytetrack":
        return trackers.ByteTrackTracker(
            lost_track_buffer=stage.lost_track_buffer,
            track_activation_threshold=stage.track_activation_threshold,
            minimum_consecutive_frames=stage.minimum_consecutive_frames,
            minimum_iou_threshold=stage.minimum_iou_threshold,
            high_conf_det_threshold=stage.high_conf_det_threshold,
        )
    cls = trackers.SORTTracker if stage.tracker == "sort" else trackers.OCSORTTracker
    return cls(
        lost_track_buffer=stage.lost_track_buffer,
        track_activation_threshold=stage.track_activation_threshold,
        minimum_consecutive_frames=stage.minimum_consecutive_frames,
        minimum_iou_threshold=stage.minimum_iou_threshold,
    )


class ClipTracker:
    """The trackers of one clip: :meth:`track` is called with its frames in order."""

    def __init__(self, stage: TrackStage):
        self.stage = stage
        self._trackers: dict[int, Any] = {}
        self._ids: dict[tuple[int, int], int] = {}  # (class, the class tracker's id) -> the clip's track id

    def track(self, images: Sequence[np.ndarray], detections: list[Detections]) -> list[Detections]:
        """``detections`` (one per frame, in frame order; boxes N x 4, XYXY, pixels) with ``track_id`` (N int64;
        -1: no track took the mask)."""
        import supervision as sv

        out = []
        for dets in detections:
            ids = np.full(len(dets), -1, np.int64)
            classes = np.asarray(dets.class_ids, np.int64)
            for c in sorted(set(classes.tolist()) | set(self._trackers)):
                rows = np.flatnonzero(classes == c)
                tracker = self._trackers.setdefault(c, _make(self.stage))
                found = sv.Detections(
                    xyxy=np.asarray(dets.boxes, np.float32)[rows].reshape(-1, 4),
                    confidence=np.asarray(dets.scores, np.float32)[rows],
                    class_id=np.full(len(rows), c, np.int64),
                    data={"row": rows},
                )
                tracked = tracker.update(found)  # every class's tracker sees every frame, so unseen tracks age
                if len(tracked) == 0:
                    continue
                for row, tid in zip(tracked.data["row"], tracked.tracker_id, strict=True):
                    if tid is not None and int(tid) >= 0:
                        ids[int(row)] = self._ids.setdefault((c, int(tid)), len(self._ids) + 1)
            out.append(dets.with_fields(track_id=ids))
        return out


class Tracker:
    """The ``track`` stage's adapter: settings only; each shard tracks in its own :meth:`session`."""

    def __init__(self, stage: TrackStage, weights_path: str | None = None, ontology: dict[int, str] | None = None):
        self.stage = stage

    def session(self) -> ClipTracker:
        """A fresh tracker for one clip."""
        return ClipTracker(self.stage)

    def track(self, images: Sequence[np.ndarray], detections: list[Detections]) -> list[Detections]:
        raise RuntimeError("track stage: call session() per clip (the runner does)")
