"""The Parquet manifests: one row per mask, one row per source image.

This module owns the output schema (documented in docs/outputs.md). Later
additions add columns; existing ones never change meaning.

``masks`` (``OUTPUT/manifest/masks.parquet/``, one file per shard):

=================  ============  ==========================================================
annotation_id      int64         unique, stable: ``image_id * 100000 + k`` (k = 1, 2, ...)
image_id           int64         see ``images``
image_uri          string        full URI of the source image
width, height      int32         upright image size in pixels (the RLE's size)
category_id        int32         ontology id
category_name      string        ontology name
score              float32       detector confidence
predicted_iou      float32       SAM's predicted mask IoU (null when the stage has none)
stability_score    float32       SAM stability score (offset 1.0; null when none)
bbox               list<double>  [x, y, w, h] pixels, tight box of the mask (from the RLE)
area               int64         mask pixel count (from the RLE)
rle_counts         string        COCO compressed RLE counts (see ``segflow.tasks.rle``)
prompt_box         list<float>   [x1, y1, x2, y2] detector box that prompted the mask
stage              string        name of the stage that produced the mask
model              string        ``kind:file@sha256:<12 hex>`` of the mask model
prompt_model       string        same for the detector (null when none)
shard_id           string        shard that produced the row
qc_verdict         string        ``pass`` | ``flag`` | ``reject`` (null without a qc stage)
qc_reasons         list<string>  QC rules that fired (null without a qc stage)
video              string        a video's frame: the video's key (null for still images)
frame_index        int64         its frame number, 0-based, before sampling (null for still images)
timestamp_s        float64       seconds from the video's start (null for still images)
track_id           int64         with a ``track`` stage: the mask's track, global per video (else null)
=================  ============  ==========================================================

Finalize adds four columns to the manifest's parts (five with a ``track`` or ``sam2_video`` stage: ``video_id``, the
video's id in ``vis/instances.json``) (the committed shard files
stay as written; :mod:`segflow.tasks.evaluate.acceptance`): ``verdict`` (``accept`` |
``review`` | ``reject``), ``verdict_reasons`` (list<string>),
``calibrated_score`` (float32, null without a calibration) and ``novelty``
(float32, :mod:`segflow.tasks.evaluate.novelty`; null without a shape reference). The shard
writes ``shape`` (list<float32>, the novelty features of the mask and its contact flag).

``panoptic`` (``OUTPUT/manifest/panoptic.parquet/``, only with a panoptic stage): one row
per segment of the merged panoptic map (segments never overlap):

=================  ============  ==========================================================
image_id           int64         see ``images``
segment_id         int32         the segment's id in ``coco/panoptic/<image_id>.png`` (1..n)
image_uri          string        full URI of the source image
width, height      int32         upright image size (the RLE's size)
category_id        int32         ontology id
category_name      string        ontology name
isthing            bool          thing (countable) or stuff
score              float32       detector confidence (things from instances) or class probability
bbox, area         as above      from the RLE
rle_counts         string        COCO compressed RLE
source_stage       string        stage the segment came from (instance stage or panoptic model)
model              string        model identity of that stage
annotation_id      int64         the ``masks`` row of a thing taken from an instance stage (else null)
shard_id           string        shard that produced the row
=================  ============  ==========================================================

``images`` (``OUTPUT/manifest/images.parquet/``): ``image_id``, ``image_uri``,
``file_name`` (key relative to the source root), ``width``/``height`` (null
when the image failed), ``status`` (``ok`` | ``failed``), ``error`` (the
reason, null when ok), ``exif_orientation``, ``num_masks``, ``shard_id``, ``qc_flags`` (image QC flags:
``no_labels``, ``label_count_outlier``; null without a qc stage), the image statistics of the drift check
(``brightness``, ``contrast``, ``sharpness``, ``jpeg_quality``), and for a video's frame ``video`` (the video
file's or frame folder's key), ``frame_index`` (0-based, before sampling) and ``timestamp_s`` (null for still
images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from segflow.tasks.evaluate.novelty import shape_features
from segflow.tasks.io.image_stats import ImageStats
from segflow.tasks.io.video import FrameRef
from segflow.tasks.record import Detections

__all__ = ["MASKS_SCHEMA", "IMAGES_SCHEMA", "PANOPTIC_SCHEMA", "MAX_MASKS_PER_IMAGE", "ShardTables"]

MAX_MASKS_PER_IMAGE = 99_999
ANNOTATION_ID_STRIDE = 100_000

MASKS_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("score", pa.float32()),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("bbox", pa.list_(pa.float64(), 4)),
        ("area", pa.int64()),
        ("rle_counts", pa.string()),
        ("prompt_box", pa.list_(pa.float32(), 4)),
        ("stage", pa.string()),
        ("model", pa.string()),
        ("prompt_model", pa.string()),
        ("shard_id", pa.string()),
        ("qc_verdict", pa.string()),
        ("qc_reasons", pa.list_(pa.string())),
        ("shape", pa.list_(pa.float32())),
        ("video", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_s", pa.float64()),
        ("track_id", pa.int64()),
    ]
)

PANOPTIC_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("segment_id", pa.int32()),
        ("image_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("isthing", pa.bool_()),
        ("score", pa.float32()),
        ("bbox", pa.list_(pa.float64(), 4)),
        ("area", pa.int64()),
        ("rle_counts", pa.string()),
        ("source_stage", pa.string()),
        ("model", pa.string()),
        ("annotation_id", pa.int64()),
        ("shard_id", pa.string()),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("file_name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("exif_orientation", pa.int32()),
        ("num_masks", pa.int32()),
        ("shard_id", pa.string()),
        ("qc_flags", pa.list_(pa.string())),
        ("brightness", pa.float32()),
        ("contrast", pa.float32()),
        ("sharpness", pa.float32()),
        ("jpeg_quality", pa.float32()),
        ("video", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp_s", pa.float64()),
    ]
)


@dataclass
class ShardTables:
    """Accumulates one shard's rows column by column; ``tables()`` builds Arrow tables."""

    shard_id: str
    category_names: dict[int, str]
    masks: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in MASKS_SCHEMA})
    images: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in IMAGES_SCHEMA})
    panoptic: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in PANOPTIC_SCHEMA})

    def add_failed_image(self, image_id: int, uri: str, key: str, error: str, frame: FrameRef | None = None) -> None:
        self._image(image_id, uri, key, None, None, "failed", error, None, 0, None, frame=frame)

    def add_image(
        self,
        image_id: int,
        uri: str,
        key: str,
        size_hw: tuple[int, int],
        exif_orientation: int,
        outputs: list[tuple[str, str, str | None, Detections]],
        panoptic: tuple[str, dict[str, str], Detections] | None = None,
        stats: ImageStats | None = None,
        frame: FrameRef | None = None,
    ) -> int:
        """Record an image (or a video's frame: ``frame``), its masks and its panoptic segments.

        Arguments:
          outputs: ``(stage, model, prompt_model, dets)`` per instance sink stage.
          panoptic: ``(stage, model identity by stage name, segments)`` of the panoptic sink, or None.
          stats: the image's brightness, contrast, sharpness and JPEG quality (:mod:`segflow.tasks.io.image_stats`).
        """
        h, w = size_hw
        k = 0
        first_id: dict[str, int] = {}
        for stage, model, prompt_model, dets in outputs:
            first_id[stage] = image_id * ANNOTATION_ID_STRIDE + k + 1
            n = len(dets)
            if n == 0:
                continue
            if k + n > MAX_MASKS_PER_IMAGE:
                raise ValueError(
                    f"image {uri}: more than {MAX_MASKS_PER_IMAGE} masks; raise thresholds or lower max_det"
                )
            m = self.masks
            m["annotation_id"].extend(image_id * ANNOTATION_ID_STRIDE + np.arange(k + 1, k + n + 1))
            m["image_id"].extend([image_id] * n)
            m["image_uri"].extend([uri] * n)
            m["width"].extend([w] * n)
            m["height"].extend([h] * n)
            m["category_id"].extend(dets.class_ids.tolist())
            m["category_name"].extend(self.category_names[int(c)] for c in dets.class_ids)
            m["score"].extend(dets.scores.tolist())
            m["predicted_iou"].extend(_field(dets, "predicted_iou"))
            m["stability_score"].extend(_field(dets, "stability_score"))
            m["bbox"].extend(dets.mask_bboxes_xywh().tolist())
            m["area"].extend(dets.mask_areas().tolist())
            m["rle_counts"].extend(dets.masks_or_raise("rle_counts").tolist())
            m["prompt_box"].extend(dets.boxes.tolist())
            m["stage"].extend([stage] * n)
            m["model"].extend([model] * n)
            m["prompt_model"].extend([prompt_model] * n)
            m["shard_id"].extend([self.shard_id] * n)
            verdicts = dets.fields.get("qc_verdict")
            m["qc_verdict"].extend([None] * n if verdicts is None else verdicts.tolist())
            reasons = dets.fields.get("qc_reasons")
            m["qc_reasons"].extend([None] * n if reasons is None else [r.split(",") if r else [] for r in reasons])
            m["shape"].extend(
                shape_features(list(dets.masks_or_raise("rle_counts")), h, w, dets.mask_bboxes_xywh()).tolist()
            )
            m["video"].extend([None if frame is None else frame.video] * n)
            m["frame_index"].extend([None if frame is None else frame.index] * n)
            m["timestamp_s"].extend([None if frame is None else frame.timestamp_s] * n)
            tracks = dets.fields.get("track_id")
            m["track_id"].extend([None] * n if tracks is None else [int(t) if t >= 0 else None for t in tracks])
            k += n
        if panoptic is not None:
            self._panoptic(image_id, uri, (h, w), panoptic, first_id)
        checked = [d for *_, d in outputs if "qc_image_flags" in d.meta]
        flags = [f for d in checked for f in d.meta["qc_image_flags"]] if checked else None
        self._image(image_id, uri, key, h, w, "ok", None, exif_orientation, k, flags, stats, frame)
        return k

    def _panoptic(
        self,
        image_id: int,
        uri: str,
        size_hw: tuple[int, int],
        panoptic: tuple[str, dict[str, str], Detections],
        first_id: dict[str, int],
    ) -> None:
        stage, models, segs = panoptic
        h, w = size_hw
        n = len(segs)
        if n == 0:
            return
        sources = segs.fields["source"].tolist() if "source" in segs.fields else [stage] * n
        index = segs.fields["source_index"].tolist() if "source_index" in segs.fields else [0] * n
        p = self.panoptic
        p["image_id"].extend([image_id] * n)
        p["segment_id"].extend(range(1, n + 1))
        p["image_uri"].extend([uri] * n)
        p["width"].extend([w] * n)
        p["height"].extend([h] * n)
        p["category_id"].extend(segs.class_ids.tolist())
        p["category_name"].extend(self.category_names[int(c)] for c in segs.class_ids)
        p["isthing"].extend(segs.fields["isthing"].astype(bool).tolist())
        p["score"].extend(segs.scores.tolist())
        p["bbox"].extend(segs.mask_bboxes_xywh().tolist())
        p["area"].extend(segs.mask_areas().tolist())
        p["rle_counts"].extend(segs.masks_or_raise("rle_counts").tolist())
        p["source_stage"].extend(sources)
        p["model"].extend(models.get(s) for s in sources)
        p["annotation_id"].extend(first_id[s] + i if s in first_id else None for s, i in zip(sources, index))
        p["shard_id"].extend([self.shard_id] * n)

    def flag_count_outliers(self, mads: float, minimum: int) -> None:
        """Add ``label_count_outlier`` to decoded images with unusually many masks for this shard."""
        from segflow.tasks.stages.qc import count_outliers

        ok = [i for i, st in enumerate(self.images["status"]) if st == "ok"]
        out = count_outliers([self.images["num_masks"][i] for i in ok], mads, minimum)
        for i, is_out in zip(ok, out):
            if is_out:
                self.images["qc_flags"][i] = (self.images["qc_flags"][i] or []) + ["label_count_outlier"]

    def _image(
        self, image_id, uri, key, h, w, status, error, orientation, num_masks, qc_flags, stats=None, frame=None
    ) -> None:
        i = self.images
        for name in ("brightness", "contrast", "sharpness", "jpeg_quality"):
            i[name].append(None if stats is None else getattr(stats, name))
        i["video"].append(None if frame is None else frame.video)
        i["frame_index"].append(None if frame is None else frame.index)
        i["timestamp_s"].append(None if frame is None else frame.timestamp_s)
        i["image_id"].append(image_id)
        i["image_uri"].append(uri)
        i["file_name"].append(key)
        i["width"].append(w)
        i["height"].append(h)
        i["status"].append(status)
        i["error"].append(error)
        i["exif_orientation"].append(orientation)
        i["num_masks"].append(num_masks)
        i["shard_id"].append(self.shard_id)
        i["qc_flags"].append(qc_flags)

    def tables(self) -> tuple[pa.Table, pa.Table]:
        masks = pa.table(
            {k: pa.array(v, type=MASKS_SCHEMA.field(k).type) for k, v in self.masks.items()}, schema=MASKS_SCHEMA
        )
        images = pa.table(
            {k: pa.array(v, type=IMAGES_SCHEMA.field(k).type) for k, v in self.images.items()}, schema=IMAGES_SCHEMA
        )
        return masks.sort_by("annotation_id"), images.sort_by("image_id")

    def panoptic_table(self) -> pa.Table:
        t = pa.table(
            {k: pa.array(v, type=PANOPTIC_SCHEMA.field(k).type) for k, v in self.panoptic.items()},
            schema=PANOPTIC_SCHEMA,
        )
        return t.sort_by([("image_id", "ascending"), ("segment_id", "ascending")])


def _field(dets: Detections, name: str) -> list[Any]:
    v = dets.fields.get(name)
    return [None] * len(dets) if v is None else v.astype(np.float32).tolist()
