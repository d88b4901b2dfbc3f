"""What a reviewer left, whatever tool they used: per reviewed image, its labels and the masks they were shown.

A reader of a review file (:mod:`segflow.tasks.formats.label_studio`,
:mod:`segflow.tasks.formats.cvat`) returns a list of :class:`ReviewedImage`;
:mod:`segflow.tasks.ops.review` compares them with the run and writes the new version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReviewedImage", "ReviewedLabel"]


@dataclass
class ReviewedLabel:
    origin: int | None  # annotation_id of the mask the reviewer started from; None: drawn by the reviewer
    category: str  # class name, as the reviewer left it
    rle_counts: str  # COCO compressed RLE of the mask
    size: tuple[int, int]  # (height, width) of the RLE


@dataclass
class ReviewedImage:
    image_id: int
    labels: list[ReviewedLabel]
    shown: set[int] | None = field(default=None)  # annotation ids the reviewer was shown; None: unknown
