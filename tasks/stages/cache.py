"""Models load once per worker process and are shared by every shard it runs.

Keyed by the stage's settings (minus ``needs``) and the ontology; a per-entry
lock makes concurrent shards wait for one load instead of loading twice.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segflow.tasks.io.weights import HUB_PREFIX, is_builtin_yaml, resolve_model_dir, resolve_weights, sha256_file
from segflow.tasks.stages.registry import ADAPTERS, adapter_class

if TYPE_CHECKING:
    from segflow.tasks.stages.settings import StageSettings


__all__ = ["LoadedModel", "check_stage_weights", "clear", "get_model", "resolve_stage_weights"]


@dataclass
class LoadedModel:
    adapter: Any
    identity: str  # "kind:file@sha256:<12 hex>" for provenance in the manifest


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    model: LoadedModel | None = None


_entries: dict[tuple, _Entry] = {}
_lock = threading.Lock()


def resolve_stage_weights(stage: StageSettings) -> tuple[str | None, str | None]:
    """``(what the adapter loads, the local file that identifies it)`` for a stage, by its kind's weight layout.

    Remote files are fetched into the cache and checked against ``sha256``; folders and ``hub:`` ids are
    resolved locally (never downloaded). ``(None, None)`` for kinds without weights; ``(name, None)`` for a
    library architecture name (random weights).
    """
    layout = ADAPTERS[stage.kind].weights
    if layout == "none":
        return None, None
    if layout == "file_or_builtin" and is_builtin_yaml(stage.weights):
        return stage.weights, None
    if layout == "file_or_dir" and (stage.weights.startswith(HUB_PREFIX) or os.path.isdir(stage.weights)):
        path = resolve_model_dir(stage.weights, stage.sha256)
        names = ("model.safetensors", "pytorch_model.bin")
        return path, next((os.path.join(path, f) for f in names if os.path.isfile(os.path.join(path, f))), None)
    local = resolve_weights(stage.weights, stage.sha256)
    return local, local


def check_stage_weights(stage: StageSettings) -> None:
    """Resolve a stage's weights (:func:`resolve_stage_weights`) and run its kind's own check of the file
    (``AdapterSpec.check``: e.g. a YOLO checkpoint's model description against the allow-list). No model loads.

    Raises:
      WeightsError: the file is missing, does not match its sha256, or must not be loaded.
    """
    loaded, _ = resolve_stage_weights(stage)
    spec = ADAPTERS[stage.kind]
    if spec.check and loaded is not None:
        module, _, fn = spec.check.partition(":")
        getattr(importlib.import_module(module), fn)(loaded)


def _identity(stage: StageSettings, local: str | None) -> str:
    """``kind:file@sha256:<12 hex>`` for provenance in the manifest."""
    if ADAPTERS[stage.kind].weights == "none":
        digest = hashlib.sha256(stage.model_dump_json(exclude={"needs"}).encode()).hexdigest()[:12]
        return f"{stage.kind}:rules@sha256:{digest}"
    if local is None:
        return f"{stage.kind}:{stage.weights}(random-init)"
    return f"{stage.kind}:{stage.weights.rstrip('/').rsplit('/', 1)[-1]}@sha256:{sha256_file(local)[:12]}"


def get_model(
    stage: StageSettings,
    ontology: dict[int, str],
    isthing: dict[int, bool] | None = None,
    stats: dict[str, int] | None = None,
    prompts: dict[int, list[str]] | None = None,
) -> LoadedModel:
    """The loaded adapter of a stage (``isthing``: ontology id -> thing/stuff; ``prompts``: id -> text prompts).

    ``stats["loads"]`` (when given) counts the models this call actually loaded (0 on a cache hit).
    """
    key = (
        stage.kind,
        stage.model_dump_json(exclude={"needs"}),
        tuple(sorted(ontology.items())),
        tuple(sorted((isthing or {}).items())),
        tuple(sorted((k, tuple(v)) for k, v in (prompts or {}).items())),
    )
    with _lock:
        entry = _entries.setdefault(key, _Entry())
    with entry.lock:
        if entry.model is None:
            if stats is not None:
                stats["loads"] = stats.get("loads", 0) + 1
            path, local = resolve_stage_weights(stage)
            context = {"isthing": isthing, "prompts": prompts}
            extra = [context[c] for c in ADAPTERS[stage.kind].context]
            adapter = adapter_class(stage.kind)(stage, path, ontology, *extra)
            entry.model = LoadedModel(adapter, _identity(stage, local))
        return entry.model


def clear() -> None:
    with _lock:
        _entries.clear()
