"""Detector stage: ultralytics YOLO, batched over images.

Weights:

* a segflow YOLO checkpoint (``.pt`` written by :func:`save_yolo_checkpoint`):
  ``{"format": "segflow.yolo/1", "task", "yaml", "names", "state_dict"}`` --
  plain tensors and containers, loadable with ``weights_only=True``;
* an ultralytics architecture YAML (``yolo11n-seg.yaml``): random weights, for
  plumbing tests only (random YOLO weights find nothing above normal thresholds).

Ultralytics' own ``.pt`` files are pickled model objects; segflow refuses to
unpickle them at run time. ``segflow convert-weights yolo IN.pt OUT.pt``
converts one once (a deliberate, local step for files you trust).

Boxes come back in the pixel frame of the (upright RGB) input image as XYXY;
model classes are mapped to ontology ids by name (``class_map`` overrides),
and classes outside the ontology are dropped.

CPU threads: ultralytics lowers them for the whole process. Its import sets
``OMP_NUM_THREADS=1`` when unset, and every CPU predictor setup calls
``torch.set_num_threads(cores - 1)``. After one YOLO call on a 2-core machine,
SAM and Mask2Former would run on 1 thread, at half speed. So this module
loads torch before ultralytics and removes the variable again. Every call
into ultralytics runs inside :func:`keep_torch_threads`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks.models.device import resolve_device
from segflow.tasks.record import Detections
from segflow.tasks.weights import WeightsError, load_checkpoint

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # library code never installs packages
os.environ.setdefault("YOLO_VERBOSE", "False")
if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = str(
        Path(os.environ.get("SEGFLOW_CACHE_DIR") or Path.home() / ".cache" / "segflow") / "ultralytics"
    )
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)

import torch  # noqa: E402 - torch (and its OpenMP runtime) loads before ultralytics can set OMP_NUM_THREADS=1

_omp = os.environ.get("OMP_NUM_THREADS")
import ultralytics  # noqa: E402,F401

if TYPE_CHECKING:
    from segflow.config.schema import YoloStage


if _omp is None:  # don't hand OMP_NUM_THREADS=1 on to subprocesses and later-loaded libraries
    os.environ.pop("OMP_NUM_THREADS", None)

FORMAT = "segflow.yolo/1"

__all__ = ["YoloDetector", "save_yolo_checkpoint", "load_yolo", "convert_ultralytics_checkpoint", "keep_torch_threads"]


@contextlib.contextmanager
def keep_torch_threads():
    """Run a call into ultralytics and put torch's CPU thread count back afterwards (see the module docstring)."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def save_yolo_checkpoint(yolo: Any, path: str | Path, half: bool = True) -> None:
    """Write a YOLO model (``ultralytics.YOLO`` or its ``.model``) as a weights-only segflow checkpoint."""
    from ultralytics.nn.tasks import BaseModel

    model = yolo if isinstance(yolo, BaseModel) else yolo.model  # a DetectionModel, or the YOLO wrapper around one
    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    cfg = {k: v for k, v in dict(model.yaml).items()}
    names = {int(k): str(v) for k, v in dict(model.names).items()}
    task = getattr(model, "task", None) or ("segment" if "Segment" in type(model).__name__ else "detect")
    torch.save({"format": FORMAT, "task": task, "yaml": cfg, "names": names, "state_dict": sd}, str(path))


def convert_ultralytics_checkpoint(src: str, dst: str) -> None:
    """Convert a pickled ultralytics ``.pt`` into a weights-only segflow checkpoint.

    This unpickles ``src`` (ultralytics' own loader): only run it on files you trust.
    """
    from ultralytics import YOLO

    with keep_torch_threads():
        save_yolo_checkpoint(YOLO(src), dst)


def load_yolo(weights: str) -> Any:
    """An ``ultralytics.YOLO`` built from a segflow checkpoint or an architecture YAML."""
    from ultralytics import YOLO

    if weights.endswith((".yaml", ".yml")):
        with keep_torch_threads():
            return YOLO(weights, task=None)
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{weights}: not a segflow YOLO checkpoint (expected format {FORMAT!r}); "
            f"convert ultralytics files with `segflow convert-weights yolo`"
        )
    cfg = dict(ckpt["yaml"])
    name = Path(str(cfg.get("yaml_file") or "yolo.yaml")).name  # the file name carries the model scale
    with tempfile.TemporaryDirectory(prefix="segflow-yolo-") as tmp:
        import yaml

        cfg_path = Path(tmp) / name
        cfg_path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k not in ("yaml_file",)}))
        with keep_torch_threads():
            model = YOLO(str(cfg_path), task=ckpt.get("task"))
    missing, unexpected = model.model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{weights}: state dict does not match its architecture (missing {len(missing)}, "
            f"unexpected {len(unexpected)} tensors)"
        )
    model.model.names = {int(k): v for k, v in ckpt["names"].items()}
    model.model.float().eval()
    return model


class YoloDetector:
    """Images -> :class:`Detections` (boxes XYXY in pixels, ontology class ids, scores)."""

    role = "detector"

    def __init__(self, stage: YoloStage, weights_path: str, ontology: dict[int, str]):
        self.stage = stage
        self.device = resolve_device(stage.device)
        self.model = load_yolo(weights_path)
        names = {int(k): str(v) for k, v in self.model.model.names.items()}
        by_name = {v: k for k, v in ontology.items()}
        lookup = np.full(max(names) + 1 if names else 1, -1, dtype=np.int64)
        for cid, cname in names.items():
            target = stage.class_map.get(cname, cname)
            if target in by_name:
                lookup[cid] = by_name[target]
        self.class_lookup = lookup
        self.model_names = names
        self._lock = threading.Lock()  # ultralytics predictors keep state: one call at a time

    @property
    def mapped_classes(self) -> dict[str, int]:
        return {
            self.model_names[i]: int(c) for i, c in enumerate(self.class_lookup) if c >= 0 and i in self.model_names
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects.

        Arguments:
          images: list of H x W x 3 uint8 RGB arrays (sizes may differ).

        Returns:
          One Detections per image: boxes N x 4 XYXY pixels, ontology class ids, scores.
        """
        out: list[Detections] = []
        for batch, results in self._predict(images):
            for im, r in zip(batch, results):
                boxes = r.boxes.xyxy.cpu().numpy().astype(np.float32)
                cls = r.boxes.cls.cpu().numpy().astype(np.int64)
                conf = r.boxes.conf.cpu().numpy().astype(np.float32)
                onto = self.class_lookup[np.clip(cls, 0, len(self.class_lookup) - 1)] if len(cls) else cls
                h, w = im.shape[:2]
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
                dets = Detections(image_size=(h, w), boxes=boxes, class_ids=onto, scores=conf)
                out.append(dets[dets.class_ids >= 0])
        return out

    def _predict(self, images: Sequence[np.ndarray], **extra: Any):
        """``(bgr_batch, results)`` per model call, results in the order of ``images``.

        Ultralytics letterboxes a batch of mixed image sizes to a full square
        but a batch of one size (or a single image) only to the next stride
        multiple, and the padding changes low-confidence detections. So only
        images of the same size share a call: an image's labels never depend on
        which images happen to be in its batch.
        """
        order = sorted(range(len(images)), key=lambda i: images[i].shape[:2])  # stable: same sizes stay in input order
        groups: list[list[int]] = []
        for i in order:
            if (
                groups
                and images[groups[-1][0]].shape[:2] == images[i].shape[:2]
                and len(groups[-1]) < self.stage.batch_size
            ):
                groups[-1].append(i)
            else:
                groups.append([i])
        done: dict[int, tuple[np.ndarray, Any]] = {}
        for g in groups:
            batch = [np.ascontiguousarray(images[i][..., ::-1]) for i in g]  # ultralytics takes BGR
            with self._lock, keep_torch_threads():
                results = list(
                    self.model.predict(
                        batch,
                        conf=self.stage.conf,
                        iou=self.stage.iou,
                        imgsz=self.stage.imgsz,
                        max_det=self.stage.max_det,
                        device=self.device,
                        verbose=False,
                        stream=True,
                        **extra,
                    )
                )
            for i, im, r in zip(g, batch, results):
                done[i] = (im, r)
        ordered = [done[i] for i in range(len(images))]
        yield [im for im, _ in ordered], [r for _, r in ordered]
