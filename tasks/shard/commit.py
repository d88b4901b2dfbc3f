"""Shard commits: a shard's outputs count only once its commit record exists.

Layout under the output::

    shards/<shard_id>/attempts/<attempt>/masks.parquet    data files of one attempt
    shards/<shard_id>/attempts/<attempt>/images.parquet
    shards/<shard_id>/_COMMIT.json                        written last, create-if-absent
    shards/<shard_id>/_COMMIT-r<N>.json                   redo N of a committed shard (supersedes N - 1)
    shards/_errors/<shard_id>.json                        the last failure of a shard (informational)

Protocol: an attempt writes its data files (each published atomically) under
a fresh attempt id, then creates ``_COMMIT.json`` only if it does not exist
(``O_EXCL`` locally, ``If-None-Match: *`` on S3). Of two workers racing on a
shard exactly one commits; the loser removes its attempt. The commit record
lists the files with row counts and sha256 and the job fingerprint, and
readers (finalize) read only files a commit record names.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segflow.tasks.documents import CommitRecord, CommittedFile, ErrorRecord, PlanMeta
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.parquet import read_parquet
from segflow.tasks.io.retry import retry_call
from segflow.tasks.io.storage import create_exclusive, open_fs, read_bytes, write_bytes
from segflow.tasks.plan.planner import load_plan

__all__ = [
    "ShardConflict",
    "read_commit",
    "commit_shard",
    "record_failure",
    "read_error",
    "IncompleteRunError",
    "collect_commits",
    "commits_digest",
    "clear_error",
    "read_committed_table",
    "read_committed_bytes",
    "parse_committed",
]


class ShardConflict(Exception):
    """The output holds a commit of this shard made by a job with different settings."""


def read_commit(output: str, shard_id: str) -> CommitRecord | None:
    """The shard's latest commit record (a redo's supersedes the one before it), or None."""
    layout = OutputLayout(output)
    record, generation = None, 0
    while True:
        fs, path = open_fs(layout.commit_record(shard_id, generation))
        try:
            record = json.loads(read_bytes(fs, path))
        except FileNotFoundError:
            return record
        generation += 1


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def commit_shard(
    output: str,
    shard_id: str,
    tables: dict[str, pa.Table],
    fingerprint: str,
    stats: dict[str, Any],
    generation: int = 0,
    timing: dict[str, Any] | None = None,
) -> tuple[CommitRecord, bool]:
    """Write an attempt's files and try to commit them as ``generation``. Returns ``(commit_record, won)``.

    Generation 0 is a shard's first commit; a redo commits ``latest + 1``, superseding the record before it
    only once it exists (the shard always has a valid commit). Of two writers of one generation exactly one
    wins (create-if-absent). ``timing`` (where and when the shard ran, seconds per phase) is kept in the record
    with the seconds of this commit's file writes added as ``commit``.
    """
    t0 = time.perf_counter()
    attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    layout = OutputLayout(output)
    rel_dir = layout.attempt_dir(shard_id, attempt)
    fs, _ = open_fs(output)
    encoded = {name: _parquet_bytes(table) for name, table in tables.items()}
    files: dict[str, CommittedFile] = {
        name: {
            "path": f"{rel_dir}/{name}.parquet",
            "rows": tables[name].num_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for name, data in encoded.items()
    }

    def put(name: str) -> None:
        _, path = open_fs(layout.url(files[name]["path"]))
        retry_call(lambda: write_bytes(fs, path, encoded[name]))

    with ThreadPoolExecutor(max_workers=max(1, len(encoded))) as pool:  # independent objects: one round trip
        list(pool.map(put, encoded))
    record: CommitRecord = {
        "shard_id": shard_id,
        "attempt": attempt,
        "fingerprint": fingerprint,
        "files": files,
        "stats": stats,
        "generation": generation,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if timing is not None:
        seconds = dict(timing.get("seconds", {}), commit=time.perf_counter() - t0)
        record["timing"] = dict(timing, seconds={k: round(v, 4) for k, v in seconds.items()})
        record["timing"]["finished_at"] = round(time.time(), 3)
    _, commit_path = open_fs(layout.commit_record(shard_id, generation))
    won = retry_call(lambda: create_exclusive(fs, commit_path, json.dumps(record, indent=1).encode()))
    if not won:
        try:
            existing = json.loads(read_bytes(fs, commit_path))
        except FileNotFoundError:  # pragma: no cover - create-if-absent said it exists
            existing = None
        if existing is not None and existing.get("attempt") == attempt:
            won = True  # our PUT landed but its answer was lost; the retry found our own record
        else:
            _, attempt_path = open_fs(layout.url(rel_dir))
            fs.rm(attempt_path, recursive=True)
            return existing or record, False
    clear_error(output, shard_id)
    return record, True


def record_failure(output: str, shard_id: str, error: str) -> None:
    fs, path = open_fs(OutputLayout(output).error_record(shard_id))
    write_bytes(
        fs,
        path,
        json.dumps(
            {"shard_id": shard_id, "error": error, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ).encode(),
    )


def read_error(output: str, shard_id: str) -> ErrorRecord | None:
    fs, path = open_fs(OutputLayout(output).error_record(shard_id))
    try:
        return json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        return None


def clear_error(output: str, shard_id: str) -> None:
    fs, path = open_fs(OutputLayout(output).error_record(shard_id))
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def read_committed_bytes(output: str, commit: CommitRecord, name: str) -> bytes:
    """The bytes of one data file named by a commit record, checked against its sha256."""
    entry = commit["files"][name]
    fs, path = open_fs(OutputLayout(output).url(entry["path"]))
    data = read_bytes(fs, path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ShardConflict(
            f"{commit['shard_id']}: {entry['path']} does not match its commit record "
            f"(sha256 {digest} != {entry['sha256']})"
        )
    return data


def parse_committed(commit: CommitRecord, name: str, data: bytes) -> pa.Table:
    """Parse verified bytes (:func:`read_committed_bytes`), checking the row count."""
    entry = commit["files"][name]
    table = read_parquet(data, use_threads=False)
    if table.num_rows != entry["rows"]:
        raise ShardConflict(
            f"{commit['shard_id']}: {entry['path']} has {table.num_rows} rows, commit says {entry['rows']}"
        )
    return table


def read_committed_table(output: str, commit: CommitRecord, name: str) -> pa.Table:
    """Read one data file named by a commit record, checking its sha256 and row count."""
    return parse_committed(commit, name, read_committed_bytes(output, commit, name))


class IncompleteRunError(Exception):
    """Some planned shards have no commit record."""

    def __init__(self, missing: list[str], errors: dict[str, str]):
        self.missing = missing
        self.errors = errors
        shown = ", ".join(missing[:20]) + (f" (+{len(missing) - 20} more)" if len(missing) > 20 else "")
        detail = "".join(f"\n  {s}: {e}" for s, e in list(errors.items())[:10])
        super().__init__(
            f"{len(missing)} shard(s) not committed: {shown}{detail}\nrerun them with "
            f"`segflow run` on the same config and output"
        )


def collect_commits(output: str) -> tuple[PlanMeta, list[CommitRecord]]:
    """The plan and the commit record of every planned shard; :class:`IncompleteRunError` (naming the shards and
    their last errors) when some have none."""
    plan = load_plan(output)
    commits, missing, errors = [], [], {}
    for sid in plan["shard_ids"]:
        c = read_commit(output, sid)
        if c is None:
            missing.append(sid)
            err = read_error(output, sid)
            if err:
                errors[sid] = err["error"]
        else:
            commits.append(c)
    if missing:
        raise IncompleteRunError(missing, errors)
    return plan, commits


def commits_digest(commits: list[CommitRecord], job: dict[str, Any]) -> str:
    """What a finalized output was built from: its shards' committed attempts, the gold sets and the acceptance
    settings of ``job`` (its JSON form, as ``job.json`` holds it)."""
    inputs = [job.get("gold_set"), job.get("gold_panoptic"), job.get("accept")]
    inputs += [job["gold_semantic"]] if job.get("gold_semantic") else []  # digests of jobs without it unchanged
    return hashlib.sha256(json.dumps([[c["shard_id"], c["attempt"]] for c in commits] + inputs).encode()).hexdigest()
