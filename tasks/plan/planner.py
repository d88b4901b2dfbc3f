"""Planning: list the source once and split it into deterministic shards.

The plan is written under the output and reused by every later run of the job
on that output, so shards never reshuffle and image ids never change:

* ``OUTPUT/plan/plan.parquet`` -- one row per image, sorted by ``key``:
  ``shard_id`` (``shard-00000``...), ``image_id`` (1-based position in the
  sorted listing), ``uri`` (full URL or absolute path), ``key`` (path relative
  to the source root; the COCO ``file_name``), ``size`` (bytes, -1 unknown),
  ``etag`` (object stores' ETag, null elsewhere).
  One Parquet row group per shard, so a shard reads only its own rows.
  Video frames (``source.video``; :mod:`segflow.tasks.plan.videos`) add ``video`` (the video's key),
  ``frame_index``, ``timestamp_s`` and ``frame_source`` (``file``: decoded from the video at ``uri``;
  ``image``: ``uri`` is the frame's own image, in a frame folder); a shard is then a clip of one video.
* ``OUTPUT/plan/plan.json`` -- the source spec, shard size, counts and the
  fingerprint that decides whether an existing plan can be reused.

Incremental jobs (``incremental: true``): each run lists the source again and
appends the keys no earlier generation planned as a new *generation*:
``OUTPUT/plan/plan-g0001.parquet`` (shards ``shard-g0001-00000``...; image ids
continue after the last one), claimed create-if-absent through
``plan/plan-g0001.json`` so two runs never plan the same generation, and then
added to ``plan.json``. Earlier shards, their ids and their commits never
change, so a run labels only what is new and finalize merges everything.
Finding the new keys is a streaming merge of the sorted listing with the
sorted generations: memory does not grow with the number of keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from segflow.tasks.documents import PlanMeta
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.parquet import read_where
from segflow.tasks.io.storage import is_local, join, open_fs, read_bytes, redact, scrub, url_credential, write_bytes
from segflow.tasks.plan.rows import PLAN_SCHEMA, VIDEO_COLUMNS, shard_name

if TYPE_CHECKING:
    from segflow.config.schema import JobConfig, SourceConfig


__all__ = ["PlanError", "Plan", "list_source", "make_plan", "load_plan", "read_shard_rows", "plan_paths"]


class PlanError(Exception):
    """The source cannot be planned (missing, empty, unreadable) or the output holds another job's plan."""


@dataclass(frozen=True)
class Plan:
    output: str
    shard_ids: list[str]
    num_images: int
    reused: bool
    new_images: int = 0  # images an incremental run added to an existing plan


def plan_paths(output: str) -> tuple[str, str]:
    layout = OutputLayout(output)
    return layout.plan_parquet(), layout.plan_json


def _generation_of(shard_id: str) -> int:
    m = re.match(r"^shard-g(\d{4})-\d{5}$", shard_id)
    return int(m.group(1)) if m else 0


def _generation_file(output: str, generation: int) -> str:
    return OutputLayout(output).plan_parquet(generation)


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


def iter_source(source: SourceConfig) -> Iterator[tuple[str, str, int, str | None]]:
    """``(uri, key, size, etag)`` of every image of the source, in key order.

    Object stores with paged listings (S3 through s3fs) are streamed one page
    (1000 keys) at a time -- they list in key order already -- so memory stays
    bounded for any number of keys. Other filesystems are listed, then sorted.
    ``source`` is a :class:`segflow.config.SourceConfig` (url + pattern, or list).
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in source.extensions)
    if source.list:
        yield from ((u, k, s, None) for u, k, s in _list_from_file(source.list, source.storage_options))
        return
    url = source.url
    if url is None:  # the config allows a source without url only with a list
        raise PlanError("source: needs url or list")
    fs, root = open_fs(url, source.storage_options)
    regex = glob_to_regex(source.pattern) if source.pattern else None
    prefix = root.rstrip("/") + "/"

    def wanted(key: str) -> bool:
        return bool(regex.match(key)) if regex is not None else key.lower().endswith(exts)

    count = 0
    try:
        if hasattr(fs, "_iterdir") and hasattr(fs, "split_path"):
            entries = _iter_object_store(fs, root)
        else:
            if not fs.exists(root):
                raise PlanError(f"source not found: {redact(url)}")
            if fs.isfile(root):
                info = fs.info(root)
                entries = iter([(root, info)])
                prefix = root.rsplit("/", 1)[0] + "/"
            else:
                entries = iter(sorted(fs.find(root, detail=True).items()))
        for path, info in entries:
            if info.get("type") == "directory":
                continue
            key = path[len(prefix) :] if path.startswith(prefix) else path
            if not wanted(key):
                continue
            count += 1
            uri = path if is_local(fs) else fs.unstrip_protocol(path)
            size = info.get("size")
            etag = info.get("ETag") or info.get("etag")
            yield uri, key, int(size) if size is not None else -1, (str(etag).strip('"') if etag else None)
    except PlanError:
        raise
    except PermissionError as e:
        raise PlanError(f"source not readable (permission denied): {redact(url)}: {e}") from None
    except FileNotFoundError:
        raise PlanError(f"source not found: {redact(url)}") from None
    if count == 0:
        if hasattr(fs, "_iterdir") and not fs.exists(root):
            raise PlanError(f"source not found: {redact(url)}")
        what = f"pattern {source.pattern!r}" if source.pattern else f"extensions {', '.join(exts)}"
        raise PlanError(f"source {redact(url)} has no images matching {what}")


def _iter_object_store(fs: Any, root: str) -> Iterator[tuple[str, dict]]:
    """Stream an s3fs listing page by page (``list_objects_v2``, key order, 1000 keys a page)."""
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/" if key else ""
    pages = fs._list_pages("list_objects_v2", Bucket=bucket, Prefix=prefix, **getattr(fs, "req_kw", {}))
    while True:
        try:
            page = sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return
        for c in page.get("Contents", []):
            if c["Key"].endswith("/"):
                continue
            yield f"{bucket}/{c['Key']}", {"size": c.get("Size"), "ETag": c.get("ETag"), "type": "file"}


def list_source(source: SourceConfig) -> list[tuple[str, str, int]]:
    """``(uri, key, size)`` of every image of the source, in key order (materialised; see :func:`iter_source`)."""
    return [(u, k, s) for u, k, s, _ in iter_source(source)]


def _list_from_file(list_url: str, storage_options: dict) -> list[tuple[str, str, int]]:
    fs, path = open_fs(list_url, storage_options)
    try:
        text = read_bytes(fs, path).decode("utf-8")
    except FileNotFoundError:
        raise PlanError(f"source list not found: {redact(list_url)}") from None
    base = list_url.rsplit("/", 1)[0] if "/" in list_url else "."
    seen: set[str] = set()
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if cred := url_credential(line):  # it would be written into the plan, the manifests and COCO file_name
            raise PlanError(
                f"source list {redact(list_url)} line {n}: the URI carries {cred}; list plain URIs "
                "(s3://bucket/key) and give credentials through the environment, an AWS profile or a Prefect block"
            )
        uri = line if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", line) or line.startswith("/") else join(base, line)
        if uri in seen:
            continue
        seen.add(uri)
        items.append((uri, line, -1))
    if not items:
        raise PlanError(f"source list {redact(list_url)} names no images")
    items.sort(key=lambda t: t[1])
    return items


def _fingerprint(source: SourceConfig, shard_size: int) -> str:
    spec = {
        "source": source.model_dump(mode="json", exclude={"storage_options", "max_pixels"}),
        "shard_size": shard_size,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def write_plan_rows(
    items: Iterable[tuple[str, str, int, str | None]],
    shard_size: int,
    sink: Any,
    generation: int = 0,
    first_image_id: int = 1,
) -> tuple[list[str], int]:
    """Write plan rows to a Parquet ``sink``, one row group per shard, holding one shard in memory.

    Returns the shard ids and the number of images.
    """
    shard_ids: list[str] = []
    n = 0
    with pq.ParquetWriter(sink, PLAN_SCHEMA, compression="zstd") as writer:
        batch: list[tuple[str, str, int, str | None]] = []

        def flush() -> None:
            sid = shard_name(len(shard_ids), generation)
            start = first_image_id + n - len(batch)
            writer.write_table(
                pa.table(
                    {
                        "shard_id": [sid] * len(batch),
                        "image_id": pa.array(range(start, start + len(batch)), pa.int64()),
                        "uri": [b[0] for b in batch],
                        "key": [b[1] for b in batch],
                        "size": pa.array([b[2] for b in batch], pa.int64()),
                        "etag": [b[3] for b in batch],
                        **{c: pa.nulls(len(batch), PLAN_SCHEMA.field(c).type) for c in VIDEO_COLUMNS},
                    },
                    schema=PLAN_SCHEMA,
                )
            )
            shard_ids.append(sid)
            batch.clear()

        for item in items:
            batch.append(item)
            n += 1
            if len(batch) == shard_size:
                flush()
        if batch:
            flush()
    return shard_ids, n


def make_plan(job: JobConfig) -> Plan:
    """Write (or reuse) the plan of ``job`` under its output. Lists the source at most once."""
    fs, _ = open_fs(job.output)
    parquet_url, meta_url = plan_paths(job.output)
    _, meta_path = open_fs(meta_url)
    fingerprint = _fingerprint(job.source, job.shard_size)
    _, job_path = open_fs(OutputLayout(job.output).job_json)
    if fs.exists(meta_path):
        meta = json.loads(read_bytes(fs, meta_path))
        if meta.get("fingerprint") != fingerprint:
            raise PlanError(
                f"{redact(job.output)} already holds the plan of a different source or shard size "
                f"(planned: {meta.get('source', {}).get('url') or meta.get('source', {}).get('list')}, "
                f"shard_size {meta.get('shard_size')}); "
                f"use another output or delete it"
            )
        write_bytes(fs, job_path, json.dumps(scrub(job.model_dump(mode="json")), indent=1).encode())
        if getattr(job, "incremental", False):
            return _append_generation(job, fs, meta, meta_path)
        return Plan(job.output, list(meta["shard_ids"]), int(meta["num_images"]), reused=True)

    buf = io.BytesIO()
    if job.source.video is not None:
        if getattr(job, "incremental", False):
            raise PlanError("incremental: true is not supported for video sources yet")
        from segflow.tasks.plan.videos import iter_video_shards, listing_source, write_video_plan_rows

        listing = iter_source(listing_source(job.source))
        shard_ids, n = write_video_plan_rows(iter_video_shards(job.source, listing), buf)
    else:
        shard_ids, n = write_plan_rows(iter_source(job.source), job.shard_size, buf)
    _, parquet_path = open_fs(parquet_url)
    write_bytes(fs, parquet_path, buf.getvalue())
    unique = shard_ids
    meta = {
        "fingerprint": fingerprint,
        "source": job.source.model_dump(mode="json", exclude={"storage_options"}),
        "shard_size": job.shard_size,
        "num_images": n,
        "num_shards": len(unique),
        "shard_ids": unique,
        "generations": [{"generation": 0, "num_images": n, "shard_ids": unique, "planned_at": _now()}],
    }
    write_bytes(
        fs, job_path, json.dumps(scrub(job.model_dump(mode="json")), indent=1).encode()
    )  # what `segflow rerun` runs
    write_bytes(fs, meta_path, json.dumps(meta, indent=1).encode())  # written last: the plan exists once this exists
    return Plan(job.output, unique, n, reused=False)


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _new_items(job: JobConfig, output: str, meta: dict) -> Iterator[tuple[str, str, int, str | None]]:
    """Source items whose key no generation of the plan holds: a merge of two sorted streams."""
    import heapq

    gens = [g["generation"] for g in meta.get("generations", [{"generation": 0}])]
    planned = heapq.merge(*(_iter_keys(output, g) for g in gens))
    current = next(planned, None)
    for item in iter_source(job.source):
        key = item[1]
        while current is not None and current < key:
            current = next(planned, None)
        if current == key:
            continue
        yield item


def _iter_keys(output: str, generation: int) -> Iterator[str]:
    fs, path = open_fs(_generation_file(output, generation))
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(columns=["key"]):
            yield from batch.column(0).to_pylist()


def _append_generation(job: JobConfig, fs: Any, meta: dict, meta_path: str) -> Plan:
    """Plan the source keys no earlier generation holds as a new generation (incremental jobs)."""
    from segflow.tasks.io.storage import create_exclusive

    gens = meta.setdefault(
        "generations", [{"generation": 0, "num_images": meta["num_images"], "shard_ids": list(meta["shard_ids"])}]
    )
    generation = gens[-1]["generation"] + 1
    buf = io.BytesIO()
    shard_ids, n = write_plan_rows(
        _new_items(job, job.output, meta),
        job.shard_size,
        buf,
        generation=generation,
        first_image_id=int(meta["num_images"]) + 1,
    )
    if n == 0:
        return Plan(job.output, list(meta["shard_ids"]), int(meta["num_images"]), reused=True, new_images=0)
    entry = {"generation": generation, "num_images": n, "shard_ids": shard_ids, "planned_at": _now()}
    _, claim = open_fs(OutputLayout(job.output).plan_claim(generation))
    if not create_exclusive(fs, claim, json.dumps(entry).encode()):
        raise PlanError(
            f"another run is planning generation {generation} of {redact(job.output)} "
            f"right now; run again when it is done"
        )
    _, parquet_path = open_fs(_generation_file(job.output, generation))
    write_bytes(fs, parquet_path, buf.getvalue())
    gens.append(entry)
    meta["shard_ids"] = list(meta["shard_ids"]) + shard_ids
    meta["num_images"] = int(meta["num_images"]) + n
    meta["num_shards"] = len(meta["shard_ids"])
    write_bytes(
        fs, meta_path, json.dumps(meta, indent=1).encode()
    )  # last: the generation is part of the plan once listed here
    return Plan(job.output, list(meta["shard_ids"]), int(meta["num_images"]), reused=True, new_images=n)


def load_plan(output: str) -> PlanMeta:
    fs, meta_path = open_fs(plan_paths(output)[1])
    try:
        return json.loads(read_bytes(fs, meta_path))
    except FileNotFoundError:
        raise PlanError(f"no plan under {redact(output)}: run `segflow run` first") from None


def read_shard_rows(output: str, shard_id: str) -> list[dict]:
    """The plan rows of one shard (reads only that shard's row group)."""
    fs, path = open_fs(_generation_file(output, _generation_of(shard_id)))
    with fs.open(path, "rb") as f:
        table = read_where(f, "shard_id", shard_id)
    return table.to_pylist()


def clip_context(output: str, shard_id: str, rows: list[dict], n: int) -> list[dict]:
    """A clip's context (docs/video.md): the last ``n`` plan rows of the clip before ``shard_id`` when that is a clip
    of the same video (``rows``: the shard's own rows), else none."""
    if n <= 0 or not rows or rows[0].get("video") is None or rows[0].get("frame_index") is None:
        return []
    m = re.match(r"^(shard-(?:g\d{4}-)?)(\d{5})$", shard_id)
    if not m or int(m.group(2)) == 0:
        return []
    previous = f"{m.group(1)}{int(m.group(2)) - 1:05d}"
    video, first = rows[0]["video"], int(rows[0]["frame_index"])
    before = [
        r
        for r in read_shard_rows(output, previous)
        if r.get("video") == video and r.get("frame_index") is not None and int(r["frame_index"]) < first
    ]
    return before[-n:]


def iter_plan_batches(output: str, columns: list[str] | None = None) -> Iterable[pa.RecordBatch]:
    """Every plan row as Arrow record batches, generation by generation (vectorised readers)."""
    meta = load_plan(output)
    for g in meta.get("generations", [{"generation": 0}]):
        fs, path = open_fs(_generation_file(output, g["generation"]))
        with fs.open(path, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(columns=columns)


def iter_plan(output: str) -> Iterable[dict]:
    """Every plan row, generation by generation."""
    for batch in iter_plan_batches(output):
        yield from batch.to_pylist()
