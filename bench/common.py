"""What the bench scripts share: the repository root, the timing helpers, the demo job, the GPU peaks table and
the results file.

Every script runs as a module from the repository root (``python -m bench``, ``python -m bench.bench_plan``...),
so nothing here edits ``sys.path``. The suite (``bench/__main__.py``) imports the measurement modules it runs;
they import only this one (no cycle).

``bench/results/latest.json`` holds one value per measured key, merged run after run: a run of some steps
(``python -m bench --only e2e``, ``python -m bench.bench_scale``) replaces only its own keys and stamps each with
its date in ``measured_at`` (key -> ISO date, UTC), beside the environment it was measured in
(``environment``: key -> device, threads, torch). A key's figures are from one run; keys of different dates
were measured in different runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "bench" / "results" / "latest.json"

#: published dense bf16 peaks, TFLOP/s (vendor datasheets; figures with sparsity are twice these)
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}

#: keys of a results dict that describe the run, not a measurement
RUN_KEYS = ("device", "threads", "malloc_tuning", "torch", "quick", "started_at", "seconds")


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by its device name, None when not in the table."""
    return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None)


def timed(fn, repeat: int = 1) -> float:
    """Best of ``repeat`` calls of ``fn``, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed_interleaved(fns: dict, repeat: int) -> dict:
    """Best of ``repeat`` for each function, the rounds interleaved (a, b, c, a, b, c, ...).

    This machine's speed drifts by 10-40% over minutes; timing each function's
    repeats back to back let one slow stretch land on one side of a ratio.
    """
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def timed_per_item(fns: dict, items: list, repeat: int, rounds: dict | None = None) -> dict:
    """Seconds for each function over all ``items``: the sum over items of its best of ``repeat`` runs.

    Interleaved at the finest grain: each round runs every function on item 1,
    then every function on item 2, ... Slow stretches of this machine last
    seconds; a contender timed over many seconds at once (the per-box loop)
    always averages fast and slow stretches, while a short one's best run can
    fall entirely in a fast one. Per item, both sides are timed at the same
    moments. ``rounds``: filled with each round's total seconds per function.
    """
    import numpy as np

    times = {k: np.zeros((repeat, len(items))) for k in fns}
    for r in range(repeat):
        for i, item in enumerate(items):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn(*item)
                times[k][r, i] = time.perf_counter() - t
    if rounds is not None:
        rounds.update({k: [round(float(x), 3) for x in v.sum(1)] for k, v in times.items()})
    return {k: float(v.min(0).sum()) for k, v in times.items()}


def rss_mb() -> float:
    """This process's resident memory, MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (Linux: ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo_job(images: Path, out: Path, shard_size: int, **det):
    """configs/demo.yaml on ``images`` into ``out``: detector and SAM only (no gold set, things only);
    ``det`` overrides detector settings."""
    from segflow.config import load_config

    job = load_config(ROOT / "configs" / "demo.yaml", overrides={"source": str(images), "output": str(out)})
    stages = {k: v for k, v in job.stages.items() if k in ("detector", "masks")}
    if det:
        stages["detector"] = stages["detector"].model_copy(update=det)
    return job.model_copy(
        update={
            "stages": stages,
            "shard_size": shard_size,
            "gold_set": None,
            "gold_panoptic": None,
            "ontology": [c for c in job.ontology if c.isthing],
        }
    )


def environment() -> dict[str, Any]:
    """Where a measurement ran: device, torch threads and version."""
    import torch

    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def save_results(path: Path, rows: dict[str, Any], env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``rows`` (measured key -> value) into the results file at ``path``: the keys of this run replace
    theirs, each stamped with today's date in ``measured_at`` and ``env`` in ``environment``; every other key
    stays as it was. Returns the merged dict."""
    path = Path(path)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.setdefault("measured_at", {})
    merged.setdefault("environment", {})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env = env or {}
    for k, v in rows.items():
        merged[k] = v
        if k not in RUN_KEYS:
            merged["measured_at"][k] = now
            merged["environment"][k] = env
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, sort_keys=False))
    return merged
