"""Whole commands, one call each: ``segflow run`` (:func:`run_file_job`), ``segflow rerun`` (:func:`rerun_output`)
and ``segflow demo`` (:func:`run_demo`), from their inputs to a :class:`~segflow.tasks.records.RunSummary`. The
CLI parses, calls one of these and prints; scripts can call them the same way.

Each one checks the job without writing (a bad job never takes the output's lease), takes the lease (one writer at
a time, :mod:`segflow.tasks.io.lease`), plans, then runs the flow. What the CLI shows on the way (the plan's size,
the shards a rerun repairs) comes through the ``on_plan`` and ``on_repair`` callbacks.

Raises :class:`~segflow.config.ConfigError` for a bad job (nothing written), ``LeaseHeld`` when another command
holds the output, and whatever the run raises (``IncompleteRunError`` when shards failed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow.config import ConfigError, JobConfig
from segflow.flows.label_flow import check_job, prepare_job, run_job
from segflow.tasks.documents import Quality
from segflow.tasks.io.lease import hold
from segflow.tasks.plan.planner import Plan
from segflow.tasks.records import RunSummary

if TYPE_CHECKING:
    from segflow.tasks.evaluate.video_quality import TrackingQuality

__all__ = ["DemoRun", "Repair", "load_output_job", "rerun_output", "run_demo", "run_file_job"]


@dataclass(frozen=True)
class Repair:
    """What ``rerun --corrupt`` found and does: every problem ``segflow verify`` lists, the planned shards labelled
    again, and the folders of no planned shard moved aside (``(shard, where it went)``)."""

    problems: list[str]
    damaged: list[str]
    set_aside: list[tuple[str, str]] = field(default_factory=list)


def run_file_job(job: JobConfig, source: str, on_plan: Callable[[JobConfig, Plan], None] | None = None) -> RunSummary:
    """Run ``job`` (read from ``source``, the name errors give) to its summary."""
    check_job(job, source)  # writes nothing: a bad job never takes the output's lease
    with hold(job.output, "run"):
        plan = prepare_job(job, source, checked=True)
        if on_plan is not None:
            on_plan(job, plan)
        return run_job(job, plan)  # prepared: the flow reads the plan


def load_output_job(output: str) -> JobConfig:
    """The job an output was written by (its ``job.json``), pointed at ``output``."""
    from segflow.tasks.io.layout import OutputLayout
    from segflow.tasks.io.storage import open_fs, read_bytes, redact

    fs, path = open_fs(OutputLayout(output).job_json)
    try:
        job = JobConfig.model_validate(json.loads(read_bytes(fs, path)))
    except FileNotFoundError:
        raise ConfigError(redact(output), [("", "has no job.json: it was not written by `segflow run`")]) from None
    return job.model_copy(update={"output": output})


def rerun_output(
    output: str,
    shards: list[str] | None = None,
    corrupt: bool = False,
    on_plan: Callable[[JobConfig, Plan], None] | None = None,
    on_repair: Callable[[Repair], None] | None = None,
) -> RunSummary:
    """Run the shards of ``output`` that are not committed, then finalize; ``shards``: label these committed ones
    again (their new commits supersede); ``corrupt``: also every shard ``segflow verify`` finds damaged."""
    from segflow.tasks.io.storage import redact

    job = load_output_job(output)
    source = f"{redact(output)}/job.json"
    check_job(job, source)  # writes nothing
    with hold(output, "rerun"):
        plan = prepare_job(job, source, checked=True)
        redo = list(dict.fromkeys(shards or []))
        unknown = sorted(set(redo) - set(plan.shard_ids))
        if unknown:
            raise ConfigError(source, [("--shards", f"not shards of the plan: {', '.join(unknown)}")])
        refinalize = bool(redo)
        if corrupt:
            repair = _repair(output, plan.shard_ids)
            if on_repair is not None:
                on_repair(repair)
            redo, refinalize = sorted(set(redo) | set(repair.damaged)), refinalize or bool(repair.problems)
        if on_plan is not None:
            on_plan(job, plan)
        return run_job(job, plan, redo=redo, refinalize=refinalize)


def _repair(output: str, planned: list[str]) -> Repair:
    from segflow.tasks.ops.verify import damaged_shards, set_aside, verify

    problems = list(verify(output))
    damaged, extra = damaged_shards(problems, planned)
    moved = list(zip(extra, set_aside(output, extra), strict=True))
    return Repair([str(p) for p in problems], damaged, moved)


@dataclass(frozen=True)
class DemoRun:
    """``segflow demo``'s choices (its flags of the same names; docs/demo.md)."""

    folder: str
    seed: int = 0
    images: int | None = None  # None: 60 scenes, 24 with ``large``
    calibration: str | None = None
    semantic: bool = False
    shift: str | None = None
    on_drift: str | None = None
    large: bool = False
    unknown: int = 0
    review_round: int = 0  # a review round of this budget after the run (segflow.demo.reviewer.review_round)
    gold: bool = True  # False: no gold set, no calibration (every label passing QC exported; the review loop's start)

    @property
    def config(self) -> Path:
        from segflow.demo.prepare import DEMO_CONFIG

        if self.large:
            return DEMO_CONFIG.with_name("demo-large.yaml")
        return DEMO_CONFIG.with_name("demo-semantic.yaml") if self.semantic else DEMO_CONFIG


def run_video_demo(
    folder: str,
    seed: int = 0,
    videos: int = 10,
    frames: int = 48,
    on_videos: Callable[[int, float], None] | None = None,
    on_plan: Callable[[JobConfig, Plan], None] | None = None,
) -> tuple[RunSummary, TrackingQuality]:
    """``segflow demo --video``: write ``videos`` synthetic videos of ``frames`` frames and their tracks
    (``folder/ground_truth/vis.json``), run ``configs/demo-video.yaml`` on them into ``folder/out`` with the first
    half of the videos as its gold set (``gold_video``: the tracks' threshold is fitted there), and score its
    YouTube-VIS export on the other half (written to ``folder/tracking_quality.json``)."""
    import shutil

    from segflow.config import load_config
    from segflow.demo.prepare import DEMO_CONFIG
    from segflow.demo.video import write_video_set
    from segflow.tasks.evaluate.video_quality import evaluate_vis

    config = DEMO_CONFIG.with_name("demo-video.yaml")
    if not config.exists():
        raise ConfigError(
            str(config), [("", "not found: this segflow installation lacks its package data (reinstall)")]
        )
    root = Path(folder).resolve()
    for owned in ("videos", "ground_truth", "out"):  # a new demo never reuses an earlier one's plan or commits
        if (root / owned).exists():
            shutil.rmtree(root / owned)
    (root / "tracking_quality.json").unlink(missing_ok=True)
    t0 = time.time()
    source = write_video_set(root, videos, frames, seed)
    if on_videos is not None:
        on_videos(videos, time.time() - t0)
    gt = root / "ground_truth"
    overrides = {"source": str(source), "output": str(root / "out"), "gold_video": str(gt / "fit.json")}
    job = load_config(config, overrides=overrides)
    plan = prepare_job(job, str(config))
    if on_plan is not None:
        on_plan(job, plan)
    summary = run_job(job, plan)
    gold = json.loads((gt / "holdout.json").read_text())
    pred = json.loads((root / "out" / "vis" / "instances.json").read_text())
    quality = evaluate_vis(gold, pred)
    (root / "tracking_quality.json").write_text(json.dumps(quality.to_dict(), indent=2))
    return summary, quality


def run_demo(
    demo: DemoRun,
    on_scenes: Callable[[int, float], None] | None = None,
    on_plan: Callable[[JobConfig, Plan], None] | None = None,
) -> tuple[RunSummary, Quality, dict[str, Any] | None]:
    """Write the demo's scenes and ground truth under ``demo.folder``, run its job, and measure the exported set on
    the images the calibration did not see; then, with ``demo.review_round``, one round of the review loop with
    the simulated reviewer (its figures, else None). ``on_scenes(images, seconds)`` once the scenes are written."""
    from segflow.config import load_config
    from segflow.demo.prepare import finish_demo, prepare_demo

    config = demo.config
    if not config.exists():
        raise ConfigError(
            str(config), [("", "not found: this segflow installation lacks its package data (reinstall)")]
        )
    images = demo.images if demo.images is not None else (24 if demo.large else 60)
    t0 = time.time()
    overrides = prepare_demo(
        demo.folder,
        demo.seed,
        images,
        demo.calibration,
        shift=demo.shift,
        unknown=demo.unknown,
        large=demo.large,
        gold=demo.gold,
    )
    if on_scenes is not None:
        on_scenes(images, time.time() - t0)
    job = load_config(config, overrides=overrides)
    if demo.on_drift:
        job = job.model_copy(update={"accept": job.accept.model_copy(update={"on_drift": demo.on_drift})})
    plan = prepare_job(job, str(config))
    if on_plan is not None:
        on_plan(job, plan)
    summary = run_job(job, plan)
    fitted_here = "gold_set" in overrides and not demo.calibration  # else every image is held out
    quality = finish_demo(demo.folder, overrides["output"], fitted_here=fitted_here)
    if not demo.review_round:
        return summary, quality, None
    from segflow.demo.reviewer import review_round

    return summary, quality, review_round(demo.folder, demo.review_round, seed=demo.seed)
