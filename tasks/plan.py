"""Planning: list the source once and split it into deterministic shards.

The plan is written under the output and reused by every later run of the job
on that output, so shards never reshuffle and image ids never change:

* ``OUTPUT/plan/plan.parquet`` -- one row per image, sorted by ``key``:
  ``shard_id`` (``shard-00000``...), ``image_id`` (1-based position in the
  sorted listing), ``uri`` (full URL or absolute path), ``key`` (path relative
  to the source root; the COCO ``file_name``), ``size`` (bytes, -1 unknown).
  One Parquet row group per shard, so a shard reads only its own rows.
* ``OUTPUT/plan/plan.json`` -- the source spec, shard size, counts and the
  fingerprint that decides whether an existing plan can be reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import join, open_fs, read_bytes, redact, write_bytes

__all__ = ["PlanError", "Plan", "list_source", "make_plan", "load_plan", "read_shard_rows", "plan_paths"]

PLAN_SCHEMA = pa.schema([
    ("shard_id", pa.string()),
    ("image_id", pa.int64()),
    ("uri", pa.string()),
    ("key", pa.string()),
    ("size", pa.int64()),
])


class PlanError(Exception):
    """The source cannot be planned (missing, empty, unreadable) or the output holds another job's plan."""


@dataclass(frozen=True)
class Plan:
    output: str
    shard_ids: list[str]
    num_images: int
    reused: bool


def plan_paths(output: str) -> tuple[str, str]:
    return join(output, "plan", "plan.parquet"), join(output, "plan", "plan.json")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def glob_to_regex(pattern: str) -> re.Pattern:
    """A ``/``-aware glob: ``**`` spans folders, ``*`` and ``?`` stay within one."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif c == "*":
            out += "[^/]*"
            i += 1
        elif c == "?":
            out += "[^/]"
            i += 1
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out += re.escape(c)
                i += 1
            else:
                out += pattern[i : j + 1]
                i = j + 1
        else:
            out += re.escape(c)
            i += 1
    return re.compile(out + r"\Z")


def list_source(source: Any) -> list[tuple[str, str, int]]:
    """``(uri, key, size)`` of every image of the source, sorted by key.

    ``source`` is a :class:`flows.config.SourceConfig` (url + pattern, or list).
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in source.extensions)
    if source.list:
        return _list_from_file(source.list, source.storage_options)
    url = source.url
    fs, root = open_fs(url, source.storage_options)
    try:
        if not fs.exists(root):
            raise PlanError(f"source not found: {redact(url)}")
        if fs.isfile(root):
            info = fs.info(root)
            return [(fs.unstrip_protocol(root) if not _local(fs) else root, root.rsplit("/", 1)[-1], int(info.get("size") or -1))]
        found = fs.find(root, detail=True)
    except PlanError:
        raise
    except PermissionError as e:
        raise PlanError(f"source not readable (permission denied): {redact(url)}: {e}") from None
    except FileNotFoundError:
        raise PlanError(f"source not found: {redact(url)}") from None
    regex = glob_to_regex(source.pattern) if source.pattern else None
    prefix = root.rstrip("/") + "/"
    items = []
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        key = path[len(prefix):] if path.startswith(prefix) else path
        if regex is not None:
            if not regex.match(key):
                continue
        elif not key.lower().endswith(exts):
            continue
        uri = path if _local(fs) else fs.unstrip_protocol(path)
        items.append((uri, key, int(info.get("size") if info.get("size") is not None else -1)))
    if not items:
        what = f"pattern {source.pattern!r}" if source.pattern else f"extensions {', '.join(exts)}"
        raise PlanError(f"source {redact(url)} has no images matching {what}")
    items.sort(key=lambda t: t[1])
    return items


def _local(fs: Any) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protos


def _list_from_file(list_url: str, storage_options: dict) -> list[tuple[str, str, int]]:
    fs, path = open_fs(list_url, storage_options)
    try:
        text = read_bytes(fs, path).decode("utf-8")
    except FileNotFoundError:
        raise PlanError(f"source list not found: {redact(list_url)}") from None
    base = list_url.rsplit("/", 1)[0] if "/" in list_url else "."
    seen: set[str] = set()
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        uri = line if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", line) or line.startswith("/") else join(base, line)
        if uri in seen:
            continue
        seen.add(uri)
        items.append((uri, line, -1))
    if not items:
        raise PlanError(f"source list {redact(list_url)} names no images")
    items.sort(key=lambda t: t[1])
    return items


def _fingerprint(source: Any, shard_size: int) -> str:
    spec = {"source": source.model_dump(mode="json", exclude={"storage_options", "max_pixels"}), "shard_size": shard_size}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def make_plan(job: Any) -> Plan:
    """Write (or reuse) the plan of ``job`` under its output. Lists the source at most once."""
    fs, _ = open_fs(job.output)
    parquet_url, meta_url = plan_paths(job.output)
    _, meta_path = open_fs(meta_url)
    fingerprint = _fingerprint(job.source, job.shard_size)
    _, job_path = open_fs(join(job.output, "job.json"))
    if fs.exists(meta_path):
        meta = json.loads(read_bytes(fs, meta_path))
        if meta.get("fingerprint") != fingerprint:
            raise PlanError(
                f"{redact(job.output)} already holds the plan of a different source or shard size "
                f"(planned: {meta.get('source', {}).get('url') or meta.get('source', {}).get('list')}, shard_size {meta.get('shard_size')}); "
                f"use another output or delete it"
            )
        write_bytes(fs, job_path, json.dumps(job.model_dump(mode="json"), indent=1).encode())
        return Plan(job.output, list(meta["shard_ids"]), int(meta["num_images"]), reused=True)

    items = list_source(job.source)
    n = len(items)
    shard_ids = [shard_name(i // job.shard_size) for i in range(n)]
    table = pa.table(
        {
            "shard_id": shard_ids,
            "image_id": pa.array(range(1, n + 1), pa.int64()),
            "uri": [u for u, _, _ in items],
            "key": [k for _, k, _ in items],
            "size": pa.array([s for _, _, s in items], pa.int64()),
        },
        schema=PLAN_SCHEMA,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=job.shard_size)
    _, parquet_path = open_fs(parquet_url)
    write_bytes(fs, parquet_path, buf.getvalue())
    unique = list(dict.fromkeys(shard_ids))
    meta = {
        "fingerprint": fingerprint,
        "source": job.source.model_dump(mode="json", exclude={"storage_options"}),
        "shard_size": job.shard_size,
        "num_images": n,
        "num_shards": len(unique),
        "shard_ids": unique,
    }
    write_bytes(fs, job_path, json.dumps(job.model_dump(mode="json"), indent=1).encode())  # what `segflow rerun` runs
    write_bytes(fs, meta_path, json.dumps(meta, indent=1).encode())  # written last: the plan exists once this exists
    return Plan(job.output, unique, n, reused=False)


def load_plan(output: str) -> dict:
    fs, meta_path = open_fs(plan_paths(output)[1])
    try:
        return json.loads(read_bytes(fs, meta_path))
    except FileNotFoundError:
        raise PlanError(f"no plan under {redact(output)}: run `segflow run` first") from None


def read_shard_rows(output: str, shard_id: str) -> list[dict]:
    """The plan rows of one shard (reads only that shard's row group)."""
    fs, path = open_fs(plan_paths(output)[0])
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, filters=[("shard_id", "=", shard_id)])
    return table.to_pylist()


def iter_plan(output: str) -> Iterable[dict]:
    fs, path = open_fs(plan_paths(output)[0])
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches():
            yield from batch.to_pylist()
