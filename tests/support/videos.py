"""Small test videos whose frames say which frame they are.

Frame ``i`` is grey ``level(i)`` everywhere but a white block in its top-left quarter (so a rotation shows where
the block went): :func:`frame_number` reads ``i`` back from a decoded frame, through lossy codecs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STEP = 8  # grey levels between consecutive frames: frames 0..29 fit in 8..240


def level(i: int) -> int:
    return STEP * (i % 30) + 8


def frame(i: int, height: int, width: int) -> np.ndarray:
    """Frame ``i``: H x W x 3, uint8."""
    a = np.full((height, width, 3), level(i), np.uint8)
    a[: height // 4, : width // 4] = 255
    return a


def frame_number(pixels: np.ndarray) -> int:
    """``i`` mod 30 of a decoded :func:`frame` (read from the grey of its lower-right quarter)."""
    h, w = pixels.shape[:2]
    grey = float(pixels[h // 2 :, w // 2 :].mean())
    return int(round((grey - 8) / STEP)) % 30


def write_video(
    path: Path, frames: int, fps: int = 10, size: tuple[int, int] = (48, 64), codec: str = "mpeg4", rotation: int = 0
) -> Path:
    """Write ``frames`` frames (``size``: height, width) to ``path`` with PyAV; ``rotation``: the display matrix's
    counter-clockwise turn, as a phone writes it."""
    import av

    h, w = size
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "yuv420p" if codec != "ffv1" else "yuv444p"
        if codec == "mpeg4":
            s.codec_context.qscale = 2
            s.options = {"qscale": "2"}
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(i, h, w), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path
