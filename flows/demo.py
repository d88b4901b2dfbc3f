"""``segflow demo``: a complete job on generated data, offline.

Writes synthetic images (with a deliberately corrupt file and an empty one),
tiny random-weight models and a job file under the demo folder, then the CLI
runs that job through the normal flow. With random weights the labels are
plumbing, not quality: the detector runs at ``conf: 0``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.models.tiny import make_tiny_sam, make_tiny_yolo
from tasks.synthetic import SHAPE_CLASSES, write_scene_set

__all__ = ["prepare_demo"]


def prepare_demo(folder: str | Path, seed: int = 0, num_images: int = 24) -> Path:
    """Write images, models and ``job.yaml`` under ``folder``; return the job file path."""
    folder = Path(folder).resolve()
    write_scene_set(folder / "images", num_images, seed=seed, corrupt=True)
    yolo = folder / "models" / "detector-random.pt"
    sam = folder / "models" / "sam-tiny-random.pt"
    if not yolo.exists():
        make_tiny_yolo(yolo, SHAPE_CLASSES, seed=seed)
    if not sam.exists():
        make_tiny_sam(sam, seed=seed)
    job = {
        "name": "segflow-demo",
        "source": {"url": "images"},
        "output": "out",
        "shard_size": 8,
        "ontology": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
        "stages": {
            "detector": {"kind": "yolo", "weights": "models/detector-random.pt", "conf": 0.0, "imgsz": 320, "max_det": 5, "batch_size": 8, "device": "cpu"},
            "masks": {"kind": "sam", "needs": ["detector"], "weights": "models/sam-tiny-random.pt", "batch_size": 4, "device": "cpu"},
        },
        "runtime": {"max_workers": 2},
    }
    path = folder / "job.yaml"
    path.write_text("# written by `segflow demo` (random-weight models: plumbing, not label quality)\n" + yaml.safe_dump(job, sort_keys=False))
    return path
