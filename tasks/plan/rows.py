"""The plan's rows: its Parquet schema and its shard names (:mod:`segflow.tasks.plan.planner` documents them)."""

from __future__ import annotations

import pyarrow as pa

__all__ = ["PLAN_SCHEMA", "VIDEO_COLUMNS", "shard_name"]

PLAN_SCHEMA = pa.schema(
    [
        ("shard_id", pa.string()),
        ("image_id", pa.int64()),
        ("uri", pa.string()),
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("video", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_s", pa.float64()),
        ("frame_source", pa.string()),
    ]
)

#: The columns a video frame's row adds (null for still images, and absent from plans written before them).
VIDEO_COLUMNS = ("video", "frame_index", "timestamp_s", "frame_source")


def shard_name(index: int, generation: int = 0) -> str:
    return f"shard-{index:05d}" if generation == 0 else f"shard-g{generation:04d}-{index:05d}"
