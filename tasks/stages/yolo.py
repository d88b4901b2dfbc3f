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
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks.io.weights import WeightsError, load_checkpoint
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # library code never installs packages
os.environ.setdefault("YOLO_VERBOSE", "False")
if "YOLO_CONFIG_DIR" not in os.environ:
    os.environ["YOLO_CONFIG_DIR"] = str(
        Path(os.environ.get("SEGFLOW_CACHE_DIR") or Path.home() / ".cache" / "segflow") / "ultralytics"
    )
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)

import torch  # loads (with its OpenMP runtime) before ultralytics can set OMP_NUM_THREADS=1

_omp = os.environ.get("OMP_NUM_THREADS")
import ultralytics  # noqa: E402,F401

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.yolo import YoloStage


if _omp is None:  # don't hand OMP_NUM_THREADS=1 on to subprocesses and later-loaded libraries
    os.environ.pop("OMP_NUM_THREADS", None)

FORMAT = "segflow.yolo/1"

__all__ = [
    "YoloDetector",
    "check_yolo_weights",
    "check_yolo_yaml",
    "save_yolo_checkpoint",
    "load_yolo",
    "convert_ultralytics_checkpoint",
    "keep_torch_threads",
]


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


#: the top-level keys of an ultralytics model description that segflow lets through to ``parse_model``
_YAML_KEYS = frozenset(
    {"nc", "scales", "scale", "activation", "depth_multiple", "width_multiple", "kpt_shape", "reg_max", "end2end"}
    | {"backbone", "head", "channels", "ch", "yaml_file"}
)
#: activations ultralytics may set (it evaluates the string: only these exact spellings pass)
_ACTIVATION = re.compile(
    r"^(torch\.)?nn\.(SiLU|ReLU|ReLU6|LeakyReLU|GELU|Hardswish|Hardsigmoid|Mish|Sigmoid|Tanh|ELU|Identity)"
    r"\(\s*(\d{1,3}(\.\d{1,6})?)?\s*\)$"
)
_ARG_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
_ARG_NUMBER = re.compile(r"^-?\d{1,6}(\.\d{1,6})?$")
_MAX_INT = 1 << 14  # channels, repeats, strides: a description asking for more is refused before it allocates
_MAX_LAYERS = 1024


def check_yolo_yaml(cfg: Any, source: str) -> None:
    """Refuse a checkpoint's model description unless every part of it is on segflow's allow-list.

    ultralytics builds a model from this description by evaluating strings in it (``activation``
    goes through ``eval``; module names are looked up in a module's globals and called), so a
    checkpoint that carries its own description could run code even when its tensors are loaded
    with ``weights_only=True``. Allowed: the keys above; activations from a fixed set; module names
    that are ``torch.nn.Module`` subclasses of ultralytics' or torch's layers; arguments that are
    numbers, booleans, None, short identifiers or nested lists of those, bounded in size.

    Raises:
      WeightsError: naming the key, e.g. ``yaml.head[3].module``.
    """
    from ultralytics.nn import tasks as ul_tasks

    check = _YamlCheck(source)
    if not isinstance(cfg, dict):
        raise check.bad("", "not a mapping")
    for k in cfg:
        if k not in _YAML_KEYS:
            raise check.bad(str(k)[:40], "not a key segflow lets through to ultralytics")
    check.scalars(cfg)
    check.scales(cfg.get("scales"))
    layers = 0
    for part in ("backbone", "head"):
        rows = cfg.get(part)
        if not isinstance(rows, list):
            raise check.bad(part, "expected a list of [from, repeats, module, args]")
        layers += len(rows)
        if layers > _MAX_LAYERS:
            raise check.bad(part, f"more than {_MAX_LAYERS} layers")
        for i, row in enumerate(rows):
            check.layer(f"{part}[{i}]", row, ul_tasks)


@dataclass(frozen=True)
class _YamlCheck:
    """The checks of :func:`check_yolo_yaml`, each raising a :class:`WeightsError` that names the key."""

    source: str

    def bad(self, key: str, why: str) -> WeightsError:
        return WeightsError(f"{self.source}: refusing the checkpoint's model description: yaml.{key}: {why}")

    def number(self, key: str, v: Any, lo: float = -_MAX_INT, hi: float = _MAX_INT) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or v != v:
            raise self.bad(key, f"expected a number in [{lo}, {hi}]")

    def arg(self, key: str, v: Any, depth: int = 0) -> None:
        """A layer argument: a number, boolean, None, short name, or a (nested, bounded) list of those."""
        if v is None or isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            return self.number(key, v)
        if isinstance(v, str):
            if not (_ARG_WORD.match(v) or _ARG_NUMBER.match(v)):
                raise self.bad(key, "a string argument must be a short name or a number")
            return
        if isinstance(v, list) and depth < 2 and len(v) <= 64:
            for j, x in enumerate(v):
                self.arg(f"{key}[{j}]", x, depth + 1)
            return
        raise self.bad(key, f"unsupported argument of type {type(v).__name__}")

    def scalars(self, cfg: dict) -> None:
        """The top-level numbers, flags and strings (``activation`` only from the allowed set)."""
        for k in ("nc", "depth_multiple", "width_multiple", "reg_max", "channels", "ch"):
            if k in cfg:
                self.number(k, cfg[k], 0, _MAX_INT)
        if "end2end" in cfg and not isinstance(cfg["end2end"], (bool, type(None))):
            raise self.bad("end2end", "expected true or false")
        if "kpt_shape" in cfg:
            self.arg("kpt_shape", cfg["kpt_shape"])
        for k in ("scale", "yaml_file"):
            if k in cfg and (not isinstance(cfg[k], str) or len(cfg[k]) > 512):
                raise self.bad(k, "expected a short string")
        act = cfg.get("activation")
        if act is not None and (not isinstance(act, str) or not _ACTIVATION.match(act)):
            raise self.bad("activation", "not one of the activations segflow allows (e.g. 'nn.SiLU()')")

    def scales(self, scales: Any) -> None:
        if scales is None:
            return
        if not isinstance(scales, dict) or len(scales) > 16:
            raise self.bad("scales", "expected a small mapping of scale -> [depth, width, max_channels]")
        for name, v in scales.items():
            if not isinstance(name, str) or not _ARG_WORD.match(name) or not isinstance(v, list) or len(v) != 3:
                raise self.bad(f"scales.{str(name)[:20]}", "expected [depth, width, max_channels]")
            for j, x in enumerate(v):
                self.number(f"scales.{name}[{j}]", x, 0, _MAX_INT)

    def layer(self, key: str, row: Any, ul_tasks: Any) -> None:
        """One ``[from, repeats, module, args]`` row of ``backbone`` or ``head``."""
        if not isinstance(row, list) or len(row) != 4:
            raise self.bad(key, "expected [from, repeats, module, args]")
        f, n, m, args = row
        for j, x in enumerate(f if isinstance(f, list) else [f]):
            if isinstance(x, bool) or not isinstance(x, int) or not -_MAX_LAYERS <= x < _MAX_LAYERS:
                raise self.bad(f"{key}.from[{j}]", "expected a layer index")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise self.bad(f"{key}.repeats", "expected an integer in [1, 64]")
        if not isinstance(m, str) or not _is_layer_name(m, ul_tasks):
            raise self.bad(f"{key}.module", "not a torch.nn or ultralytics layer class")
        if not isinstance(args, list) or len(args) > 16:
            raise self.bad(f"{key}.args", "expected a list of at most 16 arguments")
        for j, x in enumerate(args):
            self.arg(f"{key}.args[{j}]", x)


def _is_layer_name(name: str, ul_tasks: Any) -> bool:
    """``nn.X`` for a torch.nn layer class, or a layer class ultralytics' model builder knows by name."""
    if name.startswith("nn."):
        obj = getattr(torch.nn, name[3:], None) if _ARG_WORD.match(name[3:]) else None
    else:
        obj = vars(ul_tasks).get(name) if _ARG_WORD.match(name) else None
    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def check_yolo_weights(weights: str) -> dict | None:
    """The contents of a segflow YOLO checkpoint once its model description passed :func:`check_yolo_yaml`;
    None for an architecture YAML (a local one is checked the same way). Loads no model: the flow calls it
    before any shard runs (``AdapterSpec.check``), :func:`load_yolo` before it builds one.

    Raises:
      WeightsError: not a segflow checkpoint, or a description outside the allow-list.
    """
    if weights.endswith((".yaml", ".yml")):
        if os.path.exists(weights):  # a file of the user's, not one of ultralytics' own architecture names
            import yaml

            with open(weights, encoding="utf-8") as f:
                check_yolo_yaml(yaml.safe_load(f), weights)
        return None
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(
            f"{weights}: not a segflow YOLO checkpoint (expected format {FORMAT!r}); "
            f"convert ultralytics files with `segflow convert-weights yolo`"
        )
    check_yolo_yaml(ckpt.get("yaml"), weights)
    if ckpt.get("task") not in (None, "detect", "segment"):
        raise WeightsError(
            f"{weights}: refusing the checkpoint: task {str(ckpt.get('task'))[:40]!r} is not detect or segment"
        )
    return ckpt


def load_yolo(weights: str) -> Any:
    """An ``ultralytics.YOLO`` built from a segflow checkpoint or an architecture YAML."""
    from ultralytics import YOLO

    ckpt = check_yolo_weights(weights)
    if ckpt is None:
        with keep_torch_threads():
            return YOLO(weights, task=None)
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
