"""``segflow calibrate``: fit the operating point of a finished run on a gold set."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from segflow.flows.cli.common import EXIT_CONFIG, EXIT_OK, _cli_path, _eprint
from segflow.flows.cli.show import print_calibration


def cmd_calibrate(args: argparse.Namespace) -> int:
    from segflow.tasks.evaluate.quality import GoldSetError, format_quality, load_quality
    from segflow.tasks.formats import ExportError
    from segflow.tasks.ops.calibrate import recalibrate_from_reviews, recalibrate_output
    from segflow.tasks.plan.planner import PlanError
    from segflow.tasks.shard.commit import IncompleteRunError

    output = _cli_path(args.output)
    t0 = time.time()
    if (args.gold is None) == (not args.from_reviews):
        _eprint("error: calibrate needs --gold FILE or --from-reviews (one of them)")
        return EXIT_CONFIG
    accept = {"precision": args.precision, "folds": args.folds, "score": args.score}
    try:
        if args.from_reviews:
            summary, cal, gold, n = recalibrate_from_reviews(output, not args.without_gold_set, **accept)
            print(f"gold set from reviews: {n} images (reviewed audit images, and the job's gold set) -> {gold}")
        else:
            summary, cal = recalibrate_output(output, _cli_path(args.gold), **accept)
    except (FileNotFoundError, GoldSetError, IncompleteRunError, PlanError, ValueError, ExportError) as e:
        _eprint(f"error: {e}")
        return EXIT_CONFIG
    if args.json:
        print(json.dumps({"calibration": cal, "summary": summary.to_dict()}, indent=2))
        return EXIT_OK
    print_calibration(cal)
    print(format_quality(load_quality(output)))
    print(
        f"  verdicts        : {summary.verdicts} (exported again in {time.time() - t0:.1f}s; no model ran)\n"
        f"  calibration     : {os.path.join(output, 'calibration.json')}\n"
        f"  PR curves       : {os.path.join(output, 'qc', 'pr_curves.png')}\n"
        f"  review band     : {os.path.join(output, 'review', 'instances.json')}"
    )
    return EXIT_OK


def register(sub: Any) -> None:
    ca = sub.add_parser(
        "calibrate",
        help="fit per-class acceptance thresholds for a target precision on a finished run's labels and export "
        "it again at that operating point (no model runs)",
    )
    ca.add_argument("output", help="a finished run's output folder or URL")
    ca.add_argument("--gold", help="COCO instances file with human labels for some of its images")
    ca.add_argument(
        "--from-reviews",
        action="store_true",
        help="the gold set is what people reviewed: the audited images of the run's review batches (and the job's "
        "gold set, if any); docs/gold-sets.md",
    )
    ca.add_argument(
        "--without-gold-set",
        action="store_true",
        help="with --from-reviews: leave the job's gold set out (when it only measures the run)",
    )
    ca.add_argument("--precision", type=float, default=0.95, help="target precision of the accepted labels")
    ca.add_argument("--folds", type=int, default=5, help="folds over the gold images for the held-out estimate")
    ca.add_argument(
        "--score", choices=["detector", "combined"], default="detector", help="the score thresholded (see docs)"
    )
    ca.add_argument("--json", action="store_true", help="machine-readable output")
    ca.set_defaults(fn=cmd_calibrate)
