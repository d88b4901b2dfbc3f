"""Instances labeler from text: SAM 3 (``Sam3Model`` + ``Sam3Processor`` in transformers) finds every instance of
each ontology class's text prompts in one model -- detector and segmenter at once.

Per worker, once: the ontology's prompts (names and synonyms, :func:`segflow.tasks.stages.owl.prompt_table`)
are tokenized and encoded (``get_text_features``) and kept. Per batch of images: the processor and
``get_vision_features`` once; per image the vision features are expanded to all N prompts and decoded in one
call (``model(vision_embeds=..., text_embeds=..., attention_mask=...)``: identical to N single-prompt
calls, tested). Post-processing is transformers' ``post_process_instance_segmentation``: score =
sigmoid(query logit) x sigmoid(presence logit), boxes XYXY in pixels, masks at the original size
(probability > ``mask_threshold``).

Then, per image:

1. per class threshold (``thresholds``, else ``conf``);
2. synonyms of one class that found the same object: box NMS within the class at ``nms_iou``;
3. instances of two classes on one object (a class conflict as the ``qc`` stage defines it: mask IoU >
   ``conflict_iou`` with a higher-scoring mask of another class): the lower-scoring one is dropped, so an
   object carries one label (``conflict_iou: null`` keeps both, for the ``qc`` stage to flag);
4. the best ``max_det``.

The result is the same :class:`~segflow.tasks.record.Detections` as every instance stage (masks as RLE,
field ``prompt``), so QC, the panoptic merge, calibration and every export work unchanged.

Weights: a ``save_pretrained`` directory (model + processor with its tokenizer) or ``hub:facebook/sam3``
from the local Hugging Face cache (gated: accept its licence on the Hub, then download once).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.owl import prompt_table

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.sam3 import Sam3Stage

__all__ = ["Sam3TextLabeler", "expand_vision", "resolve_overlaps"]


def expand_vision(vision: Any, j: int, n: int) -> Any:
    """Image ``j`` of batched ``get_vision_features`` output, repeated for ``n`` prompts (views, no copies)."""

    def one(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(one(e) for e in x)
        return x[j : j + 1].expand(n, *x.shape[1:])

    return type(vision)(**{k: one(v) for k, v in vision.items()})


def resolve_overlaps(
    boxes: np.ndarray,
    cls: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    nms_iou: float,
    conflict_iou: float | None,
    max_det: int,
) -> tuple[np.ndarray, list[str]]:
    """Steps 2-4 above: the indices to keep, best score first, and their masks as COCO RLE.

    Arguments:
      boxes: N x 4, XYXY, pixels. cls: N ontology ids. scores: N. masks: N x H x W bool.

    Only the masks that survive the box NMS are encoded (a model can return hundreds per image).
    """
    import torch
    from pycocotools import mask as mask_utils
    from torchvision.ops import batched_nms

    if not len(scores):
        return np.zeros(0, np.int64), []
    keep = batched_nms(
        torch.as_tensor(boxes, dtype=torch.float32),
        torch.as_tensor(scores, dtype=torch.float32),
        torch.as_tensor(cls),
        nms_iou,
    ).numpy()
    counts = rle.encode_nhw(masks[keep])
    if conflict_iou is not None and len(keep) > 1:
        h, w = masks.shape[1:]
        rles = [{"size": [h, w], "counts": c} for c in counts]
        ious = mask_utils.iou(rles, rles, [0] * len(rles))
        kept: list[int] = []
        for a in range(len(keep)):  # best first (NMS order): drop a mask another class already holds
            if not any(cls[keep[b]] != cls[keep[a]] and ious[a, b] > conflict_iou for b in kept):
                kept.append(a)
        keep, counts = keep[kept], [counts[a] for a in kept]
    return keep[:max_det], counts[:max_det]


class Sam3TextLabeler:
    """``sam3``: images + the ontology's text prompts -> boxes, class ids, scores and masks."""

    role = "instances"

    def __init__(
        self, stage: Sam3Stage, weights_path: str, ontology: dict[int, str], prompts: dict[int, list[str]] | None = None
    ):
        import torch
        from transformers import Sam3Model, Sam3Processor

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        try:
            self.model = Sam3Model.from_pretrained(weights_path, local_files_only=True).eval().to(self.device)
            self.processor = Sam3Processor.from_pretrained(weights_path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise WeightsError(
                f"{weights_path}: cannot load a SAM 3 model and processor: {str(e).splitlines()[0]}"
            ) from None
        self.texts, self.owners = prompt_table(prompts or {cid: [name] for cid, name in ontology.items()})
        by_name = {v: k for k, v in ontology.items()}
        self.thresholds = {by_name[n]: float(t) for n, t in stage.thresholds.items()}
        tokens = self.processor.tokenizer(self.texts, padding="max_length", max_length=32, return_tensors="pt")
        self.attention_mask = tokens["attention_mask"].to(self.device)
        with torch.inference_mode():  # the prompts' text features, once per worker
            self.text = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=self.attention_mask
            )
        self._lock = threading.Lock()

    def label(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Instances per image (H x W x 3 uint8 RGB): boxes N x 4 XYXY pixels, ontology ids, scores, masks (RLE)."""
        import torch

        out: list[Detections] = []
        n = len(self.texts)
        floor = min([self.stage.conf, *self.thresholds.values()])
        with self._lock, torch.inference_mode():
            for s in range(0, len(images), self.stage.batch_size):
                batch = list(images[s : s + self.stage.batch_size])
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                vision = self.model.get_vision_features(pixels)
                for j, im in enumerate(batch):
                    h, w = im.shape[:2]
                    res = self.model(
                        vision_embeds=expand_vision(vision, j, n),
                        text_embeds=self.text,
                        attention_mask=self.attention_mask,
                    )
                    found = self.processor.post_process_instance_segmentation(
                        res, threshold=floor, mask_threshold=self.stage.mask_threshold, target_sizes=[(h, w)] * n
                    )
                    out.append(self._select((h, w), found))
        return out

    def _select(self, size_hw: tuple[int, int], found: list[dict]) -> Detections:
        boxes, cls, scores, masks, prompt = [], [], [], [], []
        for i, r in enumerate(found):
            sc = r["scores"].float().cpu().numpy()
            ok = sc >= self.thresholds.get(int(self.owners[i]), self.stage.conf)
            if ok.any():
                boxes.append(r["boxes"].float().cpu().numpy()[ok])
                masks.append(r["masks"].bool().cpu().numpy()[ok])
                scores.append(sc[ok])
                cls.append(np.full(int(ok.sum()), self.owners[i], np.int64))
                prompt += [self.texts[i]] * int(ok.sum())
        if not scores:
            return Detections.empty(size_hw, with_masks=True).with_fields(prompt=np.empty(0, object))
        h, w = size_hw
        b, c, sc, m = np.concatenate(boxes), np.concatenate(cls), np.concatenate(scores), np.concatenate(masks)
        b[:, [0, 2]], b[:, [1, 3]] = b[:, [0, 2]].clip(0, w), b[:, [1, 3]].clip(0, h)
        nonempty = m.reshape(len(m), -1).any(1)
        b, c, sc, m = b[nonempty], c[nonempty], sc[nonempty], m[nonempty]
        prompt = [p for p, ne in zip(prompt, nonempty, strict=True) if ne]
        keep, counts = resolve_overlaps(b, c, sc, m, self.stage.nms_iou, self.stage.conflict_iou, self.stage.max_det)
        return Detections(
            size_hw,
            b[keep].astype(np.float32),
            c[keep],
            sc[keep].astype(np.float32),
            rle_counts=counts,
            fields={"prompt": np.array([prompt[i] for i in keep], object)},
        )
