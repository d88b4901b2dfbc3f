"""A finished run's labels read back for the interchange formats: images and their mask rows, shard by shard.

Reads the merged manifest (``manifest/{images,masks}.parquet/part-<shard>.parquet``,
finalize's output; its ``verdict`` column chooses the rows) and the ontology of
``job.json``. One shard's rows are in memory at a time.

``verdicts`` choices (``segflow export --verdicts``):

=========  =====================================================
review     the review band (``verdict == "review"``)
accept     the exported labels (``verdict == "accept"``)
all        every mask, rejected ones included
=========  =====================================================
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import ReviewImport
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.lease import LeaseHeld, require_no_writer
from segflow.tasks.io.parquet import read_parquet
from segflow.tasks.io.storage import open_fs, read_json, redact
from segflow.tasks.records import Verdict

__all__ = ["VERDICTS", "ImageLabels", "RunLabels", "ExportError", "latest_review", "review_versions"]

VERDICTS: dict[str, tuple[str, ...]] = {
    "review": (Verdict.REVIEW.value,),
    "accept": (Verdict.ACCEPT.value,),
    "all": tuple(v.value for v in Verdict),
}


class ExportError(ValueError):
    """The run cannot be exported or a review file cannot be imported (the message says why)."""


@dataclass(frozen=True)
class ImageLabels:
    image_id: int
    file_name: str  # relative to the source root
    uri: str  # the full source URI
    width: int
    height: int
    masks: list[dict]  # manifest rows of this image's masks, annotation id order


class RunLabels:
    """The labels of the finished run in ``output``."""

    def __init__(self, output: str):
        self.output = output
        self.layout = OutputLayout(output)
        fs, _ = open_fs(output)
        self.fs = fs
        try:
            require_no_writer(output)
        except LeaseHeld as e:
            raise ExportError(str(e)) from None
        if read_json(fs, self.layout.summary) is None:
            raise ExportError(f"{redact(output)}: not a finished run (no summary.json); run `segflow rerun` first")
        self.job = read_json(fs, self.layout.job_json) or {}
        self.categories = {int(c["id"]): c["name"] for c in self.job.get("ontology", []) if c.get("isthing", True)}
        self.parts = read_json(fs, self.layout.manifest_parts) or {}
        self.shards = sorted(self.parts.get(self.layout.manifest_key("images"), {}))
        #: a review batch's view (:meth:`restrict`): only these images, each with its accepted and review labels
        self.only: set[int] | None = None
        #: annotation ids a review batch asks people to check (exporters that can mark them do)
        self.marked: set[int] = set()

    def restrict(self, image_ids: set[int], marked: set[int]) -> RunLabels:
        """This run seen as a review batch: exactly ``image_ids`` (labelled or not), each with all of its accepted
        and review labels (whatever verdicts an exporter is asked for), ``marked`` the ones to check."""
        self.only, self.marked = set(image_ids), set(marked)
        return self

    def _part(self, name: str, shard_id: str, columns: list[str] | None = None) -> pa.Table | None:
        """One manifest part, checked against the pointer finalize wrote last (``manifest/_parts.json``): a part
        being rewritten by a finalize that started after this reader is refused, never read half-replaced."""
        folder = self.layout.manifest_key(name)
        _, path = open_fs(self.layout.manifest_part(name, shard_id))
        want = self.parts.get(folder, {}).get(shard_id, {}).get("sha256")
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            if want is None:
                return None
            data = b""
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise ExportError(
                f"{redact(self.output)}: {self.layout.part_key(folder, shard_id)} does not match the manifest's "
                "pointer: "
                "the output is being finalized again (try again when it finishes) or was damaged (`segflow verify`)"
            )
        return read_parquet(data, columns)

    def shard_tables(self) -> Iterator[tuple[pa.Table, pa.Table | None]]:
        """Per shard: its images table and its masks table (None without masks), as finalize wrote them."""
        for sid in self.shards:
            images = self._part("images", sid)
            if images is None:
                raise ExportError(f"{redact(self.output)}: manifest part of {sid} is missing; run `segflow verify`")
            masks = self._part("masks", sid)
            if self.only is not None:
                keep = pa.array(sorted(self.only), pa.int64())
                images = images.filter(pc.is_in(images["image_id"], value_set=keep))
                if masks is not None:
                    shown = pc.is_in(masks["verdict"], pa.array([Verdict.ACCEPT.value, Verdict.REVIEW.value]))
                    masks = masks.filter(pc.and_(pc.is_in(masks["image_id"], value_set=keep), shown))
            yield images, masks

    def images(
        self, select: str = "accept", rows: tuple[str, ...] | None = None, labelled_only: bool = True
    ) -> Iterator[ImageLabels]:
        """Decoded images in image-id order with their mask rows.

        ``select``: images with at least one mask of these :data:`VERDICTS` (all decoded images when not
        ``labelled_only``); ``rows``: the verdicts of the rows each image carries (default: ``select``'s).
        """
        if select not in VERDICTS:
            raise ExportError(f"verdicts must be one of {', '.join(VERDICTS)}, got {select!r}")
        chosen, carried = pa.array(VERDICTS[select]), pa.array(rows or VERDICTS[select])
        if self.only is not None:  # a review batch: its images, each with what the run shows people
            carried, labelled_only = pa.array([Verdict.ACCEPT.value, Verdict.REVIEW.value]), False
        for sid in self.shards:
            images = self._part("images", sid)
            if images is None:
                raise ExportError(f"{redact(self.output)}: manifest part of {sid} is missing; run `segflow verify`")
            masks = self._part("masks", sid)
            if masks is None or not masks.num_rows:
                masks = None
            images = images.filter(pc.equal(images["status"], "ok")).sort_by("image_id")
            picked = set()
            if masks is not None:
                picked = set(masks.filter(pc.is_in(masks["verdict"], chosen))["image_id"].to_pylist())
                masks = masks.filter(pc.is_in(masks["verdict"], carried)).sort_by("annotation_id")
            ids = masks["image_id"].to_numpy() if masks is not None else np.zeros(0, np.int64)
            for row in images.to_pylist():
                if labelled_only and row["image_id"] not in picked:
                    continue
                if self.only is not None and row["image_id"] not in self.only:
                    continue
                lo, hi = np.searchsorted(ids, row["image_id"]), np.searchsorted(ids, row["image_id"], side="right")
                yield ImageLabels(
                    int(row["image_id"]),
                    row["file_name"],
                    row["image_uri"],
                    int(row["width"]),
                    int(row["height"]),
                    masks.slice(lo, hi - lo).to_pylist() if masks is not None else [],
                )

    def image_sizes(self) -> dict[int, tuple[int, int]]:
        """``image_id -> (height, width)`` of the decoded images: the sizes review files are checked against."""
        if getattr(self, "_sizes", None) is None:
            sizes: dict[int, tuple[int, int]] = {}
            for sid in self.shards:
                t = self._part("images", sid, ["image_id", "status", "width", "height"])
                if t is None:
                    raise ExportError(f"{redact(self.output)}: manifest part of {sid} is missing; run `segflow verify`")
                t = t.filter(pc.equal(t["status"], "ok"))
                for i, h, w in zip(*(t[c].to_pylist() for c in ("image_id", "height", "width")), strict=True):
                    sizes[int(i)] = (int(h), int(w))
            self._sizes = sizes
        return self._sizes

    def category_list(self) -> list[dict]:
        """COCO ``categories`` of the thing classes."""
        return [{"id": k, "name": v, "supercategory": "object"} for k, v in sorted(self.categories.items())]


def dumps(obj: object) -> bytes:
    """Compact, stable JSON bytes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=False).encode()


def review_versions(output: str) -> list[str]:
    """The finished review versions of the run in ``output`` (``v0001``, ...: those with ``_DONE.json``), in order."""
    layout = OutputLayout(output)
    fs, root = open_fs(layout.reviews)
    if not fs.exists(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 2)[-2] for p in fs.glob(f"{root.rstrip('/')}/v*/_DONE.json"))


def latest_review(output: str) -> ReviewImport | None:
    """``changes.json`` of the run's latest review version (with ``version``), or None."""
    versions = review_versions(output)
    if not versions:
        return None
    fs, _ = open_fs(output)
    changes = read_json(fs, OutputLayout(output).review_version(versions[-1], "changes.json"))
    return changes if isinstance(changes, dict) else None  # type: ignore[return-value]
