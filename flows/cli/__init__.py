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
import os
import sys
from collections.abc import Sequence

# Quiet, offline-friendly defaults, set before Prefect is imported anywhere.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")

from segflow.flows.cli import demo, evaluate, ops, run
from segflow.flows.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, _debug, _eprint
from segflow.flows.cli.run import run_command
from segflow.flows.cli.show import drift_lines, print_calibration, print_summary

__all__ = ["main", "build_parser", "run_command", "print_summary", "print_calibration", "drift_lines"]
__all__ += ["EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG"]

#: the command groups, in the order `segflow --help` lists their commands
GROUPS = (run, ops, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segflow", description="Declarative auto-labeling of image datasets on Prefect.")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
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
