"""``segflow verify``: check what an output holds against its commit records and plan.

Checks, shard by shard (streaming: one shard's records in memory, files hashed
in chunks), each problem named by shard, file and what is wrong:

* every file a commit record names exists, has its recorded size and sha256;
* the commit record belongs to its shard;
* the plan against the commits: planned shards without a commit (``missing``),
  shard folders the plan does not name (``extra``), shard ids planned twice
  (``duplicated``);
* once finalized: each manifest part has the sha256 and size finalize recorded
  in ``manifest/_parts.json`` (images and panoptic parts are the committed
  files themselves, so they also match the commit record; masks parts add the
  verdict columns), no part comes from an unplanned shard, and
  ``summary.json`` was built from exactly these commits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from segflow.tasks.documents import CommitRecord, CommittedFile
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import is_local, open_fs, read_json
from segflow.tasks.plan.planner import load_plan
from segflow.tasks.shard.commit import commits_digest, read_commit

__all__ = ["Problem", "verify", "set_aside"]

_CHUNK = 8 << 20


@dataclass(frozen=True)
class Problem:
    shard_id: str | None
    file: str | None  # relative to the output root
    problem: str

    def __str__(self) -> str:
        where = " ".join(x for x in (self.shard_id, self.file) if x)
        return f"{where}: {self.problem}" if where else self.problem

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha256_and_size(fs: Any, path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_file(
    fs: Any, layout: OutputLayout, sid: str, rel: str, entry: CommittedFile | dict, record: str = "the commit record"
) -> Iterator[Problem]:
    _, path = open_fs(layout.url(rel))
    try:
        digest, size = _sha256_and_size(fs, path)
    except FileNotFoundError:
        yield Problem(sid, rel, f"missing (named by {record})")
        return
    if size != entry["bytes"]:
        yield Problem(sid, rel, f"size {size} bytes, {record} says {entry['bytes']}")
    elif digest != entry["sha256"]:
        yield Problem(sid, rel, f"sha256 {digest[:12]}... does not match {record}'s {entry['sha256'][:12]}...")


def verify(output: str, on_shard: Callable[[], None] | None = None) -> Iterator[Problem]:
    """Every problem of ``output``, shard by shard (``on_shard`` is called after each planned shard)."""
    layout = OutputLayout(output)
    fs, _ = open_fs(output)
    plan = load_plan(output)
    planned = list(plan["shard_ids"])
    seen: set[str] = set()
    for sid in planned:
        if sid in seen:
            yield Problem(sid, None, "duplicated: planned twice")
        seen.add(sid)
    summary = read_json(fs, layout.summary)
    parts = (read_json(fs, layout.manifest_parts) or {}) if summary is not None else {}
    commits: list[CommitRecord] = []
    for sid in dict.fromkeys(planned):
        commit = read_commit(output, sid)
        if commit is None:
            yield Problem(sid, None, "missing: planned but not committed")
        elif commit.get("shard_id") != sid:
            yield Problem(sid, layout.commit_key(sid), f"the record is {commit.get('shard_id')!r}'s")
        else:
            commits.append(commit)
            yield from _check_commit(fs, layout, sid, commit, parts if summary is not None else None)
        if on_shard is not None:
            on_shard()
    _, shards_root = open_fs(layout.shards)
    names = [
        p.rstrip("/").rsplit("/", 1)[-1] for p in (fs.ls(shards_root, detail=False) if fs.exists(shards_root) else [])
    ]
    for name in sorted(set(names) - seen - {"_errors"}):
        yield Problem(name, layout.shard_key(name), "extra: a shard folder the plan does not name")
    if summary is not None:
        yield from _check_exports(fs, layout, summary, commits, seen)


def _check_commit(
    fs: Any, layout: OutputLayout, sid: str, commit: CommitRecord, parts: dict | None
) -> Iterator[Problem]:
    """A committed shard's files against its record, and (``parts``: ``manifest/_parts.json``, None before a
    finalize) its manifest parts against what finalize recorded."""
    for name, entry in commit["files"].items():
        yield from _check_file(fs, layout, sid, entry["path"], entry)
        if parts is not None and name in ("masks", "images", "panoptic"):
            folder = layout.manifest_key(name)
            recorded = parts.get(folder, {}).get(sid)
            if recorded is None:
                yield Problem(sid, folder, f"no manifest part recorded in {layout.MANIFEST_PARTS_KEY}")
            else:
                yield from _check_file(
                    fs, layout, sid, layout.part_key(folder, sid), recorded, layout.MANIFEST_PARTS_KEY
                )


def _check_exports(
    fs: Any, layout: OutputLayout, summary: dict, commits: list[CommitRecord], seen: set[str]
) -> Iterator[Problem]:
    """The exports against the commits they were built from, and manifest parts of no planned shard."""
    job = read_json(fs, layout.job_json) or {}
    if summary.get("commits_digest") != commits_digest(commits, job):
        yield Problem(None, "summary.json", "the exports were built from other commits: run `segflow rerun`")
    for name in ("masks", "images", "panoptic"):
        _, folder = open_fs(layout.manifest(name))
        if fs.exists(folder):
            for p in sorted(fs.ls(folder, detail=False)):
                part = p.rstrip("/").rsplit("/", 1)[-1]
                sid = layout.part_shard(part)
                if sid not in seen:
                    yield Problem(sid, f"{layout.manifest_key(name)}/{part}", "extra: a part of no planned shard")


def damaged_shards(problems: list[Problem], planned: list[str]) -> tuple[list[str], list[str]]:
    """The shards whose own files are damaged (a problem under ``shards/<shard>/``): those the plan names, to
    label again, and those it does not, to set aside (:func:`set_aside`). Both sorted."""
    damaged = sorted(
        {
            p.shard_id
            for p in problems
            if p.shard_id and p.file and f"{p.file}/".startswith(OutputLayout.shard_key(p.shard_id) + "/")
        }
    )
    planned_set = set(planned)
    return [s for s in damaged if s in planned_set], [s for s in damaged if s not in planned_set]


def set_aside(output: str, shard_ids: list[str]) -> list[str]:
    """Move the folders of unplanned shards to ``set_aside/shards/<id>`` (see :class:`OutputLayout`): exports never
    read them, and nothing is deleted. Returns the new locations. A shard of the plan is refused."""
    layout = OutputLayout(output)
    planned = set(load_plan(output)["shard_ids"])
    fs, _ = open_fs(output)
    moved = []
    for sid in shard_ids:
        if sid in planned or not sid or "/" in sid:
            raise ValueError(f"{sid!r} is a shard of the plan or not a shard name: not set aside")
        url = layout.set_aside(sid)
        (_, src), (_, dst) = open_fs(layout.shard(sid)), open_fs(url)
        n = 1
        while fs.exists(dst):  # set aside before: keep both
            (_, dst), n = open_fs(f"{url}-{n}"), n + 1
        if is_local(fs):  # one rename: a symlinked folder (or file) inside is moved as a link, its target untouched
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
            moved.append(url if n == 1 else f"{url}-{n - 1}")
            continue
        files = fs.find(src)
        for f in files:  # file by file: object stores have no folders to rename
            target = f"{dst}/{f[len(src) :].lstrip('/')}"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)  # local disk; no-op on object stores
            fs.copy(f, target)
        for f in files:  # only once every copy is there
            fs.rm_file(f)
        if fs.exists(src):
            fs.rm(src, recursive=True)  # the emptied local folder
        moved.append(url if n == 1 else f"{url}-{n - 1}")
    return moved
