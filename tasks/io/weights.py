"""Model weights from a local path or any fsspec URL: cached, verified, loaded safely.

* Remote files are copied once into the cache (``$SEGFLOW_CACHE_DIR`` or
  ``~/.cache/segflow``) under a name derived from the URL, through a temporary
  file and a rename, so a cached file is always complete.
* When a sha256 is given it is checked before anything is loaded; a mismatch is
  an error that names the file and both digests.
* Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and
  plain containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segflow.tasks.io.storage import open_fs, redact

__all__ = [
    "WeightsError",
    "cache_dir",
    "sha256_file",
    "resolve_weights",
    "load_checkpoint",
    "weights_location_issue",
    "resolve_model_dir",
    "build_to_fit",
]

_lock = threading.Lock()
_verified: dict[tuple[str, str], float] = {}


class WeightsError(Exception):
    """Weights that are missing, unreadable or do not match their sha256."""


def cache_dir() -> Path:
    return Path(os.environ.get("SEGFLOW_CACHE_DIR") or Path.home() / ".cache" / "segflow")


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s)) and not s.startswith("file://")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_builtin_yaml(weights: str) -> bool:
    """An ultralytics architecture name such as ``yolo11n-seg.yaml`` (random weights, for tests)."""
    return weights.endswith((".yaml", ".yml")) and "/" not in weights and not os.path.exists(weights)


def weights_location_issue(weights: str, builtin_yaml_ok: bool = False, dir_ok: bool = False) -> str | None:
    """Why ``weights`` cannot be used, or None. Cheap: existence only (no download, no hashing)."""
    if builtin_yaml_ok and is_builtin_yaml(weights):
        return None
    if dir_ok and (weights.startswith(HUB_PREFIX) or os.path.isdir(weights.removeprefix("file://"))):
        try:
            resolve_model_dir(weights)
        except WeightsError as e:
            return str(e)
        return None
    if _is_url(weights):
        try:
            fs, path = open_fs(weights)
            if not fs.exists(path):
                return f"file not found: {redact(weights)}"
        except Exception as e:  # noqa: BLE001 - report, don't crash validation
            return f"cannot check {redact(weights)}: {type(e).__name__}: {e}"
        return None
    local = weights.removeprefix("file://")
    if not os.path.isfile(local):
        return f"file not found: {local}"
    return None


def resolve_weights(weights: str, sha256: str | None = None) -> str:
    """A local, complete, verified copy of ``weights``; returns its path.

    Raises:
      WeightsError: missing file, failed download, sha256 mismatch.
    """
    if _is_url(weights):
        # keyed by the URL without its credentials (a presigned URL signed again hits the same entry), named by
        # its path's last part: no query string or token ever lands in a file name
        digest = hashlib.sha256(redact(weights).encode()).hexdigest()[:16]
        name = os.path.basename(urlsplit(weights).path.rstrip("/")) or "weights"
        local = cache_dir() / "weights" / digest / re.sub(r"[^A-Za-z0-9._-]", "_", name)[:128]
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + f".part-{os.getpid()}-{threading.get_ident()}")
            try:
                fs, path = open_fs(weights)
                fs.get_file(path, str(tmp))
                os.replace(tmp, local)
            except FileNotFoundError:
                raise WeightsError(f"weights not found: {redact(weights)}") from None
            except Exception as e:  # noqa: BLE001
                raise WeightsError(f"cannot download weights {redact(weights)}: {type(e).__name__}: {e}") from None
            finally:
                if tmp.exists():
                    tmp.unlink()
    else:
        local = Path(weights.removeprefix("file://"))
        if not local.is_file():
            raise WeightsError(f"weights not found: {local}")
    if sha256:
        key = (str(local), sha256)
        stat = local.stat().st_mtime_ns
        with _lock:
            cached = _verified.get(key)
        if cached != stat:
            actual = sha256_file(local)
            if actual != sha256.lower():
                if _is_url(weights):
                    local.unlink(missing_ok=True)  # do not keep a bad download in the cache
                raise WeightsError(f"sha256 mismatch for {redact(weights)}: expected {sha256.lower()}, got {actual}")
            with _lock:
                _verified[key] = stat
    return str(local)


HUB_PREFIX = "hub:"
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_dir(weights: str, sha256: str | None = None) -> str:
    """A local model directory (``save_pretrained`` layout) for a directory path or ``hub:<id>``.

    Hub ids are looked up in the local Hugging Face cache only; nothing is
    downloaded. With ``sha256`` the directory's weights file is verified.
    """
    if weights.startswith(HUB_PREFIX):
        repo_id = weights.removeprefix(HUB_PREFIX)
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(repo_id, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any lookup failure means "not cached"
            raise WeightsError(
                f"{weights}: not in the local Hugging Face cache ({type(e).__name__}); segflow "
                f"never downloads at run time: "
                f"fetch it first, e.g. `huggingface-cli download {repo_id}` (or bake it into the worker image)"
            ) from None
    else:
        local = weights.removeprefix("file://")
        if not os.path.isdir(local):
            raise WeightsError(f"model directory not found: {local}")
    found = [f for f in _MODEL_FILES if os.path.isfile(os.path.join(local, f))]
    if not found or not os.path.isfile(os.path.join(local, "config.json")):
        raise WeightsError(f"{weights}: expected config.json and {' or '.join(_MODEL_FILES)} in {local}")
    if sha256:
        actual = sha256_file(os.path.join(local, found[0]))
        if actual != sha256.lower():
            raise WeightsError(f"sha256 mismatch for {weights} ({found[0]}): expected {sha256.lower()}, got {actual}")
    return local


def load_checkpoint(path: str) -> Any:
    """``torch.load`` with ``weights_only=True`` on CPU; a clear error for pickled objects."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refusing to load: the file holds pickled Python objects, not plain tensors "
            f"(weights_only=True). Convert it once with `segflow convert-weights` if "
            f"you trust it. ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: not a readable torch checkpoint: {type(e).__name__}: {e}") from None


def build_to_fit(build: Callable[[], Any], state_dict: Any, source: str, what: str) -> Any:
    """``build()`` once its model is known to fit ``state_dict``: the same tensor names and shapes.

    A checkpoint's own description of its architecture (sizes, layer counts) is untrusted input:
    it could ask for a model far larger than its tensors. The model is first built on the ``meta``
    device (no memory), its state dict compared with the checkpoint's, and only then built for real.

    Raises:
      WeightsError: the description cannot be built, or names other tensors or shapes (the first few named).
    """
    import torch

    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{source}: the checkpoint's state_dict is not a mapping of names to tensors")
    try:
        with torch.device("meta"):
            probe = build()
    except Exception as e:  # noqa: BLE001 - any failure to build from the description is the checkpoint's fault
        raise WeightsError(f"{source}: cannot build a {what} from the checkpoint's description: {e}") from None
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or shapes:
        parts = [
            f"{n} {label} (e.g. {', '.join(keys[:3])})"
            for n, label, keys in (
                (len(missing), "missing", missing),
                (len(extra), "unexpected", extra),
                (len(shapes), "of another shape", shapes),
            )
            if keys
        ]
        raise WeightsError(f"{source}: the weights do not fit the {what} the checkpoint describes: {'; '.join(parts)}")
    return build()
