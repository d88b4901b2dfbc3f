"""Reading Parquet without Arrow's dataset scanner.

Every Parquet read in segflow goes through this module, never ``pq.read_table`` or ``pyarrow.dataset`` (ruff
bans both outside it: ``[tool.ruff.lint.flake8-tidy-imports.banned-api]``). Both run Arrow's asynchronous dataset
scan, whose background read-ahead tasks can still be alive when a short process exits; Arrow then tears its thread
pool down under them and the process dies with ``terminate called without an active exception`` (SIGABRT, exit
code 134) *after* its work is done (apache/arrow#39862, #34314). We saw it in CI: `segflow export` of a small run
aborted at exit in 8 of 222 runs with six at once on two cores; reading through ``pq.ParquetFile`` (a synchronous
reader, no scan), 0 of 270 (docs/development.md, "Aborts at exit").

``ParquetFile.read`` decodes columns on Arrow's CPU pool but waits for them before it returns, so nothing is left
running. Filters are applied here: by row-group statistics first (what the scanner would skip), then row by row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segflow.tasks.io.storage import open_fs

__all__ = ["read_parquet", "read_where", "read_folder", "iter_folder_batches"]

Source = bytes | IO[bytes] | str


def _file(source: Source) -> pq.ParquetFile:
    return pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source)


def read_parquet(source: Source, columns: list[str] | None = None, use_threads: bool = True) -> pa.Table:
    """One Parquet file as a table: ``source`` is its bytes, an open binary file or a local path; ``columns``
    (default all) in the order given; ``use_threads``: decode columns on Arrow's CPU pool."""
    return _file(source).read(columns=columns, use_threads=use_threads)


def read_where(source: Source, column: str, value: Any, columns: list[str] | None = None) -> pa.Table:
    """The rows of one Parquet file whose ``column`` equals ``value``, reading only the row groups whose min/max
    statistics admit it (all of them when a writer left no statistics). ``columns``: which to return (default
    all; ``column`` need not be among them)."""
    f = _file(source)
    names = f.schema_arrow.names
    if column not in names:
        raise KeyError(f"no column {column!r} (has {', '.join(names)})")
    index = names.index(column)
    groups = []
    for g in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(g).column(index).statistics
        if stats is not None and stats.has_min_max and not (stats.min <= value <= stats.max):
            continue
        groups.append(g)
    wanted = None if columns is None else list(dict.fromkeys([*columns, column]))
    table = f.read_row_groups(groups, columns=wanted)  # no groups: an empty table of these columns
    table = table.filter(pc.equal(table[column], pa.scalar(value, table.schema.field(column).type)))
    return table if columns is None else table.select(columns)


def _folder_files(url: str) -> tuple[Any, list[str]]:
    """``url``'s filesystem and the ``*.parquet`` files directly under it, in name order, skipping hidden ones
    (``.`` or ``_`` first, as Arrow's datasets do)."""
    fs, folder = open_fs(url)
    if not fs.exists(folder):
        return fs, []
    names = (p for p in fs.ls(folder, detail=False) if p.endswith(".parquet"))
    return fs, sorted(p for p in names if not p.rstrip("/").rsplit("/", 1)[-1].startswith((".", "_")))


def iter_folder_batches(url: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of every ``*.parquet`` file directly under the folder ``url``, files in name order
    (hidden ones skipped): a manifest folder read in bounded memory, one file open at a time."""
    fs, paths = _folder_files(url)
    for path in paths:
        with fs.open(path, "rb") as fh:
            yield from pq.ParquetFile(fh).iter_batches(columns=columns)


def read_folder(url: str, columns: list[str] | None = None) -> pa.Table:
    """Every ``*.parquet`` file directly under the folder ``url`` as one table (files in name order, hidden ones
    skipped; an empty table without columns when there are none)."""
    fs, paths = _folder_files(url)
    parts = []
    for path in paths:
        with fs.open(path, "rb") as fh:
            parts.append(read_parquet(fh, columns))
    return pa.concat_tables(parts) if parts else pa.table({})
