"""What every command shares: exit codes, error lines, the job's loading and preparation, the progress bar."""

from __future__ import annotations

import argparse
import os
import sys

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


def _cli_path(p: str) -> str:
    return p if "://" in p else os.path.abspath(os.path.expanduser(p))


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
