"""Checks for review files, which come from outside: validate before anything is allocated, decoded or written.

A review file is untrusted input (docs/security.md). pycocotools trusts what it is
given: a compressed RLE whose runs exceed the size it declares makes ``iou`` loop
forever and ``decode`` write past its buffer; polygon coordinates far outside the
image make ``frPyObjects`` allocate without bound. So every mask of a review file
passes through here first:

* sizes come from the run's own image records, never from the file;
* a compressed RLE string is parsed here (pycocotools' LEB128-like code, in
  Python): only its 64 characters, every run >= 0, runs summing to H x W;
* uncompressed RLE: a list of non-negative integers summing to H x W;
* polygons: finite points inside the image (a pixel of slack), at most
  :data:`MAX_POINTS` per label;
* a file (and each zip member, and a zip's total) is read only up to
  :data:`MAX_BYTES`, whatever its headers claim.

Every refusal is an :class:`~segflow.tasks.formats.labels.ExportError` with one
line that names the file, the task or annotation, and the reason.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np

from segflow.tasks.documents import CompressedRle
from segflow.tasks.formats.labels import ExportError
from segflow.tasks.rle import rle_runs

__all__ = ["MAX_BYTES", "MAX_POINTS", "check_polygon", "check_rle", "read_capped", "read_zip_member", "rle_runs"]

#: the largest review file, zip member or zip total read (bytes)
MAX_BYTES = 256 << 20
#: polygon vertices per label
MAX_POINTS = 200_000
_ZIP_MEMBERS = 10_000


def read_capped(fs: Any, path: str, source: str, cap: int = MAX_BYTES) -> bytes:
    """The file's bytes, refused when it is (or turns out to be) larger than ``cap``."""
    try:
        size = fs.size(path)
    except (OSError, ValueError):
        size = None
    if size is not None and size > cap:
        raise ExportError(f"{source}: {size} bytes, more than the {cap} a review file may have")
    with fs.open(path, "rb") as f:
        raw = f.read(cap + 1)
    if len(raw) > cap:
        raise ExportError(f"{source}: more than the {cap} bytes a review file may have")
    return raw


def read_zip_member(raw: bytes, source: str, pick: Any, cap: int = MAX_BYTES) -> bytes:
    """The one member ``pick(name)`` chooses from a zip archive, its declared and actual sizes bounded by ``cap``.

    A zip's headers can lie about sizes, so the member is also read at most ``cap + 1`` bytes.
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as e:
        raise ExportError(f"{source}: not a readable zip archive ({e})") from None
    with z:
        infos = z.infolist()
        if len(infos) > _ZIP_MEMBERS:
            raise ExportError(f"{source}: {len(infos)} members in the archive, more than {_ZIP_MEMBERS}")
        total = sum(i.file_size for i in infos)
        if total > cap:
            raise ExportError(f"{source}: the archive expands to {total} bytes, more than {cap}")
        names = [i.filename for i in infos if pick(i.filename)]
        if len(names) != 1:
            raise ExportError(f"{source}: expected one annotations/*.json in the archive, found {names[:5]}")
        try:
            with z.open(names[0]) as f:
                data = f.read(cap + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as e:
            raise ExportError(f"{source}: {names[0]}: cannot be read ({e})") from None
    if len(data) > cap:
        raise ExportError(f"{source}: {names[0]} expands past {cap} bytes")
    return data


def check_rle(counts: Any, h: int, w: int, where: str) -> CompressedRle:
    """A COCO RLE (compressed string, or uncompressed list of runs) for an ``h`` x ``w`` image, checked.

    Returns the RLE compressed (``{"size": [h, w], "counts": str}``), as the manifests hold it.

    Raises:
      ExportError: ``where: <reason>``.
    """
    pixels = h * w
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise ExportError(f"{where}: RLE counts are not ASCII") from None
    if isinstance(counts, str):
        if len(counts) > 2 * pixels + 16:
            raise ExportError(f"{where}: RLE counts longer than a {w}x{h} mask can need")
        runs = rle_runs(counts, pixels)
        if runs is None or sum(runs) != pixels:
            raise ExportError(f"{where}: RLE counts are malformed or do not cover the {w}x{h} image exactly")
        return {"size": [h, w], "counts": counts}
    if isinstance(counts, list):
        if len(counts) > pixels + 1 or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ExportError(f"{where}: uncompressed RLE counts must be at most {pixels + 1} integers")
        if any(c < 0 for c in counts) or sum(counts) != pixels:
            raise ExportError(f"{where}: RLE runs must be >= 0 and sum to the {w}x{h} image's {pixels} pixels")
        from pycocotools import mask as mask_utils

        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
        return {"size": [h, w], "counts": compressed.decode("ascii")}
    raise ExportError(f"{where}: RLE counts must be a string or a list of integers")


def check_polygon(points: Any, h: int, w: int, where: str, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """A polygon as ``K x 2`` float XY pixels, checked: finite, inside the image (one pixel of slack), bounded.

    Arguments:
      points: ``[[x, y], ...]`` or a flat ``[x0, y0, x1, y1, ...]`` list, in the file's units.
      scale: multiplies x and y into pixels (Label Studio's percent: ``(w / 100, h / 100)``).
    """
    if not isinstance(points, list) or not points:
        raise ExportError(f"{where}: a polygon must be a non-empty list of points")
    flat = points and not isinstance(points[0], list)
    n = len(points) // 2 if flat else len(points)
    if n > MAX_POINTS:
        raise ExportError(f"{where}: {n} polygon points, more than {MAX_POINTS}")
    try:
        arr = np.asarray(points, np.float64).reshape(-1, 2) * np.asarray(scale, np.float64)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: polygon points must be pairs of numbers") from None
    if not np.isfinite(arr).all():
        raise ExportError(f"{where}: polygon points must be finite numbers")
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    if lo[0] < -1 or lo[1] < -1 or hi[0] > w + 1 or hi[1] > h + 1:
        raise ExportError(
            f"{where}: polygon points outside the {w}x{h} image "
            f"(x {_fmt(lo[0])}..{_fmt(hi[0])}, y {_fmt(lo[1])}..{_fmt(hi[1])} pixels)"
        )
    return arr


def _fmt(v: float) -> str:
    return f"{v:.1f}" if math.isfinite(v) and abs(v) < 1e9 else f"{v:.3g}"
