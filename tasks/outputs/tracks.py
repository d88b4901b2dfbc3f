"""Tracks across a video: a track's first frames filled in, clips joined into ids global per video, one row per track.

How a mask gets its ``track_id`` (the masks manifest's column):

1. **In the clip** (the shard). The ``track`` stage numbers the clip's tracks 1, 2, ... in the order they start. A
   tracker confirms a track only once it has seen it again, so a track's first frame has no id: ``fill_track_starts``
   gives it the id when that frame has a mask of the same class, no track, and mask IoU >= ``min_iou`` with the
   track's first mask (and again further back, frame by frame); with ``classes: vote`` the track's masks then take
   the class its frames vote for (both in :mod:`segflow.tasks.stages.clip_tracks`, run in the shard).
2. **Across clips** (finalize). A clip first labels again the last ``source.video.clip_overlap`` frames of the clip
   before it (its *context*: committed beside its masks, never in the manifests), so its trackers start warm and
   its tracks can be matched to the previous clip's: :class:`TrackStitcher` pairs a context track with a previous
   clip's track of the same class by their masks' IoU on the shared frames (summed, over the frames either is on),
   greedily, best first, at >= ``min_iou``. A paired track keeps the previous clip's id; any other track (unless it
   rejoins, 2b) gets the video's next id, in the order the clip's tracks start. Ids are therefore global per video,
   and they depend only on committed shards: a clip labelled again (a rerun, a repair) gives the same ids as long
   as it labels the same.
2b. **After a gap** (finalize, ``rejoin_gap`` > 0). An object hidden longer than the tracker waits, or hidden across
   a clip boundary, comes back as a new track. A track that continues nothing on its clip's context rejoins the
   video's track of its class last seen 1 to ``rejoin_gap`` frames before it starts, when its first box centre is
   within ``rejoin_distance`` x the larger box's size (square root of its area) of where that track's last box
   centre was heading (its velocity over its last 5 frames, carried over the gap); the nearest such wins. A track
   continued on the context cannot be rejoined by another.
3. **Per track** (finalize): :class:`TrackSummary` gathers one row per track for ``manifest/tracks.parquet`` and
   its verdict (:func:`track_verdict`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks import rle
from segflow.tasks.stages.clip_tracks import MIN_TRACK_IOU
from segflow.tasks.stages.settings.track import TrackAcceptance

__all__ = [
    "TRACKS_SCHEMA",
    "TrackStitcher",
    "TrackSummary",
    "TrackRow",
    "TrackRule",
    "track_verdict",
    "class_conflicts",
    "MIN_TRACK_IOU",
]


TRACKS_SCHEMA = pa.schema(
    [
        ("video", pa.string()),
        ("track_id", pa.int64()),
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("first_frame", pa.int64()),
        ("last_frame", pa.int64()),
        ("frames", pa.int64()),
        ("mean_score", pa.float32()),
        ("score", pa.float32()),
        ("min_score", pa.float32()),
        ("mean_predicted_iou", pa.float32()),
        ("mean_step_iou", pa.float32()),
        ("accepted", pa.int64()),
        ("conflict_with", pa.int64()),
        ("verdict", pa.string()),
        ("verdict_reasons", pa.list_(pa.string())),
    ]
)


def _by_track_frame(masks: pa.Table) -> dict[int, dict[int, tuple[int, str]]]:
    """track id -> frame -> (category, rle counts), for the rows that have a track."""
    out: dict[int, dict[int, tuple[int, str]]] = {}
    cols = (masks[c].to_pylist() for c in ("track_id", "frame_index", "category_id", "rle_counts"))
    for t, f, c, r in zip(*cols, strict=True):
        if t is not None:
            out.setdefault(int(t), {})[int(f)] = (int(c), r)
    return out


@dataclass(frozen=True)
class _Sighting:
    """A track at one end: its class, the frame, its box centre there (x, y pixels), its velocity over its first or
    last few frames (pixels a frame) and its size there (the square root of its box's area)."""

    category_id: int
    frame: int
    centre: np.ndarray
    velocity: np.ndarray
    size: float


def _sightings(frames: dict[int, tuple[int, str]], h: int, w: int, k: int = 5) -> tuple[_Sighting, _Sighting]:
    """A track's first and last sighting (``frames``: frame -> (category, rle)), velocities over ``k`` frames."""
    order = sorted(frames)

    def one(fs: list[int], at: int) -> _Sighting:
        boxes = rle.bbox_xywh([frames[f][1] for f in fs], h, w)
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        velocity = (centres[-1] - centres[0]) / max(1, fs[-1] - fs[0])
        return _Sighting(frames[fs[at]][0], fs[at], centres[at], velocity, float(np.sqrt(boxes[at, 2] * boxes[at, 3])))

    return one(order[:k], 0), one(order[-k:], -1)


@dataclass
class TrackStitcher:
    """Clip-local track ids to ids global per video (module docs, step 2). Call :meth:`add_clip` for every clip of a
    video in frame order (a video's clips one after the other), then :meth:`apply` to a clip's mask rows.

    ``rejoin_gap`` > 0: a track that neither continues a track of the clip before (on the context frames) nor is
    the first of its object may *rejoin* an ended track of the video (module docs, step 2b)."""

    min_iou: float = MIN_TRACK_IOU
    rejoin_gap: int = 0
    rejoin_distance: float = 1.5
    _ids: dict[tuple[str, int], int] = field(default_factory=dict)  # (shard, local id) -> global id
    _video: str | None = None
    _next: int = 1
    _previous: tuple[str, dict[int, dict[int, tuple[int, str]]], tuple[int, int]] | None = None
    _last: dict[int, _Sighting] = field(default_factory=dict)  # global id -> the video's track's last sighting

    def add_clip(self, shard_id: str, video: str, masks: pa.Table, context: pa.Table | None) -> None:
        """One clip: ``masks`` its mask rows, ``context`` those of its context frames (None: it has none)."""
        if video != self._video:
            self._video, self._next, self._previous, self._last = video, 1, None, {}
        own = _by_track_frame(masks)
        matched: dict[int, int] = {}
        if context is not None and context.num_rows and self._previous is not None:
            matched = self._match(_by_track_frame(context), int(pc.min(context["frame_index"]).as_py()))
        size = (int(masks["height"][0].as_py()), int(masks["width"][0].as_py())) if masks.num_rows else (0, 0)
        taken = set(matched.values())
        for local in sorted(own, key=lambda t: (min(own[t]), t)):  # in the order they start: an earlier may rejoin
            gid = matched.get(local)
            first, last = _sightings(own[local], *size) if self.rejoin_gap > 0 else (None, None)
            if gid is None and first is not None:
                gid = self._rejoin(first, taken)
            if gid is None:
                gid, self._next = self._next, self._next + 1
            self._ids[(shard_id, local)] = gid
            if last is not None and (gid not in self._last or self._last[gid].frame < last.frame):
                self._last[gid] = last
        by_global = {self._ids[(shard_id, t)]: frames for t, frames in own.items()}
        self._previous = (shard_id, by_global, size)
        if masks.num_rows:  # a track last seen longer ago than the gap can no longer be rejoined
            horizon = int(pc.max(masks["frame_index"]).as_py()) - self.rejoin_gap
            self._last = {g: e for g, e in self._last.items() if e.frame >= horizon}

    def _rejoin(self, start: _Sighting, taken: set[int]) -> int | None:
        """The global id of the ended track a new track continues (module docs, step 2b), or None (``taken``: ids
        continued in this clip through its context)."""
        best: tuple[float, int] | None = None
        for gid, end in self._last.items():
            gap = start.frame - end.frame
            if gid in taken or end.category_id != start.category_id or not 0 < gap <= self.rejoin_gap:
                continue
            miss = float(np.linalg.norm(end.centre + end.velocity * gap - start.centre)) / max(
                end.size, start.size, 1.0
            )
            if miss <= self.rejoin_distance and (best is None or (miss, gid) < best):
                best = (miss, gid)
        return None if best is None else best[1]

    def _match(self, context: dict[int, dict[int, tuple[int, str]]], first: int) -> dict[int, int]:
        """context local id -> the previous clip's global id it continues (``first``: the first context frame)."""
        assert self._previous is not None
        _, previous, (h, w) = self._previous
        pairs = []
        for c, cframes in context.items():
            cat = next(iter(cframes.values()))[0]
            for p, pframes in previous.items():
                shared = sorted(set(cframes) & set(pframes))
                if not shared or next(iter(pframes.values()))[0] != cat:
                    continue
                either = set(cframes) | {f for f in pframes if f >= first}
                total = sum(float(rle.iou([cframes[f][1]], [pframes[f][1]], h, w)[0, 0]) for f in shared)
                pairs.append((total / len(either), c, p))
        out: dict[int, int] = {}
        used: set[int] = set()
        for score, c, p in sorted(pairs, key=lambda x: (-x[0], x[1], x[2])):
            if score < self.min_iou or c in out or p in used:
                continue
            out[c] = p
            used.add(p)
        return out

    def global_id(self, shard_id: str, local: int) -> int:
        return self._ids[(shard_id, int(local))]

    def apply(self, shard_id: str, masks: pa.Table) -> pa.Table:
        """``masks`` (one committed clip's rows) with ``track_id`` global per video."""
        if "track_id" not in masks.column_names or masks["track_id"].null_count == masks.num_rows:
            return masks
        ids = [None if t is None else self._ids[(shard_id, int(t))] for t in masks["track_id"].to_pylist()]
        i = masks.schema.get_field_index("track_id")
        return masks.set_column(i, "track_id", pa.array(ids, pa.int64()))


@dataclass(frozen=True)
class TrackRule:
    """What a track needs to be accepted (the tracks stage's ``min_frames``, ``min_mean_score`` and
    ``score_prior_frames``): ``min_mean_score`` is compared with the track's :meth:`score`."""

    min_frames: int = TrackAcceptance.model_fields["min_frames"].default
    min_mean_score: float = TrackAcceptance.model_fields["min_mean_score"].default
    prior_frames: int = TrackAcceptance.model_fields["score_prior_frames"].default

    @classmethod
    def of(cls, settings: TrackAcceptance) -> TrackRule:
        """The rule of a tracks stage's acceptance settings (its defaults are theirs)."""
        return cls(settings.min_frames, settings.min_mean_score, settings.score_prior_frames)

    def score(self, score_sum: float, frames: int) -> float:
        """A track's score: the mean of its masks' scores (``score_sum`` over ``frames``) counting ``prior_frames``
        more frames at 0, so that a short track must score higher: its mean rests on fewer frames, and short tracks
        are mostly pieces of another (an identity switch, a class the detector gave a few frames, an object's
        edge)."""
        return score_sum / max(1, frames + self.prior_frames)


def track_verdict(
    frames: int,
    accepted: int,
    rejected: int,
    score: float,
    rule: TrackRule = TrackRule(),
    conflict: bool = False,
) -> tuple[str, list[str]]:
    """A track's verdict and its reasons: ``reject`` (``rejected``) when every mask of it is rejected; ``accept``
    when it has ``rule.min_frames`` frames or more (else ``short``), a ``score`` (:meth:`TrackRule.score`) of
    ``rule.min_mean_score`` or more (else ``low_score``), at least half of its masks accepted (else
    ``masks_not_accepted``) and no stronger track of another class on the same object (``conflict``: else
    ``class_conflict``); ``review`` otherwise."""
    if rejected == frames:
        return "reject", ["rejected"]
    reasons = [
        r
        for r, fired in (
            ("short", frames < rule.min_frames),
            ("low_score", score < rule.min_mean_score),
            ("masks_not_accepted", 2 * accepted < frames),
            ("class_conflict", conflict),
        )
        if fired
    ]
    return ("review" if reasons else "accept"), reasons


def class_conflicts(tracks: list[TrackRow], masks: pa.Table, min_iou: float = MIN_TRACK_IOU) -> None:
    """Mark the weaker of two tracks of different classes on one object (``masks``: the video's tracked rows; the
    same object when their masks overlap at IoU >= ``min_iou`` in at least half of the shorter track's frames):
    the one whose masks score less on average, over its whole track, gets ``conflict_with`` the other's id. A
    detector that calls one object a square and a triangle at once makes two tracks, one per class: one is wrong.
    """
    by = _by_track_frame(masks)
    if len(by) < 2:
        return
    rows = {t.track_id: t for t in tracks}
    h, w = int(masks["height"][0].as_py()), int(masks["width"][0].as_py())
    ids = sorted(by)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            ta, tb = rows.get(a), rows.get(b)
            if ta is None or tb is None or ta.category_id == tb.category_id:
                continue
            shared = sorted(set(by[a]) & set(by[b]))
            if not shared or 2 * len(shared) < min(ta.frames, tb.frames):
                continue
            same = [f for f in shared if float(rle.iou([by[a][f][1]], [by[b][f][1]], h, w)[0, 0]) >= min_iou]
            if 2 * len(same) < min(ta.frames, tb.frames):
                continue
            sa, sb = ta.score_sum / ta.frames, tb.score_sum / tb.frames
            weak, strong = (ta, tb) if (sa, -a) < (sb, -b) else (tb, ta)
            if weak.conflict_with is None:
                weak.conflict_with = strong.track_id


@dataclass
class TrackRow:
    """One track as :class:`TrackSummary` gathers it (``TRACKS_SCHEMA`` documents the fields)."""

    video: str
    track_id: int
    category_id: int
    category_name: str
    first_frame: int
    last_frame: int
    frames: int = 0
    score_sum: float = 0.0
    min_score: float = float("inf")
    piou_sum: float = 0.0
    piou_n: int = 0
    step_iou_sum: float = 0.0
    steps: int = 0
    accepted: int = 0
    rejected: int = 0
    last_rle: str | None = None
    size: tuple[int, int] = (0, 0)
    rule: TrackRule = TrackRule()
    conflict_with: int | None = None  # a stronger track of another class on the same object (class_conflicts)

    def _verdict(self) -> tuple[str, list[str]]:
        return track_verdict(
            self.frames, self.accepted, self.rejected, self.score, self.rule, self.conflict_with is not None
        )

    @property
    def score(self) -> float:
        """What ``min_mean_score`` is compared with (:meth:`TrackRule.score`)."""
        return self.rule.score(self.score_sum, self.frames)

    @property
    def verdict(self) -> str:
        return self._verdict()[0]

    @property
    def verdict_reasons(self) -> list[str]:
        return self._verdict()[1]

    @property
    def mean_score(self) -> float | None:
        return self.score_sum / self.frames if self.frames else None

    @property
    def mean_predicted_iou(self) -> float | None:
        return self.piou_sum / self.piou_n if self.piou_n else None

    @property
    def mean_step_iou(self) -> float | None:
        """Mean mask IoU between the track's consecutive labelled frames (None: one frame)."""
        return self.step_iou_sum / self.steps if self.steps else None


class TrackSummary:
    """The tracks of a run, one :class:`TrackRow` each, from its mask rows (final verdicts and global ids), fed a
    clip at a time in frame order. :meth:`finish_video` returns a video's tracks once its last clip is in."""

    def __init__(self, rule: TrackRule = TrackRule()) -> None:
        self.rule = rule
        self.live: dict[tuple[str, int], TrackRow] = {}

    def add(self, masks: pa.Table) -> None:
        if "track_id" not in masks.column_names:
            return
        rows = masks.filter(pc.is_valid(masks["track_id"]))
        if rows.num_rows == 0:
            return
        rows = rows.sort_by([("frame_index", "ascending"), ("annotation_id", "ascending")])
        names = ("video", "track_id", "category_id", "category_name", "frame_index", "score", "predicted_iou")
        cols = [rows[n].to_pylist() for n in names]
        extra = [rows[n].to_pylist() for n in ("verdict", "rle_counts", "height", "width")]
        for (video, tid, cid, cname, frame, score, piou), (verdict, counts, h, w) in zip(
            zip(*cols, strict=True), zip(*extra, strict=True), strict=True
        ):
            t = self.live.get((video, tid))
            if t is None:
                t = TrackRow(video, int(tid), int(cid), cname, int(frame), int(frame), rule=self.rule)
                self.live[(video, tid)] = t
            t.last_frame = max(t.last_frame, int(frame))
            t.frames += 1
            s = float(score) if score is not None else 0.0
            t.score_sum += s
            t.min_score = min(t.min_score, s)
            if piou is not None:
                t.piou_sum += float(piou)
                t.piou_n += 1
            t.accepted += verdict == "accept"
            t.rejected += verdict == "reject"
            if t.last_rle is not None and t.size == (h, w):
                t.step_iou_sum += float(rle.iou([t.last_rle], [counts], h, w)[0, 0])
                t.steps += 1
            t.last_rle, t.size = counts, (int(h), int(w))

    def finish_video(self, video: str) -> list[TrackRow]:
        """The video's tracks (by id), no longer held."""
        done = sorted((k for k in self.live if k[0] == video), key=lambda k: k[1])
        return [self.live.pop(k) for k in done]

    def videos(self) -> Iterable[str]:
        return sorted({k[0] for k in self.live})


def tracks_table(rows: list[TrackRow]) -> pa.Table:
    """``rows`` as ``manifest/tracks.parquet``'s table (:data:`TRACKS_SCHEMA`)."""
    columns = {name: [getattr(r, name) for r in rows] for name in TRACKS_SCHEMA.names if name not in ("min_score",)}
    columns["min_score"] = [r.min_score if r.frames else None for r in rows]
    return pa.table({n: pa.array(columns[n], TRACKS_SCHEMA.field(n).type) for n in TRACKS_SCHEMA.names})
