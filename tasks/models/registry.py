"""Model adapters looked up by the ``kind`` of a stage, imported lazily.

Like fsspec's ``registry.py``: the table below knows every kind without
importing any model library; :func:`adapter_class` imports one on first use
and, when its package is missing, says what to install.

Roles:

* ``detector``  -- images -> :class:`~segflow.tasks.record.Detections` with boxes, classes, scores.
* ``segmenter`` -- images + a detector's Detections -> the same rows with masks (RLE).
* ``qc``        -- a segmenter's Detections -> the same rows with a verdict and fired rules
  (and, given a panoptic stage's segments, their agreement with them).
* ``instances`` -- images -> boxes, classes, scores and masks in one model (direct instance labelers).
* ``panoptic``  -- images -> non-overlapping segments (things and stuff) per image.
* ``merge``     -- a panoptic stage's segments (+ optionally instance masks) -> one panoptic map per image.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["AdapterSpec", "ADAPTERS", "adapter_class", "MissingDependencyError"]


class MissingDependencyError(ImportError):
    """An adapter's optional package is not installed."""


@dataclass(frozen=True)
class AdapterSpec:
    target: str  # "module:Class"
    role: str  # detector | segmenter
    package: str  # import name of the library it wraps
    install: str  # pip requirement that provides it
    needs_roles: tuple[str, ...] = ()  # exactly one input stage of each of these roles ("a|b": either)
    optional_roles: tuple[tuple[str, ...], ...] = ()  # at most one input stage from each group
    produces_masks: bool = False


ADAPTERS: dict[str, AdapterSpec] = {
    "yolo": AdapterSpec("segflow.tasks.models.yolo:YoloDetector", "detector", "ultralytics", "ultralytics"),
    "sam": AdapterSpec(
        "segflow.tasks.models.sam:SamBoxSegmenter",
        "segmenter",
        "segment_anything",
        "segment-anything",
        needs_roles=("detector",),
        produces_masks=True,
    ),
    "qc": AdapterSpec(
        "segflow.tasks.qc:QcChecker",
        "qc",
        "scipy",
        "scipy",
        needs_roles=("segmenter|instances",),
        optional_roles=(("panoptic",),),
        produces_masks=True,
    ),
    "owlv2": AdapterSpec("segflow.tasks.models.owl:OwlDetector", "detector", "transformers", "transformers"),
    "owlvit": AdapterSpec("segflow.tasks.models.owl:OwlDetector", "detector", "transformers", "transformers"),
    "grounding_dino": AdapterSpec(
        "segflow.tasks.models.gdino:GroundingDinoDetector", "detector", "transformers", "transformers"
    ),
    "sam_auto": AdapterSpec(
        "segflow.tasks.models.sam_auto:SamAutoLabeler",
        "instances",
        "segment_anything",
        "segment-anything",
        produces_masks=True,
    ),
    "yolo_seg": AdapterSpec(
        "segflow.tasks.models.instances:YoloSegLabeler", "instances", "ultralytics", "ultralytics", produces_masks=True
    ),
    "maskrcnn": AdapterSpec(
        "segflow.tasks.models.instances:MaskRcnnLabeler", "instances", "torchvision", "torchvision", produces_masks=True
    ),
    "mask2former": AdapterSpec(
        "segflow.tasks.models.mask2former:Mask2FormerPanoptic",
        "panoptic",
        "transformers",
        "transformers scipy",
        produces_masks=True,
    ),
    "panoptic_merge": AdapterSpec(
        "segflow.tasks.panoptic:PanopticMerger",
        "merge",
        "numpy",
        "numpy",
        needs_roles=("panoptic",),
        optional_roles=(("segmenter", "qc", "instances"),),
        produces_masks=True,
    ),
}


def adapter_class(kind: str) -> type:
    """The adapter class for a stage kind, importing its module now."""
    try:
        spec = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(sorted(ADAPTERS))})") from None
    module_name, cls_name = spec.target.split(":")
    try:
        module = importlib.import_module(module_name)  # first: adapters set the library's offline defaults
        importlib.import_module(spec.package)
        if spec.role == "panoptic":
            importlib.import_module("scipy")  # transformers' Mask2Former matcher needs it even for inference
    except ImportError as e:
        raise MissingDependencyError(
            f"stage kind {kind!r} needs the package {spec.package!r}, which is not importable ({e}); "
            f"install it with: pip install {spec.install}"
        ) from e
    return getattr(module, cls_name)
