"""The one record passed between stages: :class:`Detections`, parallel arrays for one image.

Every stage takes and returns ``Detections``. Row ``i`` of each array describes
the same object, so filtering is one boolean index applied to all arrays at
once (``dets[dets.scores > 0.5]``) and classes can never drift away from their
masks.

Arrays (N = number of objects):

==============  ==========  =====================================================
``boxes``       N x 4       float32, XYXY, pixels of the upright image
``class_ids``   N           int64, ontology category ids
``scores``      N           float32, detector confidence in [0, 1]
``rle_counts``  N           object: compressed COCO RLE strings (see
                            :mod:`segflow.tasks.rle`), or ``None`` before a mask stage
``fields``      N each      extra per-row arrays by name (``predicted_iou``, ...)
==============  ==========  =====================================================

``image_size`` is ``(H, W)`` of the upright image the coordinates refer to;
``meta`` holds per-image values (e.g. the QC stage's image flags).
Masks stay RLE: dense masks exist only transiently inside a stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segflow.tasks import rle

__all__ = ["Detections"]


def _check(name: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        expected = " x ".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"Detections.{name}: expected shape ({expected}), got {tuple(arr.shape)}")


@dataclass(frozen=True)
class Detections:
    """Parallel per-object arrays for one image. See the module docstring for conventions."""

    image_size: tuple[int, int]
    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    rle_counts: np.ndarray | None = None
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        boxes = (
            np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
            if np.size(self.boxes) == 0
            else np.asarray(self.boxes, dtype=np.float32)
        )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", np.asarray(self.class_ids, dtype=np.int64))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32))
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        _check("boxes", self.boxes, (None, 4))
        n = self.boxes.shape[0]
        _check("class_ids", self.class_ids, (n,))
        _check("scores", self.scores, (n,))
        if self.rle_counts is not None:
            counts = (
                np.empty(n, dtype=object) if len(self.rle_counts) == 0 else np.asarray(self.rle_counts, dtype=object)
            )
            _check("rle_counts", counts, (n,))
            object.__setattr__(self, "rle_counts", counts)
        fields = {k: np.asarray(v) for k, v in self.fields.items()}
        for k, v in fields.items():
            if v.ndim < 1 or v.shape[0] != n:
                raise ValueError(f"Detections.fields[{k!r}]: expected {n} rows, got shape {tuple(v.shape)}")
        object.__setattr__(self, "fields", fields)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = False) -> Detections:
        return cls(
            image_size=image_size,
            boxes=np.zeros((0, 4), np.float32),
            class_ids=np.zeros((0,), np.int64),
            scores=np.zeros((0,), np.float32),
            rle_counts=np.empty(0, dtype=object) if with_masks else None,
        )

    def with_masks(self, rle_counts: list[str] | np.ndarray, **fields: np.ndarray) -> Detections:
        """A copy with masks (one RLE string per row) and extra per-row fields added."""
        return Detections(
            image_size=self.image_size,
            boxes=self.boxes,
            class_ids=self.class_ids,
            scores=self.scores,
            rle_counts=np.asarray(list(rle_counts), dtype=object) if len(rle_counts) else np.empty(0, dtype=object),
            fields={**self.fields, **fields},
            meta=self.meta,
        )

    def with_fields(self, meta: Mapping[str, Any] | None = None, **fields: np.ndarray) -> Detections:
        """A copy with extra per-row fields (and per-image ``meta`` entries) added."""
        return Detections(
            image_size=self.image_size,
            boxes=self.boxes,
            class_ids=self.class_ids,
            scores=self.scores,
            rle_counts=self.rle_counts,
            fields={**self.fields, **fields},
            meta={**self.meta, **(meta or {})},
        )

    # -- container protocol ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Any) -> Detections:
        """Vectorised selection: a boolean mask, an index array or a slice, applied to every array."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        if isinstance(index, np.ndarray) and index.dtype == np.bool_ and index.shape != (len(self),):
            raise ValueError(f"Detections: boolean index must have shape ({len(self)},), got {index.shape}")
        return Detections(
            image_size=self.image_size,
            boxes=self.boxes[index],
            class_ids=self.class_ids[index],
            scores=self.scores[index],
            rle_counts=None if self.rle_counts is None else self.rle_counts[index],
            fields={k: v[index] for k, v in self.fields.items()},
            meta=self.meta,
        )

    @property
    def has_masks(self) -> bool:
        return self.rle_counts is not None

    # -- derived geometry (from the RLE, never from the detector box) ------------------
    def mask_areas(self) -> np.ndarray:
        return rle.area(list(self.masks_or_raise("mask_areas")), *self.image_size)

    def mask_bboxes_xywh(self) -> np.ndarray:
        return rle.bbox_xywh(list(self.masks_or_raise("mask_bboxes_xywh")), *self.image_size)

    def masks_or_raise(self, what: str) -> np.ndarray:
        """The RLE strings; a clear error when there are none yet."""
        if self.rle_counts is None:
            raise ValueError(f"Detections.{what}: this record has no masks yet (run a mask stage first)")
        return self.rle_counts
