"""The job file's schema: pydantic models of every key, with its type, default and contract.

:class:`JobConfig` is the validated job; the stage classes are the settings
of each stage kind. :mod:`segflow.config.validation` checks what a schema cannot
express (stage DAG, roles, ontology, files); :mod:`segflow.config.loading`
reads YAML and resolves paths. The reference in ``docs/config.md`` is generated
from these models (:mod:`segflow.config.reference`).
"""

from __future__ import annotations

import builtins
import functools
import operator
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from segflow.tasks.io.images import DEFAULT_MAX_PIXELS
from segflow.tasks.stages.registry import ADAPTERS

__all__ = [
    "DEFAULT_EXTENSIONS",
    "JobConfig",
    "Mask2FormerStage",
    "MaskRcnnStage",
    "OntologyClass",
    "OwlStage",
    "PanopticMergeStage",
    "PublishConfig",
    "QcStage",
    "RuntimeConfig",
    "SamAutoStage",
    "SemanticStage",
    "Sam2Stage",
    "Sam3Stage",
    "SamStage",
    "SourceConfig",
    "YoloSegStage",
    "YoloStage",
    "job_json_schema",
]

DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"]
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """Where the images are: a URL/path with an optional glob, or a text file listing URIs."""

    url: str | None = Field(None, description="Folder or prefix (any fsspec URL or local path).")
    pattern: str | None = Field(
        None, description="Glob relative to `url` (e.g. '**/*.jpg'). Default: every file with an image extension."
    )
    list: str | None = Field(None, description="Text file with one image URI per line (alternative to `url`).")
    extensions: builtins.list[str] = Field(
        default_factory=lambda: [*DEFAULT_EXTENSIONS], description="Image file extensions (case-insensitive)."
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are refused (decompression bombs)."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (e.g. endpoint_url). Never credentials."
    )

    @model_validator(mode="after")
    def _one_of(self) -> SourceConfig:
        if (self.url is None) == (self.list is None):
            raise ValueError("give exactly one of 'url' (a folder or prefix) or 'list' (a file listing URIs)")
        if self.pattern is not None and self.url is None:
            raise ValueError("'pattern' applies to 'url', not to 'list'")
        return self


class OntologyClass(_Strict):
    id: int = Field(..., ge=1, description="Stable category id (COCO category_id), >= 1.")
    name: str = Field(..., min_length=1, description="Class name.")
    isthing: bool = Field(True, description="Countable object (thing) or amorphous region (stuff).")
    prompts: list[str] = Field(
        default_factory=list,
        description="Text prompts for open-vocabulary detectors (synonyms of this class); default: the name.",
    )

    def text_prompts(self) -> list[str]:
        return list(self.prompts) or [self.name]


class _StageBase(_Strict):
    """Settings every stage has. A stage kind's model may add ``issues(name, ontology_names, needs_roles)``:
    checks against the ontology and its input stages, as ``(key.path, message)`` pairs."""

    needs: list[str] = Field(default_factory=list, description="Names of the stages this stage consumes.")
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N', 'mps'.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", v):
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda, cuda:N or mps")
        return v


class _ModelStage(_StageBase):
    weights: str = Field(..., description="Weights file: local path or any fsspec URL.")
    sha256: str | None = Field(None, description="Expected sha256 of the weights file; checked before loading.")
    batch_size: int = Field(8, ge=1, description="Images per model call.")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v):
            raise ValueError("must be 64 hexadecimal characters")
        return None if v is None else v.lower()


class TilesConfig(_Strict):
    """Sliced inference for large images (docs/tiles.md): the model over overlapping windows at native resolution,
    merged back."""

    size: int = Field(640, ge=32, description="Window side in pixels of the image (native resolution).")
    overlap: float = Field(0.2, ge=0.0, lt=0.9, description="Fraction of a window's side shared with its neighbour.")
    whole_image: bool = Field(
        True, description="Also run the model on the whole image at its input size (objects larger than a window)."
    )
    min_side: int | None = Field(
        None, ge=1, description="Tile only images whose longer side exceeds this; default 1.5 x size."
    )
    merge: Literal["greedy", "nms"] = Field(
        "greedy",
        description="Across windows: `greedy` unites overlapping detections of a class (boxes and masks: an object "
        "cut by a window edge comes back whole); `nms` keeps the best of them.",
    )
    match: Literal["ios", "iou"] = Field(
        "ios", description="What overlapping means: intersection over the smaller box (`ios`) or IoU."
    )
    match_threshold: float = Field(0.5, gt=0.0, le=1.0, description="Overlap at which two detections are one.")


class _Tiled(BaseModel):
    """A stage that can run over windows of large images (detectors and instance labelers)."""

    tiles: TilesConfig | Literal["auto"] | None = Field(
        None,
        description="Run over overlapping windows of large images at native resolution (`{size, overlap, "
        "whole_image, ...}`), or `auto`: windows of twice the model's input size on images more than three times "
        "as large as it. Default: the whole image at the model's input size.",
    )

    def input_size(self) -> int:
        """The side the model sees an image at (what `tiles: auto` scales from)."""
        return 640


class YoloStage(_ModelStage, _Tiled):
    """Detector: ultralytics YOLO (detect or segment checkpoints; boxes are used)."""

    kind: Literal["yolo"]
    conf: float = Field(0.25, ge=0.0, le=1.0, description="Confidence threshold.")
    iou: float = Field(0.7, ge=0.0, le=1.0, description="NMS IoU threshold.")
    imgsz: int = Field(640, ge=32, description="Inference size (long side, multiple of 32).")
    max_det: int = Field(300, ge=1, description="Maximum detections per image.")
    class_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model class name -> ontology name. Unlisted classes map by equal name; "
        "classes not in the ontology are dropped.",
    )

    def input_size(self) -> int:
        return self.imgsz


class OwlStage(_ModelStage, _Tiled):
    """Open-vocabulary detector: OWLv2, OWL-ViT or Grounding DINO (transformers), queried with the ontology's text
    prompts."""

    kind: Literal["owlv2", "owlvit", "grounding_dino"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:<org>/<name> from "
        "the local Hugging Face cache.",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    batch_size: int = Field(4, ge=1, description="Images per forward pass.")
    conf: float = Field(0.1, ge=0.0, le=1.0, description="Score threshold (sigmoid of the best prompt's logit).")
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per ontology class score thresholds (override conf)."
    )
    nms_iou: float = Field(0.5, ge=0.0, le=1.0, description="NMS IoU threshold.")
    agnostic_nms: bool = Field(True, description="NMS across classes (one box per object even when two prompts fire).")
    max_det: int = Field(100, ge=1, description="Maximum detections per image.")


class YoloSegStage(YoloStage):
    """Direct instance labeler: ultralytics YOLO segmentation checkpoint (boxes and masks in one model); settings as
    ``yolo``."""

    kind: Literal["yolo_seg"]


class MaskRcnnStage(_ModelStage, _Tiled):
    """Direct instance labeler: torchvision Mask R-CNN (torchvision COCO state dicts or segflow checkpoints)."""

    kind: Literal["maskrcnn"]
    batch_size: int = Field(2, ge=1, description="Images per model call.")
    conf: float = Field(0.5, ge=0.0, le=1.0, description="Box score threshold.")
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    max_det: int = Field(100, ge=1, description="Maximum detections per image.")
    class_map: dict[str, str] = Field(
        default_factory=dict, description="Model class name -> ontology name (unlisted: same name; others dropped)."
    )


class SamStage(_ModelStage):
    """Promptable segmenter: Segment Anything, prompted with the boxes of the stage it needs."""

    kind: Literal["sam"]
    model_type: Literal["auto", "vit_b", "vit_l", "vit_h"] = Field(
        "auto", description="Architecture of a plain SAM state dict; 'auto' infers it."
    )
    batch_size: int | Literal["auto"] = Field(
        "auto",
        description="Images per image-encoder call; 'auto' = 1 on CPU (batching a ViT there is slower), 8 on GPU.",
    )
    boxes_per_call: int | Literal["auto"] = Field(
        "auto",
        description="Boxes per mask-decoder call (bounds decoder memory). 'auto': 64 on GPU; on CPU as many as keep "
        "the per-box image tokens within 16 MB (8 MB with runtime.malloc_tuning off).",
    )

    @field_validator("boxes_per_call")
    @classmethod
    def _bpc(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    min_mask_area: int = Field(1, ge=0, description="Masks with fewer pixels are dropped (with their detection).")
    min_island_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Remove disconnected pieces smaller than this fraction of the mask's largest "
        "piece (0 = keep all, as SAM does).",
    )
    prompt: Literal["box", "point", "box+point"] = Field(
        "box", description="What prompts SAM: the detector box, the box centre as a foreground point, or both."
    )
    multimask_output: bool = Field(
        False,
        description="Ask SAM for 3 candidate masks per prompt and keep the one with the highest "
        "predicted IoU (all 3 scores go to the field multimask_ious).",
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="'auto': bfloat16 autocast on GPUs that support it (never float16: it breaks "
        "the large SAMs), float32 on CPU. 'bfloat16' pays on CPUs with AVX512-BF16 or AMX; "
        "elsewhere CPU bfloat16 is emulated and slow.",
    )
    attention: Literal["auto", "sdpa", "blocked", "eager"] = Field(
        "auto",
        description="Image-encoder attention, queries in blocks so the relative-position bias "
        "is never built whole: 'sdpa' (fused scaled_dot_product_attention, the "
        "bias as each block's mask), 'blocked' (each block's scores biased and "
        "soft-maxed in place in one reused buffer), 'auto' = blocked for float32 "
        "on a CPU, sdpa otherwise (GPUs, bfloat16), "
        "'eager' (the library's: the whole bias at once). All give the library's "
        "output to float rounding (timings: bench/README.md).",
    )
    compile: bool = Field(
        False,
        description="torch.compile the image encoder (fixed input size; the first batch of "
        "each batch size pays the compilation). For long GPU jobs.",
    )
    mask_margin: float | None = Field(
        0.5,
        ge=0.0,
        description="Compute each mask only inside its box grown by this fraction of the box's "
        "longer side on every side (plus one embedding token); pixels outside are "
        "background. Inside, the logits are SAM's own. Saves the decoder's upscaling "
        "and the upsampling outside the window. null = every mask over the whole image, "
        "as SamPredictor does.",
    )
    zoom_context: float | None = Field(
        None,
        ge=0.0,
        description="Segment each box whose square window -- its longer side x (1 + 2 x zoom_context), "
        "centred on it and moved inside the image -- is smaller than the image "
        "in a crop of that window instead of the whole image: more model pixels "
        "per small object (one extra encoder pass per such box). For SAMs with "
        "a small input size on large images; off (null) by default.",
    )


def _label_map_issues(name: str, label_map: dict[str, str], unmapped: str, names: set[str]) -> list[tuple[str, str]]:
    """A model-label mapping's targets must be ontology classes (``unmapped``: or 'drop')."""
    out = []
    if unmapped != "drop" and unmapped not in names:
        out.append((f"stages.{name}.unmapped", f"{unmapped!r} is not a class of the ontology (or use 'drop')"))
    for model_label, onto_name in label_map.items():
        if onto_name not in names:
            out.append((f"stages.{name}.label_map.{model_label}", f"{onto_name!r} is not a class of the ontology"))
    return out


class Mask2FormerStage(_ModelStage):
    """Panoptic model: transformers Mask2Former (things and stuff, non-overlapping segments per image)."""

    kind: Literal["mask2former"]
    weights: str = Field(
        ...,
        description="A segflow Mask2Former checkpoint file, a save_pretrained directory, or "
        "hub:<org>/<name> read from the local Hugging Face cache (never downloaded "
        "at run time).",
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the checkpoint file (of model.safetensors for a directory or hub id)."
    )
    batch_size: int = Field(4, ge=1, description="Images per forward pass.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Model dtype (bfloat16 on GPUs that have it)."
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Minimum class probability of a query to become a segment."
    )
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    overlap_threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="A query keeps its segment only if it wins at least this share of its own mask.",
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model label -> ontology class name. Other labels map by equal name, else to `unmapped`.",
    )
    unmapped: str = Field("drop", description="'drop', or the ontology class name that takes labels with no mapping.")

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        return _label_map_issues(name, self.label_map, self.unmapped, names)


class SemanticStage(_ModelStage):
    """Semantic model: a class for every pixel (U-Net family via segmentation-models-pytorch, or transformers
    SegFormer / UperNet); sliding windows over large images; see tasks/stages/semantic.py."""

    kind: Literal["semantic"]
    weights: str = Field(
        ...,
        description="A segflow semantic checkpoint file, a save_pretrained directory (smp or transformers), or "
        "hub:<org>/<name> read from the local Hugging Face cache (never downloaded at run time).",
    )
    sha256: str | None = Field(
        None, description="Expected sha256 of the checkpoint file (of model.safetensors for a directory or hub id)."
    )
    batch_size: int = Field(4, ge=1, description="Windows per forward pass.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Model dtype.")
    tile: int | None = Field(
        None, ge=32, description="Window side in pixels (default: the model's input size); larger images are tiled."
    )
    overlap: float = Field(0.25, ge=0.0, lt=1.0, description="Share of a window its neighbour overlaps.")
    max_side: int | None = Field(
        None, ge=32, description="Scale larger images down to this long side first (logits are scaled back up)."
    )
    labels: list[str] | None = Field(
        None, description="Model class names in index order, for smp directories (their config has none)."
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Model label -> ontology class name. Other labels map by equal name, else to `unmapped`.",
    )
    unmapped: str = Field("drop", description="'drop' (void), or the ontology class name that takes other labels.")
    ignore: list[str] = Field(default_factory=list, description="Model labels whose pixels become void.")
    preview: bool = Field(
        False,
        description="Also write OUTPUT/semantic/preview/<image_id>.jpg: this stage's class map blended over the "
        "image (long side at most 1024 px), for eyes only.",
    )

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        return _label_map_issues(name, self.label_map, self.unmapped, names)


class PanopticMergeStage(_StageBase):
    """One panoptic map per image from a panoptic stage and (optionally) an instance stage (stages/panoptic.py)."""

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        if self.things == "instances" and not any(r in ("segmenter", "qc", "instances") for r in needs_roles):
            return [
                (
                    f"stages.{name}.needs",
                    "things: instances needs an instance stage (sam, qc, sam_auto, yolo_seg "
                    "or maskrcnn) in needs; or set things: panoptic",
                )
            ]
        return []

    kind: Literal["panoptic_merge"]
    things: Literal["instances", "panoptic"] = Field(
        "instances",
        description="Where things come from: the instance stage it needs (detector -> SAM -> "
        "QC) or the panoptic model.",
    )
    overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A thing is dropped when less than this share of its mask is still free "
        "(hidden by a higher-scoring one).",
    )
    min_area: int = Field(64, ge=0, description="Segments left with fewer pixels become void.")
    include_flagged: bool = Field(
        False, description="Use QC-flagged instance masks as things (rejected ones never are)."
    )


class Sam2Stage(_ModelStage):
    """Promptable segmenter through transformers -- SAM 2.x, EdgeTAM, the SAM 3 tracker or SAM-HQ -- prompted with the
    boxes of the stage it needs."""

    kind: Literal["sam2"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:<org>/<name> from "
        "the local Hugging Face cache (e.g. hub:facebook/sam2.1-hiera-large).",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    family: Literal["auto", "sam2", "edgetam", "sam3_tracker", "sam_hq"] = Field(
        "auto", description="Model family; 'auto' reads model_type from the directory's config.json."
    )
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Images per image-encoder call; 'auto' = 1 on CPU, 8 on GPU."
    )
    boxes_per_call: int = Field(
        16,
        ge=1,
        description="Prompts per mask-decoder call; their masks are post-processed at full size together, "
        "so this bounds memory (boxes x candidates x H x W floats).",
    )
    mask_threshold: float = Field(0.0, description="Logit threshold of a mask pixel (the models' own: 0).")
    min_mask_area: int = Field(1, ge=0, description="Masks with fewer pixels are dropped (with their detection).")
    min_island_frac: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Remove disconnected pieces smaller than this fraction of the mask's largest piece (0 = keep all).",
    )
    prompt: Literal["box", "point", "box+point"] = Field(
        "box", description="What prompts the model: the detector box, the box centre as a foreground point, or both."
    )
    multimask_output: bool = Field(
        False,
        description="Ask for 3 candidate masks per prompt and keep the one with the highest predicted IoU "
        "(all 3 scores go to the field multimask_ious).",
    )
    mask_margin: float | None = Field(
        0.5,
        ge=0.0,
        description="Upsample each mask only inside its box grown by this fraction of the box's longer side on "
        "every side; pixels outside are background. Inside, the logits are the model's post-processing's own. "
        "null = every mask over the whole image.",
    )
    zoom_context: float | None = Field(
        None,
        ge=0.0,
        description="Segment each box whose square window -- its longer side x (1 + 2 x zoom_context), centred on "
        "it and moved inside the image -- is smaller than the image in a crop of that window, at its own "
        "resolution (one extra encoder pass per such box): for small objects in large images. Off by default.",
    )


class Sam3Stage(_ModelStage, _Tiled):
    """Instances labeler from text: SAM 3 finds every instance of each ontology class's text prompts (names and
    synonyms) -- detector and segmenter in one model."""

    kind: Literal["sam3"]
    weights: str = Field(
        ...,
        description="A save_pretrained directory (model + processor), or hub:facebook/sam3 from the local "
        "Hugging Face cache (gated: accept the licence on the Hub, download once).",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the directory's model.safetensors.")
    batch_size: int = Field(1, ge=1, description="Images per vision-encoder call.")
    conf: float = Field(
        0.5, ge=0.0, le=1.0, description="Score threshold: sigmoid(query logit) x sigmoid(presence logit)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-class score thresholds (ontology name -> threshold), overriding conf."
    )
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Mask probability threshold.")
    nms_iou: float = Field(
        0.5, ge=0.0, le=1.0, description="Box NMS within a class (synonyms that found the same object)."
    )
    conflict_iou: float | None = Field(
        0.85,
        ge=0.0,
        le=1.0,
        description="Drop a mask whose IoU with a higher-scoring mask of another class exceeds this (one label "
        "per object); null keeps both for the qc stage's class_conflict rule.",
    )
    max_det: int = Field(100, ge=1, description="Maximum instances per image.")


class SamAutoStage(_ModelStage):
    """Segment Anything's automatic mode: class-agnostic masks from a point grid (SA-1B defaults), all of class
    `category`."""

    def issues(self, name: str, names: set[str], needs_roles: list[str]) -> list[tuple[str, str]]:
        if self.category in names:
            return []
        hint = f"add it, e.g. {{id: 99, name: {self.category}}}"
        return [(f"stages.{name}.category", f"{self.category!r} is not a class of the ontology; {hint}")]

    kind: Literal["sam_auto"]
    model_type: Literal["auto", "vit_b", "vit_l", "vit_h"] = Field(
        "auto", description="Architecture of a plain SAM state dict; 'auto' infers it."
    )
    category: str = Field("object", description="Ontology class every mask gets.")
    points_per_side: int = Field(32, ge=1, description="Point grid per side (SA-1B: 32).")
    points_per_batch: int = Field(64, ge=1, description="Points per decoder call.")
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0, description="Predicted IoU minimum (SA-1B: 0.88).")
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0, description="Stability score minimum (SA-1B: 0.95).")
    stability_score_offset: float = Field(1.0, ge=0.0, description="Logit offset of the stability score.")
    box_nms_thresh: float = Field(
        0.7, ge=0.0, le=1.0, description="Box IoU above which the lower-scoring mask is dropped."
    )
    crop_n_layers: int = Field(0, ge=0, description="Extra crop layers (0 = whole image only).")
    crop_nms_thresh: float = Field(0.7, ge=0.0, le=1.0, description="Box NMS between crops.")
    min_mask_region_area: int = Field(
        0, ge=0, description="Remove holes and islands smaller than this (pixels; needs OpenCV)."
    )


_Action = Literal["reject", "flag", "off"]


class _MinRule(_Strict):
    min: float
    action: _Action


class _AreaMin(_Strict):
    min_px: float = Field(25, ge=0)
    min_frac: float = Field(0.0, ge=0, le=1)
    action: _Action = "reject"


class _AreaMax(_Strict):
    max_frac: float = Field(0.9, ge=0, le=1)
    action: _Action = "flag"


class _Components(_Strict):
    max: int = Field(3, ge=1)
    action: _Action = "flag"


class _Duplicate(_Strict):
    iou: float = Field(0.85, ge=0, le=1)
    action: _Action = "reject"


class _ImageRule(_Strict):
    action: Literal["flag", "off"] = "flag"


class _CountOutlier(_Strict):
    mads: float = Field(5.0, gt=0)
    min: int = Field(10, ge=1)
    action: Literal["flag", "off"] = "flag"


class QcStage(_StageBase):
    """Quality checks on the masks of the segmenter stage it needs (see tasks/stages/qc.py for each rule)."""

    kind: Literal["qc"]
    predicted_iou: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.88, action="reject"),
        description="SAM predicted IoU minimum (SA-1B: 0.88).",
    )
    stability: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.95, action="reject"),
        description="Stability score minimum, offset 1.0 (SA-1B: 0.95).",
    )
    min_area: _AreaMin = Field(default_factory=_AreaMin)
    max_area: _AreaMax = Field(default_factory=_AreaMax)
    mask_box_iou: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.6, action="reject"),
        description="IoU of the mask's box with its prompt box.",
    )
    components: _Components = Field(default_factory=_Components)
    duplicate: _Duplicate = Field(default_factory=_Duplicate)
    class_conflict: _Duplicate = Field(default_factory=lambda: _Duplicate(iou=0.85, action="flag"))
    panoptic_agreement: _MinRule = Field(
        default_factory=lambda: _MinRule(min=0.5, action="flag"),
        description="Mask IoU of each thing with the best panoptic segment of its class (only "
        "when the qc stage also needs a panoptic stage).",
    )
    no_labels: _ImageRule = Field(default_factory=_ImageRule)
    count_outlier: _CountOutlier = Field(default_factory=_CountOutlier)
    export_review: bool = Field(
        False,
        description="Also put the masks with verdict `review` in coco/instances.json (they are always in "
        "review/; accepted masks are always exported, rejected ones never).",
    )
    review_samples: int = Field(24, ge=0, description="Masks per verdict drawn on the contact sheets.")


#: Public names of the stage settings bases, for adapters registered by other packages.
StageSettings = _StageBase
ModelStageSettings = _ModelStage


def _stage_union() -> Any:
    """The discriminated union of every registered kind's settings model (by ``kind``)."""
    from segflow.tasks.stages.registry import config_class

    classes = list(dict.fromkeys(config_class(k) for k in ADAPTERS))
    return Annotated[functools.reduce(operator.or_, classes), Field(discriminator="kind")]


Stage = _stage_union()


class RuntimeConfig(_Strict):
    task_runner: Literal["threads", "dask", "ray"] = Field(
        "threads",
        description="How shard tasks run: a bounded thread pool in this process, or a Dask "
        "/ Ray cluster (local unless `address` is given).",
    )
    max_workers: int = Field(
        2,
        ge=1,
        description="Shard tasks at once: threads, or worker processes of a local Dask / CPUs of a local Ray cluster.",
    )
    address: str | None = Field(
        None,
        description="Existing cluster for dask (tcp://scheduler:8786) or ray (ray://head:10001, "
        "or 'auto'); default: start a local one.",
    )
    gpus_per_shard: float = Field(
        0.0, ge=0, description="GPUs each shard task requests on Dask (resources={'GPU': n}) or Ray (num_gpus=n)."
    )
    retries: int = Field(0, ge=0, description="Prefect retries of a failed shard task.")
    retry_delay_s: float = Field(5.0, ge=0, description="Seconds between retries.")
    prefetch: int = Field(
        4,
        ge=1,
        description="Threads reading and decoding a shard's images; they keep one batch plus this many images "
        "read ahead of the models.",
    )
    malloc_tuning: bool = Field(
        True,
        description="Worker processes keep freed memory for the next tensor (glibc malloc thresholds, "
        "see tasks/stages/allocator.py): CPU inference otherwise page-faults on every "
        "large allocation. No effect off glibc.",
    )
    max_failed_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A shard fails (and is not committed) when a larger share of its images cannot be read or decoded.",
    )


class AcceptConfig(_Strict):
    """Which masks are accepted (exported), sent to review or rejected: see docs/gold-sets.md."""

    precision: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Target precision of the accepted labels; per-class thresholds are fitted on the gold set "
        "(`gold_set`) for the highest recall at it.",
    )
    review_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Lower edge of the review band: per class, the highest threshold whose recall on the gold "
        "set reaches this; labels below it are rejected.",
    )
    score: Literal["detector", "combined"] = Field(
        "detector",
        description="What is thresholded: `detector` (its confidence) or `combined` (a per-class logistic model "
        "of detector score, predicted IoU, stability, area and the best other-class label at the same place, "
        "fitted on the gold matches; for gold sets of a few hundred instances per class and more).",
    )
    calibration: str | None = Field(
        None,
        description="A saved calibration.json (of an earlier run on the same ontology) applied as it is: "
        "nothing is fitted, `gold_set` only reports.",
    )
    folds: int = Field(5, ge=2, description="k of the k-fold over gold images that estimates held-out precision.")
    min_gold: int = Field(10, ge=1, description="Gold instances a class needs for a threshold; fewer: review.")
    novelty: bool = Field(
        True,
        description="Send to review (reason `novel`) an otherwise accepted mask whose shape is unlike the gold "
        "set's right masks of its class beyond the class's held-out limit (docs/gold-sets.md); false reports the "
        "score (manifest column `novelty`) only.",
    )
    on_drift: Literal["warn", "review", "fail"] = Field(
        "warn",
        description="When this run's images or masks do not look like the calibration's gold set (a drift check "
        "of brightness, contrast, sharpness, JPEG quality, size, masks per image and per-class scores; "
        "docs/gold-sets.md): `warn` (say so wherever the calibration's precision is shown), `review` (what would "
        "be accepted goes to review, reason `drift`) or `fail` (nothing is exported).",
    )


class PublishConfig(_Strict):
    dest: str = Field(..., min_length=1, description="Bucket prefix (or folder) that holds the published versions.")
    version: str | None = Field(None, description="Version name; default: UTC time + run digest. Never overwritten.")


class ExportConfig(_Strict):
    format: Literal["label-studio", "cvat", "yolo-seg", "coco"] = Field(
        ..., description="Interchange format (docs/formats/)."
    )
    dest: str = Field(..., min_length=1, description="Where to write it (folder, file or any fsspec URL).")
    verdicts: Literal["review", "accept", "all"] | None = Field(
        None, description="Which labels go out; default: review for label-studio and cvat, accept otherwise."
    )


class JobConfig(_Strict):
    """A labeling job."""

    name: str = Field("segflow-job", min_length=1, description="Job name (flow run name, summary).")
    source: SourceConfig = Field(..., description="Where the images are (below).")
    output: str = Field(..., min_length=1, description="Output folder or prefix (any fsspec URL or local path).")
    shard_size: int = Field(1000, ge=1, description="Images per shard (one Prefect task each).")
    ontology: list[OntologyClass] = Field(..., description="Classes with stable integer ids.")
    stages: dict[str, Stage] = Field(..., description="Named stages; `needs` makes them a DAG.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Where and how shard tasks run.")
    exports: list[ExportConfig] = Field(
        default_factory=list,
        description="Interchange files written after each finished run, before publishing (see `segflow export`).",
    )
    publish: PublishConfig | None = Field(
        None, description="Publish the finished run as a new dataset version (see `segflow publish`)."
    )
    credentials_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block with S3 credentials (JSON: aws_access_key_id, "
        "aws_secret_access_key, optional aws_session_token, endpoint_url), used "
        "for every s3:// URL of the job. Default: the environment / AWS profiles.",
    )
    incremental: bool = Field(
        False,
        description="Each run on an existing output also plans the source keys no earlier run "
        "planned (a growing prefix): only those are labelled, finalize merges all, "
        "and `publish` makes a new version.",
    )
    gold_set: str | None = Field(
        None,
        description="COCO instances file with human labels for some images (matched by file "
        "name): the run reports AP and mask IoU against it.",
    )
    accept: AcceptConfig = Field(
        default_factory=AcceptConfig,
        description="Acceptance: with `gold_set` (or `calibration`) per-class thresholds make each mask's verdict "
        "accept / review / reject; without either, QC verdicts alone decide.",
    )
    gold_panoptic: str | None = Field(
        None,
        description="COCO panoptic JSON with human labels for some images, its PNGs in the "
        "folder of the same name without .json (COCO convention): the run reports "
        "PQ, SQ, RQ and mIoU of the panoptic output against it.",
    )
    gold_semantic: str | None = Field(
        None,
        description="Folder of label PNGs (one byte per pixel: the ontology id, 0 = void), named like the images "
        "with .png: the run reports pixel accuracy, per-class IoU, mIoU and the confusion matrix of its "
        "semantic maps against them.",
    )

    # -- derived ---------------------------------------------------------------------
    def category_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.ontology}

    def stage_order(self) -> list[str]:
        """Stage names in dependency order (validated acyclic)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for d in self.stages[n].needs:
                visit(d)
            order.append(n)

        for name in self.stages:
            visit(name)
        return order

    def chunk_size(self) -> int:
        """Images handed to the stages at a time: the largest numeric batch size."""
        return max([b for s in self.stages.values() if isinstance(b := getattr(s, "batch_size", None), int)] or [1])

    def qc_stage(self) -> QcStage | None:
        return next((s for n, s in self.stages.items() if self.role(n) == "qc"), None)

    def sink_stages(self) -> list[str]:
        """Stages no other stage needs."""
        needed = {d for s in self.stages.values() for d in s.needs}
        return [n for n in self.stage_order() if n not in needed]

    def role(self, name: str) -> str:

        return ADAPTERS[self.stages[name].kind].role

    def instance_sinks(self) -> list[str]:
        """Instance-mask stages (segmenter, qc, instance labelers) whose rows no other instance stage refines: the
        ``masks`` manifest."""
        inst = ("segmenter", "qc", "instances")
        refined = {d for n, s in self.stages.items() if self.role(n) in inst for d in s.needs}
        return [n for n in self.stage_order() if self.role(n) in inst and n not in refined]

    def panoptic_sink(self) -> str | None:
        """The stage whose segments make the panoptic output: the merge stage, else the one panoptic stage."""
        for role in ("merge", "panoptic"):
            names = [n for n in self.stage_order() if self.role(n) == role]
            if names:
                return names[0]
        return None


def rebuild_stage_union() -> None:
    """Rebuild the job model after a stage kind was registered or removed (see ``register_adapter``)."""
    global Stage
    Stage = _stage_union()
    JobConfig.model_fields["stages"].annotation = dict[str, Stage]
    JobConfig.model_rebuild(force=True)


def job_json_schema() -> dict:
    """JSON Schema of the job file (for editors: `segflow schema > job.schema.json`)."""
    schema = JobConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "segflow job"
    return schema
