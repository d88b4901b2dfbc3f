"""``segflow`` command line.

    segflow run CONFIG [--source URL] [--output URL] [--verbose]
    segflow validate CONFIG [--source URL] [--output URL]
    segflow status OUTPUT [--all] [--json]
    segflow rerun OUTPUT
    segflow publish OUTPUT DEST [--version NAME]
    segflow export OUTPUT --format label-studio|cvat|yolo-seg|coco DEST [--verdicts review|accept|all]
    segflow import-review OUTPUT FILE [--format label-studio|coco] [--json]
    segflow schema
    segflow demo --output DIR [--seed N] [--images N]
    segflow convert-weights yolo IN.pt OUT.pt

Exit status: 0 success, 1 the run failed (some shards did not commit),
2 the config or the command line is wrong (nothing was started).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

# Quiet, offline-friendly defaults, set before Prefect is imported anywhere.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _eprint(*a: object) -> None:
    """A line for the user on stderr: every error line goes through here, credentials removed
    (:func:`segflow.tasks.io.storage.redact`)."""
    from segflow.tasks.io.storage import redact

    print(redact(" ".join(str(x) for x in a)), file=sys.stderr, flush=True)


def _debug(args: argparse.Namespace) -> bool:
    """``--verbose`` or ``SEGFLOW_DEBUG=1``: show Prefect's logs and tracebacks."""
    return bool(getattr(args, "verbose", False)) or os.environ.get("SEGFLOW_DEBUG", "") not in ("", "0")


def _quiet_prefect(args: argparse.Namespace) -> None:
    """Known failures are reported by segflow in one line; Prefect's own logs (tracebacks) only when debugging."""
    if not _debug(args):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    pairs = (
        ("source", getattr(args, "source", None)),
        ("output", getattr(args, "output", None)),
        ("gold_set", getattr(args, "gold", None)),
        ("gold_panoptic", getattr(args, "gold_panoptic", None)),
        ("gold_semantic", getattr(args, "gold_semantic", None)),
        ("calibration", getattr(args, "calibration", None)),
    )
    return {k: v for k, v in pairs if v}


def _load(args: argparse.Namespace):
    from segflow.config import load_config

    return load_config(args.config, overrides=_overrides(args), check_files=not getattr(args, "static", False))


def prepare(job, config_file: str, checked: bool = False):
    """Credentials, weights (unless ``checked``: :func:`segflow.flows.label_flow.check_job` passed) and the plan,
    before any flow starts (:func:`segflow.flows.label_flow.prepare_job`)."""
    from segflow.flows.label_flow import prepare_job

    return prepare_job(job, config_file, checked=checked)


class _Progress:
    """A tqdm bar over images with shard, mask and failure counts."""

    def __init__(self, total_images: int, total_shards: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_images, unit="img", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
        self.shards_total = total_shards
        self.shards = self.masks = self.failed = 0

    def __call__(self, images: int = 0, masks: int = 0, failed: int = 0, shards: int = 0) -> None:
        self.shards += shards
        self.masks += masks
        self.failed += failed
        self.bar.set_postfix_str(
            f"shards {self.shards}/{self.shards_total} masks {self.masks} failed {self.failed}", refresh=False
        )
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()


def print_summary(summary: dict) -> None:
    out = summary["outputs"]
    print(
        f"\nsegflow: {summary['job']} done in {summary.get('seconds', 0):.1f}s\n"
        f"  images labelled : {summary['labelled_images']} of {summary['images']}"
        f" ({summary['images_without_masks']} without masks, {summary['failed_images']} failed)\n"
        f"  masks           : {summary['masks']}"
        + "".join(f"\n    {k:<14}: {v}" for k, v in summary.get("masks_per_category", {}).items())
        + (
            f"\n  verdicts        : {v['accept']} accepted, {v['review']} review, {v['reject']} rejected"
            if (v := summary.get("verdicts"))
            else ""
        )
        + (
            f" ({n} of the review band: shapes unlike the gold set's, reason novel)"
            if (n := (summary.get("calibration") or {}).get("novel"))
            else ""
        )
        + f"\n  masks manifest  : {out['masks']}\n  images manifest : {out['images']}\n"
        f"  COCO instances  : {out['coco_instances']} (accepted)"
        + (f"\n  review band     : {out['review_instances']}" if summary.get("review_annotations") else "")
        + (f"\n  calibration     : {out['calibration']}" if "calibration" in out else "")
        + (
            f"\n  panoptic        : {summary['panoptic']['segments']} segments on {summary['panoptic']['images']} "
            f"images"
            f"\n  panoptic manif. : {out['panoptic']}\n  COCO panoptic   : {out['coco_panoptic']} "
            f"(+ PNGs in {out['coco_panoptic_pngs']})"
            f"\n  semantic maps   : {out['semantic_pngs']}"
            if "panoptic" in summary
            else ""
        )
        + f"\n  summary         : {out['summary']}"
        + (f"\n  quality         : {out['quality']}" if "quality" in out else "")
        + (f"\n  report not written: {summary['report_error']}" if "report_error" in summary else "")
        + (f"\n  report          : {out['report']}" if "report" in out else "")
        + "".join(f"\n{line}" for line in drift_lines(summary)),
        flush=True,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from segflow.config import ConfigError
    from segflow.tasks.io.lease import hold

    _quiet_prefect(args)
    from segflow.flows.label_flow import check_job

    try:
        job = _load(args)
        check_job(job, args.config)  # writes nothing: a bad job never takes the output's lease
    except ConfigError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    with hold(job.output, "run"):  # one writer at a time (segflow.tasks.io.lease); refused: one line, exit 1
        try:
            plan = prepare(job, args.config, checked=True)
        except ConfigError as e:
            _eprint(f"error: {e}")
            return EXIT_CONFIG
        return run_prepared(job, plan, progress_bar=not args.no_progress, debug=_debug(args))


def run_prepared(
    job, plan, progress_bar: bool = True, debug: bool = False, redo: list[str] | None = None, refinalize: bool = False
) -> int:
    from segflow.flows.label_flow import run_job
    from segflow.tasks.finalize.finalizer import IncompleteRunError
    from segflow.tasks.io.storage import redact
    from segflow.tasks.shard import progress
    from segflow.tasks.shard.commit import ShardConflict

    reuse = ""
    if plan.reused:
        reuse = (
            f" (plan reused; {plan.new_images} new images planned)"
            if getattr(job, "incremental", False)
            else " (plan reused)"
        )
    print(
        f"segflow: {job.name}: {plan.num_images} images in {len(plan.shard_ids)} shards{reuse} -> {redact(job.output)}",
        flush=True,
    )
    bar = _Progress(plan.num_images, len(plan.shard_ids), enabled=progress_bar)
    progress.set_reporter(bar)
    try:
        summary = run_job(job, plan, redo=redo, refinalize=refinalize)  # prepared: the flow reads the plan
    except IncompleteRunError as e:
        bar.close()
        _eprint(f"error: run incomplete: {e}")
        if debug:
            import traceback

            traceback.print_exc()
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - reported as one line; --verbose / SEGFLOW_DEBUG=1 show the traceback
        bar.close()
        _eprint(f"error: run failed: {type(e).__name__}: {e}")
        if isinstance(e, ShardConflict):
            _eprint(f"  `segflow verify {redact(job.output)}` lists every file that does not match its commit record")
        if debug:
            import traceback

            traceback.print_exc()
        return EXIT_FAILED
    finally:
        progress.set_reporter(None)
    bar.close()
    print_summary(summary)
    if "calibration" in summary:
        from segflow.tasks.io.layout import OutputLayout
        from segflow.tasks.io.storage import open_fs, read_json

        print()
        print_calibration(
            read_json(open_fs(job.output)[0], OutputLayout(job.output).calibration), drift=summary.get("drift")
        )
    if "quality" in summary:
        from segflow.tasks.evaluate.quality import format_quality, load_quality

        print("\n" + format_quality(load_quality(job.output)), flush=True)
    return EXIT_OK


def _f3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def drift_lines(summary: dict) -> list[str]:
    """The summary's unmissable lines about the calibration in force: does it hold here (the drift check), the
    gold set's precision beside this run's unlabeled estimate."""
    from segflow.tasks.evaluate.drift import DRIFT_ADVICE

    cal, drift, est = summary.get("calibration"), summary.get("drift"), summary.get("estimate") or {}
    if cal is None:
        return []
    gold = cal["heldout"].get("precision")
    estimate = est.get("precision")
    figures = (
        f"precision estimated without labels {estimate:.3f} ({est['masks']} accepted masks; mean probability of "
        f"being right)"
        if estimate is not None
        else "no precision estimate (no accepted mask)"
    )
    gold_text = f"{gold:.3f}" if gold is not None else "-"
    if drift is None:
        return [f"  calibration     : not checked for drift (no reference in it); {figures}"]
    if not drift["drifted"]:
        return [
            f"  calibration     : holds (this run's images and masks look like the gold set's: "
            f"{len(drift['features'])} features tested); gold set precision {gold_text} (held out), {figures}"
        ]
    worst = sorted((f for f in drift["features"] if f["drifted"]), key=lambda f: -f["d"])[:4]
    shown = ", ".join(f"{f['name']} {_num(f['reference_median'])} -> {_num(f['run_median'])}" for f in worst)
    action = {"warn": "exported as usual", "review": "accepted masks sent to review", "fail": "nothing exported"}
    return [
        f"  CALIBRATION DOES NOT HOLD: {drift['verdict']} (medians, gold set -> this run: {shown})",
        f"    the gold set's precision {gold_text} is not this run's; {figures}",
        f"    accept.on_drift: {drift['action']} ({action[drift['action']]}); {DRIFT_ADVICE}",
    ]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def print_calibration(cal: dict, drift: dict | None = None) -> None:
    """The per-class thresholds and held-out estimates of a calibration, as a Markdown table (``drift``: the
    run's drift check, when the figures are shown after a run: they are the gold set's, not the run's)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    ci = lambda v: "-" if v is None else f"{v[0]:.2f}-{v[1]:.2f}"
    print(
        f"calibration: precision {cal['target_precision']} on the {cal['score']} score "
        f"({cal['folds']}-fold over {cal['gold_images']} gold images; held-out figures)"
    )
    print("  | class | gold | labels | accept >= | review >= | precision (95% CI) | recall (95% CI) | status |")
    print("  |---|---:|---:|---:|---:|---|---|---|")
    for name, c in cal["classes"].items():
        h = c["heldout"]
        print(
            f"  | {name} | {c['gold_instances']} | {c['labels']} | {f(c['threshold'])} | {f(c['review_threshold'])} "
            f"| {f(h['precision'])} ({ci(h['precision_ci95'])}) | {f(h['recall'])} ({ci(h['recall_ci95'])}) "
            f"| {c['status']} |"
        )
    where = "on the gold set" if drift is None or not drift["drifted"] else "on the gold set, NOT this run's"
    for key, what in (("heldout", "accepted"), ("heldout_with_review", "accepted + review")):
        h = cal[key]
        print(
            f"  {what} ({where}): precision {f(h['precision'])} ({ci(h['precision_ci95'])}), "
            f"recall {f(h['recall'])} ({ci(h['recall_ci95'])})"
        )
    for w in cal["warnings"]:
        print(f"  warning: {w}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from segflow.tasks.evaluate.calibration import recalibrate_output
    from segflow.tasks.evaluate.quality import GoldSetError, format_quality, load_quality
    from segflow.tasks.finalize.finalizer import IncompleteRunError
    from segflow.tasks.plan.planner import PlanError

    output = _cli_path(args.output)
    t0 = time.time()
    try:
        summary, cal = recalibrate_output(
            output, _cli_path(args.gold), precision=args.precision, folds=args.folds, score=args.score
        )
    except (FileNotFoundError, GoldSetError, IncompleteRunError, PlanError, ValueError) as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    if args.json:
        print(json.dumps({"calibration": cal, "summary": summary}, indent=2))
        return EXIT_OK
    print_calibration(cal)
    print(format_quality(load_quality(output)))
    print(
        f"  verdicts        : {summary['verdicts']} (exported again in {time.time() - t0:.1f}s; no model ran)\n"
        f"  calibration     : {os.path.join(output, 'calibration.json')}\n"
        f"  PR curves       : {os.path.join(output, 'qc', 'pr_curves.png')}\n"
        f"  review band     : {os.path.join(output, 'review', 'instances.json')}"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from segflow.tasks.io.storage import redact
    from segflow.tasks.ops.verify import verify
    from segflow.tasks.plan.planner import PlanError, load_plan

    output = _cli_path(args.output)
    try:
        total = len(load_plan(output)["shard_ids"])
    except PlanError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    bar = tqdm(total=total, unit="shard", disable=args.json or args.no_progress, file=sys.stderr, dynamic_ncols=True)
    problems = list(verify(output, on_shard=lambda: bar.update(1)))
    bar.close()
    if args.json:
        print(json.dumps({"output": redact(output), "problems": [p.to_dict() for p in problems]}, indent=2))
    else:
        for p in problems:
            print(f"{redact(output)}: {p}")
        print(f"segflow verify: {total} planned shards, {len(problems)} problem(s)")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from segflow.tasks.io.storage import redact
    from segflow.tasks.ops.status import shard_states, summarize_states
    from segflow.tasks.plan.planner import PlanError

    output = _cli_path(args.output)
    try:
        states = shard_states(output)
    except PlanError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    counts = summarize_states(states)
    if args.json:
        print(json.dumps({"output": redact(output), "counts": counts, "shards": states}, indent=2))
    else:
        print(
            f"{redact(output)}: {len(states)} shards -- {counts['committed']} committed, "
            f"{counts['failed']} failed, {counts['pending']} pending "
            f"({counts['images_committed']} images, {counts['masks_committed']} masks committed)"
        )
        shown = states if args.all else [s for s in states if s["state"] != "committed"]
        for s in shown:
            detail = (
                f"{s['images']} images, {s['failed']} failed, {s['masks']} masks"
                if s["state"] == "committed"
                else s.get("error", "not run yet")
            )
            print(f"  {s['shard_id']}  {s['state']:<9}  {detail}")
        if counts["failed"] or counts["pending"]:
            print(f"rerun what is not committed with: segflow rerun {args.output}")
    return EXIT_OK if counts["failed"] == counts["pending"] == 0 else EXIT_FAILED


def cmd_rerun(args: argparse.Namespace) -> int:
    from segflow.config import ConfigError, JobConfig
    from segflow.tasks.io.layout import OutputLayout
    from segflow.tasks.io.storage import open_fs, read_bytes

    _quiet_prefect(args)
    output = _cli_path(args.output)
    fs, path = open_fs(OutputLayout(output).job_json)
    try:
        job = JobConfig.model_validate(json.loads(read_bytes(fs, path)))
    except FileNotFoundError:
        _eprint(f"error: {args.output} has no job.json: it was not written by `segflow run`")
        return EXIT_CONFIG
    job = job.model_copy(update={"output": output})
    from segflow.flows.label_flow import check_job
    from segflow.tasks.io.lease import hold

    try:
        check_job(job, f"{args.output}/job.json")  # writes nothing
    except ConfigError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    with hold(output, "rerun"):
        try:
            plan = prepare(job, f"{args.output}/job.json", checked=True)
        except ConfigError as e:
            _eprint(f"error: {e}")
            return EXIT_CONFIG
        redo = [s for s in (args.shards or "").split(",") if s]
        unknown = sorted(set(redo) - set(plan.shard_ids))
        if unknown:
            _eprint(f"error: --shards: not shards of the plan of {args.output}: {', '.join(unknown)}")
            return EXIT_CONFIG
        refinalize = bool(redo)
        if args.corrupt:
            from segflow.tasks.io.storage import redact
            from segflow.tasks.ops.verify import set_aside, verify

            problems = list(verify(output))
            damaged = sorted(
                {p.shard_id for p in problems if p.file and f"{p.file}/".startswith(f"shards/{p.shard_id}/")}
            )
            extra = [s for s in damaged if s not in plan.shard_ids]
            damaged = [s for s in damaged if s in plan.shard_ids]
            for p in problems:
                print(f"  {p}")
            print(f"segflow rerun: {len(problems)} problem(s); labelling again: {', '.join(damaged) or 'no shard'}")
            for sid, dst in zip(extra, set_aside(output, extra), strict=True):
                print(f"segflow rerun: {sid} is not a shard of the plan: moved to {redact(dst)}")
            redo, refinalize = sorted(set(redo) | set(damaged)), refinalize or bool(problems)
        return run_prepared(
            job, plan, progress_bar=not args.no_progress, debug=_debug(args), redo=redo, refinalize=refinalize
        )


def _cli_path(p: str) -> str:
    return p if "://" in p else os.path.abspath(os.path.expanduser(p))


def cmd_publish(args: argparse.Namespace) -> int:
    from segflow.tasks.ops.publish import PublishError, publish

    try:
        result = publish(_cli_path(args.output), _cli_path(args.dest), args.version)
    except PublishError as e:
        _eprint(f"error: {e}")
        return EXIT_FAILED
    if result["created"]:
        print(f"published version {result['version']} ({result['files']} files) at {result['url']}")
    else:
        print(f"already published as version {result['version']} at {result['url']}: nothing to do")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from segflow.tasks.finalize.finalizer import IncompleteRunError
    from segflow.tasks.report import ReportError, write_report

    t0 = time.time()
    try:
        url = write_report(_cli_path(args.output))
    except (ReportError, IncompleteRunError, FileNotFoundError) as e:
        _eprint(f"error: {e}")
        return EXIT_FAILED
    print(f"report written in {time.time() - t0:.1f}s: {url}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from segflow.tasks.formats import ExportError, export

    options = {}
    if args.image_url_prefix is not None:
        options["image_url_prefix"] = args.image_url_prefix
    if args.val_percent is not None:
        options["val_percent"] = args.val_percent
    if args.link:
        options["link"] = True
    try:
        result = export(_cli_path(args.output), args.format, _cli_path(args.dest), args.verdicts, **options)
    except (ExportError, TypeError) as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    where = result.get("file") or result["dest"]
    print(f"{args.format}: {result['images']} images, {result['masks']} masks ({result['verdicts']}) -> {where}")
    return EXIT_OK


def cmd_import_review(args: argparse.Namespace) -> int:
    from segflow.tasks.formats import ExportError
    from segflow.tasks.ops.review import import_review

    try:
        changes = import_review(_cli_path(args.output), _cli_path(args.file), args.format)
    except ExportError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(changes, indent=1))
        return EXIT_OK
    c = changes["counts"]
    print(
        f"review {changes['version']} of {changes['images_reviewed']} images (sha256 {changes['review_sha256'][:12]}): "
        f"kept {c['kept']}, relabelled {c['relabelled']}, reshaped {c['reshaped']}, deleted {c['deleted']}, "
        f"added {c['added']}; the set now has {changes['labels']} labels, {changes['labels_checked']} checked by "
        "people"
    )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from segflow.config import ConfigError

    try:
        job = _load(args)
    except ConfigError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    stages = ", ".join(f"{n} ({s.kind})" for n, s in job.stages.items())
    checked = " (static: files, weights and credentials not checked)" if args.static else ""
    from segflow.tasks.io.storage import redact

    print(f"{args.config}: ok{checked} -- {len(job.ontology)} classes, stages: {stages}, output {redact(job.output)}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from segflow.config.reference import config_reference

        print(config_reference(), end="")
        return EXIT_OK
    from segflow.config import job_json_schema

    print(json.dumps(job_json_schema(), indent=2))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from segflow.config import ConfigError, load_config
    from segflow.demo.prepare import DEMO_CONFIG, holdout_quality, prepare_demo

    _quiet_prefect(args)
    config = DEMO_CONFIG.with_name("demo-semantic.yaml") if args.semantic else DEMO_CONFIG
    if args.large:
        config = DEMO_CONFIG.with_name("demo-large.yaml")
    if not config.exists():
        _eprint(f"error: {config} not found: this segflow installation lacks its package data (reinstall segflow)")
        return EXIT_CONFIG
    if args.images is None:
        args.images = 24 if args.large else 60
    t0 = time.time()
    overrides = prepare_demo(
        args.output,
        seed=args.seed,
        num_images=args.images,
        calibration=args.calibration,
        shift=args.shift,
        unknown=args.unknown,
        large=args.large,
    )
    shifted = (f", {args.shift}" if args.shift else "") + (
        f", {args.unknown} unknown shapes each" if args.unknown else ""
    )
    print(
        f"segflow demo: {args.images} synthetic scenes (seed {args.seed}{shifted}) with ground "
        f"truth under {args.output} ({time.time() - t0:.1f}s)",
        flush=True,
    )
    try:
        job = load_config(config, overrides=overrides)
        if args.on_drift:
            job = job.model_copy(update={"accept": job.accept.model_copy(update={"on_drift": args.on_drift})})
        plan = prepare(job, str(config))
    except ConfigError as e:
        _eprint(f"error: {e}")
        if "demo-" in str(e) and "weights" in str(e):
            _eprint(
                "the demo models are built by `segflow train-demo-models --output configs/models "
                "--update-config configs/demo.yaml configs/demo-qc.yaml`"
            )
        return EXIT_CONFIG
    rc = run_prepared(job, plan, progress_bar=not args.no_progress, debug=_debug(args))
    if rc == EXIT_OK:
        quality = os.path.join(overrides["output"], "quality.json")
        shutil.copyfile(quality, os.path.join(args.output, "quality.json"))
        holdout = os.path.join(args.output, "ground_truth", "instances.json" if args.calibration else "holdout.json")
        q = holdout_quality(overrides["output"], holdout)
        with open(os.path.join(args.output, "holdout_quality.json"), "w") as f:
            json.dump(q, f, indent=2)
        st, what = q["set"], "every image (the calibration was fitted elsewhere)"
        if not args.calibration:
            what = f"the {q['images']} images not used to fit (ground_truth/holdout.json)"
        print(
            f"\nexported set on {what}:\n  precision {_f3(st['precision'])}   recall {_f3(st['recall'])}   "
            f"(TP {st['tp']}, FP {st['fp']}, FN {st['fn']})\n"
            f"  quality         : {os.path.join(args.output, 'quality.json')}\n"
            f"  held-out quality: {os.path.join(args.output, 'holdout_quality.json')}\n  ground "
            f"truth    : {os.path.join(args.output, 'ground_truth')}"
        )
    return rc


def cmd_train(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from segflow.demo.training import train_demo_models
    from segflow.tasks.io.weights import sha256_file

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    names = []
    if args.only in (None, "instances"):
        det, sam = train_demo_models(
            out,
            seed=args.seed,
            det_images=args.det_images,
            det_epochs=args.det_epochs,
            det_imgsz=args.det_imgsz,
            sam_minutes=args.sam_minutes,
            sam_scenes=args.sam_scenes,
        )
        print(f"instances trained in {time.time() - t0:.0f}s: detector {det}, sam {sam}")
        det_cycles = [e for e in args.det_finetune_epochs if e > 0]
        if det_cycles:
            import torch

            from segflow.demo.training import train_detector

            torch.set_num_threads(max(1, os.cpu_count() or 1))
            for k, epochs in enumerate(det_cycles):  # fresh scenes each cycle, the inference size, lr halved
                t1 = time.time()
                tmp = out / "demo-yolo.finetune.pt"
                ft = train_detector(
                    tmp,
                    images=args.det_finetune_images,
                    epochs=epochs,
                    imgsz=args.det_finetune_imgsz,
                    seed=args.seed + 1 + k,
                    init=out / "demo-yolo.pt",
                    lr0=1e-3 / 2**k,
                )
                os.replace(tmp, out / "demo-yolo.pt")
                print(f"detector fine-tuned (cycle {k + 1} of {len(det_cycles)}) in {time.time() - t1:.0f}s: {ft}")
        cycles = [m for m in args.sam_zoom_minutes if m > 0]
        if cycles:
            import torch

            from segflow.demo.training import finetune_sam_zoom

            torch.set_num_threads(max(1, os.cpu_count() or 1))
            for k, minutes in enumerate(
                cycles
            ):  # cosine cycles, each from the last one's weights at half its peak learning rate
                t1 = time.time()
                tmp = out / "demo-sam.zoom.pt"
                zoom = finetune_sam_zoom(
                    out / "demo-sam.pt", tmp, minutes=minutes, seed=args.seed, lr=3e-4 / 2**k, scenes=args.zoom_scenes
                )
                os.replace(tmp, out / "demo-sam.pt")
                print(
                    f"sam fine-tuned on zoom crops (cycle {k + 1} of {len(cycles)}) in {time.time() - t1:.0f}s: {zoom}"
                )
        names += ["demo-yolo.pt", "demo-sam.pt"]
    if args.only in (None, "panoptic"):
        import torch

        from segflow.demo.training import train_mask2former

        t1 = time.time()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        m2f = train_mask2former(out / "demo-m2f.pt", minutes=args.m2f_minutes, seed=args.seed)
        print(f"panoptic model trained in {time.time() - t1:.0f}s: {m2f}")
        names.append("demo-m2f.pt")
    if args.only in (None, "semantic"):
        import torch

        from segflow.demo.semantic_training import train_unet

        t1 = time.time()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        unet = train_unet(out / "demo-unet.pt", minutes=args.unet_minutes, seed=args.seed, log=print)
        print(f"semantic U-Net trained in {time.time() - t1:.0f}s: {unet}")
        names.append("demo-unet.pt")
    shas = {name: sha256_file(out / name) for name in names}
    for name, sha in shas.items():
        print(f"  {out / name}: sha256 {sha} ({(out / name).stat().st_size / 1e6:.1f} MB)")
    for cfg in map(Path, args.update_config or []):
        text = cfg.read_text()
        for name, sha in shas.items():
            text, n = re.subn(
                rf"(weights: models/{re.escape(name)}\n\s*sha256: )[0-9a-fA-F]{{64}}", rf"\g<1>{sha}", text
            )
            if n != 1:
                _eprint(f"error: {cfg}: no 'weights: models/{name}' followed by a sha256 line")
                return EXIT_FAILED
        cfg.write_text(text)
        print(f"updated sha256 values in {cfg}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    if args.kind != "yolo":
        _eprint(f"error: convert-weights supports: yolo (got {args.kind!r})")
        return EXIT_CONFIG
    from segflow.tasks.stages.yolo import convert_ultralytics_checkpoint

    convert_ultralytics_checkpoint(args.src, args.dst)
    from segflow.tasks.io.weights import sha256_file

    print(f"wrote {args.dst} (sha256 {sha256_file(args.dst)})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segflow", description="Declarative auto-labeling of image datasets on Prefect.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a labeling job")
    r.add_argument("config", help="job YAML file")
    r.add_argument("--source", help="override source.url (path or URL)")
    r.add_argument("--output", help="override output (path or URL)")
    r.add_argument("--gold", help="override gold_set: COCO file with human labels to measure the auto-labels against")
    r.add_argument(
        "--gold-panoptic",
        help="override gold_panoptic: COCO panoptic JSON (PNGs in the folder of the "
        "same name) to measure the panoptic output against",
    )
    r.add_argument(
        "--gold-semantic",
        help="override gold_semantic: a folder of label PNGs (byte = ontology id, 0 = void) to measure the "
        "semantic maps against",
    )
    r.add_argument(
        "--calibration",
        help="override accept.calibration: a calibration.json of an earlier run (same ontology) that decides "
        "accept / review / reject",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--verbose", "-v", action="store_true", help="show Prefect's logs")
    r.set_defaults(fn=cmd_run)

    st = sub.add_parser("status", help="state of every shard of an output: committed, failed (with its error), pending")
    st.add_argument("output", help="the job's output folder or URL")
    st.add_argument("--all", action="store_true", help="list committed shards too")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(fn=cmd_status)

    ve = sub.add_parser("verify", help="check committed files, merged outputs and the plan against the commit records")
    ve.add_argument("output", help="the job's output folder or URL")
    ve.add_argument("--json", action="store_true", help="machine-readable output")
    ve.add_argument("--no-progress", action="store_true", help="no progress bar")
    ve.set_defaults(fn=cmd_verify)

    ca = sub.add_parser(
        "calibrate",
        help="fit per-class acceptance thresholds for a target precision on a finished run's labels and export "
        "it again at that operating point (no model runs)",
    )
    ca.add_argument("output", help="a finished run's output folder or URL")
    ca.add_argument("--gold", required=True, help="COCO instances file with human labels for some of its images")
    ca.add_argument("--precision", type=float, default=0.95, help="target precision of the accepted labels")
    ca.add_argument("--folds", type=int, default=5, help="folds over the gold images for the held-out estimate")
    ca.add_argument(
        "--score", choices=["detector", "combined"], default="detector", help="the score thresholded (see docs)"
    )
    ca.add_argument("--json", action="store_true", help="machine-readable output")
    ca.set_defaults(fn=cmd_calibrate)

    rr = sub.add_parser("rerun", help="run only the shards of an output that are not committed, then finalize")
    rr.add_argument("output", help="the job's output folder or URL")
    rr.add_argument(
        "--shards", help="label these committed shards again (comma-separated ids); the new commit supersedes"
    )
    rr.add_argument("--corrupt", action="store_true", help="label again every shard `segflow verify` finds damaged")
    rr.add_argument("--no-progress", action="store_true")
    rr.add_argument("--verbose", "-v", action="store_true")
    rr.set_defaults(fn=cmd_rerun)

    pb = sub.add_parser("publish", help="publish a finished run to a bucket as a new, immutable dataset version")
    pb.add_argument("output", help="the run's output folder or URL")
    pb.add_argument("dest", help="destination prefix, e.g. s3://datasets/vehicles")
    pb.add_argument("--version", help="version name (default: UTC time + run digest)")
    pb.set_defaults(fn=cmd_publish)

    rp = sub.add_parser("report", help="draw a finished run's report.html again (figures, samples, timings)")
    rp.add_argument("output", help="the run's output folder or URL")
    rp.set_defaults(fn=cmd_report)

    ex = sub.add_parser("export", help="write a finished run's labels for Label Studio, CVAT, ultralytics or COCO")
    ex.add_argument("output", help="the run's output folder or URL")
    ex.add_argument("dest", help="where to write (folder, file or URL; see docs/formats/)")
    ex.add_argument("--format", required=True, choices=["label-studio", "cvat", "yolo-seg", "coco"])
    ex.add_argument(
        "--verdicts",
        choices=["review", "accept", "all"],
        help="which labels go out (default: review for label-studio and cvat, accept for yolo-seg and coco)",
    )
    ex.add_argument("--image-url-prefix", help="label-studio: image URL = prefix + path relative to the source")
    ex.add_argument("--val-percent", type=int, help="yolo-seg: share of images in the val split (default 10)")
    ex.add_argument("--link", action="store_true", help="yolo-seg: symlink the images instead of copying (local)")
    ex.set_defaults(fn=cmd_export)

    ir = sub.add_parser("import-review", help="a reviewer's corrections back into the run as a new dataset version")
    ir.add_argument("output", help="the run's output folder or URL")
    ir.add_argument("file", help="Label Studio JSON export, or COCO instances / CVAT COCO 1.0 zip")
    ir.add_argument("--format", choices=["label-studio", "coco"], default="label-studio")
    ir.add_argument("--json", action="store_true", help="machine-readable output")
    ir.set_defaults(fn=cmd_import_review)

    v = sub.add_parser("validate", help="check a job file without running it")
    v.add_argument("config")
    v.add_argument("--source")
    v.add_argument("--output")
    v.add_argument(
        "--static",
        action="store_true",
        help="check the file alone (schema, stage DAG, ontology, URL syntax): nothing is read, listed or "
        "loaded, so it passes on a machine without the data, weights or credentials (image builds, CI)",
    )
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of job files (or the config reference as markdown)")
    s.add_argument("--markdown", action="store_true", help="the config reference, as in docs/config.md")
    s.set_defaults(fn=cmd_schema)

    d = sub.add_parser("demo", help="label a generated example set offline, end to end")
    d.add_argument("--output", required=True, help="folder for the example data and the results")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--images", type=int, help="scenes (default 60; 24 with --large); the first half of them are the gold set"
    )
    d.add_argument(
        "--calibration", help="apply this saved calibration.json instead of fitting one (every image is held out)"
    )
    d.add_argument(
        "--semantic",
        action="store_true",
        help="run configs/demo-semantic.yaml: stuff from the demo U-Net (semantic stage) instead of the Mask2Former",
    )
    d.add_argument(
        "--shift",
        choices=["dark", "blur", "jpeg"],
        help="render the scenes as another camera would: darkened (x 0.55), blurred (radius 2) or JPEG quality 25 "
        "(with --calibration from an unshifted demo: the drift check, docs/gold-sets.md)",
    )
    d.add_argument("--on-drift", choices=["warn", "review", "fail"], help="accept.on_drift for this demo run")
    d.add_argument(
        "--large",
        action="store_true",
        help="mosaics of about 3,000 px with dozens of small objects, labelled by configs/demo-large.yaml: the "
        "detector over 640-px windows (tiles), SAM in a crop around each box (docs/tiles.md)",
    )
    d.add_argument(
        "--unknown",
        type=int,
        default=0,
        help="draw this many objects of shapes outside the ontology (stars, pentagons, rings) into each scene: "
        "not in the ground truth, so every one exported is a false positive (docs/gold-sets.md, novelty)",
    )
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--verbose", "-v", action="store_true")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser(
        "train-demo-models",
        help="train the demo detector + SAM (side by side, ~14 min), fine-tune the SAM "
        "on zoom crops (~75 min) and train the demo Mask2Former (~14 min) on synthetic "
        "scenes, CPU",
    )
    t.add_argument("--output", default="configs/models")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--det-images", type=int, default=400)
    t.add_argument("--det-epochs", type=int, default=34)
    t.add_argument("--det-imgsz", type=int, default=288)
    t.add_argument(
        "--det-finetune-epochs",
        type=int,
        nargs="*",
        default=[25, 15],
        help="then continue the detector on fresh scenes at the inference size: one cosine cycle per value, "
        "epochs each, each at half the previous peak learning rate (default: 25 15; 0 or none: skip)",
    )
    t.add_argument("--det-finetune-images", type=int, default=800)
    t.add_argument("--det-finetune-imgsz", type=int, default=320)
    t.add_argument("--sam-minutes", type=float, default=13.5)
    t.add_argument("--sam-scenes", type=int, default=600, help="scenes rendered for the SAM's box->mask training")
    t.add_argument("--zoom-scenes", type=int, default=400, help="scenes rendered for each zoom fine-tune cycle")
    t.add_argument(
        "--sam-zoom-minutes",
        type=float,
        nargs="*",
        default=[45.0, 30.0],
        help="then fine-tune the SAM on zoom-window crops (the framing the demo jobs' "
        "zoom_context gives it): one cosine cycle per value, minutes each, each "
        "at half the previous peak learning rate (default: 45 30; 0 or none: skip)",
    )
    t.add_argument("--m2f-minutes", type=float, default=14.0, help="wall-clock budget of the Mask2Former training")
    t.add_argument("--unet-minutes", type=float, default=35.0, help="wall-clock budget of the demo U-Net's training")
    t.add_argument(
        "--only",
        choices=["instances", "panoptic", "semantic"],
        help="train only the detector + SAM (~1.5 h with the zoom fine-tune), only "
        "the Mask2Former (~14 min) or only the semantic U-Net (~16 min); default: all, one after the other",
    )
    t.add_argument(
        "--update-config",
        nargs="*",
        help="write the new sha256 values into these job files (e.g. configs/demo.yaml configs/demo-qc.yaml)",
    )
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser(
        "convert-weights",
        help="convert a pickled ultralytics .pt into a weights-only segflow checkpoint (trusted files only)",
    )
    c.add_argument("kind", choices=["yolo"])
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(fn=cmd_convert)
    return p


def _known_failure(e: BaseException) -> str | None:
    """The one line for a failure segflow knows (storage, weights, plans, integrity), or None for a bug."""
    from segflow.tasks.io.lease import LeaseHeld, LeaseLost
    from segflow.tasks.io.storage import redact
    from segflow.tasks.io.weights import WeightsError

    if isinstance(e, (LeaseHeld, LeaseLost)):
        return str(e)
    if isinstance(e, PermissionError):
        hint = "check the credentials (environment, profile or Prefect block) and what they may write or read"
        return f"{e.strerror or 'permission denied'}: {redact(str(e.filename or '?'))}: {hint}"
    if isinstance(e, FileNotFoundError):
        return f"not found: {redact(str(e.filename or e))}"
    if isinstance(e, (OSError, WeightsError)):
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except Exception as e:
        line = _known_failure(e)
        if line is None:
            raise  # not a failure segflow knows: a bug, with its traceback
        _eprint(f"error: {line}")
        if _debug(args):
            import traceback

            traceback.print_exc()
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
