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
    prepare,
)
from segflow.flows.cli.show import print_calibration, print_summary


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
    from segflow.tasks.io.storage import redact
    from segflow.tasks.shard import progress
    from segflow.tasks.shard.commit import IncompleteRunError, ShardConflict

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
    if summary.calibration is not None:
        from segflow.tasks.io.layout import OutputLayout
        from segflow.tasks.io.storage import open_fs, read_json

        print()
        print_calibration(read_json(open_fs(job.output)[0], OutputLayout(job.output).calibration), drift=summary.drift)
    if summary.quality is not None:
        from segflow.tasks.evaluate.quality import format_quality, load_quality

        print("\n" + format_quality(load_quality(job.output)), flush=True)
    return EXIT_OK


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
            from segflow.tasks.ops.verify import damaged_shards, set_aside, verify

            problems = list(verify(output))
            damaged, extra = damaged_shards(problems, plan.shard_ids)
            for p in problems:
                print(f"  {p}")
            print(f"segflow rerun: {len(problems)} problem(s); labelling again: {', '.join(damaged) or 'no shard'}")
            for sid, dst in zip(extra, set_aside(output, extra), strict=True):
                print(f"segflow rerun: {sid} is not a shard of the plan: moved to {redact(dst)}")
            redo, refinalize = sorted(set(redo) | set(damaged)), refinalize or bool(problems)
        return run_prepared(
            job, plan, progress_bar=not args.no_progress, debug=_debug(args), redo=redo, refinalize=refinalize
        )


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
