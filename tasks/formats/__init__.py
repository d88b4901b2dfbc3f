"""Interchange formats: a run's labels out to the tools people review and train with, and reviews back in.

Registries, as fsspec's ``known_implementations``: a name maps to ``"module:function"``,
imported when used; :func:`register_exporter` / :func:`register_review_reader` add one.
Callers never switch on a format.

* exporter ``fn(run: RunLabels, dest: str, verdicts: str, **options) -> dict`` (counts);
* review reader ``fn(raw: bytes, source: str, run: RunLabels) -> list[ReviewedImage]``.

Formats (one page each in docs/formats/): ``label-studio``, ``cvat``, ``yolo-seg``, ``coco``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from segflow.tasks.formats.labels import VERDICTS, ExportError, RunLabels
from segflow.tasks.records import ExportResult

__all__ = [
    "DEFAULT_VERDICTS",
    "EXPORTERS",
    "REVIEW_READERS",
    "ExportError",
    "export",
    "register_exporter",
    "register_review_reader",
    "resolve",
]

EXPORTERS: dict[str, str] = {
    "label-studio": "segflow.tasks.formats.label_studio:export_label_studio",
    "cvat": "segflow.tasks.formats.cvat:export_cvat",
    "yolo-seg": "segflow.tasks.formats.yolo_seg:export_yolo_seg",
    "coco": "segflow.tasks.formats.cvat:export_coco",
}
REVIEW_READERS: dict[str, str] = {
    "label-studio": "segflow.tasks.formats.label_studio:read_label_studio_review",
    "coco": "segflow.tasks.formats.cvat:read_coco_review",
}
#: what goes out when ``verdicts`` is not given: review tools get the review band, training formats the labels
DEFAULT_VERDICTS = {"label-studio": "review", "cvat": "review", "yolo-seg": "accept", "coco": "accept"}


def register_exporter(name: str, target: str, default_verdicts: str = "accept") -> None:
    """Add an export format: ``target`` is ``"module:function"``."""
    EXPORTERS[name] = target
    DEFAULT_VERDICTS[name] = default_verdicts


def register_review_reader(name: str, target: str) -> None:
    """Add a review format for ``segflow import-review``: ``target`` is ``"module:function"``."""
    REVIEW_READERS[name] = target


def resolve(target: str) -> Callable[..., Any]:
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn)


def export(
    output: str,
    fmt: str,
    dest: str,
    verdicts: str | None = None,
    images: set[int] | None = None,
    marked: set[int] | None = None,
    **options: Any,
) -> ExportResult:
    """Export the finished run in ``output`` to ``dest`` in format ``fmt``: what was written (the exporter's
    counts: ``images``, ``masks``, ``file`` where it wrote one, anything else in ``details``).

    ``images``: only these images, each with its accepted and review labels (a review batch,
    :mod:`segflow.tasks.ops.review_batch`); ``marked``: the annotation ids it asks people to check."""
    if fmt not in EXPORTERS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(EXPORTERS)}")
    verdicts = verdicts or DEFAULT_VERDICTS.get(fmt, "accept")
    if verdicts not in VERDICTS:
        raise ExportError(f"verdicts must be one of {', '.join(VERDICTS)}, got {verdicts!r}")
    import contextlib

    from segflow.tasks.io.lease import LeaseHeld, hold

    inside = dest.rstrip("/").startswith(output.rstrip("/") + "/")  # writing into the output: one writer at a time
    try:
        with hold(output, "export") if inside else contextlib.nullcontext():
            run = RunLabels(output)
            if (run.job.get("source") or {}).get("video"):
                raise ExportError(
                    f"{fmt}: the frames of a video run cannot be exported for review or training tools yet (they "
                    "need each frame as an image file; docs/video.md): the manifests and coco/instances.json carry "
                    "its labels"
                )
            if images is not None:
                run.restrict(images, marked or set())
            result = resolve(EXPORTERS[fmt])(run, dest, verdicts, **options)
    except LeaseHeld as e:
        raise ExportError(str(e)) from None
    counts = dict(result)
    n_images, n_masks, file = counts.pop("images", 0), counts.pop("masks", 0), counts.pop("file", None)
    return ExportResult(fmt, verdicts, dest, int(n_images), int(n_masks), file, counts)
