"""Mask rows of a clip, for the tests of tracks (tasks/stages/clip_tracks.py, tasks/outputs/tracks.py): squares on a
small frame, as the masks manifest has them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from segflow.tasks import rle

H, W = 60, 80


def square(x: int, y: int, side: int = 12) -> str:
    m = np.zeros((H, W), bool)
    m[y : y + side, x : x + side] = True
    return rle.encode_nhw(m)[0]


def masks(rows: list[tuple], video: str = "v.mp4") -> pa.Table:
    """A clip's mask rows as the masks manifest has them. rows: (frame, track id or None, class, rle[, score])."""
    n = len(rows)
    return pa.table(
        {
            "annotation_id": pa.array(range(1, n + 1), pa.int64()),
            "video": [video] * n,
            "frame_index": pa.array([r[0] for r in rows], pa.int64()),
            "track_id": pa.array([r[1] for r in rows], pa.int64()),
            "category_id": pa.array([r[2] for r in rows], pa.int32()),
            "category_name": [f"c{r[2]}" for r in rows],
            "rle_counts": [r[3] for r in rows],
            "width": pa.array([W] * n, pa.int32()),
            "height": pa.array([H] * n, pa.int32()),
            "score": pa.array([r[4] if len(r) > 4 else 0.9 for r in rows], pa.float32()),
            "predicted_iou": pa.array([0.8] * n, pa.float32()),
            "verdict": ["accept"] * n,
        }
    )
