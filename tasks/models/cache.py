"""Models load once per worker process and are shared by every shard it runs.

Keyed by the stage's settings (minus ``needs``) and the ontology; a per-entry
lock makes concurrent shards wait for one load instead of loading twice.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from tasks.models.registry import adapter_class
from tasks.weights import is_builtin_yaml, resolve_weights, sha256_file

__all__ = ["LoadedModel", "get_model", "clear"]


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


def _identity(kind: str, weights: str, local: str | None) -> str:
    if local is None:
        return f"{kind}:{weights}(random-init)"
    return f"{kind}:{os.path.basename(weights)}@sha256:{sha256_file(local)[:12]}"


def get_model(stage: Any, ontology: dict[int, str]) -> LoadedModel:
    key = (stage.kind, stage.model_dump_json(exclude={"needs"}), tuple(sorted(ontology.items())))
    with _lock:
        entry = _entries.setdefault(key, _Entry())
    with entry.lock:
        if entry.model is None:
            if not hasattr(stage, "weights"):  # rule-based stages (qc)
                import hashlib

                adapter = adapter_class(stage.kind)(stage, None, ontology)
                digest = hashlib.sha256(stage.model_dump_json(exclude={"needs"}).encode()).hexdigest()[:12]
                entry.model = LoadedModel(adapter, f"{stage.kind}:rules@sha256:{digest}")
                return entry.model
            if stage.kind == "yolo" and is_builtin_yaml(stage.weights):
                local, path = None, stage.weights
            else:
                local = path = resolve_weights(stage.weights, stage.sha256)
            adapter = adapter_class(stage.kind)(stage, path, ontology)
            entry.model = LoadedModel(adapter, _identity(stage.kind, stage.weights, local))
        return entry.model


def clear() -> None:
    with _lock:
        _entries.clear()
