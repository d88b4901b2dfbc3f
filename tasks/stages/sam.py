"""Segmenter stage: Segment Anything prompted with detector boxes.

For each image: one image embedding, then **all** of its boxes in batched
mask-decoder calls (chunks of ``boxes_per_call`` to bound memory) -- never a
loop over boxes. The decoder is :mod:`segflow.tasks.stages.sam_decoder`: the library's
``MaskDecoder`` function, with the image side computed once per image instead
of once per box (about half the decoder's work per box). Images are encoded in
batches of ``batch_size``; with ``zoom_context``, so are the boxes' crops, across
the images of a batch, and an image whose boxes are all zoomed is not encoded whole.

Numerics follow ``SamPredictor`` exactly: the image is resized with
``ResizeLongestSide.apply_image`` (the numpy/PIL path -- PyPI 1.0's
``apply_image_torch`` swaps height and width), boxes with ``apply_boxes``,
and low-resolution logits are upsampled as in ``Sam.postprocess_masks``.
The upsampling runs on the transposed logits so that thresholded masks come
out as ``N x W x H``, the layout RLE encoding takes without a copy.

``mask_margin`` (default 0.5): each mask is computed only inside its box grown
by that fraction of the box's longer side (plus one embedding token). There the
logits are the library's to float rounding; outside they are -20
(background). The decoder's upscaling then runs on the window's tokens only,
and the upsampling to the original frame is two small matrix products per box
(``Sam.postprocess_masks``' two bilinear resizes composed, restricted to the
window). ``mask_margin: null`` gives whole-frame masks, as ``SamPredictor``.

Weights:

* a plain SAM state dict (the official ``sam_vit_*.pth`` files); the
  architecture comes from ``model_type`` or is inferred from tensor shapes;
* a segflow SAM checkpoint ``{"format": "segflow.sam/1", "arch": {...},
  "state_dict": ...}`` for custom (small) architectures, see :func:`build_sam`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.allocator import is_applied as allocator_tuned
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.sam_attention import use_fast_attention
from segflow.tasks.stages.sam_checkpoint import load_sam
from segflow.tasks.stages.sam_decoder import SharedImage, decode_tokens, upscale_grid, upscale_windows
from segflow.tasks.stages.upsample import bilinear_matrix

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.sam import SamStage


__all__ = ["SamBoxSegmenter", "remove_small_islands", "zoom_windows_xyxy"]

#: Bytes of full-frame float32 logits the stage holds at once per image: 1,000 boxes on a 1080p image
#: would be 8 GB in one piece; the boxes are decoded in parts that fit, and only RLE strings are kept.
LOGITS_BYTES = 256 << 20


def zoom_windows_xyxy(
    boxes_xyxy: np.ndarray, image_hw: tuple[int, int], context: float, snap: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop windows around boxes, for segmenting small objects at a higher zoom.

    Arguments:
      boxes_xyxy: N x 4, XYXY, pixels.
      image_hw: (H, W) of the image.
      context: margin on each side, as a fraction of the box's longer side: the
        window side is at least ``longer side x (1 + 2 x context)``.
      snap: window edges snap outwards to multiples of this many pixels, so a box
        that moves by a pixel (a re-encoded copy of the image) keeps its window
        and so gets the same crop, pixel for pixel.

    Returns:
      windows N x 4 int XYXY (exclusive ends), centred on the boxes, moved (not
      clipped) to lie inside the image, each side at most the image's; and
      ``zoom`` N bool: the window is smaller than the image's longer side, so a
      crop gives the model more pixels per object than the whole image does.
    """
    h, w = image_hw
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    side = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * (1 + 2 * context), 1.0)
    centre = (b[:, :2] + b[:, 2:]) / 2  # x, y
    lo = np.floor((centre - side[:, None] / 2) / snap) * snap
    hi = np.ceil((centre + side[:, None] / 2) / snap) * snap
    size = np.minimum(np.max(hi - lo, axis=1, keepdims=True), np.array([[w, h]]))  # square, at most the image
    lo = np.clip(lo, 0, np.array([[w, h]]) - size)
    windows = np.concatenate([lo, lo + size], 1).astype(np.int64)
    return windows, side < max(h, w)


def remove_small_islands(masks: np.ndarray, min_frac: float) -> np.ndarray:
    """Drop connected pieces smaller than ``min_frac`` of each mask's largest piece.

    Arguments:
      masks: N x A x B bool (any 2-D layout; 8-connectivity is layout-independent).
    Returns:
      The same shape and layout, C-contiguous.

    Each mask is labelled inside the bounding box of its pixels only (the same
    pieces: nothing outside it is set); a mask is usually a small part of the frame.
    """
    from scipy import ndimage

    out = np.ascontiguousarray(masks, dtype=bool).copy()
    eight = np.ones((3, 3), bool)
    for m in out:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if not len(rows):
            continue
        crop = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # a view: written back in place
        lab, n = ndimage.label(crop, structure=eight)
        if n > 1:
            areas = ndimage.sum_labels(crop, lab, range(1, n + 1))
            crop[...] = np.isin(lab, 1 + np.flatnonzero(areas >= min_frac * areas.max()))
    return out


class SamBoxSegmenter:
    """Images + box prompts -> the same rows with masks (RLE), ``predicted_iou`` and ``stability_score``."""

    role = "segmenter"

    def __init__(self, stage: SamStage, weights_path: str, ontology: dict[int, str] | None = None):
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        self.model = load_sam(weights_path, getattr(stage, "model_type", "auto")).to(self.device)
        cuda = self.device.type == "cuda"
        attention = getattr(stage, "attention", "auto")
        if (
            attention != "eager"
            # blocked attention (SDPA on GPUs and in bf16, the in-place blocked kernel in CPU float32)
        ):
            use_fast_attention(self.model, attention)
        if getattr(
            stage, "compile", False
        ):  # the encoder's input is always img_size x img_size: one graph per batch size
            self.model.image_encoder = torch.compile(self.model.image_encoder, dynamic=False)
        dtype = getattr(stage, "dtype", "auto")
        if dtype == "auto":  # bf16 where GPUs have it (fp16 breaks the large SAMs); float32 on CPU
            dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
        self.autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        self.img_size = int(self.model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        bs = getattr(stage, "batch_size", "auto")
        self.batch_size = int(bs) if bs != "auto" else (1 if self.device.type == "cpu" else 8)
        self.boxes_per_call = self._boxes_per_call(getattr(stage, "boxes_per_call", "auto"))
        self.min_mask_area = int(getattr(stage, "min_mask_area", 1))
        self.min_island_frac = float(getattr(stage, "min_island_frac", 0.0))
        self.prompt = getattr(stage, "prompt", "box")
        self.multimask = bool(getattr(stage, "multimask_output", False))
        zoom = getattr(stage, "zoom_context", None)
        self.zoom_context = None if zoom is None else float(zoom)
        margin = getattr(stage, "mask_margin", None)
        self.mask_margin = None if margin is None else float(margin)
        self._resize_cache: OrderedDict[tuple[int, int], tuple[Any, np.ndarray, np.ndarray]] = OrderedDict()
        self.logits_bytes = (
            LOGITS_BYTES  # an image with many boxes is decoded in parts whose full-frame logits fit this
        )
        self._lock = threading.Lock()

    def _boxes_per_call(self, setting: int | str) -> int:
        """``auto``: 64 on GPU; on CPU keep the decoder's per-box image tokens within ~16 MB
        (~8 MB where glibc hands out fresh pages, see :mod:`segflow.tasks.stages.allocator`).

        The decoder's work is per box, and large chunks only add memory traffic on a CPU; the
        budgets are the fastest measured (bench/README.md, "Design measurements").
        """
        if setting != "auto":
            return int(setting)
        if self.device.type != "cpu":
            return 64
        c = int(self.model.prompt_encoder.embed_dim)
        h, w = self.model.prompt_encoder.image_embedding_size
        budget = (16 << 20) if allocator_tuned() else (8 << 20)
        return max(1, min(64, budget // (4 * c * h * w)))

    # -- steps -----------------------------------------------------------------------
    def _resize(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``ResizeLongestSide.apply_image`` (the numpy/PIL path, same as ``SamPredictor.set_image``) of each image."""
        return [self.transform.apply_image(im) for im in images]

    def _encoder_input(self, resized: np.ndarray) -> Any:
        """A resized h x w x 3 uint8 RGB image -> ``Sam.preprocess`` of it: normalised, zero-padded to 3 x S x S.

        Written into one zeroed tensor (no float copy of the image, no padded copy): the same values.
        """
        import torch

        h, w = resized.shape[:2]
        x = torch.zeros((3, self.img_size, self.img_size), device=self.device)
        view = x[:, :h, :w]
        view.copy_(torch.as_tensor(resized, device=self.device).permute(2, 0, 1))
        view.sub_(self.model.pixel_mean.view(3, 1, 1)).div_(self.model.pixel_std.view(3, 1, 1))
        return x

    def embed(
        self, images: Sequence[np.ndarray], resized: Sequence[np.ndarray] | None = None
    ) -> tuple[Any, list[tuple[int, int]]]:
        """Image embeddings ``B x C x h x w`` (encoded in batches of ``batch_size``) and each resized (h, w);
        (None, []) for no images.

        ``resized``: the images already through :meth:`_resize` (the stage resizes the next batch ahead).
        """
        import torch

        resized = self._resize(images) if resized is None else resized
        if not len(resized):
            return None, []
        embs = []
        for s in range(0, len(resized), self.batch_size):
            embs.append(
                self.model.image_encoder(
                    torch.stack([self._encoder_input(r) for r in resized[s : s + self.batch_size]])
                )
            )
        return torch.cat(embs), [(int(r.shape[0]), int(r.shape[1])) for r in resized]

    def _upsample_nwh(self, low_res: Any, input_size: tuple[int, int], original_size: tuple[int, int]) -> Any:
        """``Sam.postprocess_masks`` on transposed logits: B x 1 x h x w -> B x W x H."""
        import torch.nn.functional as F

        t = low_res.transpose(-1, -2)
        t = F.interpolate(t, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        t = t[..., : input_size[1], : input_size[0]]
        t = F.interpolate(t, (original_size[1], original_size[0]), mode="bilinear", align_corners=False)
        return t[:, 0]

    def decode_boxes(
        self, embedding: Any, boxes_xyxy: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> tuple[Any, Any, Any, np.ndarray]:
        """Mask logits for all boxes of one image.

        Arguments:
          embedding: 1 x C x h x w image embedding.
          boxes_xyxy: N x 4, XYXY, pixels of the original image.
          input_size: (h, w) of the resized image fed to the encoder.
          original_size: (H, W) of the original image.

        Returns:
          logits N x W x H (transposed, float32) and predicted IoU N -- of the
          chosen mask: with ``multimask_output`` the one of the 3 candidates with
          the highest predicted IoU -- and, with ``multimask_output``, all
          candidates' predicted IoUs N x 3 (else None); and each mask's bounds
          N x 4 int (x0, x1, y0, y1): outside ``logits[i, x0:x1, y0:y1]`` the
          logits are -20 (with ``mask_margin``; else the whole frame).

        Prompts (``prompt`` of the stage): ``box`` (the box), ``point`` (the
        box centre as one foreground point) or ``box+point`` (both).

        With ``mask_margin`` each mask is computed only inside its box's
        window (:meth:`_token_windows`): the decoder's upscaling runs on the
        window's tokens only (:func:`segflow.tasks.stages.sam_decoder.upscale_windows`),
        and the upsampling to the original frame on the pixels those tokens
        determine (:meth:`_resize_matrix`). Inside, the logits are the
        library's to float rounding; outside they are -20.
        """
        import torch

        boxes, sparse, dense = self._prompts(boxes_xyxy, original_size)
        # without mask prompts the dense embedding is the same for every box: the image side is shared
        # (tasks.stages.sam_decoder)
        shared = SharedImage(self.model.mask_decoder, embedding, self.model.prompt_encoder.get_dense_pe(), dense[:1])
        n, windows = len(boxes), (self._token_windows(boxes) if self.mask_margin is not None else None)
        if windows is not None:
            resize = (
                *self._resize_matrix(input_size[1], original_size[1]),
                *self._resize_matrix(input_size[0], original_size[0]),
            )
            logits = torch.full((n, original_size[1], original_size[0]), -20.0, device=self.device)
        else:
            parts = []
        ious, all_ious = [], []
        bounds = np.tile(
            np.array([0, original_size[1], 0, original_size[0]], np.int64), (n, 1)
        )  # whole frame unless windowed
        for s in range(0, n, self.boxes_per_call):
            keys, hyper, iou = decode_tokens(
                self.model.mask_decoder, shared, sparse[s : s + self.boxes_per_call], self.multimask
            )
            # the mask SAM itself rates best (with multimask, of its 3 candidates), chosen before any upscaling
            best = iou.argmax(1)
            rows = torch.arange(len(best), device=best.device)
            if self.multimask:
                all_ious.append(iou)
            ious.append(iou[rows, best].float())
            hyper = hyper[rows, best]
            if windows is None:  # the whole frame, as Sam.postprocess_masks
                low_res = upscale_grid(self.model.mask_decoder, keys, *shared.hw, hyper[:, None])
                parts.append(self._upsample_nwh(low_res.float(), input_size, original_size))  # float32 from here on
                continue
            crops = upscale_windows(self.model.mask_decoder, keys, shared.hw, hyper, windows[s : s + len(best)])
            _paste_crops(logits, bounds, s, crops, windows[s : s + len(best)], resize)
        if windows is None:
            logits = torch.cat(parts)
        return logits, torch.cat(ious), (torch.cat(all_ious).float() if all_ious else None), bounds

    def _prompts(self, boxes_xyxy: np.ndarray, original_size: tuple[int, int]) -> tuple[Any, Any, Any]:
        """The boxes in the encoder's frame (N x 4 XYXY tensor) and the prompt encoder's sparse and dense
        embeddings of the stage's ``prompt`` (box, box centre as a foreground point, or both)."""
        import torch

        boxes = torch.as_tensor(
            self.transform.apply_boxes(boxes_xyxy.astype(np.float64), original_size),
            dtype=torch.float32,
            device=self.device,
        )
        centres = torch.as_tensor(
            self.transform.apply_coords((boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]).astype(np.float64) / 2, original_size),
            dtype=torch.float32,
            device=self.device,
        )[:, None, :]  # N x 1 x 2, resized frame
        points = (
            (centres, torch.ones(centres.shape[:2], device=self.device))
            if self.prompt in ("point", "box+point")
            else None
        )
        sparse, dense = self.model.prompt_encoder(
            points=points, boxes=boxes if self.prompt != "point" else None, masks=None
        )
        return boxes, sparse, dense

    def _token_windows(self, boxes_in: Any) -> np.ndarray:
        """Windows of the embedding's token grid around boxes: N x 4 int XYXY (exclusive ends).

        boxes_in: N x 4, XYXY, pixels of the resized (encoder input) frame. Each
        window is the box grown by ``mask_margin`` x its longer side on every
        side, plus one token for the bilinear upsampling's reach.
        """
        b = boxes_in.detach().float().cpu().numpy().reshape(-1, 4).astype(np.float64)
        h, w = self.model.prompt_encoder.image_embedding_size
        token = self.img_size / w
        grow = self.mask_margin * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])[:, None]
        lo = np.floor((b[:, :2] - grow) / token) - 1
        hi = np.ceil((b[:, 2:] + grow) / token) + 1
        lo = np.clip(lo, 0, [[w - 1, h - 1]])
        hi = np.clip(np.maximum(hi, lo + 1), 0, [[w, h]])
        return np.concatenate([lo, hi], 1).astype(np.int64)

    def _resize_matrix(self, input_len: int, out_len: int) -> tuple[Any, np.ndarray, np.ndarray]:
        """``Sam.postprocess_masks`` along one axis as a matrix: out_len x L (L = low-res side).

        Low-res logits -> img_size (bilinear) -> first ``input_len`` -> out_len
        (bilinear), composed. Also each output pixel's first and last low-res
        pixel of non-zero weight (both non-decreasing), to find the pixels a
        window of low-res logits determines completely.
        """
        key = (input_len, out_len)
        if key in self._resize_cache:
            self._resize_cache.move_to_end(key)
        else:
            if (
                len(self._resize_cache) >= 64
            ):  # a dataset of many image sizes: keep the 64 last used (~1 MB each at 1080p)
                self._resize_cache.popitem(last=False)
            low = 4 * self.model.prompt_encoder.image_embedding_size[0]
            r, first, last = bilinear_matrix(low, out_len, pad=self.img_size, valid=input_len)
            self._resize_cache[key] = (r.to(self.device), first, last)
        return self._resize_cache[key]

    # -- the stage -----------------------------------------------------------------------
    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Detections]) -> list[Detections]:
        """Masks for every prompt box.

        Arguments:
          images: list of H x W x 3 uint8 RGB arrays.
          prompts: one Detections per image (boxes XYXY in pixels).

        Returns:
          One Detections per image: the prompt rows that got a mask of at least
          ``min_mask_area`` pixels, with ``rle_counts`` and the fields
          ``predicted_iou`` and ``stability_score``.
        """
        import torch

        if len(images) != len(prompts):
            raise ValueError(
                f"segment: expected one prompt record per image, got {len(prompts)} for {len(images)} images"
            )
        out: list[Detections] = [Detections.empty(p.image_size, with_masks=True) for p in prompts]
        todo = [i for i, p in enumerate(prompts) if len(p)]
        if not todo:
            return out
        threshold = float(self.model.mask_threshold)
        batches = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        with (
            self._lock,
            torch.inference_mode(),
            self._autocast(),
            ThreadPoolExecutor(1, thread_name_prefix="sam-resize") as ahead,
        ):
            # the next batch's resize (PIL, single-threaded, GIL released) runs while this batch's models do
            resized = ahead.submit(self._resize, [images[i] for i in batches[0]])
            for b_idx, idx in enumerate(batches):
                current = resized.result()
                if b_idx + 1 < len(batches):
                    resized = ahead.submit(self._resize, [images[i] for i in batches[b_idx + 1]])
                plans = [self._zoom_plan(prompts[i].boxes, prompts[i].image_size) for i in idx]
                # the whole image is encoded only where a box is not segmented in its own crop
                whole = [j for j, (_, zoom) in enumerate(plans) if not zoom.all()]
                embs, sizes = self.embed([images[idx[j]] for j in whole], [current[j] for j in whole])
                where = {j: k for k, j in enumerate(whole)}
                # every crop of the batch, in the order they are decoded: encoded batch_size at a time across images
                crops = _CropEncoder(
                    self,
                    [(images[i], window) for i, (windows, zoom) in zip(idx, plans) for window in windows[zoom]],
                )
                for j, i in enumerate(idx):
                    dets = prompts[i]
                    h, w = dets.image_size
                    per_part = max(1, self.logits_bytes // (4 * h * w))  # boxes whose full-frame logits fit the budget
                    counts, iou, stability, candidates, area = [], [], [], [], []
                    k = where.get(j)
                    emb, size = (None, None) if k is None else (embs[k : k + 1], sizes[k])
                    windows, zoom = plans[j]
                    for b in range(0, len(dets), per_part):
                        part = slice(b, b + per_part)
                        lg, io, cand, bounds = self._image_logits(
                            images[i], emb, dets.boxes[part], size, dets.image_size, crops, (windows[part], zoom[part])
                        )
                        st, masks_nwh = self._threshold(lg, bounds, threshold)
                        stability.append(st)
                        del lg
                        if self.min_island_frac > 0:
                            masks_nwh = remove_small_islands(masks_nwh, self.min_island_frac)
                        counts += rle.encode_nwh(masks_nwh)
                        area.append(np.count_nonzero(masks_nwh.reshape(len(masks_nwh), -1), axis=1))
                        iou.append(io.float().cpu().numpy())
                        if cand is not None:
                            candidates.append(cand.float().cpu().numpy())
                    extra = {"multimask_ious": np.concatenate(candidates)} if candidates else {}
                    with_masks = dets.with_masks(
                        counts, predicted_iou=np.concatenate(iou), stability_score=np.concatenate(stability), **extra
                    )
                    out[i] = with_masks[np.concatenate(area) >= max(self.min_mask_area, 1)]
        return out

    @staticmethod
    def _threshold(logits: Any, bounds: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Stability scores N and masks N x W x H (bool, numpy) of logits that are -20 outside ``bounds``.

        Both look inside each mask's bounds only: -20 is below ``threshold - 1`` (SAM's
        threshold is 0), so the pixels outside count in neither the stability
        score's intersection nor its union, and are background.
        """
        from segment_anything.utils.amg import calculate_stability_score

        if threshold - 1.0 <= -20.0:  # not SAM's threshold: the whole frame
            return calculate_stability_score(logits, threshold, 1.0).float().cpu().numpy(), (
                logits > threshold
            ).cpu().numpy()
        n, w, h = logits.shape
        stability, masks = np.zeros(n, np.float32), np.zeros((n, w, h), bool)
        for k, (x0, x1, y0, y1) in enumerate(bounds.tolist()):
            part = logits[k, x0:x1, y0:y1]
            if part.numel():
                stability[k] = calculate_stability_score(part, threshold, 1.0).float().item()
                masks[k, x0:x1, y0:y1] = (part > threshold).cpu().numpy()
            else:
                stability[k] = np.nan  # as calculate_stability_score of all-background logits (0 / 0)
        return stability, masks

    def _zoom_plan(self, boxes_xyxy: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """:func:`zoom_windows_xyxy` of the boxes (N x 4 int XYXY windows, N bool zoomed); none zoomed without
        ``zoom_context``."""
        if self.zoom_context is None or not len(boxes_xyxy):
            return np.zeros((len(boxes_xyxy), 4), np.int64), np.zeros(len(boxes_xyxy), bool)
        return zoom_windows_xyxy(boxes_xyxy, image_hw, self.zoom_context)

    def _image_logits(
        self,
        image: np.ndarray,
        embedding: Any,
        boxes_xyxy: np.ndarray,
        input_size: tuple[int, int] | None,
        original_size: tuple[int, int],
        crops: _CropEncoder | None = None,
        plan: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[Any, Any, Any, np.ndarray]:
        """:meth:`decode_boxes` for one image, with the boxes that ``zoom_context`` selects decoded in crops.

        A zoomed box gets its own crop (its :func:`zoom_windows_xyxy` window),
        encoded at the model's input size; its logits are pasted into the full
        frame at the window, and are -20 (background) outside it. ``crops``
        gives the zoomed boxes' crop embeddings in order (the caller encodes
        them across images); without it, this image's are encoded here.
        ``plan``: these boxes' :meth:`_zoom_plan`, where the caller has it.
        ``embedding`` and ``input_size`` (the whole image's) may be None when
        every box is zoomed.
        """
        import torch

        windows, zoom = plan if plan is not None else self._zoom_plan(boxes_xyxy, original_size)
        if not zoom.any():
            return self.decode_boxes(embedding, boxes_xyxy, input_size, original_size)  # type: ignore[arg-type]
        if crops is None:
            crops = _CropEncoder(self, [(image, win) for win in windows[zoom]])
        n = len(boxes_xyxy)
        logits = torch.full((n, original_size[1], original_size[0]), -20.0, device=self.device)
        iou = torch.zeros(n, device=self.device)
        candidates = torch.zeros((n, 3), device=self.device) if self.multimask else None
        bounds = np.zeros((n, 4), np.int64)

        def put(rows: np.ndarray, lg: Any, io: Any, cand: Any, bd: np.ndarray, win: np.ndarray | None = None) -> None:
            if win is None:
                logits[rows] = lg
                bounds[rows] = bd
            else:
                x0, y0, x1, y1 = (int(v) for v in win)
                logits[rows, x0:x1, y0:y1] = lg
                bounds[rows] = bd + np.array([x0, x0, y0, y0])
            iou[rows] = io
            if candidates is not None:
                candidates[rows] = cand

        rest = np.flatnonzero(~zoom)
        if len(rest):
            put(rest, *self.decode_boxes(embedding, boxes_xyxy[rest], input_size, original_size))  # type: ignore[arg-type]
        for r in np.flatnonzero(zoom):
            emb, size, crop_hw = crops.take()
            x0, y0 = windows[r, :2]
            box = (boxes_xyxy[r] - np.array([x0, y0, x0, y0], np.float32))[None]
            put(np.array([r]), *self.decode_boxes(emb, box, size, crop_hw), win=windows[r])
        return logits, iou, candidates, bounds

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def box_logits(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask logits ``N x H x W`` and predicted IoU ``N`` for one image (inspection and tests)."""
        import torch

        with self._lock, torch.inference_mode(), self._autocast():
            emb, sizes = self.embed([image])
            logits, iou, _, _ = self._image_logits(
                image, emb, np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4), sizes[0], image.shape[:2]
            )
        return logits.transpose(-1, -2).cpu().numpy(), iou.cpu().numpy()


class _CropEncoder:
    """Embeddings of zoom crops, encoded ``batch_size`` at a time in the order they are taken.

    ``jobs``: (H x W x 3 uint8 RGB image, window: 4 int XYXY, exclusive ends) per crop, in the order
    :meth:`take` is called. A batch of images' crops go through the encoder together, so a frame with
    fewer boxes than ``batch_size`` does not encode them one small batch at a time; at most
    ``batch_size`` crops and their embeddings are held at once.
    """

    def __init__(self, segmenter: SamBoxSegmenter, jobs: list[tuple[np.ndarray, np.ndarray]]):
        self._segmenter, self._jobs, self._next = segmenter, jobs, 0
        self._ready: deque[tuple[Any, tuple[int, int], tuple[int, int]]] = deque()

    def take(self) -> tuple[Any, tuple[int, int], tuple[int, int]]:
        """The next crop's (1 x C x h x w embedding, resized (h, w) fed to the encoder, crop's (H, W))."""
        if not self._ready:
            if self._next >= len(self._jobs):
                raise IndexError("zoom crops: more taken than planned")
            chunk = self._jobs[self._next : self._next + self._segmenter.batch_size]
            self._next += len(chunk)
            crops = [np.ascontiguousarray(im[y0:y1, x0:x1]) for im, (x0, y0, x1, y1) in chunk]
            embs, sizes = self._segmenter.embed(crops)
            self._ready.extend((embs[k : k + 1], sizes[k], crops[k].shape[:2]) for k in range(len(crops)))
        return self._ready.popleft()


def _paste_crops(logits: Any, bounds: np.ndarray, start: int, crops: Any, windows: np.ndarray, resize: tuple) -> None:
    """Upsample each window's low-res logits (``crops``) to the original frame and paste them into ``logits``
    (N x W x H, from row ``start``); ``bounds`` (N x 4 int x0, x1, y0, y1) gets each mask's output window.
    ``resize``: (rx, fx, lx, ry, fy, ly) of :meth:`SamBoxSegmenter._resize_matrix` for x and y; ``windows``: the
    token windows (XYXY) of these rows."""
    rx, fx, lx, ry, fy, ly = resize
    for k, (crop, (x0, y0, x1, y1)) in enumerate(zip(crops, 4 * windows)):
        c0, c1 = int(np.searchsorted(fx, x0)), int(np.searchsorted(lx, x1))  # output columns set by low-res x0..x1
        r0, r1 = int(np.searchsorted(fy, y0)), int(np.searchsorted(ly, y1))
        bounds[start + k] = c0, max(c0, c1), r0, max(r0, r1)
        if c1 > c0 and r1 > r0:  # N x W x H layout: columns first
            logits[start + k, c0:c1, r0:r1] = rx[c0:c1, x0:x1] @ crop.float().T @ ry[r0:r1, y0:y1].T
