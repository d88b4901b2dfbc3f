"""Commands on a finished output: ``status``, ``verify``, ``publish``, ``report``, ``export``, ``review-batch``,
``import-review``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from segflow.flows.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, _cli_path, _eprint


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


def cmd_publish(args: argparse.Namespace) -> int:
    from segflow.tasks.ops.publish import PublishError, publish

    try:
        result = publish(_cli_path(args.output), _cli_path(args.dest), args.version)
    except PublishError as e:
        _eprint(f"error: {e}")
        return EXIT_FAILED
    if result.created:
        print(f"published version {result.version} ({result.files} files) at {result.url}")
    else:
        print(f"already published as version {result.version} at {result.url}: nothing to do")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from segflow.tasks.report import ReportError, write_report
    from segflow.tasks.shard.commit import IncompleteRunError

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
    print(f"{args.format}: {result.images} images, {result.masks} masks ({result.verdicts}) -> {result.written_to}")
    return EXIT_OK


def cmd_import_review(args: argparse.Namespace) -> int:
    from segflow.tasks.formats import ExportError
    from segflow.tasks.ops.review import import_review

    try:
        changes = import_review(_cli_path(args.output), _cli_path(args.file), args.format, args.batch)
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
    if "estimate" in changes:
        print(estimate_lines(changes["estimate"]))
    return EXIT_OK


def estimate_lines(e: Any) -> str:
    """A review batch's estimate of the exported set, as the terminal shows it."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    lines = [
        f"exported set ({e['exported']} masks), estimated from the audit of {e['batch']} "
        f"({e['audited_masks']} masks, {e['audited_images']} images; 95% intervals):",
        f"  precision {f(e['precision'])} ({f(e['precision_low'])}-{f(e['precision_high'])})   "
        f"recall {f(e['recall'])} ({f(e['recall_low'])}-{f(e['recall_high'])})",
    ]
    for name, c in e.get("per_class", {}).items():
        lines.append(
            f"  {name}: precision {f(c['precision'])} ({f(c['precision_low'])}-{f(c['precision_high'])}), "
            f"{c['audited']} audited"
        )
    return "\n".join(lines)


def cmd_review_batch(args: argparse.Namespace) -> int:
    from segflow.tasks.formats import ExportError
    from segflow.tasks.ops.review_batch import write_batch

    try:
        batch, result = write_batch(
            _cli_path(args.output), _cli_path(args.dest), args.budget, args.audit_share, args.format, args.seed
        )
    except ExportError as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    parts: dict[str, int] = {}
    for it in batch.items:
        parts[it.part] = parts.get(it.part, 0) + 1
    said = ", ".join(f"{n} {p}" for p, n in sorted(parts.items()))
    print(
        f"review batch {batch.batch}: {len(batch.items)} items ({said}) on {result.images} images, "
        f"{result.masks} labels shown -> {result.written_to}\n"
        f"  import the review with `segflow import-review {args.output} FILE --format "
        f"{'label-studio' if args.format == 'label-studio' else 'coco'}`: it reports the exported set's precision "
        "and recall from the audit"
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """The commands of this module; the format choices are the registries' (formats registered by
    :func:`segflow.tasks.formats.register_exporter` included)."""
    from segflow.tasks.formats import EXPORTERS, REVIEW_READERS

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
    ex.add_argument("--format", required=True, choices=list(EXPORTERS), help="a registered export format")
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
    ir.add_argument("--format", choices=list(REVIEW_READERS), default="label-studio")
    ir.add_argument("--json", action="store_true", help="machine-readable output")
    ir.add_argument("--batch", help="the review batch it answers (default: the latest, when it covers its images)")
    ir.set_defaults(fn=cmd_import_review)

    rb = sub.add_parser(
        "review-batch",
        help="write a batch for people to check: an audit sample that measures the exported set, and the labels "
        "most likely wrong",
    )
    rb.add_argument("output", help="the run's output folder or URL")
    rb.add_argument("dest", help="where to write the batch's review file (as `export`)")
    rb.add_argument("--budget", type=int, required=True, help="items to review (masks, and images to search)")
    rb.add_argument("--audit-share", type=float, default=0.5, help="share of the budget for the audit (default 0.5)")
    rb.add_argument("--format", choices=list(EXPORTERS), default="label-studio", help="review file format")
    rb.add_argument("--seed", type=int, default=0, help="seed of the audit's draw")
    rb.set_defaults(fn=cmd_review_batch)
