"""The JSON documents segflow writes and reads back, typed: one :class:`~typing.TypedDict` per document (and per
part that more than one module reads), so a key spelled wrong is a type error, not a ``KeyError`` at run time.

They describe the files exactly as they are on disk (docs/outputs.md), which is why they are TypedDicts and not
dataclasses: a document is read with ``json.loads`` and written with ``json.dumps`` unchanged, and files written
by earlier versions keep reading. Records made and read in memory are dataclasses (:mod:`segflow.tasks.records`).

* :class:`CommitRecord` -- ``OUTPUT/shards/<id>/commit-<generation>.json`` (:mod:`segflow.tasks.shard.commit`);
  :class:`ErrorRecord` -- a failed shard's ``error.json``.
* :class:`PlanMeta` -- ``OUTPUT/plan/plan.json`` (:mod:`segflow.tasks.plan.planner`).
* :class:`Calibration` -- ``calibration.json`` (:mod:`segflow.tasks.evaluate.calibration`), with
  :class:`ClassCalibration`, :class:`HeldOut`, :class:`ScoreModel`, :class:`Reliability` and
  :class:`NoveltyReference`; :class:`DriftHistograms` (its ``reference``, :mod:`segflow.tasks.evaluate.drift`).
* :class:`Quality` -- ``quality.json`` (:mod:`segflow.tasks.evaluate.quality`), with :class:`SetCounts`,
  :class:`ClassQuality`, :class:`PanopticScores` and :class:`SemanticScores`.
* :class:`ReportSamples` -- ``report/samples.json`` (:mod:`segflow.tasks.report.sampler`).
* :class:`CompressedRle` -- a compressed COCO RLE (``{"size": [h, w], "counts": str}``); :class:`CocoDataset`
  -- a COCO file as read.
* :class:`ReviewImport` -- a review import's ``changes.json``; :class:`ReviewEstimate` -- its ``estimate.json``
  (:mod:`segflow.tasks.ops.review`).
* :class:`ExportCounts` -- what the finalize-time exports wrote (``coco``, ``review``, ``panoptic``, ``qc``).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "Calibration",
    "ClassCalibration",
    "ClassQuality",
    "CocoDataset",
    "CompressedRle",
    "CommitRecord",
    "CommittedFile",
    "DriftHistograms",
    "ErrorRecord",
    "ExportCounts",
    "HeldOut",
    "NoveltyReference",
    "PanopticScores",
    "PlanMeta",
    "Quality",
    "QcReportCounts",
    "Reliability",
    "ReportSamples",
    "ReviewEstimate",
    "ReviewImport",
    "ScoreModel",
    "SemanticScores",
    "SetCounts",
]


class CommittedFile(TypedDict):
    """One file of a commit: its key relative to OUTPUT, rows, size and digest."""

    path: str
    rows: int
    bytes: int
    sha256: str


class CommitRecord(TypedDict):
    """A shard's commit record: which attempt's files are the shard's output (the commit protocol:
    :mod:`segflow.tasks.shard.commit`)."""

    shard_id: str
    attempt: str
    fingerprint: str
    files: dict[str, CommittedFile]
    stats: dict[str, Any]
    generation: int
    committed_at: str
    timing: NotRequired[dict[str, Any]]


class ErrorRecord(TypedDict):
    """A shard's last failure, kept until the shard commits."""

    shard_id: str
    error: str
    at: str


class PlanMeta(TypedDict):
    """The plan's index: the shards in order, and the generations (incremental runs) that hold their rows."""

    shard_ids: list[str]
    num_images: int
    num_shards: int
    generations: NotRequired[list[dict[str, Any]]]


class HeldOut(TypedDict):
    """Held-out (cross-validated) counts of labels at a threshold, with Wilson 95% intervals."""

    tp: int
    fp: int
    fn: int
    precision: float | None
    precision_ci95: list[float] | None
    recall: float | None
    recall_ci95: list[float] | None


class ScoreModel(TypedDict):
    """A logistic model over standardised features: ``sigmoid(((x - mean) / scale) . coef + intercept)``."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float


class Reliability(TypedDict):
    """P(right | score) as non-decreasing breakpoints (isotonic regression)."""

    x: list[float]
    y: list[float]


class NoveltyReference(TypedDict):
    """A class's reference of gold right-mask shapes (:mod:`segflow.tasks.evaluate.novelty`)."""

    features: list[str]
    k: int
    limit: float
    all: dict[str, Any]
    groups: dict[str, dict[str, Any] | None]
    right_masks: int
    heldout_kept: float


class ClassCalibration(TypedDict):
    """One class's entry of a calibration: ``status`` ``calibrated`` (with a ``threshold``) or ``review``."""

    category_id: int
    gold_instances: int
    labels: int
    threshold: float | None
    review_threshold: float | None
    model: ScoreModel | None
    reliability: Reliability
    mask_check: dict[str, float] | None
    novelty: NoveltyReference | None
    heldout: HeldOut
    heldout_with_review: HeldOut
    status: str
    reason: NotRequired[str]
    curve: NotRequired[dict[str, Any]]


class DriftHistograms(TypedDict):
    """Binned image and mask features of a set of images (:func:`segflow.tasks.evaluate.drift.histograms`);
    as a calibration's reference it also carries the ``bins``."""

    images: int
    features: dict[str, list[int]]
    classes: dict[str, dict[str, Any]]
    bins: NotRequired[dict[str, dict[str, Any]]]


class Calibration(TypedDict):
    """``calibration.json``: per-class thresholds for a target precision, fitted on a gold set."""

    version: int
    ontology: dict[str, str]
    score: str
    target_precision: float
    review_recall: float
    folds: int
    min_gold: int
    min_kept: int
    gold_images: int
    novelty_in_thresholds: bool
    classes: dict[str, ClassCalibration]
    heldout: HeldOut
    heldout_with_review: HeldOut
    warnings: list[str]
    gold_set: NotRequired[str | None]
    reference: NotRequired[DriftHistograms]
    applied_from: NotRequired[str]


class SetCounts(TypedDict):
    """The labels as a set against the gold set: one-to-one matches at mask IoU >= 0.5."""

    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None


class ClassQuality(SetCounts):
    """One class's row of :class:`Quality` ``per_class``."""

    category_id: int
    name: str
    gold_instances: int
    predictions: int
    box_ap50: float | None
    mask_ap50: float | None
    mask_ap: float | None
    mean_mask_iou: float | None
    with_review: SetCounts


class PanopticScores(TypedDict):
    """PQ / SQ / RQ overall, of things and of stuff, per class; with mIoU where measured."""

    pq: float | None
    sq: float | None
    rq: float | None
    things: dict[str, Any]
    stuff: dict[str, Any]
    per_class: dict[str, dict[str, Any]]
    miou: NotRequired[float | None]
    per_class_iou: NotRequired[dict[str, float]]
    images: NotRequired[int]
    gold: NotRequired[str]


class SemanticScores(TypedDict, total=False):
    """Semantic segmentation against gold maps: mIoU, per-class IoU, pixel accuracy, the confusion matrix; in
    ``quality.json`` also the ``images`` compared and the ``gold`` folder (only those two when none was)."""

    images: int
    gold: str
    miou: float | None
    per_class_iou: dict[str, float]
    pixel_accuracy: float | None
    confusion: dict[str, Any]


class Quality(TypedDict, total=False):
    """``quality.json``: the run measured against its gold sets (instances; panoptic and semantic where given)."""

    images: int
    gold_instances: int
    predictions: int
    box_ap: float | None
    box_ap50: float | None
    mask_ap: float | None
    mask_ap50: float | None
    mean_mask_iou: float | None
    set: SetCounts
    set_with_review: SetCounts
    per_class: list[ClassQuality]
    confusion: dict[str, Any]
    gold_categories_not_in_ontology: list[Any]
    panoptic: PanopticScores
    pq: float | None
    sq: float | None
    rq: float | None
    miou: float | None
    semantic: SemanticScores
    semantic_miou: float | None
    drift: dict[str, Any]
    estimate: dict[str, float | None]


class ReportSamples(TypedDict):
    """``OUTPUT/report/samples.json``: the bounded samples finalize gathers for the report
    (:mod:`segflow.tasks.report.sampler`)."""

    version: int
    per_cell: int
    counts: list[dict[str, Any]]
    novel: dict[str, int]
    samples: dict[str, list[dict[str, Any]]]
    failures: list[dict[str, Any]]
    failure_kinds: dict[str, int]
    previews: list[dict[str, Any]]
    models: list[str]


class CocoDataset(TypedDict, total=False):
    """A COCO file (instances or panoptic) as read: its lists of dicts are checked where they are used."""

    info: dict[str, Any]
    licenses: list[dict[str, Any]]
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]


class CompressedRle(TypedDict):
    """A compressed COCO RLE as the COCO files hold it: ``size`` ``[h, w]``, ``counts`` the run-length string."""

    size: list[int]
    counts: str


class QcReportCounts(TypedDict):
    """What :func:`segflow.tasks.outputs.qc_report.write_qc_report` wrote."""

    verdicts: dict[str, int]
    rules: dict[str, int]
    image_flags: dict[str, int]
    report: str


class ExportCounts(TypedDict):
    """What finalize's exports wrote: annotations and images per file, the panoptic segments, the QC report."""

    coco: dict[str, int]
    review: dict[str, int]
    panoptic: dict[str, int] | None
    qc: QcReportCounts | None


class TrackExports(TypedDict):
    """What finalize's video exports wrote (``summary.json``'s ``tracks``): videos, tracks and exported tracks, the
    tracks' score threshold, its fit on the gold videos (``fit``) and the exported tracks' quality on them (``gold``;
    optimistic: the threshold was fitted there)."""

    videos: int
    tracks: int
    exported: int
    threshold: float | None
    fit: dict[str, float | int | None] | None
    gold: dict[str, float | int | None] | None


class ReviewEstimate(TypedDict):
    """``reviews/<version>/estimate.json``: the exported set's precision and recall estimated from a review
    batch's audit, with 95% intervals (:mod:`segflow.tasks.ops.review_batch`)."""

    batch: str
    precision: float | None
    precision_low: float | None
    precision_high: float | None
    recall: float | None
    recall_low: float | None
    recall_high: float | None
    audited_masks: int
    audited_images: int
    exported: int
    per_class: dict[str, dict[str, float | int | None]]


class ReviewImport(TypedDict):
    """What importing a review file did: ``OUTPUT/reviews/<version>/changes.json`` (docs/review.md)."""

    version: str
    base: str
    review_file: str
    format: str
    review_sha256: str
    imported_at: str
    images_reviewed: int
    image_ids: NotRequired[list[int]]  # the images reviewed (imports before the review loop did not say)
    counts: dict[str, int]
    labels: int
    labels_by_source: dict[str, int]
    labels_checked: int
    annotation_ids: dict[str, list[int]]
    estimate: NotRequired[ReviewEstimate]
