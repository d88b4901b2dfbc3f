"""``sam_auto``: Segment Anything's automatic mask generator as an instance labeler."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.sam_checkpoint import load_sam

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.sam_auto import SamAutoStage


__all__ = ["SamAutoLabeler"]


class SamAutoLabeler:
    """``sam_auto``: Segment Anything's automatic, class-agnostic mode (point grid), every mask one ontology class.

    ``segment_anything.SamAutomaticMaskGenerator`` with the stage's settings
    (defaults = SA-1B: 32 x 32 points, predicted IoU >= 0.88, stability >= 0.95
    with offset 1.0, box NMS 0.7, optional crop layers with crop NMS 0.7).
    Rows: boxes XYXY (from the masks), class id of ``category``, score =
    predicted IoU, RLE masks, fields ``predicted_iou`` and ``stability_score``.
    """

    role = "instances"

    def __init__(self, stage: SamAutoStage, weights_path: str, ontology: dict[int, str]):
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        self.model = load_sam(weights_path, getattr(stage, "model_type", "auto")).to(self.device)
        by_name = {v: k for k, v in ontology.items()}
        if stage.category not in by_name:  # config validation reports it first; this guards direct use
            raise ValueError(f"sam_auto: category {stage.category!r} is not in the ontology")
        self.class_id = by_name[stage.category]
        self.generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=stage.points_per_side,
            points_per_batch=stage.points_per_batch,
            pred_iou_thresh=stage.pred_iou_thresh,
            stability_score_thresh=stage.stability_score_thresh,
            stability_score_offset=stage.stability_score_offset,
            box_nms_thresh=stage.box_nms_thresh,
            crop_n_layers=stage.crop_n_layers,
            crop_nms_thresh=stage.crop_nms_thresh,
            min_mask_region_area=stage.min_mask_region_area,
            output_mode="coco_rle",
        )
        self._lock = threading.Lock()

    def label(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Every mask the generator keeps, per image (H x W x 3 uint8 RGB)."""
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for im in images:
                h, w = im.shape[:2]
                anns = self.generator.generate(np.ascontiguousarray(im))
                if not anns:
                    out.append(Detections.empty((h, w), with_masks=True))
                    continue
                xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
                piou = np.array([a["predicted_iou"] for a in anns], np.float32)
                dets = Detections(
                    (h, w),
                    np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                    np.full(len(anns), self.class_id),
                    piou,
                )
                counts = [a["segmentation"]["counts"] for a in anns]
                counts = [c.decode("ascii") if isinstance(c, bytes) else c for c in counts]
                out.append(
                    dets.with_masks(
                        counts,
                        predicted_iou=piou,
                        stability_score=np.array([a["stability_score"] for a in anns], np.float32),
                    )
                )
        return out
