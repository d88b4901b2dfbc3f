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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from segflow.tasks.io.images import DEFAULT_MAX_PIXELS
from segflow.tasks.io.video import VIDEO_SUFFIXES
from segflow.tasks.records import INSTANCE_ROLES
from segflow.tasks.stages.registry import ADAPTERS, config_class, on_registry_change
from segflow.tasks.stages.settings import ModelStageSettings, StageSettings, Strict, TilesConfig
from segflow.tasks.stages.settings.instances import MaskRcnnStage, YoloSegStage
from segflow.tasks.stages.settings.mask2former import Mask2FormerStage
from segflow.tasks.stages.settings.owl import OwlStage
from segflow.tasks.stages.settings.panoptic import PanopticMergeStage
from segflow.tasks.stages.settings.qc import QcStage
from segflow.tasks.stages.settings.sam import SamStage
from segflow.tasks.stages.settings.sam2 import Sam2Stage
from segflow.tasks.stages.settings.sam3 import Sam3Stage
from segflow.tasks.stages.settings.sam_auto import SamAutoStage
from segflow.tasks.stages.settings.semantic import SemanticStage
from segflow.tasks.stages.settings.track import TrackStage
from segflow.tasks.stages.settings.yolo import YoloStage

__all__ = [
    "DEFAULT_EXTENSIONS",
    "JobConfig",
    "ModelStageSettings",
    "StageSettings",
    "TilesConfig",
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
    "TrackStage",
    "Sam2Stage",
    "Sam3Stage",
    "SamStage",
    "SourceConfig",
    "VideoSourceConfig",
    "YoloSegStage",
    "YoloStage",
    "job_json_schema",
]

DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"]
_STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class VideoSourceConfig(Strict):
    # videos: video files (mp4, mov, mkv, webm) and frame folders, labelled frame by frame in clips (docs/video.md);
    # no docstring, so docs/config.md lists its keys under `source.video.` (segflow.config.reference)

    every: int | None = Field(None, ge=1, description="Label every N-th frame (default: every frame, unless `fps`).")
    fps: float | None = Field(
        None, gt=0, description="Label about this many frames a second: the frame nearest each tick (not with `every`)."
    )
    max_side: int | None = Field(
        None, ge=16, description="Frames larger than this on their long side are scaled down to it first."
    )
    clip_frames: int = Field(64, ge=1, description="Labelled frames per clip; a clip is a shard (one video each).")
    clip_overlap: int = Field(
        4,
        ge=0,
        le=64,
        description="Labelled frames of the clip before that a clip labels again first, not for the manifests: "
        "its trackers start warm, and finalize joins the clips' tracks on them (track ids global per video). "
        "Only with a stage that makes tracks.",
    )
    extensions: builtins.list[str] = Field(
        default_factory=lambda: [*VIDEO_SUFFIXES], description="Video file extensions (case-insensitive)."
    )
    frame_folders: bool = Field(
        True,
        description="A folder of image files is one video, its frames in name order (every image of the source "
        "is then a frame of its folder's video).",
    )
    folder_fps: float | None = Field(
        None, gt=0, description="Frame rate of frame folders: their frames' timestamps and `fps` sampling."
    )

    @model_validator(mode="after")
    def _one_rate(self) -> VideoSourceConfig:
        if self.every is not None and self.fps is not None:
            raise ValueError("give 'every' or 'fps', not both")
        return self


class SourceConfig(Strict):
    """Where the images are: a URL/path with an optional glob, or a text file listing URIs; with `video`, where
    the videos are."""

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
    video: VideoSourceConfig | None = Field(
        None, description="Label videos: the source's video files and frame folders, frame by frame, in clips."
    )

    @model_validator(mode="after")
    def _one_of(self) -> SourceConfig:
        if (self.url is None) == (self.list is None):
            raise ValueError("give exactly one of 'url' (a folder or prefix) or 'list' (a file listing URIs)")
        if self.pattern is not None and self.url is None:
            raise ValueError("'pattern' applies to 'url', not to 'list'")
        return self


class OntologyClass(Strict):
    id: int = Field(..., ge=1, description="Stable category id (COCO category_id), >= 1.")
    name: str = Field(..., min_length=1, description="Class name.")
    isthing: bool = Field(True, description="Countable object (thing) or amorphous region (stuff).")
    prompts: list[str] = Field(
        default_factory=list,
        description="Text prompts for open-vocabulary detectors (synonyms of this class); default: the name.",
    )

    def text_prompts(self) -> list[str]:
        return list(self.prompts) or [self.name]


def _stage_union() -> Any:
    """The discriminated union of every registered kind's settings model (by ``kind``), from the registry."""
    classes = list(dict.fromkeys(config_class(k) for k in ADAPTERS))
    return Annotated[functools.reduce(operator.or_, classes), Field(discriminator="kind")]


if TYPE_CHECKING:  # what type checkers see: any kind's settings (the union is built at run time, from the registry)
    Stage = StageSettings
else:
    Stage = _stage_union()


class RuntimeConfig(Strict):
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
        description="A shard fails (and is not committed) when a larger share of its images cannot be read or decoded "
        "(not a clip of a video file: a video that cannot be read is recorded as failed, with its reason).",
    )


class AcceptConfig(Strict):
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


class PublishConfig(Strict):
    dest: str = Field(..., min_length=1, description="Bucket prefix (or folder) that holds the published versions.")
    version: str | None = Field(None, description="Version name; default: UTC time + run digest. Never overwritten.")


class ExportConfig(Strict):
    format: Literal["label-studio", "cvat", "yolo-seg", "coco"] = Field(
        ..., description="Interchange format (docs/formats/)."
    )
    dest: str = Field(..., min_length=1, description="Where to write it (folder, file or any fsspec URL).")
    verdicts: Literal["review", "accept", "all"] | None = Field(
        None, description="Which labels go out; default: review for label-studio and cvat, accept otherwise."
    )


class JobConfig(Strict):
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
    gold_video: str | None = Field(
        None,
        description="YouTube-VIS JSON with human-labelled tracks for some videos (matched by name: the video's key "
        "without extension): the run fits the tracks' score threshold for `accept.precision` on them and reports "
        "the tracks' precision and recall (docs/video.md).",
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
        return next((s for n, s in self.stages.items() if self.role(n) == "qc" and isinstance(s, QcStage)), None)

    def sink_stages(self) -> list[str]:
        """Stages no other stage needs."""
        needed = {d for s in self.stages.values() for d in s.needs}
        return [n for n in self.stage_order() if n not in needed]

    def role(self, name: str) -> str:

        return ADAPTERS[self.stages[name].kind].role

    def tracks(self) -> bool:
        """Whether a stage links masks into tracks (a video job's ``track`` stage)."""
        return any(ADAPTERS[s.kind].makes_tracks for s in self.stages.values())

    def instance_sinks(self) -> list[str]:
        """Instance-mask stages (segmenter, qc, instance labelers) whose rows no other instance stage refines: the
        ``masks`` manifest."""
        inst = INSTANCE_ROLES
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
    """Rebuild the job model after a stage kind was registered or removed (``register_adapter`` calls it: the
    registry knows this module only as a listener)."""
    global Stage
    Stage = _stage_union()
    JobConfig.model_fields["stages"].annotation = dict[str, Stage]
    JobConfig.model_rebuild(force=True)


on_registry_change(rebuild_stage_union)


def job_json_schema() -> dict:
    """JSON Schema of the job file (for editors: `segflow schema > job.schema.json`)."""
    schema = JobConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "segflow job"
    return schema
