"""Stage kinds: one registry entry says everything the pipeline needs about a kind.

Like fsspec's ``registry.py``: :data:`ADAPTERS` knows every kind without
importing any model library; :func:`adapter_class` imports an adapter on first
use and, when its package is missing, says what to install;
:func:`register_adapter` lets a user's package add a kind. Callers never switch
on a kind: they read its entry.

An entry (:class:`AdapterSpec`) names

* ``target`` -- the adapter class (``"module:Class"`` or the class);
* ``config`` -- its settings, a pydantic model with ``kind: Literal[<kind>]`` (``"module:Class"`` or the class);
* ``role`` -- what it consumes and makes, and so how it runs (:data:`ROLES`);
* ``weights`` -- the weight layout: ``file`` (a checkpoint file or URL), ``file_or_dir`` (also a
  ``save_pretrained`` folder or ``hub:org/name`` from the local Hugging Face cache), ``file_or_builtin``
  (also a library architecture name such as ``yolo11n.yaml``: random weights), or ``none``;
* ``context`` -- what its constructor takes after ``(stage, weights_path, ontology)``: ``isthing``
  (ontology id -> thing or stuff) and/or ``prompts`` (ontology id -> text prompts);
* which input stages it needs (``needs_roles``, ``optional_roles``) and whether it produces masks.

Roles (what an adapter of the role is called with; images are H x W x 3 RGB uint8):

* ``detector``  -- ``detect(images)`` -> :class:`~segflow.tasks.record.Detections` with boxes, classes, scores.
* ``segmenter`` -- ``segment(images, detections)`` -> the same rows with masks (RLE).
* ``qc``        -- ``check(images, detections, panoptic_segments_or_None)`` -> the rows with a verdict.
* ``tracker``   -- ``track(images, detections)`` -> the rows with ``track_id``; called on a clip's frames in order,
  on the adapter's per-shard ``session()`` (an adapter with a ``session`` method keeps state per shard); once the
  shard is labelled, the session's ``finish_clip(masks)`` gets the clip's mask rows (context frames first) and
  returns them as they are to be committed (first frames filled in, classes voted).
* ``instances`` -- ``label(images)`` -> boxes, classes, scores and masks in one model.
* ``panoptic``  -- ``panoptic(images)`` -> non-overlapping segments (things and stuff) per image.
* ``merge``     -- ``merge(images, instances_or_None, panoptic, instance_stage_or_None, panoptic_stage)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from segflow.tasks.records import INSTANCE_ROLES, Role

__all__ = [
    "ADAPTERS",
    "ROLES",
    "AdapterSpec",
    "MissingDependencyError",
    "adapter_class",
    "config_class",
    "on_registry_change",
    "register_adapter",
    "unregister_adapter",
]

#: ``inputs`` maps the role of each stage a stage needs to ``(stage name, its per-image results)``.
Inputs = dict[str, tuple[str, list[Any]]]


def _first(inputs: Inputs, *roles: str) -> tuple[str | None, list[Any] | None]:
    return next((inputs[r] for r in roles if r in inputs), (None, None))


ROLES: dict[str, Callable[[Any, Sequence[Any], Inputs], list[Any]]] = {  # by Role (segflow.tasks.records)
    Role.DETECTOR: lambda a, images, inputs: a.detect(images),
    Role.SEGMENTER: lambda a, images, inputs: a.segment(images, inputs["detector"][1]),
    Role.INSTANCES: lambda a, images, inputs: a.label(images),
    Role.QC: lambda a, images, inputs: a.check(
        images, _first(inputs, "segmenter", "instances")[1], _first(inputs, "panoptic")[1]
    ),
    Role.TRACKER: lambda a, images, inputs: a.track(images, _first(inputs, *INSTANCE_ROLES)[1]),
    Role.PANOPTIC: lambda a, images, inputs: a.panoptic(images),
    Role.MERGE: lambda a, images, inputs: a.merge(
        images,
        _first(inputs, *INSTANCE_ROLES)[1],
        inputs["panoptic"][1],
        _first(inputs, *INSTANCE_ROLES)[0],
        inputs["panoptic"][0],
    ),
}
WEIGHT_LAYOUTS = ("file", "file_or_dir", "file_or_builtin", "none")


class MissingDependencyError(ImportError):
    """An adapter's optional package is not installed."""


@dataclass(frozen=True)
class AdapterSpec:
    target: str | type  # the adapter class, or "module:Class"
    config: str | type  # the stage settings model, or "module:Class"
    role: str
    package: str = ""  # import names of the libraries it wraps, space-separated (checked on first use)
    install: str = ""  # pip requirements that provide them
    weights: str = "file"
    context: tuple[str, ...] = ()
    needs_roles: tuple[str, ...] = ()  # exactly one input stage of each of these roles ("a|b": either)
    optional_roles: tuple[tuple[str, ...], ...] = ()  # at most one input stage from each group
    produces_masks: bool = False
    #: it links a video's frames into tracks (masks get ``track_id``): needs ``source.video``; finalize joins clips
    makes_tracks: bool = False
    #: "module:function" called with the resolved weights before any flow starts; raises WeightsError for a file
    #: that must not be loaded (e.g. a model description that could run code). Loads no model.
    check: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"AdapterSpec.role: expected one of {', '.join(ROLES)}, got {self.role!r}")
        if self.weights not in WEIGHT_LAYOUTS:
            raise ValueError(f"AdapterSpec.weights: expected one of {', '.join(WEIGHT_LAYOUTS)}, got {self.weights!r}")
        unknown = set(self.context) - {"isthing", "prompts"}
        if unknown:
            raise ValueError(f"AdapterSpec.context: expected 'isthing' and/or 'prompts', got {sorted(unknown)}")

    def run(self, adapter: Any, images: Sequence[Any], inputs: Inputs, stage: Any = None) -> list[Any]:
        """Call ``adapter`` as its role does, with the results of the stages it needs; over windows of large
        images when ``stage`` (its settings) sets ``tiles`` (:mod:`segflow.tasks.stages.tiling`: detectors and instance
        labelers only)."""
        call = ROLES[self.role]
        plan = None
        if stage is not None and self.role in ("detector", "instances") and getattr(stage, "tiles", None):
            from segflow.tasks.stages.tiling import plan_tiles

            plan = plan_tiles(stage.tiles, stage.input_size())
        if plan is None:
            return call(adapter, images, inputs)
        from segflow.tasks.stages.tiling import run_tiled

        return run_tiled(lambda crops: call(adapter, crops, inputs), images, plan, batch=stage.batch_size)


_S = "segflow.tasks.stages.settings."
_M = "segflow.tasks.stages."
ADAPTERS: dict[str, AdapterSpec] = {
    "yolo": AdapterSpec(
        _M + "yolo:YoloDetector",
        _S + "yolo:YoloStage",
        "detector",
        "ultralytics",
        "ultralytics",
        "file_or_builtin",
        check=_M + "yolo:check_yolo_weights",
    ),
    "owlv2": AdapterSpec(
        _M + "owl:OwlDetector",
        _S + "owl:OwlStage",
        "detector",
        "transformers",
        "transformers",
        "file_or_dir",
        ("prompts",),
    ),
    "owlvit": AdapterSpec(
        _M + "owl:OwlDetector",
        _S + "owl:OwlStage",
        "detector",
        "transformers",
        "transformers",
        "file_or_dir",
        ("prompts",),
    ),
    "grounding_dino": AdapterSpec(
        _M + "gdino:GroundingDinoDetector",
        _S + "owl:OwlStage",
        "detector",
        "transformers",
        "transformers",
        "file_or_dir",
        ("prompts",),
    ),
    "sam": AdapterSpec(
        _M + "sam:SamBoxSegmenter",
        _S + "sam:SamStage",
        "segmenter",
        "segment_anything",
        "segment-anything",
        needs_roles=("detector",),
        produces_masks=True,
    ),
    "sam2": AdapterSpec(
        _M + "sam2:TransformersBoxSegmenter",
        _S + "sam2:Sam2Stage",
        "segmenter",
        "transformers",
        "transformers",
        "file_or_dir",
        needs_roles=("detector",),
        produces_masks=True,
    ),
    "sam3": AdapterSpec(
        _M + "sam3:Sam3TextLabeler",
        _S + "sam3:Sam3Stage",
        "instances",
        "transformers",
        "transformers",
        "file_or_dir",
        ("prompts",),
        produces_masks=True,
    ),
    "sam_auto": AdapterSpec(
        _M + "sam_auto:SamAutoLabeler",
        _S + "sam_auto:SamAutoStage",
        "instances",
        "segment_anything",
        "segment-anything",
        produces_masks=True,
    ),
    "yolo_seg": AdapterSpec(
        _M + "instances:YoloSegLabeler",
        _S + "instances:YoloSegStage",
        "instances",
        "ultralytics",
        "ultralytics",
        produces_masks=True,
        check=_M + "yolo:check_yolo_weights",
    ),
    "maskrcnn": AdapterSpec(
        _M + "instances:MaskRcnnLabeler",
        _S + "instances:MaskRcnnStage",
        "instances",
        "torchvision",
        "torchvision",
        produces_masks=True,
    ),
    "qc": AdapterSpec(
        "segflow.tasks.stages.qc:QcChecker",
        _S + "qc:QcStage",
        "qc",
        "scipy",
        "scipy",
        "none",
        needs_roles=("segmenter|instances",),
        optional_roles=(("panoptic",),),
        produces_masks=True,
    ),
    "track": AdapterSpec(
        _M + "track:Tracker",
        _S + "track:TrackStage",
        "tracker",
        "trackers supervision",
        "trackers",
        "none",
        needs_roles=("segmenter|qc|instances",),
        produces_masks=True,
        makes_tracks=True,
    ),
    "sam2_video": AdapterSpec(
        _M + "sam2_video:VideoPropagator",
        _S + "sam2_video:Sam2VideoStage",
        "segmenter",
        "transformers",
        "transformers",
        "file_or_dir",
        needs_roles=("detector",),
        produces_masks=True,
        makes_tracks=True,
    ),
    # transformers' Mask2Former matcher needs scipy even for inference
    "mask2former": AdapterSpec(
        _M + "mask2former:Mask2FormerPanoptic",
        _S + "mask2former:Mask2FormerStage",
        "panoptic",
        "transformers scipy",
        "transformers scipy",
        "file_or_dir",
        ("isthing",),
        produces_masks=True,
    ),
    # a class map per image, handed on as one segment per class (the panoptic role's format)
    "semantic": AdapterSpec(
        _M + "semantic:SemanticSegmenter",
        _S + "semantic:SemanticStage",
        "panoptic",
        "torch",
        "segmentation-models-pytorch transformers",
        "file_or_dir",
        ("isthing",),
        produces_masks=True,
    ),
    "panoptic_merge": AdapterSpec(
        "segflow.tasks.stages.panoptic:PanopticMerger",
        _S + "panoptic:PanopticMergeStage",
        "merge",
        "numpy",
        "numpy",
        "none",
        needs_roles=("panoptic",),
        optional_roles=(INSTANCE_ROLES,),
        produces_masks=True,
    ),
}


def _resolve(target: str | type) -> type:
    if isinstance(target, type):
        return target
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def _spec(kind: str) -> AdapterSpec:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(sorted(ADAPTERS))})") from None


def adapter_class(kind: str) -> type:
    """The adapter class for a stage kind, importing its module now."""
    spec = _spec(kind)
    try:
        cls = _resolve(spec.target)  # first: adapters set the library's offline defaults
        for package in spec.package.split():
            importlib.import_module(package)
    except ImportError as e:
        raise MissingDependencyError(
            f"stage kind {kind!r} needs the package {spec.package!r}, which is not importable ({e}); "
            f"install it with: pip install {spec.install}"
        ) from e
    return cls


def config_class(kind: str) -> type:
    """The pydantic model of a stage kind's settings."""
    return _resolve(_spec(kind).config)


def register_adapter(kind: str, spec: AdapterSpec, clobber: bool = False) -> None:
    """Add a stage kind (in the process that validates and runs the job: workers import the same package).

    ``spec.config`` must be a pydantic model with ``kind: Literal[kind]``, ``needs``
    and ``device`` (subclass :class:`segflow.tasks.stages.settings.StageSettings`). The job model learns of the
    kind through :func:`on_registry_change` (the registry imports no config module).
    """
    if kind in ADAPTERS and not clobber:
        raise ValueError(f"stage kind {kind!r} is already registered (pass clobber=True to replace it)")
    cfg = _resolve(spec.config)
    declared = getattr(cfg.model_fields.get("kind"), "annotation", None)
    if kind not in getattr(declared, "__args__", ()):
        raise ValueError(f"register_adapter({kind!r}): {cfg.__name__}.kind must be Literal[{kind!r}]")
    ADAPTERS[kind] = spec
    _changed()


def unregister_adapter(kind: str) -> None:
    """Remove a kind added by :func:`register_adapter`."""
    ADAPTERS.pop(kind, None)
    _changed()


_LISTENERS: list[Callable[[], None]] = []


def on_registry_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever a kind is registered or removed (the job schema rebuilds its stage union)."""
    _LISTENERS.append(listener)


def _changed() -> None:
    for listener in _LISTENERS:
        listener()
