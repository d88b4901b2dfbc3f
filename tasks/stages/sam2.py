"""Segmenter stage through ``transformers``: SAM 2.x, EdgeTAM, the SAM 3 tracker and SAM-HQ, prompted with boxes.

Families (``family`` of the stage; ``auto`` reads ``model_type`` from the
model's ``config.json``):

=============  ======================  =====================  ==========================================
family         model                   processor              image frame
=============  ======================  =====================  ==========================================
sam2           ``Sam2Model``           ``Sam2Processor``      resized to the square input (no padding)
edgetam        ``EdgeTamModel``        ``Sam2Processor``      as sam2
sam3_tracker   ``Sam3TrackerModel``    ``Sam3TrackerProcessor``  as sam2
sam_hq         ``SamHQModel``          ``SamHQProcessor``     SAM 1: longest side resized, padded
=============  ======================  =====================  ==========================================

Per batch of images: the processor once per image (its pixels and all of its
boxes, so every coordinate convention is the processor's own), one
``get_image_embeddings`` call for the batch, then per image its boxes in chunks
of ``boxes_per_call`` through ``model(image_embeddings=..., input_boxes=...)``
-- never one call per box, never a second image encoding. SAM-HQ's
``get_image_embeddings`` also returns the intermediate ViT embeddings; they are
passed back (without them the HQ fusion is skipped silently). Masks are
``post_process_masks`` at the original size, thresholded at ``mask_threshold``.

Per mask: ``predicted_iou`` (the model's IoU head) and ``stability_score``
(SA-1B's: IoU of the mask at ``threshold + 1`` and ``threshold - 1``).
``multimask_output``: three candidates per prompt, the one with the highest
predicted IoU kept (all three scores in ``multimask_ious``). ``prompt``:
``box``, ``point`` (the box centre as one foreground point) or ``box+point``.
``mask_margin`` (default 0.5): each mask is upsampled only inside its box grown
by this fraction of the box's longer side (:mod:`segflow.tasks.stages.upsample`);
inside, the logits are ``post_process_masks``' own to float rounding, outside the
mask is background. ``null``: whole-frame masks, exactly as ``post_process_masks``.
The candidate with the highest predicted IoU is chosen before any upsampling.

Weights: a ``save_pretrained`` directory (model + processor) or
``hub:<org>/<name>`` from the local Hugging Face cache; ``sha256`` of its
``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.sam import remove_small_islands
from segflow.tasks.stages.upsample import bilinear_matrix, grown_windows, window_logits

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.sam2 import Sam2Stage

#: Bytes of full-size float32 logits held at once per image (the prompts are decoded in parts that fit).
LOGITS_BYTES = 256 << 20

__all__ = ["FAMILIES", "TransformersBoxSegmenter", "family_of", "stability_scores"]

#: family -> (model class, processor class), names in ``transformers``
FAMILIES: dict[str, tuple[str, str]] = {
    "sam2": ("Sam2Model", "Sam2Processor"),
    "edgetam": ("EdgeTamModel", "Sam2Processor"),
    "sam3_tracker": ("Sam3TrackerModel", "Sam3TrackerProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
}
_MODEL_TYPES = {"sam2": "sam2", "edgetam": "edgetam", "sam3_tracker": "sam3_tracker", "sam_hq": "sam_hq"}


def family_of(
    model_dir: str, setting: str = "auto", model_types: dict[str, str] | None = None, what: str = "box-promptable"
) -> str:
    """The family of a ``save_pretrained`` directory: ``setting`` unless ``auto``, else its ``model_type`` looked up
    in ``model_types`` (config ``model_type`` -> family; default: the box-promptable families)."""
    if setting != "auto":
        return setting
    types = _MODEL_TYPES if model_types is None else model_types
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            model_type = json.load(f).get("model_type", "")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{model_dir}: no readable config.json ({type(e).__name__})") from None
    if model_type not in types:
        raise WeightsError(
            f"{model_dir}: model_type {model_type!r} is not a {what} family "
            f"(expected one of {', '.join(types)}); set the stage's family"
        )
    return types[model_type]


def stability_scores(logits: np.ndarray, threshold: float, offset: float = 1.0) -> np.ndarray:
    """SA-1B stability of ``N x H x W`` logits: |logits > t + offset| / |logits > t - offset| (N; NaN when empty).

    Counted in numpy: its boolean counts are an order of magnitude faster than torch's on a CPU.
    """
    flat = np.asarray(logits).reshape(len(logits), -1)
    inter = np.count_nonzero(flat > threshold + offset, axis=1)
    union = np.count_nonzero(flat > threshold - offset, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def _rows(emb: Any, j: int) -> Any:
    """Image ``j`` of batched image embeddings (a tensor, or lists/tuples of them as the families return)."""
    if isinstance(emb, (list, tuple)):
        return type(emb)(_rows(e, j) for e in emb)
    return emb[j : j + 1]


def load_pretrained(
    weights_path: str, family: str, names: tuple[str, str], device_setting: str
) -> tuple[Any, Any, Any]:
    """``(model, processor, device)`` of a ``save_pretrained`` directory: transformers' classes ``names`` (model,
    processor), the model in eval mode on the resolved device. A directory that does not load is a WeightsError."""
    import torch
    import transformers

    model_cls, proc_cls = (getattr(transformers, n) for n in names)
    device = torch.device(resolve_device(device_setting))
    try:
        model = model_cls.from_pretrained(weights_path, local_files_only=True).eval().to(device)
        processor = proc_cls.from_pretrained(weights_path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"{weights_path}: cannot load a {family} model and processor: {str(e).splitlines()[0]}"
        ) from None
    return model, processor, device


class TransformersBoxSegmenter:
    """Images + box prompts -> the same rows with masks (RLE), ``predicted_iou`` and ``stability_score``."""

    role = "segmenter"

    def __init__(self, stage: Sam2Stage, weights_path: str, ontology: dict[int, str] | None = None):
        self.stage = stage
        self.family = family_of(weights_path, stage.family)
        self.model, self.processor, self.device = load_pretrained(
            weights_path, self.family, FAMILIES[self.family], stage.device
        )
        bs = stage.batch_size
        self.batch_size = int(bs) if bs != "auto" else (1 if self.device.type == "cpu" else 8)
        self.threshold = float(stage.mask_threshold)
        self._lock = threading.Lock()
        self._resize_cache: dict[tuple, tuple] = {}

    # -- steps -----------------------------------------------------------------------
    def _inputs(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> dict[str, Any]:
        """The processor's output for one image and all of its boxes (N x 4, XYXY, pixels of the image)."""
        kwargs: dict[str, Any] = {}
        if self.stage.prompt != "point":
            kwargs["input_boxes"] = [boxes_xyxy.astype(np.float64).tolist()]
        if self.stage.prompt != "box":
            centres = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]).astype(np.float64) / 2
            kwargs["input_points"] = [[[c] for c in centres.tolist()]]  # image, box, point, xy
            kwargs["input_labels"] = [[[1] for _ in range(len(centres))]]
        return dict(self.processor(images=image, return_tensors="pt", **kwargs))

    def _embed(self, pixel_values: list[Any]) -> Any:
        import torch

        return self.model.get_image_embeddings(torch.cat(pixel_values).to(self.device))

    def _decode(self, emb: Any, inputs: dict[str, Any], s: int, e: int) -> tuple[Any, Any]:
        """Low-res logits ``n x l x l`` of the chosen candidate and predicted IoU ``n x K`` for prompts ``s:e``."""
        import torch

        prompts = {
            k: inputs[k][:, s:e].to(self.device) for k in ("input_boxes", "input_points", "input_labels") if k in inputs
        }
        extra: dict[str, Any] = {}
        if self.family == "sam_hq":
            emb, extra["intermediate_embeddings"] = emb
        out = self.model(image_embeddings=emb, multimask_output=bool(self.stage.multimask_output), **prompts, **extra)
        scores = out.iou_scores[0].float().cpu()
        best = scores.argmax(1)
        return out.pred_masks[0, torch.arange(len(best)), best].float().cpu(), scores

    def _whole_frame(self, low: Any, inputs: dict[str, Any]) -> Any:
        """``post_process_masks`` of ``n x l x l`` low-res logits: ``n x H x W`` logits at the original size."""
        post = {"reshaped_input_sizes": inputs["reshaped_input_sizes"]} if "reshaped_input_sizes" in inputs else {}
        return self.processor.post_process_masks(low[None, :, None], inputs["original_sizes"], binarize=False, **post)[
            0
        ][:, 0]

    def _matrices(self, inputs: dict[str, Any], low: int) -> tuple[tuple, tuple]:
        """The :func:`bilinear_matrix` pair (rows, columns) of this image's size, cached per size."""
        h, w = (int(v) for v in inputs["original_sizes"][0])
        if self.family == "sam_hq":  # SAM 1 frame: resized into a padded square
            rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
            pad = self.processor.image_processor.pad_size
            key = (h, w, rh, rw)
            args = ((low, h, pad["height"], rh), (low, w, pad["width"], rw))
        else:
            key, args = (h, w), ((low, h), (low, w))
        if key not in self._resize_cache:
            if len(self._resize_cache) >= 64:  # many image sizes: keep the last 64
                self._resize_cache.pop(next(iter(self._resize_cache)))
            self._resize_cache[key] = tuple(bilinear_matrix(*a) for a in args)
        return self._resize_cache[key]

    def _windowed(self, low: Any, inputs: dict[str, Any], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``n x W x H`` (bool, transposed: the RLE encoder's layout) and stability ``n``, each mask upsampled
        only inside its grown box."""
        h, w = (int(v) for v in inputs["original_sizes"][0])
        rows, cols = self._matrices(inputs, low.shape[-1])
        windows = grown_windows(boxes, (h, w), float(self.stage.mask_margin))
        masks, stability = np.zeros((len(low), w, h), bool), np.full(len(low), np.nan, np.float32)
        for k, win in enumerate(windows):
            x0, y0, x1, y1 = (int(v) for v in win)
            part = window_logits(low[k], rows, cols, win).numpy()
            stability[k] = stability_scores(part[None], self.threshold)[0]
            masks[k, x0:x1, y0:y1] = (part > self.threshold).T
        return masks, stability

    # -- the stage -----------------------------------------------------------------------
    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Detections]) -> list[Detections]:
        """Masks for every prompt box.

        Arguments:
          images: list of H x W x 3 uint8 RGB arrays.
          prompts: one Detections per image (boxes N x 4, XYXY, pixels).

        Returns:
          One Detections per image: the prompt rows whose mask has at least ``min_mask_area`` pixels, with
          ``rle_counts`` and the fields ``predicted_iou`` and ``stability_score`` (and ``multimask_ious``).

        With ``zoom_context``, a small box of a large image is segmented in a crop around it
        (:func:`segflow.tasks.stages.tiling.segment_in_crops`), the others in the whole image.
        """
        if self.stage.zoom_context is not None:
            from segflow.tasks.stages.tiling import segment_in_crops

            return segment_in_crops(self._segment_frames, images, prompts, float(self.stage.zoom_context))
        return self._segment_frames(images, prompts)

    def _segment_frames(self, images: Sequence[np.ndarray], prompts: Sequence[Detections]) -> list[Detections]:
        """:meth:`segment` of each image as it is given (a whole image or a crop)."""
        import torch

        if len(images) != len(prompts):
            raise ValueError(
                f"segment: expected one prompt record per image, got {len(prompts)} for {len(images)} images"
            )
        out = [Detections.empty(p.image_size, with_masks=True) for p in prompts]
        todo = [i for i, p in enumerate(prompts) if len(p)]
        with self._lock, torch.inference_mode():
            for b in range(0, len(todo), self.batch_size):
                idx = todo[b : b + self.batch_size]
                inputs = [self._inputs(images[i], prompts[i].boxes) for i in idx]
                embs = self._embed([x["pixel_values"] for x in inputs])
                for j, i in enumerate(idx):
                    out[i] = self._one_image(prompts[i], _rows(embs, j), inputs[j])
        return out

    def _one_image(self, dets: Detections, emb: Any, inputs: dict[str, Any]) -> Detections:
        counts, iou, stability, candidates, area = [], [], [], [], []
        h, w = dets.image_size
        step = max(1, min(int(self.stage.boxes_per_call), LOGITS_BYTES // (4 * h * w)))  # n x H x W float32
        for s in range(0, len(dets), step):
            low, scores = self._decode(emb, inputs, s, s + step)  # n x l x l (the chosen candidate), n x K
            iou.append(scores.max(1).values.numpy())
            if self.stage.multimask_output:
                candidates.append(scores.numpy())
            if self.stage.mask_margin is None:
                logits = self._whole_frame(low, inputs).numpy()  # n x H x W
                stability.append(stability_scores(logits, self.threshold).astype(np.float32))
                masks_nwh = (logits > self.threshold).transpose(0, 2, 1)
            else:
                masks_nwh, stab = self._windowed(low, inputs, dets.boxes[s : s + step])
                stability.append(stab)
            if self.stage.min_island_frac > 0:
                masks_nwh = remove_small_islands(masks_nwh.transpose(0, 2, 1), self.stage.min_island_frac)
                masks_nwh = masks_nwh.transpose(0, 2, 1)
            counts += rle.encode_nwh(np.ascontiguousarray(masks_nwh))  # no copy when already N x W x H
            area.append(np.count_nonzero(masks_nwh.reshape(len(masks_nwh), -1), axis=1))
        extra = {"multimask_ious": np.concatenate(candidates)} if candidates else {}
        with_masks = dets.with_masks(
            counts, predicted_iou=np.concatenate(iou), stability_score=np.concatenate(stability), **extra
        )
        return with_masks[np.concatenate(area) >= max(self.stage.min_mask_area, 1)]
