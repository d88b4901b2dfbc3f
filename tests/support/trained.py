"""Small models trained once for the placement tests, stored as test data with their sha256.

The placement tests need models that really localise (random weights find
nothing). Training them takes minutes, so they are trained once by this
seeded script and shipped in ``tests/data/models/``; ``SHA256SUMS`` there
lists every file, and :func:`trained_model` checks it before a test loads one.

Regenerate (about 30 minutes on 2 CPU cores; commit the folder afterwards)::

    python -m tests.support.trained
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "models"
SUMS = DATA / "SHA256SUMS"


def _trainers() -> dict[str, tuple[str, Callable[..., dict], dict[str, Any]]]:
    """name -> (file or folder name, trainer, keyword arguments); every trainer seeded by its default ``seed=0``."""
    from tests.support import localizers as loc
    from tests.support import promptable

    return {
        "owlv2": ("owlv2-target", loc.train_owl_localizer, {"kind": "owlv2"}),
        "owlvit": ("owlvit-target", loc.train_owl_localizer, {"kind": "owlvit"}),
        "grounding_dino": ("gdino-target", loc.train_gdino_localizer, {}),
        "yolo_seg": ("yolo-seg-target.pt", loc.train_yolo_seg_localizer, {}),
        "maskrcnn": ("maskrcnn-target.pt", loc.train_maskrcnn_localizer, {}),
        "sam_points": ("sam-points.pt", loc.train_sam_point_localizer, {}),
        "sam2_box": ("sam2-box-target", promptable.train_sam2_box_localizer, {}),
        "sam3": ("sam3-target", promptable.train_sam3_localizer, {}),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def read_sums() -> dict[str, str]:
    """Relative path -> sha256, from ``SHA256SUMS``."""
    if not SUMS.is_file():
        return {}
    return {rel: digest for digest, rel in (line.split(maxsplit=1) for line in SUMS.read_text().splitlines() if line)}


def trained_model(name: str) -> Path:
    """The stored model ``name`` (a file or a ``save_pretrained`` folder), every file checked against SHA256SUMS."""
    rel, _, _ = _trainers()[name]
    path = DATA / rel
    sums = read_sums()
    files = _files(path) if path.exists() else []
    if not files:
        raise FileNotFoundError(f"{path} is missing: regenerate the test models with `python -m tests.support.trained`")
    for f in files:
        key = f.relative_to(DATA).as_posix()
        if sums.get(key) != _sha256(f):
            raise ValueError(f"{f}: sha256 does not match {SUMS}; regenerate with `python -m tests.support.trained`")
    return path


def train_all(names: list[str] | None = None) -> None:
    """Train the named models (default: all) into ``tests/data/models`` and rewrite SHA256SUMS."""
    DATA.mkdir(parents=True, exist_ok=True)
    for name, (rel, train, kwargs) in _trainers().items():
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / rel
            print(name, train(out, **kwargs), flush=True)
            target = DATA / rel
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(out), target)
    write_sums()


def write_sums() -> None:
    """Rewrite SHA256SUMS from the files in ``tests/data/models``."""
    lines = [f"{_sha256(f)}  {f.relative_to(DATA).as_posix()}" for f in _files(DATA) if f != SUMS]
    SUMS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    train_all(sys.argv[1:] or None)
