"""Finalize: merge committed shards into the manifests, export COCO, write the summary.

Reads only files named by commit records, each once (one pass over the
shards feeds the manifests, COCO, panoptic JSON, QC report and gold-set
match), and refuses to produce anything
when a planned shard is not committed (naming the missing shards and their
last errors), so a dataset is never partial.

Outputs (see docs/outputs.md)::

    manifest/masks.parquet/part-<shard_id>.parquet   one file per shard
    manifest/images.parquet/part-<shard_id>.parquet
    manifest/panoptic.parquet/part-<shard_id>.parquet  (with a panoptic stage)
    manifest/_parts.json                             sha256 and size of each part
    coco/instances.json                              the accepted masks
    review/instances.json, review/masks.parquet/     the review band (images with a review mask)
    calibration.json, qc/pr_curves.png               (with a gold set or a saved calibration)
    coco/panoptic.json, coco/panoptic/<image_id>.png, semantic/<image_id>.png  (with a panoptic stage; things
        drawn only while their mask's verdict is exported: panoptic_export.at_operating_point)
    quality.json  (with a gold set)
    summary.json
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segflow.tasks.documents import (
    Calibration,
    CommitRecord,
    DriftHistograms,
    ExportCounts,
    Quality,
    TrackExports,
)
from segflow.tasks.evaluate.semantic_audit import SemanticAudit, class_areas
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import open_fs, read_json, redact, write_bytes
from segflow.tasks.outputs.coco import InstancesWriter
from segflow.tasks.outputs.manifest import ANNOTATION_ID_STRIDE
from segflow.tasks.outputs.panoptic_export import (
    PanopticJsonWriter,
    at_operating_point,
    evaluate_panoptic_files,
    panoptic_categories,
    png_name,
    render_shard,
    rendered_marker,
)
from segflow.tasks.outputs.qc_report import QcAccumulator, write_qc_report
from segflow.tasks.outputs.tracks import TrackRule, TrackStitcher
from segflow.tasks.outputs.video_exports import VideoExports
from segflow.tasks.plan.planner import iter_plan_batches
from segflow.tasks.records import RunSummary
from segflow.tasks.report import ReportSampler, write_report
from segflow.tasks.shard.commit import (
    IncompleteRunError,
    collect_commits,
    commits_digest,
    parse_committed,
    read_committed_bytes,
)
from segflow.tasks.stages.registry import ADAPTERS
from segflow.tasks.stages.settings.track import TrackAcceptance, TrackJoin

if TYPE_CHECKING:
    from segflow.config.schema import JobConfig


__all__ = ["IncompleteRunError", "finalize", "output_paths"]  # IncompleteRunError: from shard.commit

log = logging.getLogger("segflow.finalize")


def output_paths(layout: OutputLayout) -> dict[str, str]:
    return {
        "masks": layout.manifest("masks"),
        "images": layout.manifest("images"),
        "coco_instances": layout.coco_instances,
        "summary": layout.summary,
    }


def _previous_summary(fs: Any, url: str) -> RunSummary | None:
    """The summary an earlier finalize wrote; None where there is none, or none this segflow can read."""
    _, path = open_fs(url)
    try:
        return RunSummary.from_dict(json.loads(fs.cat_file(path)))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # not a summary: finalize again
        return None


def _replace_dir(fs: Any, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)


class GoldMatch:
    """The labels of the gold set's images (QC rejects left out), gathered shard by shard, then evaluated or fitted.

    ``features``: also keep each label's acceptance features (``x``), for fitting a combined score.
    """

    _COLUMNS = ["annotation_id", "image_id", "category_id", "score", "rle_counts", "bbox", "prompt_box", "shape"]

    def __init__(self, job: JobConfig, features: bool = False):
        from pathlib import PurePosixPath

        from segflow.tasks.evaluate.quality import load_gold

        self.job, self.features = job, features
        if job.gold_set is None:
            raise ValueError("GoldMatch needs a job with a gold_set")
        self.gold = load_gold(job.gold_set)
        names = [im["file_name"] for im in self.gold["images"]]
        self.wanted = set(names) | {PurePosixPath(n).name for n in names}
        self.file_names: dict[str, int] = {}
        self.sizes: dict[int, tuple[int, int]] = {}
        self.parts: list[pa.Table] = []  # the gold images' labels, shard by shard, in Arrow until evaluated
        self.histograms: DriftHistograms | None = None  # what the gold images and their masks look like (drift)

    def rows(self) -> Iterator[dict]:
        """The gathered labels as dicts (``x``: the acceptance features, when kept), one shard's at a time."""
        for t in self.parts:
            yield from t.to_pylist()

    def named(self, keys: Any) -> Any:
        """Bool mask over an Arrow array of keys: the gold set names the key or its base name (vectorised)."""
        wanted = pa.array(sorted(self.wanted), pa.string())
        base = pc.replace_substring_regex(keys, pattern=r"^.*/", replacement="")
        return pc.or_(pc.is_in(keys, value_set=wanted), pc.is_in(base, value_set=wanted))

    def image_ids(self, images: pa.Table) -> list[int]:
        """The gold images among a shard's decoded images (recording their names and sizes)."""
        ok = images.filter(pc.equal(images["status"], "ok"))
        ids = []
        for r in ok.filter(self.named(ok["file_name"])).to_pylist():
            self.file_names[r["file_name"]] = r["image_id"]
            self.sizes[r["image_id"]] = (r["height"], r["width"])
            ids.append(r["image_id"])
        return ids

    def add(self, images: pa.Table, masks: pa.Table) -> None:
        from segflow.tasks.evaluate.acceptance import features
        from segflow.tasks.evaluate.drift import histograms, merge

        ids = self.image_ids(images)
        if not ids:
            return
        ids_array = pa.array(ids, pa.int64())
        self.histograms = merge(
            self.histograms,
            histograms(images.filter(pc.is_in(images["image_id"], value_set=ids_array)), masks),
        )
        kept = pc.fill_null(pc.not_equal(masks["qc_verdict"], "reject"), True)
        t = masks.filter(pc.and_(kept, pc.is_in(masks["image_id"], value_set=pa.array(ids, pa.int64()))))
        labels = t.select(self._COLUMNS + (["verdict"] if "verdict" in t.column_names else []))
        if self.features:
            labels = labels.append_column("x", pa.array(features(t).tolist(), pa.list_(pa.float64())))
        self.parts.append(labels)

    def evaluate(self) -> Quality:
        from segflow.tasks.evaluate.quality import evaluate

        return evaluate(self.gold, self.job.category_names(), self.file_names, self.rows(), self.sizes)


def _acceptance(
    job: JobConfig, commits: list[CommitRecord], layout: OutputLayout, fs: Any, cache: dict[tuple[str, str], bytes]
) -> Calibration | None:
    """The calibration in force: ``accept.calibration`` as saved, or fitted now on the gold set; written to
    ``calibration.json`` (with the curves when fitted). None without either (QC verdicts alone decide).

    Fitting reads the shards the plan puts gold images in (their committed bytes are left in ``cache`` for the
    main pass, so each committed file is still read once).
    """

    from segflow.tasks.evaluate.acceptance import load_calibration
    from segflow.tasks.evaluate.calibration import fit_calibration

    accept = getattr(job, "accept", None)
    if accept is not None and accept.calibration:
        cal = load_calibration(accept.calibration, job.category_names()) | {"applied_from": redact(accept.calibration)}
    elif accept is not None and getattr(job, "gold_set", None):
        gm = GoldMatch(job, features=accept.score == "combined")
        shards = set()  # one pass over the plan: keys as the gold set names them, or their base names
        for b in iter_plan_batches(layout.root, ["shard_id", "key"]):
            shards.update(b.column("shard_id").filter(gm.named(b.column("key"))).to_pylist())
        for c in commits:
            if c["shard_id"] in shards:
                for name in ("images", "masks"):
                    cache[(c["shard_id"], name)] = read_committed_bytes(layout.root, c, name)
                gm.add(*(parse_committed(c, name, cache[(c["shard_id"], name)]) for name in ("images", "masks")))
        cal, png = fit_calibration(job, gm.gold, gm.file_names, gm.sizes, gm.rows())
        if gm.histograms is not None:
            from segflow.tasks.evaluate.drift import reference

            cal["reference"] = reference(gm.histograms)  # what the calibration saw: later runs are checked against it
        _, path = open_fs(layout.pr_curves)
        write_bytes(fs, path, png)
    else:
        return None
    _, path = open_fs(layout.calibration)
    write_bytes(fs, path, json.dumps(cal, indent=2).encode())
    return cal


def _drift(job: JobConfig, calibration: Calibration | None, commits: list[CommitRecord]) -> Any:
    """The drift check of this run against the calibration's reference (:mod:`segflow.tasks.evaluate.drift`), from the
    histograms each shard kept in its commit record; None without a reference (a calibration fitted before
    segflow kept one) or with commits that have no histograms.

    Raises:
      DriftError: drifted, and the job says ``accept.on_drift: fail``.
    """
    from segflow.tasks.evaluate.drift import DRIFT_ADVICE, DriftError, compare, merge

    if calibration is None or not calibration.get("reference"):
        return None
    run = None
    for c in commits:
        h = (c.get("stats") or {}).get("histograms")
        if h is None:
            log.warning("%s: its commit has no drift histograms (an older segflow): no drift check", c["shard_id"])
            return None
        run = merge(run, h)
    if run is None:
        return None
    drift = compare(calibration["reference"], run, job.category_names())
    if not drift.holds and job.accept.on_drift == "fail":
        raise DriftError(
            f"the calibration does not hold for this run's images ({drift.verdict}); accept.on_drift is 'fail', "
            f"so nothing was exported: {DRIFT_ADVICE}"
        )
    return drift


def _count(into: dict[str, int], table: pa.Table, column: str) -> None:
    """Add the rows of ``table`` per ``category_name`` to ``into``."""
    if table.num_rows:
        for row in table.group_by("category_name").aggregate([(column, "count")]).to_pylist():
            into[row["category_name"]] = into.get(row["category_name"], 0) + row[f"{column}_count"]


def _all_rendered(output: str, commits: list[CommitRecord]) -> bool:
    """Every panoptic shard's PNGs drawn from its committed attempt (a shard's own rendering may not have finished)."""
    for c in commits:
        if "panoptic" in c["files"]:
            marker = rendered_marker(output, c["shard_id"])
            if marker is None or marker.get("attempt") != c["attempt"]:
                return False
    return True


def _render(output: str, c: CommitRecord, images: pa.Table, panoptic: pa.Table, left_out: list[int]) -> int:
    """Draw what the shard's PNGs lack at this operating point: all of them when its own rendering did not finish
    (marker missing or of another attempt), else only the images whose left-out things changed. Returns images drawn.
    """
    marker = rendered_marker(output, c["shard_id"])
    if marker is None or marker.get("attempt") != c["attempt"]:
        return render_shard(output, c["shard_id"], c["attempt"], images, panoptic, left_out=left_out)
    changed = set(marker.get("left_out", [])) ^ set(left_out)
    if not changed:
        return 0
    only = {a // ANNOTATION_ID_STRIDE for a in changed}
    return render_shard(output, c["shard_id"], c["attempt"], images, panoptic, left_out=left_out, only=only)


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def finalize(job: JobConfig, started_at: float | None = None, force: bool = False) -> RunSummary:
    """Merge, export and summarise a fully committed run. Returns the run summary
    (:class:`~segflow.tasks.records.RunSummary`, as written to summary.json).

    An output already finalized from exactly these commits (and gold sets and acceptance settings) is left as it
    is, unless ``force``. Holds the output's lease (:mod:`segflow.tasks.io.lease`; re-entrant, so a run that holds
    it finalizes under its own): a second writer is refused, and a lease lost midway stops before the manifest
    pointer and the summary are written.
    """
    from segflow.tasks.io.lease import hold

    with hold(job.output, "finalize") as lease:
        return _finalize(job, started_at, force, lease)


def _finalize(job: JobConfig, started_at: float | None, force: bool, lease: Any) -> RunSummary:
    output = job.output
    plan, commits = collect_commits(output)
    layout = OutputLayout(output)
    paths = output_paths(layout)
    fs, _ = open_fs(output)
    digest = commits_digest(commits, job.model_dump(mode="json"))
    previous = _previous_summary(fs, paths["summary"])
    if not force and previous is not None and previous.commits_digest == digest and _all_rendered(output, commits):
        return previous  # already finalized from exactly these commits: write nothing

    # 0. the operating point: a saved calibration, or one fitted on the gold set's images (read first)
    cache: dict[tuple[str, str], bytes] = {}
    calibration = _acceptance(job, commits, layout, fs, cache)
    if calibration is not None:
        _warn_novelty_off(job, calibration)
        paths["calibration"] = layout.calibration
    drift = _drift(job, calibration, commits)  # before any verdict: `accept.on_drift` may change them

    # 1. one pass over the committed shards: each committed file is read once and feeds every output
    merged = _ShardPass(job, layout, fs, paths, commits, calibration, drift, cache)
    lease.check()
    merged.open()
    for c in commits:
        merged.add(c)
    _, parts_path = open_fs(layout.manifest_parts)
    lease.check()
    write_bytes(fs, parts_path, json.dumps(merged.parts, indent=0, sort_keys=True).encode())

    # 2. close the exports: COCO instances (accepted, review) and panoptic JSON, the QC report
    exports = merged.close()

    # 3. quality against the gold set(s), when the job names them
    quality = _quality(job, layout, fs, paths, merged)

    # 4. summary, written last
    summary = _summary(job, merged, exports, paths, digest, quality)
    if started_at is not None:
        summary.seconds = round(time.time() - started_at, 2)
    try:  # the report is drawn from the finished outputs; a failure to draw it loses no labels
        summary.outputs["report"] = redact(write_report(output, summary, merged.sampler.to_json(), commits))
    except Exception as e:  # noqa: BLE001 - said in the summary and the log; `segflow report OUTPUT` draws it again
        log.warning("report.html not written: %s: %s", type(e).__name__, e)
        summary.report_error = f"{type(e).__name__}: {e}"
    _, summary_path = open_fs(paths["summary"])
    lease.check()
    write_bytes(fs, summary_path, json.dumps(summary.to_dict(), indent=2).encode())
    return summary


def _warn_novelty_off(job: JobConfig, calibration: Calibration) -> None:
    """Say so (log and the calibration's warnings) when thresholds fitted counting on the novelty check run
    without it."""
    if calibration.get("novelty_in_thresholds") and not job.accept.novelty:
        warning = (
            "the thresholds were fitted counting on the novelty check, which accept.novelty: false turns off: "
            "look-alikes the check would send to review are exported and precision can fall below the target; "
            "fit again with novelty off (`segflow calibrate`) or turn it on"
        )
        log.warning(warning)
        calibration["warnings"] = [*calibration.get("warnings", []), warning]


class _ShardPass:
    """Finalize's one pass over the committed shards: each shard's verdicts, its manifest parts (and their
    sha256 in ``parts``), and what every export, the QC report, the gold-set match and the report sampler take
    from it. ``paths`` (output name -> URL) gets the outputs this run has."""

    def __init__(
        self,
        job: JobConfig,
        layout: OutputLayout,
        fs: Any,
        paths: dict[str, str],
        commits: list[CommitRecord],
        calibration: Calibration | None,
        drift: Any,
        cache: dict[tuple[str, str], bytes],
    ):
        from segflow.tasks.evaluate.acceptance import VERDICTS

        self.job, self.layout, self.fs, self.paths, self.commits = job, layout, fs, paths, commits
        self.calibration, self.drift, self.cache = calibration, drift, cache
        self.drift_review = drift is not None and not drift.holds and job.accept.on_drift == "review"
        self.estimate = np.zeros(2)  # the accepted masks: sum of their probabilities of being right, how many have one
        self.novel = 0  # masks sent to review because their shape is unlike the gold set's of their class
        self.counts = {"images": 0, "labelled_images": 0, "failed_images": 0, "masks": 0}
        self.verdicts = dict.fromkeys(VERDICTS, 0)
        self.per_category: dict[str, int] = {}
        self.segments_per_category: dict[str, int] = {}
        self.qc = job.qc_stage() if hasattr(job, "qc_stage") else None
        self.keep = ("accept", "review") if self.qc is not None and self.qc.export_review else ("accept",)
        paths.update(review_instances=layout.review_instances, review_masks=layout.review_masks)
        self.acc = None
        if self.qc is not None or calibration is not None:
            paths["quarantine"] = layout.quarantine
            self.acc = QcAccumulator(self.qc.review_samples if self.qc is not None else 24)
        self.has_panoptic = all("panoptic" in c["files"] for c in commits) and bool(commits)
        merge = job.stages.get(job.panoptic_sink() or "") if self.has_panoptic else None
        extra = ("review",) if getattr(merge, "include_flagged", False) and "review" not in self.keep else ()
        self.pan_keep = self.keep + extra
        self.rendered = 0
        if self.has_panoptic:
            paths.update(
                {
                    "panoptic": layout.manifest("panoptic"),
                    "coco_panoptic": layout.coco_panoptic,
                    "coco_panoptic_pngs": layout.coco_panoptic_pngs,
                    "semantic_pngs": layout.semantic_pngs,
                    "semantic": layout.manifest("semantic"),
                }
            )
        elif any("panoptic" in c["files"] for c in commits):  # pragma: no cover - fingerprints keep shards alike
            raise RuntimeError("some shards have panoptic segments and others not; rerun into a fresh output")
        self.gold = GoldMatch(job) if getattr(job, "gold_set", None) else None
        gold_sem = getattr(job, "gold_semantic", None)
        self.audit = SemanticAudit(gold_sem, job.category_names()) if gold_sem and self.has_panoptic else None
        self.parts: dict[str, dict[str, dict]] = {}
        self.sampler = ReportSampler()
        self.stitcher = None
        # the stage that makes tracks: its joining and acceptance settings (both kinds have them)
        st = next((s for s in job.stages.values() if ADAPTERS[s.kind].makes_tracks), None)
        self.track_join = st if isinstance(st, TrackJoin) else TrackJoin()
        self.track_acceptance = st if isinstance(st, TrackAcceptance) else TrackAcceptance()
        if st is not None:
            j = self.track_join
            self.stitcher = TrackStitcher(rejoin_gap=j.rejoin_gap, rejoin_distance=j.rejoin_distance)
        self.tracks: TrackExports | None = None
        self.video_exports: VideoExports | None = None
        if job.tracks():
            paths.update(tracks=layout.tracks, vis=layout.vis_instances, mots=layout.mots)

    def _stitch(self, c: CommitRecord, masks: pa.Table) -> pa.Table:
        """``masks`` (a committed clip's rows, clips passed in plan order) with track ids global per video
        (:mod:`segflow.tasks.outputs.tracks`): joined to the clip before on the clip's context, read only here."""
        if self.stitcher is None or masks.num_rows == 0 or masks["video"][0].as_py() is None:
            return masks
        context = None
        if "context" in c["files"]:
            context = parse_committed(c, "context", read_committed_bytes(self.job.output, c, "context"))
        self.stitcher.add_clip(c["shard_id"], str(masks["video"][0].as_py()), masks, context)
        return self.stitcher.apply(c["shard_id"], masks)

    def open(self) -> None:
        """Empty the merged folders and open the export writers (under the lease: the first writes)."""
        job, paths = self.job, self.paths
        for name in ("masks", "images", "quarantine", "panoptic", "semantic", "review_masks"):
            if name in paths:
                _replace_dir(self.fs, open_fs(paths[name])[1])
        names = job.category_names()
        self.coco = InstancesWriter(paths["coco_instances"], names, description=job.name, keep_verdicts=self.keep)
        self.review = InstancesWriter(
            paths["review_instances"], names, job.name, ("review",), labelled_images_only=True
        )
        self.pan_json = (
            PanopticJsonWriter(paths["coco_panoptic"], panoptic_categories(job.ontology), description=job.name)
            if self.has_panoptic
            else None
        )
        if "tracks" in paths:
            cats = [{"id": int(i), "name": n, "supercategory": "object"} for i, n in sorted(names.items())]
            rule = TrackRule.of(self.track_acceptance)
            gold, gold_url = None, getattr(job, "gold_video", None)
            if gold_url:
                gold = read_json(open_fs(gold_url)[0], gold_url)
                if gold is None:
                    raise FileNotFoundError(f"gold_video: file not found: {redact(gold_url)}")
            self.video_exports = VideoExports(
                paths["tracks"], paths["vis"], paths["mots"], cats, self.keep, rule, gold, job.accept.precision
            )

    def add(self, c: CommitRecord) -> None:
        """One committed shard: verdicts, exports, manifest parts, counts."""
        from segflow.tasks.evaluate.acceptance import apply_acceptance, correct_probability

        sid, job = c["shard_id"], self.job
        names = ("images", "masks", "panoptic") if self.has_panoptic else ("images", "masks")
        raw = {name: self.cache.pop((sid, name), b"") or read_committed_bytes(job.output, c, name) for name in names}
        images, masks = (parse_committed(c, name, raw[name]) for name in ("images", "masks"))
        masks = self._stitch(c, masks)
        masks = apply_acceptance(masks, self.calibration, drifted=self.drift_review, use_novelty=job.accept.novelty)
        self.novel += sum(1 for r in masks["verdict_reasons"].to_pylist() if r and "novel" in r)
        if self.calibration is not None:
            p_right = correct_probability(masks.filter(pc.equal(masks["verdict"], "accept")), self.calibration)
            self.estimate += (np.nansum(p_right), np.isfinite(p_right).sum())
        if self.video_exports is not None:
            self.video_exports.add(images, masks)
            masks = self.video_exports.with_video_id(masks)
        raw["masks"] = _parquet(masks)  # the committed columns, then verdict, verdict_reasons, calibrated_score
        self.coco.add(images, masks)
        self.review.add(images, masks)
        if self.gold is not None:
            self.gold.add(images, masks)
        if self.pan_json is not None:
            self._add_panoptic(c, images, masks, raw)
        else:
            self.sampler.add(images, masks)
        self._write_parts(sid, images, masks, raw)
        self._count(images, masks)

    def _add_panoptic(self, c: CommitRecord, images: pa.Table, masks: pa.Table, raw: dict[str, bytes]) -> None:
        pan, left_out = at_operating_point(parse_committed(c, "panoptic", raw["panoptic"]), masks, self.pan_keep)
        if left_out:
            raw["panoptic"] = _parquet(pan)
        self.rendered += _render(self.job.output, c, images, pan, left_out)
        self.sampler.add(images, masks, pan)
        if self.pan_json is not None:
            self.pan_json.add(images, pan)
        _count(self.segments_per_category, pan, "segment_id")
        raw["semantic"] = _parquet(class_areas(images, pan, self.job.category_names()))
        if self.audit is not None:
            self.audit.add(images)

    def _write_parts(self, sid: str, images: pa.Table, masks: pa.Table, raw: dict[str, bytes]) -> None:
        layout = self.layout
        outputs = {layout.manifest_key(name): data for name, data in raw.items()}
        manifests = set(outputs)
        in_review = masks.filter(pc.equal(masks["verdict"], "review"))
        if in_review.num_rows:
            outputs[layout.REVIEW_MASKS_KEY] = _parquet(in_review)
        if self.acc is not None:
            self.acc.add(sid, masks, images)
            outputs[layout.QUARANTINE_KEY] = _parquet(masks.filter(pc.equal(masks["verdict"], "reject")))
        for folder, data in outputs.items():
            _, part = open_fs(layout.url(layout.part_key(folder, sid)))
            write_bytes(self.fs, part, data)
            if folder in manifests:
                digest = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                self.parts.setdefault(folder, {})[sid] = digest

    def _count(self, images: pa.Table, masks: pa.Table) -> None:
        counts = self.counts
        counts["images"] += images.num_rows
        counts["failed_images"] += int(pc.sum(pc.equal(images["status"], "failed")).as_py() or 0)
        counts["labelled_images"] += int(pc.sum(pc.greater(images["num_masks"], 0)).as_py() or 0)
        counts["masks"] += masks.num_rows
        for v, n in zip(*np.unique(masks["verdict"].to_numpy(zero_copy_only=False), return_counts=True), strict=True):
            self.verdicts[str(v)] += int(n)
        _count(self.per_category, masks, "annotation_id")

    def close(self) -> ExportCounts:
        """Close the exports and write the QC report: their counts (``coco``, ``review``, ``panoptic``, ``qc``)."""
        if not self.verdicts["review"]:
            self.paths.pop("review_masks")  # no part written (review/instances.json stays: a valid, empty COCO file)
        out: ExportCounts = {"coco": self.coco.close(), "review": self.review.close(), "panoptic": None, "qc": None}
        if self.video_exports is not None:
            self.tracks = self.video_exports.close()
        if self.pan_json is not None:
            out["panoptic"] = self.pan_json.close()
        if self.acc is not None:
            qc = out["qc"] = write_qc_report(self.job.output, self.acc, self.job.name)
            self.paths["qc_report"] = qc["report"]
        if out["coco"]["annotations"] != sum(self.verdicts[v] for v in self.keep):  # pragma: no cover - a guard
            raise RuntimeError(f"COCO export wrote {out['coco']['annotations']} annotations, expected {self.verdicts}")
        return out

    def estimated_precision(self) -> float | None:
        return round(float(self.estimate[0] / self.estimate[1]), 4) if self.estimate[1] else None


def _quality(
    job: JobConfig, layout: OutputLayout, fs: Any, paths: dict[str, str], merged: _ShardPass
) -> Quality | None:
    """Quality against the job's gold sets (instances, panoptic, semantic), written to ``quality.json``; None
    without a gold set."""
    quality = merged.gold.evaluate() if merged.gold is not None else None
    if job.gold_panoptic is not None and merged.has_panoptic:
        pan_q = evaluate_panoptic_files(job.gold_panoptic, paths["coco_panoptic"])
        things = {c.name for c in job.ontology if c.isthing}
        pan_q["things"].update(
            {k: sum(v[k] for n, v in pan_q["per_class"].items() if n in things) for k in ("tp", "fp", "fn")}
        )
        quality = (quality or {}) | {
            "panoptic": pan_q,
            "pq": pan_q["pq"],
            "sq": pan_q["sq"],
            "rq": pan_q["rq"],
            "miou": pan_q["miou"],
        }
    if merged.audit is not None:
        sem_q, heat_map = merged.audit.evaluate(layout.semantic_pngs, png_name)
        if heat_map is not None:
            paths["semantic_confusion"] = layout.semantic_confusion
            write_bytes(fs, open_fs(layout.semantic_confusion)[1], heat_map)
        quality = quality or {}
        quality["semantic"], quality["semantic_miou"] = sem_q, sem_q.get("miou")
    if quality is not None:
        if merged.drift is not None:
            quality["drift"] = merged.drift.to_dict() | {"action": job.accept.on_drift}
        if merged.calibration is not None:
            quality["estimate"] = {"precision": merged.estimated_precision()}
        paths["quality"] = layout.quality
        _, qpath = open_fs(paths["quality"])
        write_bytes(fs, qpath, json.dumps(quality, indent=2).encode())
    return quality


_SUMMARY_QUALITY = (
    "images",
    "gold_instances",
    "box_ap50",
    "mask_ap50",
    "mask_ap",
    "mean_mask_iou",
    "set",
    "set_with_review",
    "pq",
    "sq",
    "rq",
    "miou",
    "semantic_miou",
)


def _summary(
    job: JobConfig,
    merged: _ShardPass,
    exports: ExportCounts,
    paths: dict[str, str],
    digest: str,
    quality: Quality | None,
) -> RunSummary:
    """``summary.json``'s content (docs/outputs.md), but for ``seconds`` and the report."""
    counts, calibration, drift = merged.counts, merged.calibration, merged.drift
    summary: dict[str, Any] = {
        "job": job.name,
        "images": counts["images"],
        "labelled_images": counts["labelled_images"],
        "failed_images": counts["failed_images"],
        "images_without_masks": counts["images"] - counts["labelled_images"] - counts["failed_images"],
        "masks": counts["masks"],
        "masks_per_category": dict(sorted(merged.per_category.items())),
        "verdicts": merged.verdicts,
        "shards": len(merged.commits),
        "outputs": {k: redact(v) for k, v in paths.items()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commits_digest": digest,
    }
    summary["coco_annotations"] = exports["coco"]["annotations"]
    summary["review_annotations"] = exports["review"]["annotations"]
    if calibration is not None:
        summary["calibration"] = {
            "source": calibration.get("applied_from") or "fitted on the gold set",
            "target_precision": calibration["target_precision"],
            "score": calibration["score"],
            "heldout": calibration["heldout"],
            "review_classes": [n for n, e in calibration["classes"].items() if e["status"] == "review"],
            "holds": drift.holds if drift is not None else None,
            "novel": merged.novel,
            "warnings": list(calibration.get("warnings", [])),
        }
        summary["estimate"] = {
            "precision": merged.estimated_precision(),
            "masks": int(merged.estimate[1]),
            "method": "mean probability of being right of the accepted masks: each class's reliability curve "
            "(the gold set's labels, isotonic in the score) at the mask's score; no labels of this run used",
        }
    if drift is not None:
        summary["drift"] = drift.to_dict() | {"action": job.accept.on_drift}
    if exports["qc"] is not None:
        summary["qc"] = {k: exports["qc"][k] for k in ("verdicts", "rules", "image_flags")}
    if exports["panoptic"] is not None:
        summary["panoptic"] = {
            "images": exports["panoptic"]["images"],
            "segments": exports["panoptic"]["segments"],
            "segments_per_category": dict(sorted(merged.segments_per_category.items())),
            "images_rendered_by_finalize": merged.rendered,
        }
    if merged.video_exports is not None:
        summary["tracks"] = merged.tracks
    if quality is not None:
        measured: dict[str, Any] = dict(quality)
        summary["quality"] = {k: measured[k] for k in _SUMMARY_QUALITY if k in measured}
    return RunSummary.from_dict(summary)
