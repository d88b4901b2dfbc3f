"""``segflow demo``: label a generated scene set offline with the shipped models and measure it.

1. Render ``--images`` synthetic scenes (seeded) into ``DIR/images`` with exact
   ground truth in ``DIR/ground_truth`` (COCO instances, panoptic, semantic),
   plus a truncated and an empty file, as real buckets have them.
2. Run ``configs/demo.yaml`` -- the detector, SAM and Mask2Former trained by
   ``segflow train-demo-models`` and shipped in ``configs/models`` (package data of :mod:`segflow.configs`) -- through
   the normal flow with ``DIR/ground_truth/instances.json`` and
   ``DIR/ground_truth/panoptic.json`` as the gold sets.
3. The run evaluates its labels against the gold set; the figures are written
   to ``DIR/out/quality.json`` and copied to ``DIR/quality.json``.
"""

from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

from segflow.demo.synthetic import write_scene_set

__all__ = ["DEMO_CONFIG", "prepare_demo"]

DEMO_CONFIG = Path(str(files("segflow.configs") / "demo.yaml"))  # package data: works from a wheel too


def prepare_demo(folder: str | Path, seed: int = 0, num_images: int = 40) -> dict[str, str]:
    """Write the scene set and its ground truth; return the CLI overrides for the demo job."""
    folder = Path(folder).resolve()
    for owned in ("images", "ground_truth", "out"):  # a new demo never reuses an earlier one's plan or commits
        if (folder / owned).exists():
            shutil.rmtree(folder / owned)
    write_scene_set(folder / "images", num_images, seed=seed, corrupt=True, gt_dir=folder / "ground_truth")
    return {
        "source": str(folder / "images"),
        "output": str(folder / "out"),
        "gold_set": str(folder / "ground_truth" / "instances.json"),
        "gold_panoptic": str(folder / "ground_truth" / "panoptic.json"),
    }
