"""The typed records that cross module boundaries, in one small module the rest imports (no segflow imports).

* :class:`Verdict` -- what happens to a mask: ``accept`` (exported), ``review`` (to people), ``reject``; and
  :class:`QcVerdict`, what a QC rule says of it: ``pass``, ``flag``, ``reject``. String enums: they compare equal
  to, and serialise as, the strings the manifests and JSON files hold.
* :class:`Role` -- what a stage kind consumes and makes (:mod:`segflow.tasks.stages.registry`).
* :data:`VERDICT_COLOURS` -- one colour per verdict (and ``novel``, the review band's shapes unlike the gold set),
  for every plot and contact sheet.
* :class:`ShardResult` -- one shard's run, as its task returns it to the flow.
* :class:`ExportResult` -- what an export wrote (:func:`segflow.tasks.formats.export`).
* :class:`Publication` -- a run published as a dataset version (:func:`segflow.tasks.ops.publish.publish`).
* :class:`RunSummary` -- a finished run, as ``OUTPUT/summary.json`` holds it (docs/outputs.md): what
  :func:`segflow.tasks.finalize.finalizer.finalize` returns and the CLI, the flow, the report and publish read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "INSTANCE_ROLES",
    "PASS_THROUGH_ROLES",
    "ExportResult",
    "Publication",
    "QcVerdict",
    "Role",
    "RunSummary",
    "ShardResult",
    "VERDICT_COLOURS",
    "Verdict",
    "rgb",
]


class Verdict(StrEnum):
    ACCEPT = "accept"
    REVIEW = "review"
    REJECT = "reject"


class QcVerdict(StrEnum):
    PASS = "pass"
    FLAG = "flag"
    REJECT = "reject"


class Role(StrEnum):
    DETECTOR = "detector"
    SEGMENTER = "segmenter"
    QC = "qc"
    TRACKER = "tracker"
    INSTANCES = "instances"
    PANOPTIC = "panoptic"
    MERGE = "merge"


#: Roles whose stages produce instance masks, the order an input is looked for among a stage's needs.
INSTANCE_ROLES: tuple[str, ...] = (Role.SEGMENTER, Role.QC, Role.TRACKER, Role.INSTANCES)
#: Instance roles that pass the rows of the stage they need through, adding fields (a verdict, a track id).
PASS_THROUGH_ROLES: tuple[str, ...] = (Role.QC, Role.TRACKER)


#: hex colours of the verdicts (and of ``novel``), for plots and contact sheets alike
VERDICT_COLOURS: dict[str, str] = {"accept": "#2bbd5a", "review": "#f2b705", "reject": "#e5413a", "novel": "#50b4ff"}


def rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` as an (r, g, b) tuple of ints."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@dataclass
class ShardResult:
    """One shard's run (:func:`segflow.tasks.shard.runner.run_shard`): counts, seconds, and which worker ran it."""

    shard_id: str
    images: int
    ok: int
    failed: int
    masks: int
    seconds: float
    skipped: bool  # already committed before this run
    worker_pid: int = 0  # process that ran the shard
    model_loads: int = 0  # models this shard had to load (0 when the worker process had them already)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunSummary:
    """``summary.json`` (docs/outputs.md). Optional sections are None where the run has none (and absent from
    the file); keys a newer segflow wrote are kept in ``extra`` and written back as they were."""

    job: str
    images: int
    labelled_images: int
    failed_images: int
    images_without_masks: int
    masks: int
    masks_per_category: dict[str, int]
    verdicts: dict[str, int]
    shards: int
    outputs: dict[str, str]
    finished_at: str
    commits_digest: str
    coco_annotations: int = 0
    review_annotations: int = 0
    calibration: dict[str, Any] | None = None
    estimate: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    qc: dict[str, Any] | None = None
    panoptic: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    tracks: dict[str, Any] | None = None
    seconds: float | None = None
    report_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # what the flow adds for its caller (not in summary.json): per shard, the worker that ran it and the models
    # it loaded; the exports and the publication the job asked for
    shard_runs: list[ShardResult] | None = field(default=None, metadata={"file": False})
    exported: list[ExportResult] | None = field(default=None, metadata={"file": False})
    published: Publication | None = field(default=None, metadata={"file": False})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """From ``summary.json``'s content; a required key missing raises KeyError naming it."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("file", True)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in known]
        if missing:
            raise KeyError(f"summary.json: missing {', '.join(missing)}")
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """``summary.json``'s content: the fields in order, None sections left out, then ``extra``."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and f.metadata.get("file", True)
        }
        return {k: v for k, v in out.items() if v is not None} | self.extra


@dataclass(frozen=True)
class Publication:
    """A published dataset version: its name, its URL (credentials removed), whether this call created it (False:
    the same run was published already) and how many files it holds."""

    version: str
    url: str
    created: bool
    files: int


@dataclass(frozen=True)
class ExportResult:
    """An export: its format, the verdicts it took, where it went (``file``: the one file written, when the format
    writes one), how many images and masks; ``details``: what the format counts besides (e.g. train / val)."""

    format: str
    verdicts: str
    dest: str
    images: int
    masks: int
    file: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def written_to(self) -> str:
        return self.file or self.dest
