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
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segflow.tasks import rle
from segflow.tasks.io.storage import local_tempfile, open_fs, publish_file, safe_join, write_bytes
from segflow.tasks.outputs.tracks import TRACKS_SCHEMA, TrackRow, TrackSummary, tracks_table

__all__ = ["VideoExports", "video_name", "mots_multiplier"]


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


class VideoExports:
    """Finalize's video outputs. :meth:`add` each clip's images and masks (final verdicts, global track ids) in
    order, then :meth:`close`."""

    def __init__(self, tracks_url: str, vis_url: str, mots_url: str, categories: list[dict], keep: Sequence[str]):
        self.tracks_url, self.vis_url, self.mots_url = tracks_url, vis_url, mots_url
        self.categories, self.keep = categories, tuple(keep)
        self.summary = TrackSummary()
        self.current: str | None = None
        self.video = _Video()
        self.rows: list[TrackRow] = []
        self.videos: list[dict[str, Any]] = []
        self.n_annotations = 0
        self._tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8")
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
            self.video.frames[int(frame)] = (name, int(h), int(w))
        tracked = masks.filter(pc.is_valid(masks["track_id"])) if "track_id" in masks.column_names else masks[:0]
        if tracked.num_rows:
            self.video.masks.append(tracked)
            self.summary.add(tracked)

    def _finish(self) -> None:
        video, state = self.current, self.video
        self.video = _Video()
        if video is None or not state.frames:
            return
        tracks = self.summary.finish_video(video)
        self.rows.extend(tracks)
        order = sorted(state.frames)
        position = {f: k for k, f in enumerate(order)}
        h, w = state.frames[order[0]][1:]
        video_id = len(self.videos) + 1
        self.videos.append(
            {
                "id": video_id,
                "name": video_name(video),
                "width": w,
                "height": h,
                "length": len(order),
                "file_names": [state.frames[f][0] for f in order],
            }
        )
        exported = {t.track_id: t for t in tracks if t.verdict in self.keep}
        masks = pa.concat_tables(state.masks) if state.masks else None
        if masks is None or not exported:
            return
        masks = masks.filter(pc.is_in(masks["track_id"], pa.array(sorted(exported), pa.int64())))
        self._write_vis(video_id, exported, masks, position, (h, w))
        self._write_mots(video, exported, masks)

    def _write_vis(
        self, video_id: int, exported: dict[int, TrackRow], masks: pa.Table, position: dict[int, int], size: tuple
    ) -> None:
        n = len(position)
        per: dict[int, list[Any]] = {t: [None] * n for t in exported}
        areas: dict[int, list[Any]] = {t: [None] * n for t in exported}
        boxes: dict[int, list[Any]] = {t: [None] * n for t in exported}
        cols = ("track_id", "frame_index", "rle_counts", "area", "bbox")
        for t, f, counts, area, bbox in zip(*(masks[c].to_pylist() for c in cols), strict=True):
            k = position.get(int(f))
            if k is None:
                continue
            per[t][k] = rle.to_coco_segmentation(counts, *size)
            areas[t][k], boxes[t][k] = int(area), [float(v) for v in bbox]
        for t in sorted(exported):
            self.n_annotations += 1
            ann = {
                "id": self.n_annotations,
                "video_id": video_id,
                "category_id": exported[t].category_id,
                "segmentations": per[t],
                "areas": areas[t],
                "bboxes": boxes[t],
                "iscrowd": 0,
                "length": 1,
                "height": size[0],
                "width": size[1],
                "segflow_track_id": t,
            }
            self._tmp.write(("," if self.n_annotations > 1 else "") + json.dumps(ann) + "\n")

    def _write_mots(self, video: str, exported: dict[int, TrackRow], masks: pa.Table) -> None:
        m = mots_multiplier(max(exported))
        lines = []
        masks = masks.sort_by([("frame_index", "ascending"), ("score", "descending"), ("annotation_id", "ascending")])
        frames = masks["frame_index"].to_numpy(zero_copy_only=False)
        for f in np.unique(frames):
            rows = masks.filter(pc.equal(masks["frame_index"], int(f)))
            h, w = int(rows["height"][0].as_py()), int(rows["width"][0].as_py())
            stack = rle.decode_many(rows["rle_counts"].to_pylist(), h, w)
            taken = np.zeros((h, w), bool)
            for k in range(len(stack)):  # by score: a pixel two masks claim goes to the higher score
                stack[k] &= ~taken
                taken |= stack[k]
            counts = rle.encode_nhw(stack)
            for t, c, r in zip(rows["track_id"].to_pylist(), rows["category_id"].to_pylist(), counts, strict=True):
                lines.append(f"{int(f)} {int(c) * m + int(t)} {int(c)} {h} {w} {r}")
        _, path = open_fs(safe_join(self.mots_url, video_name(video) + ".txt"))
        write_bytes(self.mots_fs, path, ("\n".join(lines) + "\n").encode())

    def close(self) -> dict[str, int]:
        """Write ``tracks.parquet`` and ``vis/instances.json``: counts (``videos``, ``tracks``, ``exported``)."""
        self._finish()
        for video in list(self.summary.videos()):  # tracks of videos whose frames all failed (none: a guard)
            self.rows.extend(self.summary.finish_video(video))
        table = tracks_table(self.rows) if self.rows else TRACKS_SCHEMA.empty_table()
        fs, path = open_fs(self.tracks_url)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        write_bytes(fs, path, sink.getvalue().to_pybytes())
        self._tmp.close()
        head = json.dumps({"videos": self.videos, "categories": self.categories})[:-1]
        fs, path = open_fs(self.vis_url)
        local = local_tempfile(fs, path, ".json")
        try:
            with open(self._tmp.name, encoding="utf-8") as body, open(local, "w", encoding="utf-8") as out:
                out.write(head + ', "annotations": [\n')
                for line in body:
                    out.write(line)
                out.write("]}\n")
            publish_file(fs, local, path)
        finally:
            os.unlink(self._tmp.name)
            if os.path.exists(local):
                os.unlink(local)
        return {"videos": len(self.videos), "tracks": len(self.rows), "exported": self.n_annotations}
