"""Tracking by detection (``kind: track``): any instance stage's masks linked across a clip's frames.

The tracker comes from Roboflow's ``trackers`` library (ByteTrack, SORT, OC-SORT over boxes, with a Kalman filter
per track). With ``classes: vote`` (the default) one tracker follows every class: of a frame's masks that are one
object (mask IoU >= ``duplicate_iou``), only the best-scored is tracked, with the object's score (the sum of
the masks' scores, at most 1: :func:`object_scores`) as its confidence, and once the clip is labelled
:meth:`ClipTracker.finish_clip` gives each track's masks the class its frames vote for
(:func:`~segflow.tasks.stages.clip_tracks.vote_track_classes`). With ``classes: per_class`` one tracker runs per class
and a track keeps its class. Either way the clip's ids are numbered 1, 2, ... in the order tracks start.

State belongs to a clip, not to the adapter: the adapter is shared by every shard a worker runs (several at once
with threads), so the runner asks it for a fresh :meth:`Tracker.session` per shard (a clip of one video, frames
in order) and calls that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.clip_tracks import fill_track_starts, vote_track_classes
from segflow.tasks.stages.qc import box_iou_pairs
from segflow.tasks.stages.settings.track import TrackStage

__all__ = ["Tracker", "ClipTracker", "object_scores"]


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


def _duplicates(dets: Detections, iou: float) -> np.ndarray:
    """N int: the row each row is a duplicate of -- a higher-scored row of the frame it overlaps at IoU >= ``iou``
    (greedy NMS across classes; the kept row it overlaps most) -- or the row itself when it is kept. Mask IoU when
    the rows have masks (two boxes of one object often differ more than the masks SAM draws in them), else box IoU
    (boxes N x 4, XYXY)."""
    n = len(dets)
    if dets.rle_counts is not None and n:
        h, w = dets.image_size
        ious = rle.iou(list(dets.rle_counts), list(dets.rle_counts), h, w)
    else:
        b = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        ious = box_iou_pairs(b, b)
    order = np.argsort(-np.asarray(dets.scores, np.float64), kind="stable")
    out = np.arange(n, dtype=np.int64)
    kept: list[int] = []
    for i in order:
        best = int(np.argmax(ious[i, kept])) if kept else -1
        if best >= 0 and ious[i, kept[best]] >= iou:
            out[i] = kept[best]
        else:
            kept.append(int(i))
    return out


def object_scores(scores: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """N: each kept row's score as an object, whatever its class -- the sum of its own and its duplicates' scores
    (``owner``, :func:`_duplicates`), at most 1 (a detector's scores for the classes of one object are shares of
    one belief: a square at 0.4 and a triangle at 0.4 are an object at 0.8); a duplicate row keeps its own."""
    s = np.asarray(scores, np.float64)
    total = np.bincount(owner, weights=s, minlength=len(s))
    return np.where(owner == np.arange(len(s)), np.minimum(1.0, total), s)


class ClipTracker:
    """The trackers of one clip: :meth:`track` is called with its frames in order, :meth:`finish_clip` on its rows."""

    def __init__(self, stage: TrackStage, names: dict[int, str] | None = None):
        self.stage = stage
        self.names = names or {}
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
            groups = np.zeros(len(dets), np.int64) if self.stage.classes == "vote" else classes
            confidence = np.asarray(dets.scores, np.float64)
            if self.stage.classes == "vote" and len(dets):  # duplicates of one object: only the best is tracked
                owner = _duplicates(dets, self.stage.duplicate_iou)
                groups = np.where(owner == np.arange(len(dets)), 0, -1)
                confidence = object_scores(confidence, owner)  # the tracker sees the object's score
            for c in sorted((set(groups.tolist()) - {-1}) | set(self._trackers)):
                rows = np.flatnonzero(groups == c)
                tracker = self._trackers.setdefault(c, _make(self.stage))
                found = sv.Detections(
                    xyxy=np.asarray(dets.boxes, np.float32)[rows].reshape(-1, 4),
                    confidence=confidence[rows].astype(np.float32),
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

    def finish_clip(self, masks: pa.Table) -> pa.Table:
        """The clip's mask rows (its context frames first, frame order) once all are labelled: each track's first
        frames filled in (:func:`~segflow.tasks.stages.clip_tracks.fill_track_starts`), and with ``classes: vote`` its
        masks under the class its frames vote for."""
        if self.stage.classes == "per_class":
            return fill_track_starts(masks)
        return vote_track_classes(fill_track_starts(masks, same_class=False), self.names)


class Tracker:
    """The ``track`` stage's adapter: settings only; each shard tracks in its own :meth:`session`."""

    def __init__(self, stage: TrackStage, weights_path: str | None = None, ontology: dict[int, str] | None = None):
        self.stage = stage
        self.names = dict(ontology or {})

    def session(self) -> ClipTracker:
        """A fresh tracker for one clip."""
        return ClipTracker(self.stage, self.names)

    def track(self, images: Sequence[np.ndarray], detections: list[Detections]) -> list[Detections]:
        raise RuntimeError("track stage: call session() per clip (the runner does)")
