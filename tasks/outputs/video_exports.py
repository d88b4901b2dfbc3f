"""A video run's tracks as files: ``manifest/tracks.parquet``, YouTube-VIS JSON and MOTS text.

* ``OUTPUT/manifest/tracks.parquet``: one row per track (:data:`segflow.tasks.outputs.tracks.TRACKS_SCHEMA`), every
  verdict.
* ``OUTPUT/vis/instances.json``: YouTube-VIS (2019/2021 layout). ``videos``: ``id`` (1, 2, ... in key order),
  ``name`` (the video's key without extension: ``dashcam/day1`` for ``dashcam/day1.mp4``, a frame folder's own
  key), ``width``, ``height``, ``length`` and ``file_names`` (its labelled frames, as the images manifest's
  ``file_name``). ``annotations``: one per exported track (verdict ``accept``; also ``review`` when the QC stage
  exports review): ``id`` (1, 2, ... across the file), ``video_id``, ``category_id``, ``segmentations`` (one COCO
  compressed RLE or ``null`` per frame of ``file_names``), ``areas``, ``bboxes`` (XYWH or ``null``), ``iscrowd``
  0, ``length`` 1, and ``segflow_track_id`` (the masks manifest's ``track_id``). ``categories`` as COCO's.
* ``OUTPUT/mots/<video name>.txt``: the MOTS challenge's text format, one line per mask of an exported track:
  ``frame object_id class_id height width rle``, ``frame`` the frame number, ``object_id`` ``class_id * 1000 +
  track_id`` (a larger power of ten when a video has 1000 tracks or more), ``rle`` COCO compressed RLE. MOTS
  wants no two masks of a frame to overlap: where they do, the pixel goes to the higher score.

Written a video at a time: a video's masks are held until its last clip has passed (finalize passes clips in
order), then its tracks are written and released.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segflow.tasks import rle
from segflow.tasks.documents import TrackExports
from segflow.tasks.evaluate.video_quality import GoldTracks, TrackFit, fit_track_threshold, gold_track_quality
from segflow.tasks.io.storage import local_tempfile, open_fs, publish_file, safe_join, write_bytes
from segflow.tasks.outputs.tracks import (
    TRACKS_SCHEMA,
    TrackRow,
    TrackRule,
    TrackSummary,
    class_conflicts,
    tracks_table,
)

__all__ = ["VideoExports", "fitted_rule", "video_name", "mots_multiplier"]


def video_name(video: str) -> str:
    """A video's YouTube-VIS ``name`` and MOTS file stem: its key without extension (a folder's key as it is)."""
    p = PurePosixPath(video)
    return str(p.with_suffix("")) if p.suffix else video


def mots_multiplier(max_track_id: int) -> int:
    """``object_id = class_id * m + track_id``: m is 1000, or the power of ten above the largest track id."""
    m = 1000
    while max_track_id >= m:
        m *= 10
    return m


class _Video:
    def __init__(self) -> None:
        self.frames: dict[int, tuple[str, int, int]] = {}  # frame index -> (file_name, height, width)
        self.masks: list[pa.Table] = []


def fitted_rule(
    rows: list[TrackRow], right: Mapping[tuple[str, int], bool], rule: TrackRule, target: float
) -> tuple[TrackRule, TrackFit]:
    """``rule`` with its ``min_mean_score`` raised to the threshold fitted for ``target`` precision on the gold
    videos' tracks (``right``: (video, track id) -> whether it is right, for the tracks of the gold videos): the
    candidates are the tracks ``rule`` accepts, so the fit may raise the floor, never lower it. No threshold reaches
    the target: ``min_mean_score`` is infinite (every track goes to review)."""
    judged = [r for r in rows if (r.video, r.track_id) in right]
    candidates = [
        (rule.score(r.score_sum, r.frames), right[(r.video, r.track_id)])
        for r in judged
        if replace(r, rule=rule).verdict == "accept"
    ]
    n_right = sum(right[(r.video, r.track_id)] for r in judged)
    fitted = fit_track_threshold(candidates, len(judged), n_right, target, floor=rule.min_mean_score)
    score = fitted.threshold if fitted.threshold is not None else float("inf")
    return replace(rule, min_mean_score=score), fitted


class VideoExports:
    """Finalize's video outputs. :meth:`add` each clip's images and masks (final verdicts, global track ids) in
    order, then :meth:`close`.

    Each video's tracks are written, when its last clip has passed, to temporary files as candidates (every track
    not rejected); :meth:`close` decides which are exported -- with a gold set of video labels (``gold``, YouTube-VIS)
    the tracks' score threshold is fitted first on the gold videos' tracks (:func:`fit_track_threshold`) -- and
    writes the exports from the candidates it keeps."""

    def __init__(
        self,
        tracks_url: str,
        vis_url: str,
        mots_url: str,
        categories: list[dict],
        keep: Sequence[str],
        rule: TrackRule | None = None,
        gold: Mapping[str, Any] | None = None,
        target_precision: float = 0.95,
    ):
        self.tracks_url, self.vis_url, self.mots_url = tracks_url, vis_url, mots_url
        self.categories, self.keep = categories, tuple(keep)
        self.rule = rule or TrackRule()
        self.summary = TrackSummary(self.rule)
        self.current: str | None = None
        self.video = _Video()
        self.rows: list[TrackRow] = []
        self.videos: list[dict[str, Any]] = []
        self.gold = GoldTracks(gold) if gold is not None else None
        self.target = target_precision
        self.right: dict[tuple[str, int], bool] = {}  # the gold videos' tracks: whether each matches a gold track
        self.ids: dict[str, int] = {}  # video -> its YouTube-VIS id (1, 2, ... as videos with labelled frames come)
        self._vis = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
        self._mots = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
        fs, path = open_fs(mots_url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        self.mots_fs = fs

    def add(self, images: pa.Table, masks: pa.Table) -> None:
        if "video" not in images.column_names:
            return
        ok = images.filter(pc.and_(pc.is_valid(images["video"]), pc.equal(images["status"], "ok")))
        for video, frame, name, h, w in zip(
            *(ok[c].to_pylist() for c in ("video", "frame_index", "file_name", "height", "width")), strict=True
        ):
            if video != self.current:
                self._finish()
                self.current = video
                self.ids.setdefault(video, len(self.ids) + 1)
            self.video.frames[int(frame)] = (name, int(h), int(w))
        tracked = masks.filter(pc.is_valid(masks["track_id"])) if "track_id" in masks.column_names else masks[:0]
        if tracked.num_rows:
            self.video.masks.append(tracked)
            self.summary.add(tracked)

    def with_video_id(self, masks: pa.Table) -> pa.Table:
        """``masks`` (a clip's rows, after :meth:`add` saw its images) with ``video_id``: its video's YouTube-VIS id
        (null for a row of no video)."""
        ids = [None if v is None else self.ids.get(v) for v in masks["video"].to_pylist()]
        return masks.append_column("video_id", pa.array(ids, pa.int64()))

    def _finish(self) -> None:
        video, state = self.current, self.video
        self.video = _Video()
        if video is None or not state.frames:
            return
        tracks = self.summary.finish_video(video)
        masks = pa.concat_tables(state.masks) if state.masks else None
        if masks is not None:
            class_conflicts(tracks, masks)
        self.rows.extend(tracks)
        order = sorted(state.frames)
        position = {f: k for k, f in enumerate(order)}
        h, w = state.frames[order[0]][1:]
        name = video_name(video)
        self.videos.append(
            {
                "id": self.ids[video],
                "name": name,
                "width": w,
                "height": h,
                "length": len(order),
                "file_names": [state.frames[f][0] for f in order],
            }
        )
        candidates = {t.track_id: t for t in tracks if t.verdict != "reject"}
        if masks is None or not candidates:
            return
        masks = masks.filter(pc.is_in(masks["track_id"], pa.array(sorted(candidates), pa.int64())))
        if self.gold is not None and name in self.gold.videos:
            for tid, right in self.gold.judge(name, masks, {f: state.frames[f][0] for f in order}).items():
                self.right[(video, tid)] = right
        self._candidates_vis(video, self.ids[video], candidates, masks, position, (h, w))
        self._candidates_mots(video, candidates, masks)

    def _candidates_vis(
        self,
        video: str,
        video_id: int,
        tracks: dict[int, TrackRow],
        masks: pa.Table,
        position: dict[int, int],
        size: tuple[int, int],
    ) -> None:
        n = len(position)
        per: dict[int, list[Any]] = {t: [None] * n for t in tracks}
        areas: dict[int, list[Any]] = {t: [None] * n for t in tracks}
        boxes: dict[int, list[Any]] = {t: [None] * n for t in tracks}
        cols = ("track_id", "frame_index", "rle_counts", "area", "bbox")
        for t, f, counts, area, bbox in zip(*(masks[c].to_pylist() for c in cols), strict=True):
            k = position.get(int(f))
            if k is None:
                continue
            per[t][k] = rle.to_coco_segmentation(counts, *size)
            areas[t][k], boxes[t][k] = int(area), [float(v) for v in bbox]
        for t in sorted(tracks):
            ann = {
                "video_id": video_id,
                "category_id": tracks[t].category_id,
                "segmentations": per[t],
                "areas": areas[t],
                "bboxes": boxes[t],
                "iscrowd": 0,
                "length": 1,
                "height": size[0],
                "width": size[1],
                "segflow_track_id": t,
            }
            self._vis.write(json.dumps([video, t, ann]) + "\n")

    def _candidates_mots(self, video: str, tracks: dict[int, TrackRow], masks: pa.Table) -> None:
        """The video's MOTS lines for every candidate track; a pixel two masks claim goes to the higher score, among
        the masks that are exported (resolved again at :meth:`close` when a track drops out)."""
        masks = masks.sort_by([("frame_index", "ascending"), ("score", "descending"), ("annotation_id", "ascending")])
        cols = ("frame_index", "track_id", "category_id", "height", "width", "rle_counts")
        for f, t, c, h, w, r in zip(*(masks[k].to_pylist() for k in cols), strict=True):
            self._mots.write(json.dumps([video, int(f), int(t), int(c), int(h), int(w), r]) + "\n")

    def close(self) -> TrackExports:
        """Fit the threshold (with a gold set), write ``tracks.parquet``, ``vis/instances.json`` and the MOTS files."""
        self._finish()
        for video in list(self.summary.videos()):  # tracks of videos whose frames all failed (none: a guard)
            self.rows.extend(self.summary.finish_video(video))
        fitted: TrackFit | None = None
        if self.gold is not None:
            self.rule, fitted = fitted_rule(self.rows, self.right, self.rule, self.target)
            for r in self.rows:
                r.rule = self.rule
        exported = {(r.video, r.track_id) for r in self.rows if r.verdict in self.keep}
        table = tracks_table(self.rows) if self.rows else TRACKS_SCHEMA.empty_table()
        fs, path = open_fs(self.tracks_url)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        write_bytes(fs, path, sink.getvalue().to_pybytes())
        self._vis.close()
        self._mots.close()
        try:
            n = self._write_vis(exported)
            self._write_mots(exported)
        finally:
            os.unlink(self._vis.name)
            os.unlink(self._mots.name)
        quality = None
        if self.gold is not None:
            quality = gold_track_quality(self.rows, self.right, self.gold.n_tracks, self.keep)
        return {
            "videos": len(self.videos),
            "tracks": len(self.rows),
            "exported": n,
            "threshold": self.rule.min_mean_score if self.rule.min_mean_score != float("inf") else None,
            "fit": None if fitted is None else fitted.to_dict(),
            "gold": quality,
        }

    def _write_vis(self, exported: set[tuple[str, int]]) -> int:
        head = json.dumps({"videos": self.videos, "categories": self.categories})[:-1]
        fs, path = open_fs(self.vis_url)
        local = local_tempfile(fs, path, ".json")
        n = 0
        try:
            with open(self._vis.name, encoding="utf-8") as body, open(local, "w", encoding="utf-8") as out:
                out.write(head + ', "annotations": [\n')
                for line in body:
                    video, t, ann = json.loads(line)
                    if (video, t) not in exported:
                        continue
                    n += 1
                    out.write(("," if n > 1 else "") + json.dumps({"id": n, **ann}) + "\n")
                out.write("]}\n")
            publish_file(fs, local, path)
        finally:
            if os.path.exists(local):
                os.unlink(local)
        return n

    def _write_mots(self, exported: set[tuple[str, int]]) -> None:
        video: str | None = None
        lines: list[list[Any]] = []  # the candidates' file is in video, frame, score order
        with open(self._mots.name, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row[0] != video:
                    self._flush_mots(video, lines)
                    video, lines = row[0], []
                if (row[0], row[2]) in exported:
                    lines.append(row)
        self._flush_mots(video, lines)

    def _flush_mots(self, video: str | None, rows: list[list[Any]]) -> None:
        if video is None or not rows:
            return
        m = mots_multiplier(max(int(r[2]) for r in rows))
        out = []
        for frame in sorted({int(r[1]) for r in rows}):
            here = [r for r in rows if int(r[1]) == frame]  # in score order
            h, w = int(here[0][4]), int(here[0][5])
            stack = rle.decode_many([r[6] for r in here], h, w)
            taken = np.zeros((h, w), bool)
            for k in range(len(stack)):  # a pixel two masks claim goes to the higher score
                stack[k] &= ~taken
                taken |= stack[k]
            for r, counts in zip(here, rle.encode_nhw(stack), strict=True):
                out.append(f"{frame} {int(r[3]) * m + int(r[2])} {int(r[3])} {h} {w} {counts}")
        _, path = open_fs(safe_join(self.mots_url, video_name(video) + ".txt"))
        write_bytes(self.mots_fs, path, ("\n".join(out) + "\n").encode())
