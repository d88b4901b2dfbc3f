"""Open-vocabulary detector stage: OWLv2 / OWL-ViT through ``transformers``, prompted by the ontology's text.

Every ontology class has one or more text prompts (``prompts`` in the job's
ontology; default: its name). All prompts of the job go to the model as
queries; a detection takes the query (prompt) with the highest score, and the
prompt's class is its class -- so synonyms map to one stable class id and no
class outside the ontology can appear.

Per batch of images: the model's processor, one forward pass, then here:

1. per predicted box: best prompt and its sigmoid score; keep when the score
   is at least the class's threshold (``thresholds``, else ``conf``);
2. boxes from normalised ``cx, cy, w, h`` to pixels of the original image.
   **OWLv2 pads every image to a square** (bottom/right) before resizing, so
   its boxes are relative to the padded square of side ``max(H, W)``;
   OWL-ViT resizes without padding, so its boxes are relative to ``W`` and
   ``H``. (``post_process_object_detection`` with ``target_sizes=(H, W)``
   gets OWLv2 boxes wrong on non-square images.)
3. NMS: class-agnostic (``agnostic_nms``, default) or per class, at ``nms_iou``;
   the best ``max_det`` are kept.

Weights: a ``save_pretrained`` directory (model + processor with its
tokenizer) or ``hub:<org>/<name>`` from the local Hugging Face cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from segflow.tasks.io.weights import WeightsError
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.owl import OwlStage


__all__ = ["OwlDetector", "prompt_table", "boxes_to_pixels", "select_detections"]


def prompt_table(prompts: dict[int, list[str]]) -> tuple[list[str], np.ndarray]:
    """All text queries (each once) and the ontology id of each; a prompt listed under two classes is an error."""
    texts: list[str] = []
    owners: list[int] = []
    seen: dict[str, int] = {}
    for cid, ps in sorted(prompts.items()):
        for p in ps:
            key = p.strip().lower()
            if key in seen and seen[key] != cid:
                raise ValueError(f"prompt {p!r} belongs to two ontology classes ({seen[key]} and {cid})")
            if key in seen:
                continue
            seen[key] = cid
            texts.append(p.strip())
            owners.append(cid)
    return texts, np.asarray(owners, np.int64)


def boxes_to_pixels(cxcywh: np.ndarray, size_hw: tuple[int, int], padded_square: bool) -> np.ndarray:
    """Normalised ``N x 4`` ``cx, cy, w, h`` -> ``N x 4`` XYXY pixels of an ``H x W`` image, clipped to it.

    ``padded_square``: the model saw the image padded (bottom/right) to a
    square of side ``max(H, W)`` (OWLv2); else resized to its input as is (OWL-ViT).
    """
    h, w = size_hw
    sx, sy = (max(h, w), max(h, w)) if padded_square else (w, h)
    cx, cy, bw, bh = (cxcywh[:, i] for i in range(4))
    out = np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out.astype(np.float32)


def select_detections(
    size_hw: tuple[int, int],
    cxcywh: np.ndarray,
    cls: np.ndarray,
    score: np.ndarray,
    stage: OwlStage,
    thresholds: dict[int, float],
    padded_square: bool,
) -> Detections:
    """Steps 2-3 for one image: per-class thresholds (``cls`` -1 = rejected), pixel boxes, NMS, ``max_det``."""
    import torch
    from torchvision.ops import batched_nms, nms

    thr = np.array([thresholds.get(int(c), stage.conf) for c in cls], np.float32)
    keep = (cls >= 0) & (score >= thr)
    xyxy = boxes_to_pixels(cxcywh[keep], size_hw, padded_square)
    score, cls = score[keep].astype(np.float32), cls[keep]
    if len(score):
        tb, ts = torch.as_tensor(xyxy), torch.as_tensor(score)
        idx = (
            nms(tb, ts, stage.nms_iou)
            if stage.agnostic_nms
            else batched_nms(tb, ts, torch.as_tensor(cls), stage.nms_iou)
        )
        idx = idx[: stage.max_det].numpy()
        xyxy, score, cls = xyxy[idx], score[idx], cls[idx]
    return Detections(size_hw, xyxy, cls, score)


class OwlDetector:
    """``owlv2`` / ``owlvit``: images + the ontology's text prompts -> boxes, class ids, scores."""

    role = "detector"

    def __init__(
        self, stage: OwlStage, weights_path: str, ontology: dict[int, str], prompts: dict[int, list[str]] | None = None
    ):
        import torch
        from transformers import AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        cls = Owlv2ForObjectDetection if stage.kind == "owlv2" else OwlViTForObjectDetection
        try:
            self.model = cls.from_pretrained(weights_path, local_files_only=True).eval().to(self.device)
            self.processor = AutoProcessor.from_pretrained(weights_path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise WeightsError(
                f"{weights_path}: cannot load an {stage.kind} model and processor: {str(e).splitlines()[0]}"
            ) from None
        self.padded_square = stage.kind == "owlv2"
        self.texts, self.owners = prompt_table(prompts or {cid: [name] for cid, name in ontology.items()})
        by_name = {v: k for k, v in ontology.items()}
        self.thresholds = {by_name[n]: float(t) for n, t in dict(getattr(stage, "thresholds", {}) or {}).items()}
        self._lock = threading.Lock()

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections per image (H x W x 3 uint8 RGB): boxes N x 4 XYXY pixels, ontology ids, scores."""
        import torch

        out: list[Detections] = []
        bs = self.stage.batch_size
        with self._lock, torch.inference_mode():
            for start in range(0, len(images), bs):
                batch = [im if im.flags.writeable else im.copy() for im in images[start : start + bs]]
                inputs = self.processor(
                    text=[self.texts] * len(batch), images=batch, return_tensors="pt", padding=True, truncation=True
                )
                res = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
                probs = res.logits.float().sigmoid().cpu().numpy()  # B x Q x P
                boxes = res.pred_boxes.float().cpu().numpy()  # B x Q x 4, cx cy w h, normalised
                for j, im in enumerate(batch):
                    best = probs[j].argmax(1)
                    score = probs[j][np.arange(len(best)), best]
                    out.append(
                        select_detections(
                            im.shape[:2],
                            boxes[j],
                            self.owners[best],
                            score,
                            self.stage,
                            self.thresholds,
                            self.padded_square,
                        )
                    )
        return out
