"""Calibrated acceptance: per-class score thresholds that reach a target precision on a gold set.

Inputs: every label of the gold set's images (class, score, and whether it
matches a gold instance: one to one per image and class, greedy by score, mask
IoU >= 0.5, :func:`segflow.tasks.evaluate.quality.match_set`) and the number of gold
instances per image and class. A threshold ``t`` for class ``c`` keeps the
labels of ``c`` with score >= ``t``. Matching is greedy by descending detector
score (COCOeval's), so a label's match never depends on lower-scored labels:
one matching serves every threshold (for the ``combined`` score, whose order
differs a little, the matching is that of the detector score).

The score (``accept.score``): ``detector``, or ``combined``: per class, an
L2-regularised logistic model (:func:`fit_logistic`) of the features of
:func:`segflow.tasks.evaluate.acceptance.features`, fitted on the gold matches (inside
each fold on that fold's fitting images only).

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
  review``) and a warning;
* review band: per class, ``review_threshold`` is the highest threshold whose
  recall on the gold set reaches ``review_recall`` (at most ``threshold``);
* novelty (``accept.novelty``, on by default): a label whose shape is unlike
  the class's right masks (:mod:`segflow.tasks.evaluate.novelty`) is never exported
  whatever its score, so the threshold is fitted, and its precision and recall
  estimated, on the labels that pass the novelty limit. Each label's novelty
  is measured held out: against the reference of the right masks of the other
  folds. ``novelty_in_thresholds`` in the result says which way it was fitted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segflow.tasks.documents import Calibration, ClassCalibration, CocoDataset, HeldOut, Reliability, ScoreModel
from segflow.tasks.evaluate.novelty import COLUMNS as SHAPE_COLUMNS
from segflow.tasks.evaluate.novelty import FEATURES as SHAPE_FEATURES
from segflow.tasks.evaluate.novelty import fit_reference, shape_matrix
from segflow.tasks.evaluate.novelty import novelty as novelty_score

__all__ = [
    "best_threshold",
    "calibrate",
    "fit_calibration",
    "fit_logistic",
    "recall_threshold",
    "reliability",
    "wilson",
]


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``k / n`` (None when ``n == 0``; ``n`` may be an effective sample
    size, ``k`` then the proportion times it)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def best_threshold(
    scores: np.ndarray, tp: np.ndarray, target: float, min_kept: int = 1, weights: np.ndarray | None = None
) -> float | None:
    """The lowest score threshold whose kept labels (score >= it, at least ``min_kept``) have precision >= ``target``.

    None when no threshold has. ``min_kept`` stops a handful of top-scored labels that happen to be right from
    passing for a precise class (uninformative scores reach any precision on their first label or two).

    Arguments:
      scores: N floats, one per label.
      tp: N bools, whether the label matches a gold instance.
      weights: N floats, each label's weight in the precision (its image's, one over its chance of being
        sampled: :mod:`segflow.tasks.ops.review_batch`); None: 1 each. ``min_kept`` counts labels.
    """
    if len(scores) == 0:
        return None
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(-scores, kind="stable")
    s, hits, mass = scores[order], np.cumsum(tp[order] * w[order]), np.cumsum(w[order])
    kept = np.arange(1, len(s) + 1)
    cut = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every label of equal score
    ok = (hits / mass >= target) & cut & (kept >= min_kept)
    if not ok.any():
        return None
    return float(s[np.nonzero(ok)[0][-1]])


def _shapes(rows: list[dict]) -> np.ndarray:
    """The labels' :data:`segflow.tasks.evaluate.novelty.COLUMNS` (N x 7; NaN rows where a label has none)."""
    return shape_matrix([(r.get("row") or {}).get("shape") for r in rows], len(SHAPE_COLUMNS))


def _heldout_novelty(shapes: np.ndarray, tp: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each label's novelty (``shapes`` N x 7, ``tp`` and ``fold`` N) against the reference of the right masks of
    the other folds; 0 where that fold's complement has too few right masks for a reference, or no shape."""
    out = np.zeros(len(shapes))
    right = tp & np.isfinite(shapes[:, : len(SHAPE_FEATURES)]).all(axis=1)
    for k in np.unique(fold):
        rest = right & (fold != k)
        reference = fit_reference(shapes[rest], fold[rest])
        if reference is not None:
            out[fold == k] = novelty_score(shapes[fold == k], reference)
    return out


def _counts(
    scores: np.ndarray, tp: np.ndarray, w: np.ndarray, gold: tuple[int, float, float], threshold: float | None
) -> np.ndarray:
    """A held-out tally (3 x 3: rows counts, weighted sums and sums of squared weights; columns TP, FP, FN) of the
    labels kept at ``threshold`` (``scores``, ``tp``, ``w``: N each) against ``gold`` (instances, their weighted
    count, their sum of squared weights). A matched label's weight is its gold instance's (both its image's)."""
    keep = scores >= threshold if threshold is not None else np.zeros(len(scores), bool)
    hit, miss = keep & tp, keep & ~tp
    out = np.zeros((3, 3))
    for row, v in enumerate((np.ones(len(w)), w, w * w)):
        t, f = float(v[hit].sum()), float(v[miss].sum())
        out[row] = (t, f, gold[row] - t)
    return out


def _summary(tally: np.ndarray | None = None) -> HeldOut:
    """Held-out figures of a :func:`_counts` tally: counts of labels, and precision and recall weighted by the
    images' weights (equal to the counts' where every image weighs 1) with Wilson intervals at the effective
    sample size (Kish: (sum w)^2 / sum w^2)."""
    t = np.zeros((3, 3)) if tally is None else tally
    (tp, fp, fn), (wtp, wfp, wfn), (qtp, qfp, qfn) = t.tolist()

    def share(k: float, n: float, q: float) -> tuple[float | None, list[float] | None]:
        if n <= 1e-12:
            return None, None
        n_eff = n * n / q if q > 0 else 0.0
        ci = wilson(k / n * n_eff, n_eff) if n_eff > 0 else None
        return round(k / n, 4), [round(v, 4) for v in ci] if ci else None

    precision, precision_ci = share(wtp, wtp + wfp, qtp + qfp)
    recall, recall_ci = share(wtp, wtp + wfn, qtp + qfn)
    return {
        "tp": round(tp),
        "fp": round(fp),
        "fn": round(fn),
        "precision": precision,
        "precision_ci95": precision_ci,
        "recall": recall,
        "recall_ci95": recall_ci,
    }


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 25) -> ScoreModel | None:
    """L2-regularised logistic regression by Newton steps on standardised features (N x F, N labels).

    None when ``y`` is all one value (nothing to separate): the detector score is used as it is.
    """
    if len(y) == 0 or y.all() or not y.any():
        return None
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = np.c_[np.ones(len(x)), (x - mean) / scale]
    w, reg = np.zeros(z.shape[1]), l2 * np.r_[0.0, np.ones(z.shape[1] - 1)]
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        step = np.linalg.solve((z * (p * (1 - p))[:, None]).T @ z + np.diag(reg), z.T @ (p - y) + reg * w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"mean": mean.tolist(), "scale": scale.tolist(), "coef": w[1:].tolist(), "intercept": float(w[0])}


def recall_threshold(
    scores: np.ndarray, tp: np.ndarray, n_gold: float, target: float, weights: np.ndarray | None = None
) -> float | None:
    """The highest threshold whose kept labels find ``target`` of ``n_gold`` (the lowest score when none does);
    with ``weights`` (as :func:`best_threshold`'s), ``n_gold`` is the gold instances' weighted count."""
    if len(scores) == 0 or n_gold == 0:
        return None
    w = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(-scores, kind="stable")
    s, recall = scores[order], np.cumsum(tp[order] * w[order]) / n_gold
    reached = np.flatnonzero((recall >= target) & np.r_[s[1:] != s[:-1], True])
    return float(s[reached[0]]) if len(reached) else float(s[-1])


def _scorer(kind: str, rows: list[dict], fit: np.ndarray) -> tuple[ScoreModel | None, np.ndarray]:
    """The fitted score model of the rows in ``fit`` (a mask) and every row's calibrated score."""
    from segflow.tasks.evaluate.acceptance import predict

    score = np.array([r["score"] for r in rows], float)
    if kind != "combined" or not rows:
        return None, score
    x = np.array([r["x"] for r in rows], float)
    tp = np.array([bool(r["tp"]) for r in rows])
    model = fit_logistic(x[fit], tp[fit].astype(float))
    return model, predict(model, x, score)


def calibrate(
    labels: list[dict],
    gold: dict[tuple[int, int], int],
    classes: dict[int, str],
    target: float = 0.95,
    folds: int = 5,
    min_gold: int = 10,
    min_kept: int = 10,
    seed: int = 0,
    score: str = "detector",
    review_recall: float = 0.95,
    novelty: bool = True,
    image_weight: dict[int, float] | None = None,
) -> Calibration:
    """Per-class thresholds for ``target`` precision, with held-out estimates.

    Arguments:
      labels: dicts with ``image_id``, ``category_id``, ``score``, ``tp`` (bool), one per label of the gold images,
        and ``x`` (the features of :func:`segflow.tasks.evaluate.acceptance.features`) when ``score ==
        "combined"``. Each gets ``calibrated`` (its score under the final model).
      gold: ``(image_id, category_id)`` -> number of gold instances.
      classes: ontology id -> name; classes without gold instances and labels are left out.
      novelty: fit each threshold on the labels that pass the class's novelty limit (held out), as
        acceptance with ``accept.novelty`` exports them; False: on every label.
      image_weight: image id -> its weight in the thresholds' precision and recall (a gold set drawn with
        unequal probabilities: one over each image's; ``segflow_weight`` in the gold file); None: 1 each. The
        held-out precision and recall are weighted the same way (``tp``/``fp``/``fn`` stay counts of labels).
    """
    images = sorted({i for i, _ in gold} | {r["image_id"] for r in labels})
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(images, rng.permutation(len(images)) % max(1, min(folds, len(images))), strict=True))
    by_class: dict[int, list[dict]] = defaultdict(list)
    for r in labels:
        by_class[r["category_id"]].append(r)
    fit = _Fit(target, min_gold, min_kept, score, review_recall, novelty)
    out: Calibration = {
        "version": 1,
        "ontology": {str(k): v for k, v in sorted(classes.items())},
        "score": score,
        "target_precision": target,
        "review_recall": review_recall,
        "folds": folds,
        "min_gold": min_gold,
        "min_kept": min_kept,
        "gold_images": len(images),
        "novelty_in_thresholds": novelty,
        "classes": {},
        "heldout": _summary(),
        "heldout_with_review": _summary(),
        "warnings": [],
    }
    totals, totals_review = np.zeros((3, 3)), np.zeros((3, 3))
    warnings = []
    for cid, name in sorted(classes.items()):
        rows = by_class.get(cid, [])
        gold_fold: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(3))  # instances, weighted, squared
        for (img, c), n in gold.items():
            if c == cid:
                wi = (image_weight or {}).get(img, 1.0)
                gold_fold[fold_of[img]] += (n, n * wi, n * wi * wi)
        for r in rows:
            r["weight"] = (image_weight or {}).get(r["image_id"], 1.0)
        if not rows and not sum(g[0] for g in gold_fold.values()):
            continue
        fold = np.array([fold_of[r["image_id"]] for r in rows], int)
        entry, held, held_review = _calibrate_class(cid, rows, fold, gold_fold, sorted(set(fold_of.values())), fit)
        if entry["status"] == "calibrated":
            totals += held
        else:  # nothing of the class is accepted: its gold instances are missed
            totals[:, 2] += sum(gold_fold.values(), np.zeros(3))
            warnings.append(f"{name}: {entry['reason']}; its labels go to review")
        totals_review += held_review
        out["classes"][name] = entry
    out["heldout"] = _summary(totals)
    out["heldout_with_review"] = _summary(totals_review)
    out["warnings"] = warnings
    return out


@dataclass(frozen=True)
class _Fit:
    """How :func:`calibrate` fits each class (its arguments of the same names)."""

    target: float
    min_gold: int
    min_kept: int
    score: str
    review_recall: float
    novelty: bool


def _calibrate_class(
    cid: int,
    rows: list[dict],
    fold: np.ndarray,
    gold_fold: dict[int, np.ndarray],
    folds: list[int],
    fit: _Fit,
) -> tuple[ClassCalibration, np.ndarray, np.ndarray]:
    """One class's entry of the calibration, and its held-out tallies (:func:`_counts`) at the threshold and at
    the review threshold. ``rows``: the class's labels (with ``weight``), ``fold`` their folds (N ints);
    ``gold_fold``: fold -> its gold instances, their weighted count and sum of squared weights; each row gets
    ``calibrated``."""
    zero = np.zeros(3)
    g_total = sum(gold_fold.values(), zero)
    n_gold, n_gold_w = int(round(g_total[0])), float(g_total[1])
    tp = np.array([bool(r["tp"]) for r in rows])
    w = np.array([float(r.get("weight", 1.0)) for r in rows], np.float64)
    shapes = _shapes(rows)
    passing = _heldout_novelty(shapes, tp, fold) <= 1.0 if fit.novelty else np.ones(len(rows), bool)
    held, held_review = np.zeros((3, 3)), np.zeros((3, 3))
    for k in folds:
        _, s = _scorer(fit.score, rows, fold != k)
        fit_k, test_k = (fold != k) & passing, (fold == k) & passing
        t = best_threshold(s[fit_k], tp[fit_k], fit.target, fit.min_kept, w[fit_k])
        g = tuple(gold_fold.get(k, zero).tolist())
        held += _counts(s[test_k], tp[test_k], w[test_k], g, t)
        rest = fold != k
        rest_gold = n_gold_w - float(gold_fold.get(k, zero)[1])
        tr = recall_threshold(s[rest], tp[rest], rest_gold, fit.review_recall, w[rest])
        low = min(t, tr) if t is not None and tr is not None else (tr if t is None else None)
        held_review += _counts(s[fold == k], tp[fold == k], w[fold == k], g, low if rows else None)
    model, s = _scorer(fit.score, rows, np.ones(len(rows), bool))
    for r, v in zip(rows, s, strict=True):
        r["calibrated"] = float(v)
    right = tp & np.isfinite(shapes[:, : len(SHAPE_FEATURES)]).all(axis=1)
    agree = np.array([r.get("box_agreement", np.nan) for r in rows], np.float64)
    agree = agree[tp & np.isfinite(agree)]
    threshold = best_threshold(s[passing], tp[passing], fit.target, fit.min_kept, w[passing])
    review_t = recall_threshold(s, tp, n_gold_w, fit.review_recall, w)
    entry: ClassCalibration = {
        "category_id": cid,
        "gold_instances": n_gold,
        "labels": len(rows),
        "threshold": threshold,
        "review_threshold": min(review_t, threshold) if review_t is not None and threshold is not None else review_t,
        "model": model,
        "reliability": reliability(s, tp),
        "mask_check": {"box_agreement_min": round(float(np.quantile(agree, 0.01)), 4)} if len(agree) else None,
        "novelty": fit_reference(shapes[right], fold[right]),
        "heldout": _summary(held),
        "heldout_with_review": _summary(held_review),
        "status": "calibrated",
    }
    status, reason = _status(entry, fit)
    entry["status"] = status
    if reason is not None:
        entry["reason"] = reason
    if entry["status"] == "review":
        entry["threshold"] = None
    return entry, held, held_review


def _status(entry: ClassCalibration, fit: _Fit) -> tuple[str, str | None]:
    """``status`` (``calibrated`` or ``review``) of a class's entry, with the ``reason`` for review."""
    n_gold, target, ci = entry["gold_instances"], fit.target, entry["heldout"]["precision_ci95"]
    if n_gold < fit.min_gold:
        return "review", f"{n_gold} gold instances (< {fit.min_gold}): too few to set a threshold"
    if entry["threshold"] is None:
        return "review", f"no threshold reaches precision {target} on the gold set"
    if ci is None or ci[1] < target:
        seen = f"{entry['heldout']['precision']} (95% CI {ci[0]}-{ci[1]})" if ci else "undefined (nothing kept)"
        return "review", f"held-out precision {seen} cannot reach {target}: the scores do not separate"
    return "calibrated", None


def reliability(scores: np.ndarray, tp: np.ndarray, points: int = 64) -> Reliability:
    """The probability that a label is right as a non-decreasing function of its score (isotonic regression of
    ``tp`` on ``scores``, pool-adjacent-violators), as at most ``points`` breakpoints ``x`` (score) and ``y``
    (probability) for ``np.interp``. Empty lists without labels.

    Arguments:
      scores: N floats (the calibrated score).
      tp: N bools, whether each label matches a gold instance.
    """
    from scipy.optimize import isotonic_regression

    if len(scores) == 0:
        return {"x": [], "y": []}
    order = np.argsort(scores, kind="stable")
    x = np.asarray(scores, np.float64)[order]
    y = isotonic_regression(np.asarray(tp, np.float64)[order], increasing=True).x
    starts = np.r_[0, np.flatnonzero(np.diff(y)) + 1]  # each constant piece: its first and last label
    keep = np.unique(np.r_[starts, starts[1:] - 1, len(y) - 1])
    if len(keep) > points:
        keep = keep[np.unique(np.linspace(0, len(keep) - 1, points).round().astype(int))]
    return {"x": [round(float(v), 5) for v in x[keep]], "y": [round(float(v), 4) for v in y[keep]]}


def pr_points(labels: list[dict], gold: dict[tuple[int, int], int], result: Calibration, points: int = 200) -> None:
    """Store each class's precision-recall curve in ``result["classes"][name]["curve"]``: ``recall``,
    ``precision`` and ``score`` lists (labels of the gold images by descending calibrated score, at most
    ``points`` of them, evenly spaced, the last kept) and ``operating`` (recall and precision at the threshold)."""
    for entry in result["classes"].values():
        cid = entry["category_id"]
        rows = sorted((r for r in labels if r["category_id"] == cid), key=lambda r: -r.get("calibrated", r["score"]))
        n_gold = sum(n for (_, c), n in gold.items() if c == cid)
        if not rows or not n_gold:
            continue
        scores = np.array([r.get("calibrated", r["score"]) for r in rows])
        hits = np.cumsum([r["tp"] for r in rows])
        precision, recall = hits / np.arange(1, len(rows) + 1), hits / n_gold
        keep = np.unique(np.linspace(0, len(rows) - 1, min(points, len(rows))).round().astype(int))
        curve: dict[str, Any] = {
            k: [round(float(v), 4) for v in a[keep]] for k, a in (("recall", recall), ("precision", precision))
        }
        curve["score"] = [round(float(v), 4) for v in scores[keep]]
        if entry["threshold"] is not None and (scores >= entry["threshold"]).any():
            k = int(np.flatnonzero(scores >= entry["threshold"]).max())
            curve["operating"] = {"recall": round(float(recall[k]), 4), "precision": round(float(precision[k]), 4)}
        entry["curve"] = curve


def pr_curves_png(result: Calibration) -> bytes:
    """Per-class precision-recall curves (as :func:`pr_points` stored them), the chosen threshold marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, entry in result["classes"].items():
        curve = entry.get("curve")
        if not curve:
            continue
        (line,) = ax.plot(curve["recall"], curve["precision"], label=f"{name} ({entry['status']})")
        if "operating" in curve:
            op = curve["operating"]
            ax.plot(op["recall"], op["precision"], "o", color=line.get_color(), markersize=8)
    ax.axhline(result["target_precision"], color="grey", linestyle="--", linewidth=1, label="target precision")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title("labels of the gold images, by score (dot: chosen threshold)")
    ax.legend(loc="lower left", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _image_weights(gold: CocoDataset, file_names: dict[str, int]) -> dict[int, float] | None:
    """Job image id -> the ``segflow_weight`` its gold image carries (matched by file name, else base name), or
    None when no gold image carries one."""
    from pathlib import PurePosixPath

    weights = {im["file_name"]: float(im["segflow_weight"]) for im in gold["images"] if "segflow_weight" in im}
    if not weights:
        return None
    by_base = {PurePosixPath(k).name: v for k, v in weights.items()}
    return {i: weights.get(n, by_base.get(PurePosixPath(n).name, 1.0)) for n, i in file_names.items()}


def fit_calibration(
    job: Any, gold: CocoDataset, file_names: dict, sizes: dict, rows: Iterable[dict]
) -> tuple[Calibration, bytes]:
    """Fit ``job.accept`` on a gold set: the calibration dict and its precision-recall curves (PNG).

    Arguments:
      gold: the COCO gold set; file_names, sizes: as :func:`segflow.tasks.evaluate.quality.evaluate`'s.
      rows: manifest rows of the gold images (QC rejects left out), with ``x`` (features) for a combined score.
    """
    from segflow.tasks.evaluate.quality import label_matches

    acc = job.accept
    import pyarrow as pa

    from segflow.tasks.evaluate.acceptance import box_agreement

    labels, counts = label_matches(gold, job.category_names(), file_names, rows, sizes)
    boxes = [r["row"] for r in labels]
    if boxes and all("prompt_box" in b and "bbox" in b for b in boxes):
        table = pa.table({"prompt_box": [b["prompt_box"] for b in boxes], "bbox": [b["bbox"] for b in boxes]})
        for r, a in zip(labels, box_agreement(table), strict=True):
            r["box_agreement"] = float(a)
    for r in labels:
        if "x" in r["row"]:
            r["x"] = r["row"]["x"]
    result = calibrate(
        labels,
        counts,
        job.category_names(),
        image_weight=_image_weights(gold, file_names),
        target=acc.precision,
        folds=acc.folds,
        min_gold=acc.min_gold,
        score=acc.score,
        review_recall=acc.review_recall,
        novelty=acc.novelty,
    )
    result["gold_set"] = job.gold_set
    pr_points(labels, counts, result)
    return result, pr_curves_png(result)
