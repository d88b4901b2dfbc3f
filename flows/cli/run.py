"""``segflow run``, ``rerun``, ``validate`` and ``schema``: jobs from their files to their outputs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from segflow.flows.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    _cli_path,
    _debug,
    _eprint,
    _load,
    _Progress,
    _quiet_prefect,
)
from segflow.flows.cli.show import print_calibration, print_summary


def cmd_run(args: argparse.Namespace) -> int:
    from segflow.config import ConfigError
    from segflow.flows.commands import run_file_job

    _quiet_prefect(args)
    try:
        job = _load(args)
    except ConfigError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    return run_command(lambda on_plan: run_file_job(job, args.config, on_plan=on_plan), args)


def cmd_rerun(args: argparse.Namespace) -> int:
    from segflow.flows.commands import rerun_output

    _quiet_prefect(args)
    shards = [s for s in (args.shards or "").split(",") if s]
    return run_command(
        lambda on_plan: rerun_output(_cli_path(args.output), shards, args.corrupt, on_plan, _print_repair), args
    )


def _print_repair(repair: Any) -> None:
    from segflow.tasks.io.storage import redact

    for p in repair.problems:
        print(f"  {p}")
    print(
        f"segflow rerun: {len(repair.problems)} problem(s); labelling again: {', '.join(repair.damaged) or 'no shard'}"
    )
    for sid, dst in repair.set_aside:
        print(f"segflow rerun: {sid} is not a shard of the plan: moved to {redact(dst)}")


class _Shown:
    """What the terminal shows while a job runs: the plan's size, then a progress bar fed by the shards."""

    def __init__(self, progress_bar: bool):
        self.progress_bar = progress_bar
        self.bar: _Progress | None = None
        self.job: Any = None

    def on_plan(self, job: Any, plan: Any) -> None:
        from segflow.tasks.io.storage import redact
        from segflow.tasks.shard import progress

        reuse = ""
        if plan.reused:
            reuse = f" (plan reused; {plan.new_images} new images planned)" if job.incremental else " (plan reused)"
        print(
            f"segflow: {job.name}: {plan.num_images} images in {len(plan.shard_ids)} shards{reuse} -> "
            f"{redact(job.output)}",
            flush=True,
        )
        self.job, self.bar = job, _Progress(plan.num_images, len(plan.shard_ids), enabled=self.progress_bar)
        progress.set_reporter(self.bar)

    def close(self) -> None:
        from segflow.tasks.shard import progress

        progress.set_reporter(None)
        if self.bar is not None:
            self.bar.close()


def run_command(call: Any, args: argparse.Namespace, hint: Any = None) -> int:
    """Run ``call(on_plan)`` (a :mod:`segflow.flows.commands` function), showing its progress, and print the
    summary; failures as one line with the exit code (the traceback with --verbose / SEGFLOW_DEBUG=1).
    ``hint(error)``: a second line for a config error, or None."""
    from segflow.config import ConfigError
    from segflow.tasks.io.storage import redact
    from segflow.tasks.shard.commit import IncompleteRunError, ShardConflict

    shown = _Shown(progress_bar=not args.no_progress)
    try:
        summary = call(shown.on_plan)
    except ConfigError as e:
        shown.close()
        _eprint(f"error: {e}")
        if hint is not None and (line := hint(str(e))):
            _eprint(line)
        return EXIT_CONFIG
    except IncompleteRunError as e:
        shown.close()
        _eprint(f"error: run incomplete: {e}")
        _traceback(args)
        return EXIT_FAILED
    except Exception as e:
        shown.close()
        if shown.job is None:
            raise  # before the run: main() says it in one line when it is a failure segflow knows
        _eprint(f"error: run failed: {type(e).__name__}: {e}")
        if isinstance(e, ShardConflict):
            _eprint(
                f"  `segflow verify {redact(shown.job.output)}` lists every file that does not match its commit record"
            )
        _traceback(args)
        return EXIT_FAILED
    shown.close()
    print_results(summary, shown.job.output)
    return EXIT_OK


def _traceback(args: argparse.Namespace) -> None:
    if _debug(args):
        import traceback

        traceback.print_exc()


def print_results(summary: Any, output: str) -> None:
    """The run's summary, its calibration (with the drift check) and its quality against the gold set."""
    print_summary(summary)
    if summary.calibration is not None:
        from segflow.tasks.io.layout import OutputLayout
        from segflow.tasks.io.storage import open_fs, read_json

        print()
        print_calibration(read_json(open_fs(output)[0], OutputLayout(output).calibration), drift=summary.drift)
    if summary.quality is not None:
        from segflow.tasks.evaluate.quality import format_quality, load_quality

        print("\n" + format_quality(load_quality(output)), flush=True)


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


def register(sub: Any) -> None:
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

    rr = sub.add_parser("rerun", help="run only the shards of an output that are not committed, then finalize")
    rr.add_argument("output", help="the job's output folder or URL")
    rr.add_argument(
        "--shards", help="label these committed shards again (comma-separated ids); the new commit supersedes"
    )
    rr.add_argument("--corrupt", action="store_true", help="label again every shard `segflow verify` finds damaged")
    rr.add_argument("--no-progress", action="store_true")
    rr.add_argument("--verbose", "-v", action="store_true")
    rr.set_defaults(fn=cmd_rerun)

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
