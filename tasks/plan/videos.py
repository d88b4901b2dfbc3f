"""Planning a video source (``source.video``): one row per labelled frame, one shard per clip.

The source is listed once, as for images. What it holds:

* **video files** (``source.video.extensions``: mp4, mov, mkv, webm): each is probed through its file object (the
  container's frame count and rate, no decoding but the first frame: :func:`segflow.tasks.io.video.probe_video`),
  sampled (``every`` or ``fps``) and cut into clips of ``clip_frames`` labelled frames
  (:func:`segflow.tasks.io.video.plan_clips`). A frame's row has ``uri`` the video's, ``key``
  ``<video key without its extension>/<frame index, 6 digits>`` (the frame's COCO ``file_name``; YouTube-VIS lays
  out frames the same way), ``frame_source`` ``file``. A video that cannot be probed gets one row (``key`` the
  video's, ``frame_index`` null) in a shard of its own: the shard records it as failed with the reason, and the
  run goes on.
* **frame folders** (``source.video.frame_folders``): the image files of one folder are one video, frames in name
  order; a frame's row has its own image's ``uri`` and ``key``, ``frame_source`` ``image``.

Videos and folders are planned in key order; image ids follow in that order. The listing of frame folders is held
in memory while planning (one entry per frame file); video files' frames never are (they are counted, not listed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from segflow.tasks.io.storage import open_fs, redact
from segflow.tasks.io.video import VideoInfo, VideoLoadError, plan_clips, probe_video, sample_indices
from segflow.tasks.plan.rows import PLAN_SCHEMA, shard_name

if TYPE_CHECKING:
    from segflow.config.schema import SourceConfig

__all__ = ["PlanFrame", "listing_source", "iter_video_shards", "write_video_plan_rows", "frame_key"]

Listed = tuple[str, str, int, "str | None"]  # (uri, key, size, etag) as the source lists them
PROBE_THREADS = 8  # videos probed at once (on object stores each probe is a few round trips)


@dataclass(frozen=True)
class PlanFrame:
    """One plan row of a video source (``frame_index`` None: a video that could not be probed)."""

    uri: str
    key: str
    size: int
    etag: str | None
    video: str
    frame_index: int | None
    timestamp_s: float | None
    frame_source: str  # "file": decoded from the video at uri; "image": uri is the frame's own image


def frame_key(video_key: str, index: int) -> str:
    """A video file's frame's key (its COCO ``file_name``): ``walk/000012`` for frame 12 of ``walk.mp4``."""
    stem = str(PurePosixPath(video_key).with_suffix(""))
    return f"{stem}/{index:06d}"


def _probe(uri: str, storage_options: dict[str, Any]) -> VideoInfo | str:
    try:
        fs, path = open_fs(uri, storage_options)
        with fs.open(path, "rb") as f:
            return probe_video(f)
    except VideoLoadError as e:
        return str(e)
    except FileNotFoundError:
        return "file not found"
    except Exception as e:  # noqa: BLE001 - any failure to read is this video's reason, the plan goes on
        return f"cannot read: {type(e).__name__}: {e}"


def listing_source(source: SourceConfig) -> SourceConfig:
    """``source`` as the planner lists it for videos: video files, and images for frame folders."""
    video = source.video
    if video is None:
        raise ValueError("source.video is not set")
    exts = [*video.extensions, *(source.extensions if video.frame_folders else [])]
    return source.model_copy(update={"extensions": exts})


def iter_video_shards(source: SourceConfig, listing: Iterable[Listed]) -> Iterator[list[PlanFrame]]:
    """The plan rows of a video source, one list per shard (a clip of one video), in key order. ``listing``: the
    source's files as :func:`segflow.tasks.plan.planner.iter_source` lists :func:`listing_source`."""
    video = source.video
    if video is None:
        raise ValueError("source.video is not set")
    vexts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in video.extensions)
    files: list[Listed] = []
    folders: dict[str, list[Listed]] = {}
    for item in listing:
        if item[1].lower().endswith(vexts):
            files.append(item)
        elif video.frame_folders:
            folders.setdefault(str(PurePosixPath(item[1]).parent), []).append(item)
    with ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="segflow-probe") as pool:
        probes = pool.map(lambda f: _probe(f[0], source.storage_options), files)
        entries: list[tuple[str, Callable[[], Iterator[list[PlanFrame]]]]] = [
            (f[1], partial(_file_shards, f, p, video)) for f, p in zip(files, probes, strict=True)
        ]
        entries += [(k, partial(_folder_shards, k, sorted(v, key=lambda t: t[1]), video)) for k, v in folders.items()]
        for _, shards in sorted(entries, key=lambda e: e[0]):
            yield from shards()


def _file_shards(file: Listed, info: VideoInfo | str, video: Any) -> Iterator[list[PlanFrame]]:
    uri, key, size, etag = file
    if isinstance(info, str):
        import logging

        logging.getLogger("segflow").warning("video %s cannot be planned: %s", redact(uri), info)
        yield [PlanFrame(uri, key, size, etag, key, None, None, "file")]
        return
    try:
        indices = sample_indices(info, every=video.every, fps=video.fps)
    except ValueError:  # `fps` for a video whose rate is unknown: the shard records it as failed, saying so
        yield [PlanFrame(uri, key, size, etag, key, None, None, "file")]
        return
    for clip in plan_clips(key, indices, video.clip_frames):
        seconds = (lambda i: i / info.fps) if info.fps else (lambda i: None)
        yield [
            PlanFrame(uri, frame_key(key, int(i)), size, etag, key, int(i), seconds(int(i)), "file")
            for i in indices[(indices >= clip.first) & (indices <= clip.last)]
        ]


def _folder_shards(folder: str, frames: list[Listed], video: Any) -> Iterator[list[PlanFrame]]:
    fps = video.folder_fps or 0.0
    info = VideoInfo(frames=len(frames), fps=fps, width=0, height=0, counted="files")
    indices = sample_indices(info, every=video.every, fps=video.fps if fps else None)
    for clip in plan_clips(folder, indices, video.clip_frames):
        rows = []
        for i in indices[(indices >= clip.first) & (indices <= clip.last)]:
            uri, key, size, etag = frames[int(i)]
            rows.append(PlanFrame(uri, key, size, etag, folder, int(i), int(i) / fps if fps else None, "image"))
        yield rows


def write_video_plan_rows(
    shards: Iterable[list[PlanFrame]], sink: Any, generation: int = 0, first_image_id: int = 1
) -> tuple[list[str], int]:
    """Write a video source's plan rows to a Parquet ``sink``, one row group per shard (clip).

    Returns the shard ids and the number of rows (frames, and videos that could not be probed)."""
    shard_ids: list[str] = []
    n = 0
    with pq.ParquetWriter(sink, PLAN_SCHEMA, compression="zstd") as writer:
        for rows in shards:
            if not rows:
                continue
            sid = shard_name(len(shard_ids), generation)
            start = first_image_id + n
            columns = {
                "shard_id": [sid] * len(rows),
                "image_id": pa.array(range(start, start + len(rows)), pa.int64()),
                "uri": [r.uri for r in rows],
                "key": [r.key for r in rows],
                "size": pa.array([r.size for r in rows], pa.int64()),
                "etag": [r.etag for r in rows],
                "video": [r.video for r in rows],
                "frame_index": pa.array([r.frame_index for r in rows], pa.int64()),
                "timestamp_s": pa.array([r.timestamp_s for r in rows], pa.float64()),
                "frame_source": [r.frame_source for r in rows],
            }
            writer.write_table(pa.table(columns, schema=PLAN_SCHEMA))
            shard_ids.append(sid)
            n += len(rows)
    return shard_ids, n
