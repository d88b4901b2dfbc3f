"""Semantic stage: a class for every pixel, from a U-Net-family model (segmentation-models-pytorch) or a
transformers SegFormer / UperNet (``AutoModelForSemanticSegmentation``).

Per image (H x W x 3 uint8 RGB):

1. ``max_side`` (optional): a larger image is scaled down to that long side first;
2. windows: an image that fits in ``tile`` x ``tile`` is one window (one pass, as the library's own
   inference does it); a larger one is covered by ``tile`` x ``tile`` windows overlapping by ``overlap``
   (the last window of a row or column flush with the border), so a 12-megapixel photo is labelled at its
   own resolution, not squashed to the model's input;
3. each window's class logits are resized (bilinear) to the window's own size, summed into the image's
   canvas and divided by how many windows covered each pixel;
4. the logits (scaled back to H x W when step 1 shrank the image) are turned into a class map by argmax --
   the logits are resized, never the labels -- and model labels are mapped into the ontology
   (``label_map``, else equal names, else ``unmapped``); labels in ``ignore`` become void (0).

Backends (``windows`` are H x W x 3 uint8; they return one ``C x h x w`` float tensor per window at the
window's size):

* smp: ImageNet mean/std normalisation (or the checkpoint's), padded on the bottom/right to a multiple of
  32 (the U-Net's output stride), forward, cropped;
* transformers: the model's image processor (resize to its ``size``, normalise), forward, logits resized
  to the window exactly as ``post_process_semantic_segmentation`` resizes them.

The result is one :class:`~segflow.tasks.record.Detections` per image, like a panoptic stage's: one
non-overlapping segment per ontology class present (RLE), ``score`` its pixels' mean class probability,
field ``isthing`` from the ontology. Things come out one segment per class (no instances): pair it with
``panoptic_merge`` (``things: instances``) for panoptic labels, where it is the stuff source.

Weights (``weights:`` of the stage):

* a segflow checkpoint ``{"format": "segflow.semantic/1", "library": "smp", "model_class": "Unet",
  "arch": <smp keyword arguments>, "labels": [...], "tile": int, "mean": [3], "std": [3],
  "state_dict": ...}`` (weights-only; what ``segflow.demo.semantic_training`` writes);
* a ``save_pretrained`` directory: smp's (``config.json`` with ``_model_class``; label names from the
  stage's ``labels``) or transformers' (``config.json`` + ``preprocessor_config.json``);
* ``hub:<org>/<name>``: the same, from the local Hugging Face cache only (never downloaded at run time).
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
from segflow.tasks.stages.mask2former import HUB_PREFIX, label_table
from segflow.tasks.stages.tiling import window_starts

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.semantic import SemanticStage

FORMAT = "segflow.semantic/1"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

__all__ = ["SemanticSegmenter", "build_smp", "save_semantic_checkpoint", "load_semantic", "window_starts"]


def build_smp(model_class: str, arch: dict[str, Any], classes: int) -> Any:
    """A randomly initialised segmentation-models-pytorch model (``smp.<model_class>(**arch, classes=...)``)."""
    import segmentation_models_pytorch as smp

    return getattr(smp, model_class)(**{**arch, "encoder_weights": None}, classes=classes)


def save_semantic_checkpoint(
    model: Any, model_class: str, arch: dict, labels: Sequence[str], path: str | Path, tile: int, half: bool = False
) -> None:
    """Write an smp model as one weights-only segflow checkpoint (ImageNet normalisation)."""
    import torch

    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    torch.save(
        {
            "format": FORMAT,
            "library": "smp",
            "model_class": model_class,
            "arch": json.dumps(arch),
            "labels": list(labels),
            "tile": int(tile),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "state_dict": sd,
        },
        str(path),
    )


class _Smp:
    def __init__(self, model: Any, labels: list[str], tile: int, mean: Sequence[float], std: Sequence[float]):
        import torch

        self.model, self.labels, self.tile = model, labels, tile
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def logits(self, windows: Sequence[np.ndarray], device: Any, dtype: Any) -> list[Any]:
        import torch

        hs, ws = [w.shape[0] for w in windows], [w.shape[1] for w in windows]
        x = torch.zeros(len(windows), 3, -(-max(hs) // 32) * 32, -(-max(ws) // 32) * 32)  # padding: the mean colour
        for i, win in enumerate(windows):
            t = torch.tensor(win).permute(2, 0, 1).float()[None]  # a copy: decoded images may be read-only
            x[i, :, : hs[i], : ws[i]] = ((t - self.mean) / self.std)[0]
        out = self.model(x.to(device, dtype)).float()
        return [out[i, :, :h, :w] for i, (h, w) in enumerate(zip(hs, ws, strict=True))]


class _Transformers:
    def __init__(self, model: Any, processor: Any):
        self.model, self.processor = model, processor
        self.labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        size = getattr(processor, "size", None) or {}
        self.tile = int(size.get("height") or size.get("shortest_edge") or 512)

    def logits(self, windows: Sequence[np.ndarray], device: Any, dtype: Any) -> list[Any]:
        import torch.nn.functional as F

        pv = self.processor(images=[np.array(w) for w in windows], return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pv.to(device, dtype)).logits.float()
        return [
            F.interpolate(out[i][None], size=w.shape[:2], mode="bilinear", align_corners=False)[0]
            for i, w in enumerate(windows)
        ]


def load_semantic(weights: str, labels: Sequence[str] | None = None) -> _Smp | _Transformers:
    """The model behind ``weights`` (a checkpoint, a ``save_pretrained`` directory or ``hub:<id>``), in eval mode."""
    if weights.startswith(HUB_PREFIX) or Path(weights).is_dir():
        source = weights.removeprefix(HUB_PREFIX)
        try:
            if weights.startswith(HUB_PREFIX):
                from huggingface_hub import snapshot_download

                source = snapshot_download(source, local_files_only=True)
            config = json.loads((Path(source) / "config.json").read_text())
            if "_model_class" in config:
                import segmentation_models_pytorch as smp
                import torch

                cls = getattr(smp, str(config["_model_class"]), None)
                if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
                    raise WeightsError(
                        f"{weights}: config.json's _model_class does not name a segmentation-models-pytorch model"
                    )

                model = smp.from_pretrained(source)
                n = int(config.get("classes", 1))
                names = list(labels) if labels else [f"class_{i}" for i in range(n)]
                if len(names) != n:
                    raise WeightsError(f"{weights}: the model has {n} classes but the stage's labels name {len(names)}")
                return _Smp(model.float().eval(), names, 512, IMAGENET_MEAN, IMAGENET_STD)
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

            model = AutoModelForSemanticSegmentation.from_pretrained(
                source, local_files_only=True, trust_remote_code=False
            )
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=True, trust_remote_code=False)
            return _Transformers(model.float().eval(), processor)
        except (OSError, ValueError) as e:
            hint = " (hub models are read from the local cache only: download them first)" if source != weights else ""
            raise WeightsError(f"{weights}: cannot load a semantic model{hint}: {str(e).splitlines()[0]}") from None
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{weights}: not a segflow semantic checkpoint ({FORMAT!r}), a save_pretrained directory or hub:<id>"
        )
    import segmentation_models_pytorch as smp
    import torch

    cls = getattr(smp, str(ckpt.get("model_class")), None) if str(ckpt.get("model_class")).isidentifier() else None
    arch = json.loads(ckpt["arch"]) if isinstance(ckpt.get("arch"), str) else None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)) or not isinstance(arch, dict):
        raise WeightsError(f"{weights}: the checkpoint's model_class must name a segmentation-models-pytorch model")
    model = build_to_fit(
        lambda: build_smp(ckpt["model_class"], arch, len(ckpt["labels"])), ckpt["state_dict"], weights, "model"
    )
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    except RuntimeError as e:
        raise WeightsError(f"{weights}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    return _Smp(model.eval(), list(ckpt["labels"]), int(ckpt["tile"]), ckpt["mean"], ckpt["std"])


class SemanticSegmenter:
    """Images -> one segment per ontology class present (a class map), as a panoptic stage's segments."""

    role = "panoptic"

    def __init__(
        self, stage: SemanticStage, weights_path: str, ontology: dict[int, str], isthing: dict[int, bool] | None = None
    ):
        import torch

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[stage.dtype]
        self.backend = load_semantic(weights_path, stage.labels)
        self.backend.model.to(self.device, self.dtype)
        table = label_table(dict(enumerate(self.backend.labels)), ontology, stage.label_map, stage.unmapped)
        table[[self.backend.labels.index(n) for n in stage.ignore if n in self.backend.labels]] = 0
        self.labels = table  # model label index -> ontology id (0: void)
        self.tile = int(stage.tile or self.backend.tile)
        self.isthing = isthing or {}
        self._lock = threading.Lock()

    def class_logits(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Per image a ``C x H x W`` float tensor of averaged window logits (steps 1-3), at the size step 1 left."""
        import torch

        sizes, jobs = [], []  # jobs: (image index, y, x, window)
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            sizes.append((h, w))
            for y in window_starts(h, self.tile, self.stage.overlap):
                for x in window_starts(w, self.tile, self.stage.overlap):
                    jobs.append((i, y, x, im[y : y + self.tile, x : x + self.tile]))
        sums: list[Any] = [None] * len(images)
        counts = [torch.zeros(h, w) for h, w in sizes]
        bs = self.stage.batch_size
        for s in range(0, len(jobs), bs):
            batch = jobs[s : s + bs]
            for (i, y, x, win), lg in zip(
                batch, self.backend.logits([j[3] for j in batch], self.device, self.dtype), strict=True
            ):
                lg = lg.cpu()
                if sums[i] is None:
                    sums[i] = torch.zeros(lg.shape[0], *sizes[i])
                sums[i][:, y : y + win.shape[0], x : x + win.shape[1]] += lg
                counts[i][y : y + win.shape[0], x : x + win.shape[1]] += 1
        return [sm / c for sm, c in zip(sums, counts, strict=True)]

    def class_map(self, image: np.ndarray, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(ontology id map H x W uint16, probability of the chosen label H x W float32)`` at the image's size."""
        import torch.nn.functional as F

        h, w = image.shape[:2]
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        prob, label = logits.softmax(0).max(0)
        return self.labels[label.numpy()].astype(np.uint16), prob.numpy()

    def segments(self, ids: np.ndarray, prob: np.ndarray) -> Detections:
        """One segment per ontology class in ``ids`` (H x W, 0 = void)."""
        h, w = ids.shape
        classes = [int(c) for c in np.unique(ids) if c]
        if not classes:
            return Detections.empty((h, w), with_masks=True).with_fields(isthing=np.zeros(0, bool))
        masks = [ids == c for c in classes]  # each class's pixels, once
        masks_nwh = np.stack([m.T for m in masks])
        counts = rle.encode_nwh(masks_nwh)
        xywh = rle.bbox_xywh(counts, h, w)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        scores = np.array([prob[m].mean() for m in masks], np.float32)
        isthing = np.array([self.isthing.get(c, True) for c in classes], bool)
        return Detections((h, w), boxes, np.array(classes), scores, rle_counts=counts, fields={"isthing": isthing})

    def panoptic(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Class segments for each of ``images`` (H x W x 3 uint8 RGB)."""
        import torch
        from PIL import Image

        shown = []
        for im in images:
            h, w = im.shape[:2]
            m = self.stage.max_side
            if m and max(h, w) > m:
                k = m / max(h, w)
                im = np.asarray(
                    Image.fromarray(im).resize((max(1, round(w * k)), max(1, round(h * k))), Image.BILINEAR)
                )
            shown.append(im)
        with self._lock, torch.inference_mode():
            logits = self.class_logits(shown)
        return [self.segments(*self.class_map(im, lg)) for im, lg in zip(images, logits, strict=True)]
