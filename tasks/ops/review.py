"""``segflow import-review``: a reviewer's corrections back into the run, as a new dataset version.

Layout (nothing under ``manifest/`` changes: the auto labels' rows stay there, the history)::

    OUTPUT/reviews/v0001/masks.parquet/part-<shard>.parquet   the reviewed label set
    OUTPUT/reviews/v0001/coco/instances.json                  COCO instances of that set
    OUTPUT/reviews/v0001/changes.json                         what changed (below), the review file's sha256, time
    OUTPUT/reviews/v0001/review.json                          the review file as imported
    OUTPUT/reviews/v0001/estimate.json                        precision and recall from a review batch's audit
    OUTPUT/reviews/v0001/_DONE.json                           written last, create-if-absent: the version exists

Each import builds on the latest version (the first on the accepted auto labels).
Per image of the review file -- the unit of review; image ids never change:

* **kept**: a mask the reviewer was shown, left as it was (its row is the auto row,
  bit for bit: an untouched polygon is recognised as the one exported, so nothing
  of the original mask is lost, holes included);
* **relabelled**: the same mask under another class;
* **reshaped**: the mask edited (``source`` becomes ``human``; the annotation id stays);
* **deleted**: shown, and no longer there;
* **added**: drawn by the reviewer (``source`` ``human``, a new annotation id:
  ``image_id * 100000 + k`` after the image's highest id so far).

Labels of the image that the reviewer was not shown stay as they were; images not
in the file keep their labels. Columns added to the manifest's: ``source``
(``auto`` | ``human``), ``checked`` (a person saw it), ``review_action``,
``auto_verdict`` (the run's verdict; ``verdict`` is ``accept`` for the whole set),
``review_sha256`` and ``reviewed_at`` (of the import that last touched the row).

A file that names an image or a class the run does not have is refused before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from segflow.tasks.documents import ReviewImport
from segflow.tasks.formats.labels import ExportError, RunLabels, latest_review, review_versions
from segflow.tasks.formats.polygons import polygons_to_rle, rle_to_polygons
from segflow.tasks.formats.review_model import ReviewedImage, ReviewedLabel
from segflow.tasks.formats.untrusted import read_capped
from segflow.tasks.io.parquet import read_parquet
from segflow.tasks.io.storage import create_exclusive, open_fs, redact, write_bytes
from segflow.tasks.outputs.coco import InstancesWriter
from segflow.tasks.outputs.manifest import MASKS_SCHEMA

__all__ = ["ACTIONS", "import_review", "latest_review"]

ACTIONS = ("kept", "relabelled", "reshaped", "deleted", "added")
_MAX_PER_IMAGE = 100000


def _reader(fmt: str) -> Any:
    from segflow.tasks.formats import REVIEW_READERS, resolve

    if fmt not in REVIEW_READERS:
        raise ExportError(f"review format must be one of {', '.join(REVIEW_READERS)}, got {fmt!r}")
    return resolve(REVIEW_READERS[fmt])


#: the manifest's columns a label keeps (types as the manifest has them), then the review's own
_KEPT: tuple[str, ...] = ("annotation_id", "image_id", "image_uri", "width", "height", "category_id")
_KEPT += ("category_name", "score", "predicted_iou", "bbox", "area", "rle_counts")
SCHEMA = pa.schema(
    [MASKS_SCHEMA.field(n) for n in _KEPT]
    + [(n, pa.bool_() if n == "checked" else pa.string()) for n in ("source", "checked", "review_action")]
    + [(n, pa.string()) for n in ("auto_verdict", "verdict", "review_sha256", "reviewed_at")]
)


def _from_auto(r: dict, **changes: Any) -> dict:
    """A reviewed-set row from an auto manifest row."""
    row = {k: r.get(k) for k in SCHEMA.names}
    row.update(source="auto", checked=False, review_action="unreviewed", auto_verdict=r["verdict"], verdict="accept")
    row.update(review_sha256=None, reviewed_at=None)
    return {**row, **changes}


class _Geometry(TypedDict):
    """A mask's manifest geometry: ``rle_counts`` (COCO compressed), ``area`` (pixels), ``bbox`` (XYWH, pixels)."""

    rle_counts: str
    area: int
    bbox: list[float]


def _geometry(counts: str, h: int, w: int) -> _Geometry:
    rle = {"size": [h, w], "counts": counts}
    return {"rle_counts": counts, "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def _same_shape(label: ReviewedLabel, orig: dict) -> bool:
    """The reviewer's mask is the one exported: the auto mask itself, or its polygons rasterised again."""
    h, w = label.size
    if label.rle_counts == orig["rle_counts"]:
        return True
    return label.rle_counts == polygons_to_rle(rle_to_polygons(orig["rle_counts"], h, w), h, w)


def apply_review(
    image: ReviewedImage, info: dict, base: list[dict], auto: dict[int, dict], classes: dict[str, int], stamp: dict
) -> tuple[list[dict], dict[str, list[int]]]:
    """One reviewed image: its rows after review, and the annotation ids per action.

    Arguments:
      info: the image's manifest row (``image_uri``, ``width``, ``height``).
      base: the image's rows in the version the review applies to.
      auto: the image's auto manifest rows (every verdict), by annotation id.
      classes: class name -> category id of the ontology.
      stamp: ``review_sha256`` and ``reviewed_at`` of this import.
    """
    acts: dict[str, list[int]] = {a: [] for a in ACTIONS}
    shown = image.shown
    if shown is None:  # the format does not say: the image's auto labels that an export shows
        shown = {a for a, r in auto.items() if r["verdict"] in ("accept", "review")}
    rows = [r for r in base if r["annotation_id"] not in shown]  # labels the reviewer did not see stay
    next_k = 1 + max([a % _MAX_PER_IMAGE for a in auto] + [r["annotation_id"] % _MAX_PER_IMAGE for r in base] + [0])
    seen = set()
    for lab in image.labels:
        h, w = lab.size
        if (h, w) != (info["height"], info["width"]):
            raise ExportError(
                f"image {image.image_id}: a label is {w}x{h}, the image is {info['width']}x{info['height']}"
            )
        cls = {"category_name": lab.category, "category_id": classes[lab.category]}
        orig = auto.get(lab.origin) if lab.origin is not None else None
        if orig is not None and lab.origin is not None and lab.origin not in seen:
            seen.add(lab.origin)
            if _same_shape(lab, orig):
                action = "kept" if lab.category == orig["category_name"] else "relabelled"
                rows.append(_from_auto(orig, **cls, **stamp, checked=True, review_action=action))
            else:
                action = "reshaped"
                geo = _geometry(lab.rle_counts, h, w)
                rows.append(_from_auto(orig, **cls, **stamp, **geo, checked=True, review_action=action, source="human"))
            acts[action].append(lab.origin)
            continue
        if next_k >= _MAX_PER_IMAGE:
            raise ExportError(f"image {image.image_id}: more than {_MAX_PER_IMAGE - 1} labels on one image")
        ann = image.image_id * _MAX_PER_IMAGE + next_k
        next_k += 1
        new: dict[str, Any] = dict.fromkeys(SCHEMA.names)
        new.update(annotation_id=ann, image_id=image.image_id, image_uri=info["image_uri"], width=w, height=h)
        new.update(**cls, **_geometry(lab.rle_counts, h, w), **stamp)
        new.update(source="human", checked=True, review_action="added", verdict="accept")
        rows.append(new)
        acts["added"].append(ann)
    acts["deleted"] = sorted(shown - seen)
    return sorted(rows, key=lambda r: r["annotation_id"]), acts


def _read_part(fs: Any, url: str) -> list[dict]:
    _, path = open_fs(url)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        return read_parquet(f).to_pylist()


def import_review(output: str, review_file: str, fmt: str = "label-studio", batch: str | None = None) -> ReviewImport:
    """Apply a review file to the run in ``output`` as a new version; returns ``changes.json``'s content.

    Holds the output's lease (:mod:`segflow.tasks.io.lease`): a second import (or any other writer) is refused
    while this one runs, so two reviews never write one version.
    """
    from segflow.tasks.io.lease import hold

    with hold(output, "import-review") as lease:
        return _import_review(output, review_file, fmt, lease, batch)


def _import_review(output: str, review_file: str, fmt: str, lease: Any, batch: str | None) -> ReviewImport:
    run = RunLabels(output)
    raw, reviewed, images = _read_and_check(run, review_file, fmt)
    classes = {name: cid for cid, name in run.categories.items()}
    versions = review_versions(run.output)
    version = f"v{len(versions) + 1:04d}"
    prev = versions[-1] if versions else None
    sha = hashlib.sha256(raw).hexdigest()
    stamp = {"review_sha256": sha, "reviewed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    by_image = {im.image_id: im for im in reviewed}
    actions: dict[str, list[int]] = {a: [] for a in ACTIONS}
    _, target_path = open_fs(run.layout.review_version(version))
    if run.fs.exists(target_path):  # a version an import left unfinished (no _DONE.json): ours to replace
        run.fs.rm(target_path, recursive=True)
    try:
        coco = InstancesWriter(
            run.layout.review_version(version, "coco", "instances.json"),
            run.categories,
            f"{run.job.get('name')} {version}",
        )
        totals: Counter = Counter()
        for sid in run.shards:
            shard_images = sorted(i for i, r in images.items() if r["shard_id"] == sid)
            reviewed_here = {i: by_image[i] for i in shard_images if i in by_image}
            rows = _review_shard(run, sid, prev, shard_images, reviewed_here, images, classes, stamp, actions)
            table = pa.Table.from_pylist(rows, schema=SCHEMA)
            totals.update(table["source"].to_pylist())
            totals["checked"] += sum(1 for c in table["checked"].to_pylist() if c)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            write_bytes(run.fs, open_fs(run.layout.review_part(version, sid))[1], sink.getvalue().to_pybytes())
            if shard_images:
                coco.add(pa.Table.from_pylist([images[i] for i in shard_images]), table)
        counts = coco.close()
        changes: ReviewImport = {
            "version": version,
            "base": versions[-1] if versions else "auto",
            "review_file": redact(review_file),
            "format": fmt,
            "review_sha256": sha,
            "imported_at": stamp["reviewed_at"],
            "images_reviewed": len(reviewed),
            "image_ids": sorted(by_image),
            "counts": {a: len(ids) for a, ids in actions.items()},
            "labels": counts["annotations"],
            "labels_by_source": {"auto": totals["auto"], "human": totals["human"]},
            "labels_checked": totals["checked"],
            "annotation_ids": {a: sorted(ids) for a, ids in actions.items()},
        }
        from segflow.tasks.ops.review_batch import estimate_from_review

        measured = estimate_from_review(run, sorted(by_image), actions, batch)
        if measured is not None:
            changes["estimate"] = measured
            write_bytes(
                run.fs,
                open_fs(run.layout.review_version(version, "estimate.json"))[1],
                json.dumps(measured, indent=1).encode(),
            )
        lease.check()
        _finish_version(run, version, raw, changes)
    except BaseException:
        # refused or failed midway: nothing of this import stays (a version another import marked done is theirs)
        if run.fs.exists(target_path) and not run.fs.exists(f"{target_path.rstrip('/')}/_DONE.json"):
            run.fs.rm(target_path, recursive=True)
        raise
    return changes


def _read_and_check(run: RunLabels, review_file: str, fmt: str) -> tuple[bytes, list, dict[int, dict]]:
    """The review file's bytes, its reviewed images, and the run's images that decoded (image id -> manifest row);
    everything checked before anything is written: images and classes the run has, no image twice."""
    rfs, rpath = open_fs(review_file)
    if not rfs.exists(rpath):
        raise ExportError(f"{redact(review_file)}: no such review file")
    raw = read_capped(rfs, rpath, redact(review_file))
    try:
        reviewed = _reader(fmt)(raw, redact(review_file), run)
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:  # a shape no check above named
        raise ExportError(f"{redact(review_file)}: malformed {fmt} review file ({type(e).__name__}: {e})") from None
    images: dict[int, dict] = {}
    for sid in run.shards:
        for r in _read_part(run.fs, run.layout.manifest_part("images", sid)):
            if r["status"] == "ok":
                images[r["image_id"]] = r
    unknown = sorted({im.image_id for im in reviewed} - set(images))
    if unknown:
        raise ExportError(f"{redact(review_file)}: names images the run does not have: {unknown[:5]}")
    bad = sorted({lab.category for im in reviewed for lab in im.labels} - set(run.categories.values()))
    if bad:
        raise ExportError(f"{redact(review_file)}: names classes the ontology does not have: {bad}")
    dup = [k for k, n in Counter(im.image_id for im in reviewed).items() if n > 1]
    if dup:
        raise ExportError(f"{redact(review_file)}: reviews image(s) {dup[:5]} more than once")
    return raw, reviewed, images


def _review_shard(
    run: RunLabels,
    sid: str,
    prev: str | None,
    shard_images: list[int],
    reviewed: dict[int, Any],
    images: dict[int, dict],
    classes: dict[str, int],
    stamp: dict,
    actions: dict[str, list[int]],
) -> list[dict]:
    """One shard's reviewed label set: the previous version's rows (or the accepted auto labels), with the
    reviewed images' rows replaced by :func:`apply_review`; ``actions`` gets what changed."""
    auto = _read_part(run.fs, run.layout.manifest_part("masks", sid))
    if prev is not None:
        base = _read_part(run.fs, run.layout.review_part(prev, sid))
    else:
        base = [_from_auto(r) for r in auto if r["verdict"] == "accept"]
    auto_by_image: dict[int, dict[int, dict]] = {}
    for r in auto:
        auto_by_image.setdefault(r["image_id"], {})[r["annotation_id"]] = r
    base_by_image: dict[int, list[dict]] = {}
    for r in base:
        base_by_image.setdefault(r["image_id"], []).append(r)
    rows: list[dict] = []
    for image_id in shard_images:
        if image_id not in reviewed:
            rows += base_by_image.get(image_id, [])
            continue
        new, acts = apply_review(
            reviewed[image_id],
            images[image_id],
            base_by_image.get(image_id, []),
            auto_by_image.get(image_id, {}),
            classes,
            stamp,
        )
        rows += new
        for a, ids in acts.items():
            actions[a] += ids
    return rows


def _finish_version(run: RunLabels, version: str, raw: bytes, changes: ReviewImport) -> None:
    """The review file and ``changes.json``, then ``_DONE.json`` (create-if-absent): the version exists."""
    file = lambda name: open_fs(run.layout.review_version(version, name))[1]
    write_bytes(run.fs, file("review.json"), raw)
    write_bytes(run.fs, file("changes.json"), json.dumps(changes, indent=1).encode())
    if not create_exclusive(run.fs, file("_DONE.json"), json.dumps({"version": version}).encode()):
        raise ExportError(f"review version {version} was written concurrently by another import; import again")
