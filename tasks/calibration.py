"""Calibrated acceptance: per-class score thresholds that reach a target precision on a gold set.

Inputs: every label of the gold set's images (class, score, and whether it
matches a gold instance: one to one per image and class, greedy by score, mask
IoU >= 0.5, :func:`segflow.tasks.quality.match_set`) and the number of gold
instances per image and class. A threshold ``t`` for class ``c`` keeps the
labels of ``c`` with score >= ``t``. Matching is greedy by descending score, so
a label's match never depends on lower-scored labels: one matching serves
every threshold.

* fit: per class, the lowest threshold whose precision on the fitting images
  is at least the target over at least ``min_kept`` labels, i.e. the highest
  recall at that precision;
* estimate: k-fold over images (each image's labels in one fold): fit on the
  other folds, count TP / FP / FN of the held-out fold at that threshold; the
  counts summed over folds give precision and recall on images not used to
  fit, with Wilson 95% intervals;
* a class with fewer than ``min_gold`` gold instances, or whose target is not
  reachable (no threshold reaches it, or the held-out precision's interval lies
  below it: a threshold fitted on noise), gets no threshold (``status:
  review``) and a warning.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["best_threshold", "calibrate", "wilson"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``k / n`` (None when ``n == 0``)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def best_threshold(scores: np.ndarray, tp: np.ndarray, target: float, min_kept: int = 1) -> float | None:
    """The lowest score threshold whose kept labels (score >= it, at least ``min_kept``) have precision >= ``target``.

    None when no threshold has. ``min_kept`` stops a handful of top-scored labels that happen to be right from
    passing for a precise class (uninformative scores reach any precision on their first label or two).

    Arguments:
      scores: N floats, one per label.
      tp: N bools, whether the label matches a gold instance.
    """
    if len(scores) == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], np.cumsum(tp[order])
    kept = np.arange(1, len(s) + 1)
    cut = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every label of equal score
    ok = (hits / kept >= target) & cut & (kept >= min_kept)
    if not ok.any():
        return None
    return float(s[np.nonzero(ok)[0][-1]])


def _counts(scores: np.ndarray, tp: np.ndarray, n_gold: int, threshold: float | None) -> tuple[int, int, int]:
    keep = scores >= threshold if threshold is not None else np.zeros(len(scores), bool)
    t = int(tp[keep].sum())
    return t, int(keep.sum()) - t, n_gold - t


def _summary(tp: int, fp: int, fn: int) -> dict[str, Any]:
    p, r = wilson(tp, tp + fp), wilson(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "precision_ci95": [round(v, 4) for v in p] if p else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "recall_ci95": [round(v, 4) for v in r] if r else None,
    }


def calibrate(
    labels: list[dict],
    gold: dict[tuple[int, int], int],
    classes: dict[int, str],
    target: float = 0.95,
    folds: int = 5,
    min_gold: int = 10,
    min_kept: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-class thresholds for ``target`` precision, with held-out estimates.

    Arguments:
      labels: dicts with ``image_id``, ``category_id``, ``score``, ``tp`` (bool), one per label of the gold images.
      gold: ``(image_id, category_id)`` -> number of gold instances.
      classes: ontology id -> name; classes without gold instances and labels are left out.
    """
    images = sorted({i for i, _ in gold} | {r["image_id"] for r in labels})
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(images, rng.permutation(len(images)) % max(1, min(folds, len(images))), strict=True))
    by_class: dict[int, list[dict]] = defaultdict(list)
    for r in labels:
        by_class[r["category_id"]].append(r)
    out: dict[str, Any] = {
        "target_precision": target,
        "folds": folds,
        "min_gold": min_gold,
        "min_kept": min_kept,
        "classes": {},
    }
    totals = np.zeros(3, int)
    warnings = []
    for cid, name in sorted(classes.items()):
        rows = by_class.get(cid, [])
        n_gold = sum(n for (_, c), n in gold.items() if c == cid)
        if not rows and not n_gold:
            continue
        scores = np.array([r["score"] for r in rows], float)
        tp = np.array([bool(r["tp"]) for r in rows])
        fold = np.array([fold_of[r["image_id"]] for r in rows], int)
        gold_fold = defaultdict(int)
        for (img, c), n in gold.items():
            if c == cid:
                gold_fold[fold_of[img]] += n
        held = np.zeros(3, int)
        for k in sorted(set(fold_of.values())):
            t = best_threshold(scores[fold != k], tp[fold != k], target, min_kept)
            held += _counts(scores[fold == k], tp[fold == k], gold_fold[k], t)
        threshold = best_threshold(scores, tp, target, min_kept)
        entry = {"category_id": cid, "gold_instances": n_gold, "labels": len(rows), "threshold": threshold}
        entry["heldout"] = _summary(*held.tolist())
        if n_gold < min_gold:
            entry.update(status="review", reason=f"{n_gold} gold instances (< {min_gold}): too few to set a threshold")
        elif threshold is None:
            entry.update(status="review", reason=f"no threshold reaches precision {target} on the gold set")
        elif entry["heldout"]["precision_ci95"] is None or entry["heldout"]["precision_ci95"][1] < target:
            ci = entry["heldout"]["precision_ci95"]
            seen = f"{entry['heldout']['precision']} (95% CI {ci[0]}-{ci[1]})" if ci else "undefined (nothing kept)"
            entry.update(
                status="review", reason=f"held-out precision {seen} cannot reach {target}: the scores do not separate"
            )
        else:
            entry.update(status="calibrated")
            totals += held
        if entry["status"] == "review":  # nothing of the class is accepted: its gold instances are missed
            entry["threshold"] = None
            totals += (0, 0, n_gold)
            warnings.append(f"{name}: {entry['reason']}; its labels go to review")
        out["classes"][name] = entry
    out["heldout"] = _summary(*totals.tolist())
    out["warnings"] = warnings
    return out


def pr_curves_png(labels: list[dict], gold: dict[tuple[int, int], int], result: dict[str, Any]) -> bytes:
    """Per-class precision-recall curves of the labels (all images), the chosen threshold marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, entry in result["classes"].items():
        cid = entry["category_id"]
        rows = sorted((r for r in labels if r["category_id"] == cid), key=lambda r: -r["score"])
        n_gold = sum(n for (_, c), n in gold.items() if c == cid)
        if not rows or not n_gold:
            continue
        hits = np.cumsum([r["tp"] for r in rows])
        precision, recall = hits / np.arange(1, len(rows) + 1), hits / n_gold
        (line,) = ax.plot(recall, precision, label=f"{name} ({entry['status']})")
        if entry["threshold"] is not None:
            k = max(i for i, r in enumerate(rows) if r["score"] >= entry["threshold"])
            ax.plot(recall[k], precision[k], "o", color=line.get_color(), markersize=8)
    ax.axhline(result["target_precision"], color="grey", linestyle="--", linewidth=1, label="target precision")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title("labels of the gold images, by score (dot: chosen threshold)")
    ax.legend(loc="lower left", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def calibrate_output(output: str, gold_url: str, target: float = 0.95, folds: int = 5) -> dict[str, Any]:
    """Fit thresholds on a finished run's manifest against a gold set; write ``calibration.json`` and the curves.

    No model runs: the labels, their scores and the images come from ``OUTPUT/manifest/``; committed shards
    are not touched.
    """
    import json

    import pyarrow.dataset as ds

    from segflow.config.schema import JobConfig
    from segflow.tasks.layout import OutputLayout
    from segflow.tasks.quality import label_matches, load_gold
    from segflow.tasks.storage import open_fs, read_bytes, write_bytes

    layout = OutputLayout(output)
    fs, job_path = open_fs(layout.job_json)

    def path_of(url: str) -> str:
        return open_fs(url)[1]

    job = JobConfig.model_validate(json.loads(read_bytes(fs, job_path)))
    image_cols = ["image_id", "file_name", "status", "width", "height"]
    images = ds.dataset(path_of(layout.manifest("images")), format="parquet", filesystem=fs)
    ok = [r for r in images.to_table(columns=image_cols).to_pylist() if r["status"] == "ok"]
    file_names = {r["file_name"]: r["image_id"] for r in ok}
    sizes = {r["image_id"]: (r["height"], r["width"]) for r in ok}
    cols = ["image_id", "category_id", "score", "rle_counts", "bbox"]
    masks = ds.dataset(path_of(layout.manifest("masks")), format="parquet", filesystem=fs)
    masks = masks.to_table(columns=cols).to_pylist()
    labels, gold = label_matches(load_gold(gold_url), job.category_names(), file_names, masks, sizes)
    result = calibrate(labels, gold, job.category_names(), target=target, folds=folds)
    result["gold_set"] = gold_url
    _, path = open_fs(layout.calibration)
    write_bytes(fs, path, json.dumps(result, indent=2).encode())
    _, png = open_fs(layout.pr_curves)
    write_bytes(fs, png, pr_curves_png(labels, gold, result))
    return result
