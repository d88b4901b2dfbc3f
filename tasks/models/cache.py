"""Models load once per worker process and are shared by every shard it runs.

Keyed by the stage's settings (minus ``needs``) and the ontology; a per-entry
lock makes concurrent shards wait for one load instead of loading twice.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from segflow.tasks.models.registry import adapter_class
from segflow.tasks.weights import HUB_PREFIX, is_builtin_yaml, resolve_model_dir, resolve_weights, sha256_file

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


def get_model(
    stage: Any,
    ontology: dict[int, str],
    isthing: dict[int, bool] | None = None,
    stats: dict[str, int] | None = None,
    prompts: dict[int, list[str]] | None = None,
) -> LoadedModel:
    """The loaded adapter of a stage (``isthing``: ontology id -> thing/stuff, for panoptic stages).

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
        if entry.model is None and stats is not None:
            stats["loads"] = stats.get("loads", 0) + 1
        if entry.model is None:
            if not hasattr(stage, "weights"):  # rule-based stages (qc)
                import hashlib

                adapter = adapter_class(stage.kind)(stage, None, ontology)
                digest = hashlib.sha256(stage.model_dump_json(exclude={"needs"}).encode()).hexdigest()[:12]
                entry.model = LoadedModel(adapter, f"{stage.kind}:rules@sha256:{digest}")
                return entry.model
            ident = None
            if stage.kind == "yolo" and is_builtin_yaml(stage.weights):
                local, path = None, stage.weights
            elif stage.kind in ("mask2former", "owlv2", "owlvit", "grounding_dino") and (
                stage.weights.startswith(HUB_PREFIX) or os.path.isdir(stage.weights)
            ):
                path = resolve_model_dir(stage.weights, stage.sha256)
                local = next(
                    (
                        os.path.join(path, f)
                        for f in ("model.safetensors", "pytorch_model.bin")
                        if os.path.isfile(os.path.join(path, f))
                    ),
                    None,
                )
                ident = (
                    f"{stage.kind}:{stage.weights.rstrip('/').rsplit('/', 1)[-1]}@sha256:{sha256_file(local)[:12]}"
                    if local
                    else None
                )
            else:
                local = path = resolve_weights(stage.weights, stage.sha256)
            cls = adapter_class(stage.kind)
            if getattr(cls, "role", None) == "panoptic":
                adapter = cls(stage, path, ontology, isthing)
            elif stage.kind in ("owlv2", "owlvit", "grounding_dino"):
                adapter = cls(stage, path, ontology, prompts)
            else:
                adapter = cls(stage, path, ontology)
            entry.model = LoadedModel(adapter, ident or _identity(stage.kind, stage.weights, local))
        return entry.model


def clear() -> None:
    with _lock:
        _entries.clear()
