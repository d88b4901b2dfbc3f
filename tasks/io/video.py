"""Decoding source videos into what every model sees: upright RGB uint8 frames, H x W x 3, streamed.

A video is either a **file** (``.mp4``, ``.mov``, ``.mkv``, ``.webm``; decoded by PyAV) or a **frame folder**
(a folder of images, one frame each, in name order). Either way:

* **Frames are numbered 0, 1, 2, ... in presentation order** over the whole video, before sampling.
  :func:`sample_indices` picks the frames a job labels (``every`` k-th, or as close as possible to ``fps`` frames a
  second); a clip (:class:`Clip`) is a run of consecutive *sampled* frames.
* **Nothing holds the whole video.** A file is read through a file object (any fsspec URL: only the bytes the
  demuxer asks for are fetched), decoded one frame at a time; a clip seeks to the key frame before its first
  frame and decodes forward, and each frame is released once the caller moves on. Past a seek, a frame's number
  comes from its timestamp at the stream's average rate (exact for the constant frame rates cameras write).
* **Display rotation is applied** (the stream's display matrix, as EXIF orientation is for images): a phone video
  recorded upright comes out upright, and ``width``/``height`` are the upright size. Flips in the display matrix
  are not applied.
* **Frame counts come from the container without decoding** where it has them (``nb_frames``: mp4/mov); else the
  packets are counted (demuxed, not decoded: mkv and webm often carry no count).
* ``max_side``: a frame larger than that on its long side is scaled down (area averaging) before anything sees it.

Failures raise :class:`VideoLoadError` with a short reason (not a video, no video stream, truncated after frame
N, ...) that the shard records; the run goes on with the other videos.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoLoadError",
    "VideoInfo",
    "DecodedFrame",
    "FrameRef",
    "Clip",
    "probe_video",
    "probe_frame_folder",
    "sample_indices",
    "plan_clips",
    "iter_video_frames",
    "iter_folder_frames",
    "resize_max_side",
    "labelled_pixels",
    "pixels_key",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")

#: Demuxers a video file may be opened with (FFmpeg's names): an explicit list keeps the attack surface small, and
#: an image or anything else FFmpeg could read as a one-frame stream is refused as no video.
DEMUXERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})

#: Frames a video may have (a container claiming more is refused before anything is planned from it).
MAX_FRAMES = 50_000_000


class VideoLoadError(Exception):
    """A video (or one of its frames) that cannot be used; ``str(err)`` is the reason recorded in the manifest."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video is, read without decoding it (but its first frame, for the rotation).

    Attributes:
      frames: frames in the video (presentation order, before sampling).
      fps: frames a second (the stream's average rate; a frame folder's is the job's ``source.video.fps`` or 0).
      width, height: the upright frame size, rotation applied, before ``max_side``.
      rotation: degrees the display matrix turns the stored frame counter-clockwise (0, 90, 180 or -90).
      counted: where ``frames`` came from: ``container`` (its frame count), ``packets`` (demuxed and counted) or
        ``files`` (a frame folder's images).
    """

    frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0
    counted: str = "container"

    @property
    def duration_s(self) -> float | None:
        return self.frames / self.fps if self.fps > 0 else None


@dataclass(frozen=True)
class DecodedFrame:
    """One frame, upright.

    Attributes:
      index: the frame's number in the video (0-based, presentation order, before sampling).
      timestamp_s: seconds from the start of the video (``index / fps`` for a frame folder; None without an fps).
      pixels: H x W x 3, uint8, RGB, rotation and ``max_side`` applied.
    """

    index: int
    timestamp_s: float | None
    pixels: np.ndarray


@dataclass(frozen=True)
class FrameRef:
    """Where a labelled frame sits: its ``video`` (the video file's or frame folder's key), ``index`` (frame number;
    None for a video that could not be read) and ``timestamp_s``."""

    video: str
    index: int | None
    timestamp_s: float | None

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> FrameRef | None:
        """The frame a plan row is (None: a still image, or a plan written before videos)."""
        if row.get("video") is None:
            return None
        return cls(str(row["video"]), row.get("frame_index"), row.get("timestamp_s"))


@dataclass(frozen=True, order=True)
class Clip:
    """A shard of a video: its sampled frames ``first`` .. ``last`` (inclusive; frame numbers as
    :class:`DecodedFrame`'s ``index``), of which the first ``overlap`` are also the previous clip's last."""

    video: str
    first: int
    last: int
    overlap: int = 0


def _rot90(pixels: np.ndarray, rotation: int) -> np.ndarray:
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(pixels, k)) if k else pixels


def resize_max_side(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """``pixels`` (H x W x 3, uint8) scaled down (area averaging) to a long side of ``max_side``; unchanged when
    it is already as small or ``max_side`` is None."""
    h, w = pixels.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return pixels
    from PIL import Image

    k = max_side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX), np.uint8)


def _open(source: Any) -> Any:
    """``av.open`` on a path or a binary file object, its failures as :class:`VideoLoadError`."""
    import av

    if hasattr(source, "seek"):  # a file object another container read before
        source.seek(0)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoLoadError(f"not a readable video: {e.strerror or type(e).__name__}") from None
    except (OSError, ValueError) as e:
        raise VideoLoadError(f"cannot open video: {type(e).__name__}: {e}") from None
    if container.format.name not in DEMUXERS:
        name = container.format.name
        container.close()
        raise VideoLoadError(f"not a video container ({name}): mp4, mov, mkv or webm")
    if not container.streams.video:
        container.close()
        raise VideoLoadError("no video stream")
    return container


def _fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(source: Any) -> VideoInfo:
    """A video file's :class:`VideoInfo`. ``source``: a local path or a binary file object (seekable), e.g.
    ``fs.open(path, "rb")`` for any fsspec URL.

    Raises:
      VideoLoadError: not a video, no video stream, no frame, or a frame count past :data:`MAX_FRAMES`.
    """
    import av

    container = _open(source)
    try:
        stream = container.streams.video[0]
        fps = _fps(stream)
        frames, counted = int(stream.frames or 0), "container"
        if frames <= 0:  # mkv/webm: count the packets (demuxed, never decoded)
            counted = "packets"
            try:
                frames = sum(1 for p in container.demux(stream) if p.size)
            except av.error.FFmpegError as e:
                raise VideoLoadError(f"unreadable video data: {e.strerror or type(e).__name__}") from None
            container.seek(0)
        if frames <= 0:
            raise VideoLoadError("no frame in the video stream")
        if frames > MAX_FRAMES:
            raise VideoLoadError(f"{frames} frames: more than {MAX_FRAMES}")
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.error.FFmpegError) as e:
            raise VideoLoadError(f"first frame cannot be decoded: {type(e).__name__}") from None
        rotation = (0, 90, 180, -90)[int(round((first.rotation or 0) / 90.0)) % 4]
        w, h = (first.height, first.width) if abs(rotation) % 180 == 90 else (first.width, first.height)
        return VideoInfo(frames=frames, fps=fps, width=w, height=h, rotation=rotation, counted=counted)
    finally:
        container.close()


def probe_frame_folder(fs: Any, files: Sequence[str], fps: float | None = None) -> VideoInfo:
    """A frame folder's :class:`VideoInfo`: ``files`` are its images in frame order (paths on ``fs``); the size
    is read from the first image's header, nothing is decoded."""
    from PIL import Image

    if not files:
        raise VideoLoadError("frame folder holds no image")
    try:
        with fs.open(files[0], "rb") as f, Image.open(f) as im:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - any decoder failure is this video's reason
        raise VideoLoadError(f"first frame {files[0].rsplit('/', 1)[-1]}: {type(e).__name__}: {e}") from None
    if orientation in (5, 6, 7, 8):  # EXIF turns these by 90 degrees
        w, h = h, w
    return VideoInfo(frames=len(files), fps=float(fps or 0.0), width=w, height=h, counted="files")


def sample_indices(info: VideoInfo, every: int | None = None, fps: float | None = None) -> np.ndarray:
    """The frames a job labels (ascending frame numbers, int64): every ``every``-th frame from the first, or the
    frame nearest each tick of ``fps`` a second (never more than the video has); all frames when both are None.

    Raises:
      ValueError: both given, ``every`` < 1, ``fps`` <= 0, or ``fps`` for a video whose rate is unknown.
    """
    if every is not None and fps is not None:
        raise ValueError("give `every` or `fps`, not both")
    n = info.frames
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if info.fps <= 0:
            raise ValueError("the video's frame rate is unknown: sample with `every`")
        if fps >= info.fps:
            return np.arange(n, dtype=np.int64)
        ticks = np.arange(0.0, n / info.fps, 1.0 / fps)
        return np.unique(np.minimum(np.round(ticks * info.fps).astype(np.int64), n - 1))
    step = 1 if every is None else int(every)
    if step < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return np.arange(0, n, step, dtype=np.int64)


def plan_clips(video: str, indices: np.ndarray, clip_frames: int, overlap: int = 0) -> list[Clip]:
    """Split a video's sampled frames (``indices``: ascending frame numbers) into clips of ``clip_frames`` sampled
    frames, each starting ``overlap`` sampled frames before the previous one ends (so neighbouring clips can be
    joined by the tracks they share). A remainder shorter than half a clip joins the last clip. Deterministic: the
    same listing gives the same clips.

    Raises:
      ValueError: ``clip_frames`` < 1, or ``overlap`` not in [0, clip_frames).
    """
    if clip_frames < 1:
        raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
    if not 0 <= overlap < clip_frames:
        raise ValueError(f"overlap must be in [0, clip_frames), got {overlap} with clip_frames {clip_frames}")
    n = len(indices)
    if n == 0:
        return []
    step = clip_frames - overlap
    starts = list(range(0, max(1, n - overlap), step))
    if len(starts) > 1 and n - starts[-1] < max(1, clip_frames // 2) + overlap:
        starts.pop()  # the short remainder joins the clip before it
    clips = []
    for k, s in enumerate(starts):
        end = n - 1 if k == len(starts) - 1 else min(n - 1, s + clip_frames - 1)
        clips.append(Clip(video, int(indices[s]), int(indices[end]), overlap if k else 0))
    return clips


def iter_video_frames(
    source: Any, wanted: Iterable[int], max_side: int | None = None, info: VideoInfo | None = None
) -> Iterator[DecodedFrame]:
    """Decode the frames numbered ``wanted`` (ascending) of a video file, one at a time.

    ``source``: a local path or a binary file object; ``info``: its :func:`probe_video` (read when None). Seeks to
    the key frame at or before the first wanted frame, then decodes forward and stops after the last.

    Raises:
      VideoLoadError: the data ends or breaks before the last wanted frame (the frames before it were yielded);
        the reason says how far it got.
    """
    import av

    want = sorted({int(i) for i in wanted})
    if not want:
        return
    container = _open(source)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = info.fps if info is not None else _fps(stream)
        tb = float(stream.time_base) if stream.time_base else 0.0
        start_pts = stream.start_time or 0
        seeked = want[0] > 0 and fps > 0 and tb > 0
        if seeked:  # to the key frame at or before the first wanted frame
            container.seek(start_pts + int(math.floor(want[0] / fps / tb)), stream=stream, backward=True)
        pos, k, count = 0, 0, -1
        try:
            for frame in container.decode(stream):
                count += 1
                if seeked and frame.pts is not None:
                    pos = int(round((frame.pts - start_pts) * tb * fps))
                else:
                    pos = count
                if pos < want[k]:
                    continue
                while k < len(want) and want[k] < pos:  # a frame the stream does not have (variable rate)
                    k += 1
                if k < len(want) and want[k] == pos:
                    pixels = frame.to_ndarray(format="rgb24")
                    pixels = resize_max_side(_rot90(pixels, int(frame.rotation or 0)), max_side)
                    yield DecodedFrame(pos, pos / fps if fps > 0 else None, pixels)
                    k += 1
                if k >= len(want):
                    return
        except av.error.FFmpegError as e:
            raise VideoLoadError(f"video data breaks after frame {pos}: {e.strerror or type(e).__name__}") from None
        if k < len(want) and (info is None or want[k] < info.frames):
            raise VideoLoadError(f"video ends after frame {pos}, before frame {want[k]} (truncated?)")
    finally:
        container.close()


def iter_folder_frames(
    fs: Any, files: Sequence[str], wanted: Iterable[int], max_side: int | None = None, fps: float | None = None
) -> Iterator[DecodedFrame]:
    """Decode the frames numbered ``wanted`` of a frame folder (``files``: its images in frame order, paths on
    ``fs``), one at a time; EXIF orientation applied as for images.

    Raises:
      VideoLoadError: a frame that cannot be decoded (the frames before it were yielded), naming it.
    """
    from segflow.tasks.io.images import ImageLoadError, decode_image

    for i in sorted({int(i) for i in wanted}):
        if not 0 <= i < len(files):
            raise VideoLoadError(f"frame {i}: the folder has {len(files)} frames")
        try:
            pixels = decode_image(fs.cat_file(files[i])).pixels
        except (ImageLoadError, OSError) as e:
            raise VideoLoadError(f"frame {i} ({files[i].rsplit('/', 1)[-1]}): {e}") from None
        yield DecodedFrame(i, i / fps if fps else None, resize_max_side(pixels, max_side))


def pixels_key(row: dict[str, Any]) -> tuple[str, int | None]:
    """What identifies a manifest row's pixels: its URI, and its frame number for a video's frame."""
    return str(row["image_uri"]), row.get("frame_index")


def labelled_pixels(uri: str, frame_index: int | None = None, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The pixels the stages saw for a manifest row (H x W x 3, uint8): the image at ``uri`` (EXIF orientation
    applied), or frame ``frame_index`` of the video at ``uri`` (rotation applied), scaled to ``size_hw`` (the row's
    height and width) when it was labelled smaller (``source.video.max_side``). Reads one image, or streams the
    video up to that frame.

    Raises:
      VideoLoadError, ImageLoadError, OSError: the pixels cannot be read.
    """
    from segflow.tasks.io.images import decode_image
    from segflow.tasks.io.storage import open_fs

    fs, path = open_fs(uri)
    pixels = None
    if frame_index is not None and uri.lower().endswith(VIDEO_SUFFIXES):
        with fs.open(path, "rb") as f:
            pixels = next(iter_video_frames(f, [frame_index]), DecodedFrame(0, None, np.zeros((0, 0, 3)))).pixels
        if pixels.size == 0:
            raise VideoLoadError(f"frame {frame_index} not found")
    else:
        pixels = decode_image(fs.cat_file(path)).pixels
    if size_hw is not None and pixels.shape[:2] != tuple(size_hw):
        from PIL import Image

        h, w = size_hw
        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BOX), np.uint8)
    return pixels
