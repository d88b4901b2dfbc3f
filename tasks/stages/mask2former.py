"""Panoptic stage: ``transformers`` Mask2Former (``Mask2FormerForUniversalSegmentation``).

Per batch of images: the model's own image processor (resize, normalise, pad
to a common size with a ``pixel_mask``), one forward pass, then the standard
Mask2Former panoptic inference done here on the logits, so edges are computed
at the original resolution:

1. per query: class probabilities (softmax, last column = "no object"); keep
   queries whose best real label maps into the job's ontology and whose score
   is at least ``threshold``;
2. kept mask logits: upsampled to the padded input size, cropped to the
   image's valid (unpadded) region, resized to the original ``H x W``;
3. each pixel goes to the kept query with the largest ``score * sigmoid``;
   a query keeps its segment only when that covers at least
   ``overlap_threshold`` of its own ``sigmoid >= mask_threshold`` area;
4. stuff segments of the same class are fused into one.

The result is one :class:`~segflow.tasks.record.Detections` per image whose rows are
non-overlapping segments: ``boxes`` (XYXY, tight around the mask), ontology
``class_ids``, ``scores`` and RLE masks, plus the field ``isthing`` (from the
ontology).

Weights (``weights:`` of the stage):

* a segflow checkpoint file ``{"format": "segflow.mask2former/1",
  "config": <config JSON>, "processor": <image processor JSON>,
  "state_dict": ...}`` (weights-only; what the project's training writes);
* a local directory from ``save_pretrained`` holding ``config.json``,
  ``preprocessor_config.json`` and ``model.safetensors`` (``sha256`` then
  refers to ``model.safetensors``);
* ``hub:<org>/<name>``: a Hugging Face hub id, read from the local hub cache
  only (``local_files_only``) -- download it beforehand, e.g. when building
  the worker image; nothing is downloaded at run time.

Label mapping: a model label maps to the ontology class named in the stage's
``label_map``, else to the ontology class of the same name, else to
``unmapped`` (a class name) or is dropped (``unmapped: drop``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError, build_to_fit, load_checkpoint
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.mask2former import Mask2FormerStage


FORMAT = "segflow.mask2former/1"
HUB_PREFIX = "hub:"

__all__ = [
    "Mask2FormerPanoptic",
    "build_mask2former",
    "save_mask2former_checkpoint",
    "load_mask2former",
    "label_table",
]


def build_mask2former(arch: dict[str, Any], labels: Sequence[str]) -> tuple[Any, Any]:
    """A randomly initialised ``Mask2FormerForUniversalSegmentation`` and its image processor.

    ``arch``: ``backbone`` (``SwinConfig`` keyword arguments), ``input_size``
    (square side the processor resizes to) and any ``Mask2FormerConfig``
    keyword. The backbone is passed as a config object, so nothing is fetched.
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    a = dict(arch)
    backbone = SwinConfig(**a.pop("backbone"), out_features=["stage1", "stage2", "stage3", "stage4"])
    size = int(a.pop("input_size", 256))
    config = Mask2FormerConfig(
        backbone_config=backbone,
        id2label={i: n for i, n in enumerate(labels)},
        label2id={n: i for i, n in enumerate(labels)},
        **a,
    )
    model = Mask2FormerForUniversalSegmentation(config)
    processor = Mask2FormerImageProcessor(
        size={"height": size, "width": size}, ignore_index=255, do_reduce_labels=False
    )
    return model.eval(), processor


def save_mask2former_checkpoint(model: Any, processor: Any, path: str | Path, half: bool = False) -> None:
    """Write a model and its processor as one weights-only segflow checkpoint file."""
    import torch

    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    torch.save(
        {
            "format": FORMAT,
            "config": model.config.to_json_string(),
            "processor": processor.to_json_string(),
            "state_dict": sd,
        },
        str(path),
    )


def load_mask2former(weights: str) -> tuple[Any, Any]:
    """``(model in eval mode, image processor)`` from a segflow checkpoint, a ``save_pretrained`` directory or
    ``hub:<id>``."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    if weights.startswith(HUB_PREFIX) or Path(weights).is_dir():
        source = weights.removeprefix(HUB_PREFIX)
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(source, local_files_only=True)
            processor = Mask2FormerImageProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            hint = (
                " (hub models are read from the local cache only: download it first, e.g. `huggingface-cli download "
                + source
                + "`)"
                if weights.startswith(HUB_PREFIX)
                else ""
            )
            raise WeightsError(f"{weights}: cannot load a Mask2Former{hint}: {str(e).splitlines()[0]}") from None
        return model.float().eval(), processor
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{weights}: not a segflow Mask2Former checkpoint (format {FORMAT!r}), a "
            f"save_pretrained directory or hub:<id>"
        )
    config = Mask2FormerConfig.from_dict(json.loads(ckpt["config"]))
    if getattr(config, "use_pretrained_backbone", False) or getattr(config, "use_timm_backbone", False):
        raise WeightsError(f"{weights}: the checkpoint's config asks for a pretrained or timm backbone (a download)")
    model = build_to_fit(
        lambda: Mask2FormerForUniversalSegmentation(config), ckpt["state_dict"], weights, "Mask2Former"
    )
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: weights do not fit the Mask2Former config: {str(e).splitlines()[0]}") from None
    processor = Mask2FormerImageProcessor.from_dict(json.loads(ckpt["processor"]))
    return model.float().eval(), processor


def label_table(
    id2label: dict[int, str], ontology: dict[int, str], label_map: dict[str, str], unmapped: str
) -> np.ndarray:
    """Model label index -> ontology id (0 = dropped), one entry per model label.

    Arguments:
      id2label: the model's labels (index -> name).
      ontology: the job's classes (id -> name).
      label_map: model label name -> ontology class name (explicit entries win).
      unmapped: ``"drop"`` or the ontology class name that takes every other label.
    """
    by_name = {n: i for i, n in ontology.items()}
    fallback = 0 if unmapped == "drop" else by_name[unmapped]
    table = np.zeros(max(id2label) + 1 if id2label else 0, np.int64)
    for idx, name in id2label.items():
        target = label_map.get(name, name)
        table[int(idx)] = by_name.get(target, fallback)
    return table


class Mask2FormerPanoptic:
    """Images -> non-overlapping panoptic segments (things and stuff) per image."""

    role = "panoptic"

    def __init__(
        self,
        stage: Mask2FormerStage,
        weights_path: str,
        ontology: dict[int, str],
        isthing: dict[int, bool] | None = None,
    ):
        import torch

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            getattr(stage, "dtype", "float32")
        ]
        model, self.processor = load_mask2former(weights_path)
        self.model = model.to(self.device, self.dtype)
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.labels = label_table(
            id2label, ontology, dict(getattr(stage, "label_map", {}) or {}), getattr(stage, "unmapped", "drop")
        )
        self.isthing = isthing or {}
        self.batch_size = int(getattr(stage, "batch_size", 4))
        self.threshold = float(getattr(stage, "threshold", 0.5))
        self.mask_threshold = float(getattr(stage, "mask_threshold", 0.5))
        self.overlap_threshold = float(getattr(stage, "overlap_threshold", 0.8))
        self._lock = threading.Lock()

    def forward(self, images: Sequence[np.ndarray]) -> tuple[Any, Any, Any]:
        """One batch through the processor and the model.

        Returns: class logits ``B x Q x (L+1)``, mask logits ``B x Q x h x w``
        (``1/4`` of the padded input) and the pixel mask ``B x Hp x Wp`` (1 = image).
        """
        inputs = self.processor(images=[im if im.flags.writeable else im.copy() for im in images], return_tensors="pt")
        pv = inputs["pixel_values"].to(self.device, self.dtype)
        pm = inputs["pixel_mask"].to(self.device)
        out = self.model(pixel_values=pv, pixel_mask=pm)
        return out.class_queries_logits.float(), out.masks_queries_logits.float(), pm

    def segments(self, class_logits: Any, mask_logits: Any, pixel_mask: Any, size_hw: tuple[int, int]) -> Detections:
        """Panoptic inference for one image (steps 1-4 of the module docstring).

        Arguments:
          class_logits: Q x (L+1).
          mask_logits: Q x h x w, over the padded input.
          pixel_mask: Hp x Wp, 1 on the image's resized region.
          size_hw: (H, W) of the original image.
        """
        import torch
        import torch.nn.functional as F

        h, w = size_hw
        probs = class_logits.softmax(-1)[:, :-1]
        scores, labels = probs.max(-1)
        onto = torch.as_tensor(self.labels, device=labels.device)[labels]
        keep = (onto > 0) & (scores >= self.threshold)
        if not bool(keep.any()):
            return Detections.empty((h, w), with_masks=True).with_fields(isthing=np.zeros(0, bool))
        scores, onto = scores[keep], onto[keep]
        valid_h = int(pixel_mask.any(1).sum())
        valid_w = int(pixel_mask.any(0).sum())
        m = F.interpolate(mask_logits[keep][None], size=tuple(pixel_mask.shape), mode="bilinear", align_corners=False)
        m = m[..., :valid_h, :valid_w]
        # transposed (Q x W x H) so that the masks come out in the layout RLE encoding takes without a copy
        prob = F.interpolate(m.transpose(-1, -2), size=(w, h), mode="bilinear", align_corners=False)[0].sigmoid()
        owner = (scores[:, None, None] * prob).argmax(0)
        own = prob >= self.mask_threshold
        seg_masks, seg_cls, seg_scores = [], [], []
        stuff_of: dict[int, int] = {}
        for q in range(len(scores)):
            mine = (owner == q) & own[q]
            a, full = int(mine.sum()), int(own[q].sum())
            if a == 0 or full == 0 or a / full < self.overlap_threshold:
                continue
            c = int(onto[q])
            if not self.isthing.get(c, True) and c in stuff_of:  # fuse stuff of one class
                k = stuff_of[c]
                seg_masks[k] |= mine
                seg_scores[k] = max(seg_scores[k], float(scores[q]))
                continue
            if not self.isthing.get(c, True):
                stuff_of[c] = len(seg_masks)
            seg_masks.append(mine)
            seg_cls.append(c)
            seg_scores.append(float(scores[q]))
        if not seg_masks:
            return Detections.empty((h, w), with_masks=True).with_fields(isthing=np.zeros(0, bool))
        masks_nwh = torch.stack(seg_masks).cpu().numpy()
        counts = rle.encode_nwh(masks_nwh)
        xywh = rle.bbox_xywh(counts, h, w)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        isthing = np.array([self.isthing.get(c, True) for c in seg_cls], bool)
        return Detections(
            (h, w),
            boxes,
            np.array(seg_cls),
            np.array(seg_scores, np.float32),
            rle_counts=counts,
            fields={"isthing": isthing},
        )

    def panoptic(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Segments for each of ``images`` (H x W x 3 uint8 RGB), in batches of ``batch_size``."""
        import torch

        out: list[Detections] = []
        with self._lock, torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                batch = images[s : s + self.batch_size]
                cls, masks, pm = self.forward(batch)
                for j, im in enumerate(batch):
                    out.append(self.segments(cls[j], masks[j], pm[j], im.shape[:2]))
        return out
