"""COCO instances export, streamed shard by shard.

``OUTPUT/coco/instances.json`` follows the COCO detection format:

* ``images``: ``id`` (= manifest ``image_id``), ``file_name`` (key relative to
  the source root), ``width``, ``height``, plus ``segflow_uri`` (full URI).
  Only images that decoded (``status == "ok"``) are listed.
* ``annotations``: ``id`` (= manifest ``annotation_id``), ``image_id``,
  ``category_id``, ``segmentation`` (compressed RLE: ``{"size": [H, W],
  "counts": str}``), ``area`` and ``bbox`` (XYWH) computed from the mask,
  ``iscrowd`` 0, ``score`` (detector confidence; lets the file be used as
  COCOeval results too), ``predicted_iou``.
* ``categories``: the ontology (``id``, ``name``, ``supercategory``).

Only masks with verdict ``accept`` (:mod:`segflow.tasks.evaluate.acceptance`; also
``review`` with ``qc.export_review``) are exported; ``review/instances.json``
holds the review band (images with a review mask only); rejected masks stay in
the manifest and the quarantine table.

The file is written in one pass over the shards (:class:`StreamedCocoJson`) and
published in one step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.io.storage import local_tempfile, open_fs, publish_file

__all__ = ["InstancesWriter", "StreamedCocoJson", "coco_header", "exported", "write_instances"]


def coco_header(description: str, categories: list[dict]) -> str:
    """The opening of a streamed COCO JSON object (``info``, ``licenses``, ``categories``), left open for more keys."""
    header = {
        "info": {
            "description": description,
            "version": "1.0",
            "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "contributor": "segflow",
        },
        "licenses": [],
        "categories": categories,
    }
    return json.dumps(header)[:-1]


def _f(x: Any) -> Any:
    return None if x is None else round(float(x), 4)


_PLAIN = re.compile(r"^[ !#-\[\]-~]*$")  # printable ASCII but the quote and the backslash


def _json_str(s: str) -> str:
    """``json.dumps(s)``, without its call for the usual plain-ASCII names."""
    return f'"{s}"' if _PLAIN.match(s) else json.dumps(s)


def _json_number(x: Any) -> str:
    """``json.dumps(_f(x))``: the number rounded to 4 decimals, ``null`` for None (and for NaN)."""
    v = _f(x)
    return "null" if v is None or v != v else repr(v)


class StreamedCocoJson:
    """A COCO JSON object written in one pass over the shards.

    Each list (``images``, ``annotations``, ...) streams into its own local
    temporary file as shards arrive; :meth:`close` joins the header and the
    lists into one file and publishes it in one step (nothing partial is ever
    visible at ``url``). Memory stays at one shard's rows.
    """

    def __init__(self, url: str, description: str, categories: list[dict], lists: tuple[str, ...]):
        self.fs, self.path = open_fs(url)
        self.header = coco_header(description, categories)
        self.parts = {name: tempfile.TemporaryFile("w+", encoding="utf-8") for name in lists}
        self.counts = dict.fromkeys(lists, 0)

    def add(self, name: str, obj: dict) -> None:
        self.add_text(name, json.dumps(obj))

    def add_text(self, name: str, text: str) -> None:
        """One list item given as its JSON text (for writers that format rows faster than ``json.dumps``)."""
        self.parts[name].write(("," if self.counts[name] else "") + "\n" + text)
        self.counts[name] += 1

    def close(self) -> dict[str, int]:
        tmp = local_tempfile(self.fs, self.path, ".json")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.header)
                for name, part in self.parts.items():
                    f.write(f', "{name}": [')
                    part.seek(0)
                    shutil.copyfileobj(part, f)
                    f.write("\n]")
                f.write("}\n")
            publish_file(self.fs, tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            for part in self.parts.values():
                part.close()
        return dict(self.counts)


_MASK_COLUMNS = [
    "annotation_id",
    "image_id",
    "category_id",
    "rle_counts",
    "width",
    "height",
    "area",
    "bbox",
    "score",
    "predicted_iou",
]


def exported(masks: pa.Table, keep_verdicts: tuple[str, ...]) -> pa.Table:
    """The masks whose ``verdict`` (:mod:`segflow.tasks.evaluate.acceptance`) is in ``keep_verdicts``."""
    return masks.filter(pc.is_in(masks["verdict"], value_set=pa.array(list(keep_verdicts), pa.string())))


def _pydicts(table: pa.Table, rows: int = 2048) -> Iterator[dict[str, list]]:
    """The table as Python columns, ``rows`` rows at a time (Python objects cost ~1 KB a mask row: a shard of
    10,000 masks at once would hold tens of MB)."""
    for batch in table.to_batches(max_chunksize=rows):
        yield batch.to_pydict()


class InstancesWriter:
    """``coco/instances.json`` from one shard's ``(images, masks)`` tables at a time (see the module docstring)."""

    def __init__(
        self,
        url: str,
        categories: dict[int, str],
        description: str = "",
        keep_verdicts: tuple[str, ...] = ("accept",),
        labelled_images_only: bool = False,
        marked: set[int] | None = None,
    ):
        """``marked``: a review batch's annotation ids; with it each annotation carries ``attributes``
        (``segflow_verdict``, and ``segflow_check`` true for the marked ones), as the CVAT export does."""
        cats = [{"id": int(i), "name": n, "supercategory": "object"} for i, n in sorted(categories.items())]
        self.out = StreamedCocoJson(url, description, cats, ("images", "annotations"))
        self.keep_verdicts = keep_verdicts
        self.labelled_images_only = labelled_images_only
        self.marked = marked

    def add(self, images: pa.Table, masks: pa.Table) -> None:
        """One shard: its images (``ok`` ones) and its masks with a ``verdict`` column."""
        ok = images.filter(pc.equal(images["status"], "ok"))
        kept = exported(masks, self.keep_verdicts)
        if self.labelled_images_only:
            ok = ok.filter(pc.is_in(ok["image_id"], value_set=kept["image_id"].combine_chunks()))
        for im in _pydicts(ok.select(["image_id", "file_name", "image_uri", "width", "height"])):
            for i, name, uri, w, h in zip(im["image_id"], im["file_name"], im["image_uri"], im["width"], im["height"]):
                self.out.add_text(
                    "images",
                    f'{{"id": {i}, "file_name": {_json_str(name)}, "width": {w}, "height": {h}, '
                    f'"segflow_uri": {_json_str(uri)}}}',
                )
        names = _MASK_COLUMNS + (["verdict"] if self.marked is not None else [])
        for cols in _pydicts(kept.select(names)):
            tail = [""] * len(cols["annotation_id"])
            if self.marked is not None:
                tail = [
                    f', "attributes": {{"segflow_verdict": {_json_str(v)}, '
                    f'"segflow_check": {"true" if a in self.marked else "false"}}}'
                    for a, v in zip(cols["annotation_id"], cols["verdict"], strict=True)
                ]
            for ann, img, cat, counts, w, h, area, bbox, score, piou, more in zip(
                *(cols[c] for c in _MASK_COLUMNS), tail, strict=True
            ):
                # formatted directly (the same text json.dumps gives): the export's hot loop at millions of rows;
                # RLE counts are ASCII 48-111, so a backslash is the only character JSON escapes
                self.out.add_text(
                    "annotations",
                    f'{{"id": {ann}, "image_id": {img}, "category_id": {cat}, "segmentation": {{"size": [{h}, {w}], '
                    f'"counts": "{counts.replace(chr(92), chr(92) * 2)}"}}, "area": {int(area)}, '
                    f'"bbox": [{", ".join(repr(round(v, 2)) for v in bbox)}], "iscrowd": 0, '
                    f'"score": {_json_number(score)}, "predicted_iou": {_json_number(piou)}{more}}}',
                )

    def close(self) -> dict[str, int]:
        """Publish the file; returns ``{"images": n, "annotations": n}``."""
        return self.out.close()


def write_instances(
    url: str,
    categories: dict[int, str],
    shards: Iterable[tuple[pa.Table, pa.Table]],
    description: str = "",
    keep_verdicts: tuple[str, ...] = ("accept",),
) -> dict[str, int]:
    """Write ``coco/instances.json`` from ``(images, masks)`` tables per shard. Returns counts."""
    writer = InstancesWriter(url, categories, description, keep_verdicts)
    for images, masks in shards:
        writer.add(images, masks)
    return writer.close()
