"""State of every planned shard of an output: committed, failed (with its error) or pending.

One listing of ``OUTPUT/shards/`` finds the commit and error records; their
contents are fetched concurrently (``fs.cat`` on many paths).
"""

from __future__ import annotations

import json
import re
from typing import Any

from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import open_fs
from segflow.tasks.plan.planner import load_plan

__all__ = ["shard_states", "summarize_states"]

_RECORD = re.compile(r"/([^/]+)/_COMMIT(?:-r(\d+))?\.json$")


def shard_states(output: str) -> list[dict[str, Any]]:
    """One dict per planned shard: ``shard_id``, ``state``, and counts or ``error``."""
    plan = load_plan(output)
    fs, root = open_fs(OutputLayout(output).shards)
    try:
        found = set(fs.find(root))
    except FileNotFoundError:
        found = set()
    records = {}
    latest: dict[str, tuple[int, str]] = {}  # shard -> (generation, path) of its newest commit record
    for p in found:
        m = _RECORD.search(p)
        if m and (sid := m.group(1)) and int(m.group(2) or 0) >= latest.get(sid, (-1, ""))[0]:
            latest[sid] = (int(m.group(2) or 0), p)
    wanted = [p for _, p in latest.values()] + [p for p in found if "/_errors/" in p]
    if wanted:
        records = fs.cat(wanted, on_error="omit")
    out = []
    for sid in plan["shard_ids"]:
        commit_path, error_path = latest.get(sid, (0, ""))[1], f"{root}/_errors/{sid}.json"
        if commit_path in records:
            c = json.loads(records[commit_path])
            out.append(
                {
                    "shard_id": sid,
                    "state": "committed",
                    **c["stats"],
                    "attempt": c["attempt"],
                    "committed_at": c["committed_at"],
                }
            )
        elif error_path in records:
            e = json.loads(records[error_path])
            out.append({"shard_id": sid, "state": "failed", "error": e["error"], "at": e["at"]})
        else:
            out.append({"shard_id": sid, "state": "pending"})
    return out


def summarize_states(states: list[dict]) -> dict[str, int]:
    counts = {"committed": 0, "failed": 0, "pending": 0}
    for s in states:
        counts[s["state"]] += 1
    counts["images_committed"] = sum(s.get("images", 0) for s in states)
    counts["masks_committed"] = sum(s.get("masks", 0) for s in states)
    return counts
