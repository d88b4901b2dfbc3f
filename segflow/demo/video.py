"""Synthetic videos for ``segflow demo --video``: the demo's shapes moving over moving stuff, with exact tracks.

Each video is one wide stuff scene (sky, grass, water, road) the camera pans across, and things (circle, square,
triangle) that move in straight lines at their own speed, turn slowly, enter and leave the frame and pass in front
of and behind each other (each has its own depth). A thing keeps its texture. The ground truth is exact: per frame,
the visible part of each thing.

An object is in a frame's ground truth when at least :data:`MIN_VISIBLE` of it is visible (not covered by a thing
in front, not outside the frame) and at least :data:`MIN_PIXELS` pixels; a frame where less shows is a gap in its
track (an occlusion), not a label anyone would ask for.

Written as ``VIDEOS/video-000.mp4`` ... (H.264, near-lossless) and ``ground_truth/vis.json`` (YouTube-VIS: the
names and frame ``file_names`` a segflow run exports for the same videos, ``video-000/000012``), split into
``fit.json`` (the first half of the videos: the gold set) and ``holdout.json`` (the rest: what the demo is scored
on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.demo.synthetic import (
    _ID,
    STUFF_CLASSES,
    THING_CLASSES,
    _shape_layer,
    _stuff_layout,
    _stuff_texture,
    _thing_texture,
)

__all__ = ["VideoTruth", "make_video", "write_video", "write_video_set", "MIN_VISIBLE", "MIN_PIXELS"]

#: Share of a thing's full shape that must show for the frame to label it (else the frame is a gap in its track).
MIN_VISIBLE = 0.4
#: Pixels a thing must show for the frame to label it.
MIN_PIXELS = 150


@dataclass
class _Mover:
    cls: str
    size: float
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    texture: np.ndarray  # S x S x 3, centred on the thing

    def at(self, t: int) -> tuple[float, float, float]:
        return self.x + self.vx * t, self.y + self.vy * t, self.angle + self.spin * t


@dataclass
class VideoTruth:
    """One video's frames and tracks.

    Attributes:
      frames: T frames, H x W x 3 uint8 RGB.
      classes: one class name per track (ids are 1, 2, ... in this order).
      masks: per frame, track id -> H x W bool visible mask (only the tracks labelled in that frame).
    """

    frames: list[np.ndarray]
    classes: list[str]
    masks: list[dict[int, np.ndarray]]


def _mover(rng: np.random.Generator, w: int, h: int, frames: int, enters: bool) -> _Mover:
    cls = THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
    size = min(w, h) * rng.uniform(0.2, 0.34)
    speed = rng.uniform(1.0, 3.0)
    if enters:  # from outside a side, across the frame
        side = int(rng.integers(4))
        x, y = [(-size, rng.uniform(0, h)), (w + size, rng.uniform(0, h)), (rng.uniform(0, w), -size),
                (rng.uniform(0, w), h + size)][side]  # fmt: skip
        tx, ty = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        d = math.hypot(tx - x, ty - y)
        vx, vy = (tx - x) / d * speed * 1.5, (ty - y) / d * speed * 1.5
        x, y = x - vx * rng.uniform(0, frames / 3), y - vy * rng.uniform(0, frames / 3)  # enters during the video
    else:
        x, y = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        a = rng.uniform(0, 2 * math.pi)
        vx, vy = math.cos(a) * speed, math.sin(a) * speed
    side = int(math.ceil(size * 1.7))
    return _Mover(cls, size, x, y, vx, vy, rng.uniform(0, 2 * math.pi), rng.uniform(-0.03, 0.03),
                  _thing_texture(rng, side, side))  # fmt: skip


def make_video(
    rng: np.random.Generator, frames: int, width: int = 320, height: int = 240, things: int = 5
) -> VideoTruth:
    """Render one video of ``frames`` frames (``width`` x ``height``) with ``things`` moving things (about a third
    of them entering from outside), exact per-frame masks."""
    w, h = int(width), int(height)
    pan = rng.uniform(0.5, 1.5) * rng.choice([-1, 1])  # the camera, px a frame
    wide = w + int(math.ceil(abs(pan) * frames)) + 2
    semantic = _stuff_layout(rng, h, wide)
    canvas = np.zeros((h, wide, 3), np.uint8)
    for name in STUFF_CLASSES:
        sel = semantic == _ID[name]
        if sel.any():
            canvas[sel] = _stuff_texture(rng, name, h, wide)[sel]
    movers = [_mover(rng, w, h, frames, enters=rng.random() < 0.35) for _ in range(things)]
    truth = VideoTruth([], [m.cls for m in movers], [])
    for t in range(frames):
        x0 = int(round(t * abs(pan))) if pan > 0 else int(round((frames - 1 - t) * abs(pan)))
        img = canvas[:, x0 : x0 + w].copy()
        visible: list[np.ndarray] = []
        full: list[float] = []
        for m in movers:  # back to front: a later thing covers the earlier ones
            cx, cy, angle = m.at(t)
            shape = _shape_layer(m.cls, cx, cy, m.size, angle, h, w)
            s = m.texture.shape[0]
            ox, oy = int(round(cx)) - s // 2, int(round(cy)) - s // 2
            ys, xs = np.nonzero(shape)
            if len(ys):
                ty, tx = np.clip(ys - oy, 0, s - 1), np.clip(xs - ox, 0, s - 1)
                img[ys, xs] = m.texture[ty, tx]
            visible = [v & ~shape for v in visible]
            visible.append(shape)
            full.append(_full_area(m.cls, m.size))
        truth.frames.append(img)
        truth.masks.append(
            {
                k + 1: v
                for k, (v, a) in enumerate(zip(visible, full, strict=True))
                if v.sum() >= max(MIN_PIXELS, MIN_VISIBLE * a)
            }
        )
    return truth


def _full_area(cls: str, size: float) -> float:
    from segflow.demo.synthetic import _FULL_AREA

    return _FULL_AREA[cls] * size * size


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", fps: int = 10) -> Path:
    """``frames`` (H x W x 3 RGB uint8) as a video file (H.264 near-lossless by default; mkv or mp4 by the name)."""
    import av

    h, w = frames[0].shape[:2]
    options = {"crf": "12", "preset": "fast"} if codec == "libx264" else {}
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps, options=options)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def write_video_set(folder: str | Path, videos: int, frames: int, seed: int) -> Path:
    """``folder/videos/video-NNN.mp4`` and ``folder/ground_truth/vis.json``; returns the videos' folder."""
    from segflow.tasks import rle

    root = Path(folder)
    vdir, gt = root / "videos", root / "ground_truth"
    vdir.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    doc: dict = {
        "videos": [],
        "annotations": [],
        "categories": [{"id": _ID[c], "name": c, "supercategory": "object"} for c in THING_CLASSES],
    }
    for v in range(videos):
        name = f"video-{v:03d}"
        truth = make_video(rng, frames, things=int(rng.integers(4, 7)))
        write_video(vdir / f"{name}.mp4", truth.frames)
        h, w = truth.frames[0].shape[:2]
        doc["videos"].append(
            {
                "id": v + 1,
                "name": name,
                "width": w,
                "height": h,
                "length": frames,
                "file_names": [f"{name}/{t:06d}" for t in range(frames)],
            }  # fmt: skip
        )
        for k, cls in enumerate(truth.classes, 1):
            segs: list = []
            for t in range(frames):
                m = truth.masks[t].get(k)
                segs.append(None if m is None else {"size": [h, w], "counts": rle.encode_nhw(m)[0]})
            if any(s is not None for s in segs):
                doc["annotations"].append(
                    {
                        "id": len(doc["annotations"]) + 1,
                        "video_id": v + 1,
                        "category_id": _ID[cls],
                        "segmentations": segs,
                        "iscrowd": 0,
                        "height": h,
                        "width": w,
                    }  # fmt: skip
                )
    (gt / "vis.json").write_text(json.dumps(doc))
    # the first half of the videos are the gold set (the tracks' threshold is fitted on them), the rest held out
    gold_ids = {v["id"] for v in doc["videos"][: len(doc["videos"]) // 2]}
    for name, ids in (("fit", gold_ids), ("holdout", {v["id"] for v in doc["videos"]} - gold_ids)):
        part = {
            "videos": [v for v in doc["videos"] if v["id"] in ids],
            "annotations": [a for a in doc["annotations"] if a["video_id"] in ids],
            "categories": doc["categories"],
        }
        (gt / f"{name}.json").write_text(json.dumps(part))
    return vdir
