"""Review batches: what people check, chosen so that their answers both fix labels and measure the exported set.

A batch of ``budget`` items (``OUTPUT/review_batches/bNNNN.json``) has two parts:

* **audit** -- a probability sample of the exported (accepted) masks, stratified by class and score band (the
  class's score quartiles): each stratum ``h`` of ``N_h`` masks gets ``n_h`` of the audit, allocated in proportion
  to ``N_h`` (at least one each where the budget allows), drawn without replacement; each audited mask's inclusion
  probability is ``n_h / N_h``. A tenth of the audit is a simple random sample of the images with no exported
  mask, whose objects are all misses.
* **fix** -- the items a reviewer is expected to find the most errors on: accepted and review masks by their
  chance of being wrong (one minus the calibration's reliability curve at the mask's score; the calibrated score
  without one), and whole images by their expected misses (the chance of being right of their rejected masks
  that no label covers: low-scored detections that left no label) plus the expected wrong among their labels.

Every task shows its image's labels whole (accepted and review); reviewers correct what they see and add what is
missing. When the review is imported (:mod:`segflow.tasks.ops.review`), the audit's answers give (:func:`estimate`):

* **precision** of the exported set: the stratified estimator ``P = sum_h W_h p_h`` (``W_h = N_h / N``, ``p_h`` the
  share of the stratum's audited masks the reviewer kept as they were), with variance
  ``sum_h W_h^2 (1 - n_h / N_h) p_h (1 - p_h) / (n_h - 1)``;
* **recall**: a ratio of Horvitz-Thompson totals over the audited images, ``R = sum_i TP_i / pi_i / sum_i T_i /
  pi_i`` (``TP_i`` the image's exported masks kept, ``T_i`` its objects after review, ``pi_i`` the image's
  inclusion probability: for an audited mask's image, one minus the hypergeometric chance that none of its masks
  was drawn), with the with-replacement linearised variance (conservative).

Both 95% intervals are of Wilson's form at the design's effective sample size (``p (1 - p) / variance``): they
stay inside [0, 1] and keep their coverage near 1, where the normal interval does not. Fix items are chosen, not
sampled: they never enter an estimate.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import ReviewEstimate
from segflow.tasks.formats.labels import ExportError, RunLabels
from segflow.tasks.io.storage import join, open_fs, read_json, write_bytes
from segflow.tasks.outputs.manifest import ANNOTATION_ID_STRIDE
from segflow.tasks.records import ExportResult

__all__ = [
    "audited_images",
    "BatchItem",
    "ReviewBatch",
    "estimate",
    "estimate_from_review",
    "make_batch",
    "read_batch",
    "write_batch",
]

BANDS = 4  # score bands per class (quartiles of the class's accepted scores)
EMPTY_SHARE = 0.1  # of the audit: images with no exported mask
Z95 = 1.959964


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: a mask (``part`` ``audit``, with its stratum and inclusion probability, or ``fix``)
    or a whole image (``audit-image``: sampled among the images with no exported mask, with its inclusion
    probability; ``fix-image``: an image likely to hold missed objects). ``p_right``: for a mask, its chance of
    being right; for a ``fix-image``, the objects it is expected to miss."""

    annotation_id: int | None
    image_id: int
    category_name: str | None
    part: str
    stratum: str | None = None
    inclusion_probability: float | None = None
    p_right: float | None = None


@dataclass
class ReviewBatch:
    """``OUTPUT/review_batches/<batch>.json``: the items; per audit stratum its size ``N`` and sample ``n``; each
    audited image's inclusion probability."""

    batch: str
    created_at: str
    budget: int
    audit_share: float
    seed: int
    exported: int
    strata: dict[str, dict[str, int]] = field(default_factory=dict)
    items: list[BatchItem] = field(default_factory=list)
    image_inclusion: dict[str, float] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[int]:
        return sorted({it.image_id for it in self.items})

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReviewBatch:
        """From the file's content, checked (it sits in an output others can write): ValueError names what is
        wrong; TypeError or KeyError for a shape that is not a batch's."""
        items = [BatchItem(**it) for it in data.pop("items")]
        batch = cls(**data, items=items)
        _check(batch)
        return batch


_PARTS = {"audit", "audit-image", "fix", "fix-image"}


def _probability(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


def _check(batch: ReviewBatch) -> None:
    for h, s in batch.strata.items():
        big, small = s.get("N"), s.get("n")
        if not (isinstance(big, int) and isinstance(small, int) and 0 <= small <= big and big > 0):
            raise ValueError(f"stratum {str(h)[:40]!r}: N and n must be integers with 0 <= n <= N")
    for it in batch.items:
        if it.part not in _PARTS or not isinstance(it.image_id, int):
            raise ValueError(f"item {str(it)[:80]}: unknown part or image id")
        if it.part == "audit" and (it.stratum not in batch.strata or not isinstance(it.annotation_id, int)):
            raise ValueError(f"audit item {it.annotation_id!r}: no annotation id or unknown stratum")
    if not all(str(k).isdigit() and _probability(v) for k, v in batch.image_inclusion.items()):
        raise ValueError("image_inclusion: image ids to probabilities in (0, 1]")


def _masks(run: RunLabels) -> tuple[pa.Table, np.ndarray]:
    """The run's masks (the columns a batch needs) and its decoded images' ids, in one pass over the parts."""
    cols = ["annotation_id", "image_id", "category_id", "category_name", "score", "verdict", "calibrated_score"]
    cols += ["prompt_box", "bbox", "rle_counts", "height", "width"]
    parts, ok = [], []
    for images, masks in run.shard_tables():
        ok += images.filter(pc.equal(images["status"], "ok"))["image_id"].to_pylist()
        if masks is not None and masks.num_rows:
            parts.append(masks.select([c for c in cols if c in masks.column_names]))
    if not parts:
        raise ExportError(f"{run.output}: the run has no masks to review")
    return pa.concat_tables(parts, promote_options="default"), np.asarray(ok, np.int64)


def _p_right(run: RunLabels, masks: pa.Table) -> np.ndarray:
    """Each mask's chance of being right: the calibration's reliability curves, else the calibrated score."""
    from segflow.tasks.evaluate.acceptance import correct_probability

    calibration = read_json(run.fs, run.layout.calibration)
    if calibration is not None and "calibrated_score" in masks.column_names:
        p = correct_probability(masks, calibration)
        if np.isfinite(p).any():
            return np.where(np.isfinite(p), p, 0.5)
    col = "calibrated_score" if "calibrated_score" in masks.column_names else "score"
    return pc.fill_null(masks[col].cast(pa.float64()), 0.5).to_numpy(zero_copy_only=False)


def _strata(masks: pa.Table) -> np.ndarray:
    """``class|band`` of each accepted mask (band: the class's score quartile, 0 the lowest)."""
    names = np.asarray(masks["category_name"].to_pylist(), object)
    score = pc.fill_null(masks["score"].cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    out = np.empty(len(names), object)
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        cuts = np.quantile(score[rows], np.linspace(0, 1, BANDS + 1)[1:-1]) if len(rows) >= BANDS else []
        band = np.searchsorted(cuts, score[rows], side="right")
        out[rows] = [f"{name}|{b}" for b in band]
    return out


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional allocation of ``n`` over the strata (largest remainders), at least one each where ``n``
    allows, never more than a stratum holds."""
    total = sum(sizes.values())
    n = min(n, total)
    if n <= 0:
        return dict.fromkeys(sizes, 0)
    exact = {h: n * s / total for h, s in sizes.items()}
    floor = 1 if n >= len(sizes) else 0
    alloc = {h: min(sizes[h], max(floor, int(v))) for h, v in exact.items()}
    while sum(alloc.values()) > n:  # the at-least-one rule overshot: take from the most over its share
        h = max((k for k in alloc if alloc[k] > floor), key=lambda k: alloc[k] - exact[k])
        alloc[h] -= 1
    order = sorted(sizes, key=lambda h: -(exact[h] - alloc[h]))
    while sum(alloc.values()) < n:
        room = [h for h in order if alloc[h] < sizes[h]]
        for h in room[: n - sum(alloc.values())]:
            alloc[h] += 1
    return alloc


def _image_inclusion(
    images: np.ndarray, strata: np.ndarray, sizes: dict[str, int], alloc: dict[str, int]
) -> dict[int, float]:
    """Each image's chance of having at least one mask in the audit (``images``, ``strata``: of the accepted
    masks): one minus the product over strata of the hypergeometric chance that none of its masks is drawn."""
    counts: dict[int, dict[str, int]] = {}
    for i, h in zip(images.tolist(), strata.tolist(), strict=True):
        per = counts.setdefault(int(i), {})
        per[h] = per.get(h, 0) + 1
    out = {}
    for i, per in counts.items():
        none = 1.0
        for h, m in per.items():
            for j in range(alloc[h]):
                none *= max(0.0, (sizes[h] - m - j) / (sizes[h] - j))
        out[i] = 1.0 - none
    return out


def _audit(
    masks: pa.Table, ok_images: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[list[BatchItem], dict[str, dict[str, int]], dict[str, float]]:
    """The audit's items, its strata (``N``, ``n``) and each audited image's inclusion probability
    (``ok_images``: the ids of the run's decoded images)."""
    accepted = np.flatnonzero(np.asarray(masks["verdict"].to_pylist(), object) == "accept")
    acc = masks.take(pa.array(accepted, pa.int64()))
    ids, images = (acc[c].to_numpy(zero_copy_only=False) for c in ("annotation_id", "image_id"))
    empty = np.setdiff1d(ok_images, images)
    n_empty = min(len(empty), max(1, round(EMPTY_SHARE * n))) if len(empty) and n > 1 else 0
    strata = _strata(acc)
    sizes = {str(h): int((strata == h).sum()) for h in np.unique(strata)} if len(acc) else {}
    alloc = _allocate(sizes, n - n_empty)
    names = acc["category_name"].to_pylist()
    items = []
    for h in sorted(sizes):
        for r in sorted(rng.choice(np.flatnonzero(strata == h), alloc[h], replace=False).tolist()):
            items.append(BatchItem(int(ids[r]), int(images[r]), names[r], "audit", h, alloc[h] / sizes[h]))
    seen = {it.image_id for it in items}
    inclusion = {str(k): v for k, v in _image_inclusion(images, strata, sizes, alloc).items() if k in seen}
    for i in sorted(rng.choice(empty, n_empty, replace=False).tolist()) if n_empty else []:
        items.append(BatchItem(None, int(i), None, "audit-image", None, n_empty / len(empty)))
        inclusion[str(int(i))] = n_empty / len(empty)
    return items, {h: {"N": sizes[h], "n": alloc[h]} for h in sorted(sizes)}, inclusion


def _expected_misses(masks: pa.Table, p_right: np.ndarray) -> dict[int, float]:
    """Per image, the objects it is expected to miss: the summed chance of being right of its rejected masks that
    no accepted or review mask covers (mask IoU >= 0.5), duplicates among them counted once (the likelier kept)."""
    from pycocotools import mask as mask_utils

    verdict = np.asarray(masks["verdict"].to_pylist(), object)
    images = masks["image_id"].to_numpy(zero_copy_only=False)
    rejected = np.flatnonzero(verdict == "reject")
    if not len(rejected):
        return {}
    counts, h, w = (masks[c].to_pylist() for c in ("rle_counts", "height", "width"))
    rle = lambda r: {"size": [h[r], w[r]], "counts": counts[r]}
    out: dict[int, float] = {}
    for i in np.unique(images[rejected]).tolist():
        mine = np.flatnonzero(images == i)
        shown = [rle(r) for r in mine if verdict[r] in ("accept", "review")]
        candidates = sorted((r for r in mine if verdict[r] == "reject"), key=lambda r: -p_right[r])
        kept: list[dict] = []
        for r in candidates:
            others = shown + kept
            if others and float(np.max(mask_utils.iou([rle(r)], others, [0] * len(others)))) >= 0.5:
                continue
            kept.append(rle(r))
            out[i] = out.get(i, 0.0) + float(p_right[r])
    return out


def _fix(masks: pa.Table, p_right: np.ndarray, taken: set[int], n: int) -> list[BatchItem]:
    """The ``n`` items a reviewer is expected to find the most errors on (see the module docstring): a mask is
    worth its chance of being wrong; an image (all of its labels checked, what is missing added) its expected
    misses plus the expected wrong among its labels. Taken greedily, best first; an image taken replaces the
    mask items already taken on it (its labels are all checked with it), and a mask whose image is taken is not
    taken again."""
    verdict = np.asarray(masks["verdict"].to_pylist(), object)
    ids, images = (masks[c].to_numpy(zero_copy_only=False) for c in ("annotation_id", "image_id"))
    names = masks["category_name"].to_pylist()
    shown = np.flatnonzero(np.isin(verdict, ["accept", "review"]))
    wrong: dict[int, float] = {}
    for r in shown.tolist():
        if int(ids[r]) not in taken:
            wrong[int(images[r])] = wrong.get(int(images[r]), 0.0) + 1.0 - float(p_right[r])
    misses = _expected_misses(masks, p_right)
    ranked: list[tuple[float, int, int]] = [
        (1.0 - float(p_right[r]), 0, int(r)) for r in shown if int(ids[r]) not in taken
    ]
    ranked += [(misses.get(i, 0.0) + wrong.get(i, 0.0), 1, i) for i in set(misses) | set(wrong)]
    ranked.sort(key=lambda t: (-t[0], t[1], t[2]))
    items: list[BatchItem] = []
    whole: set[int] = set()
    for value, kind, key in ranked:
        if len(items) >= n:
            break
        if kind == 0 and int(images[key]) not in whole:
            p = round(float(p_right[key]), 4)
            items.append(BatchItem(int(ids[key]), int(images[key]), names[key], "fix", None, None, p))
        elif kind == 1 and key not in whole:
            whole.add(key)
            items = [it for it in items if it.image_id != key]
            items.append(BatchItem(None, int(key), None, "fix-image", None, None, round(value, 4)))
    return items


def make_batch(output: str, budget: int, audit_share: float = 0.5, seed: int = 0) -> ReviewBatch:
    """Choose a batch of ``budget`` items of the finished run in ``output`` (``audit_share`` of them the audit,
    the rest the fix part) and write it as the next ``review_batches/bNNNN.json``."""
    if budget < 1:
        raise ExportError(f"--budget must be at least 1, got {budget}")
    if not 0.0 <= audit_share <= 1.0:
        raise ExportError(f"--audit-share must be between 0 and 1, got {audit_share}")
    run = RunLabels(output)
    masks, ok_images = _masks(run)
    audit, strata, inclusion = _audit(masks, ok_images, round(budget * audit_share), np.random.default_rng(seed))
    taken = {it.annotation_id for it in audit if it.annotation_id is not None}
    fix = _fix(masks, _p_right(run, masks), taken, budget - len(audit))
    fs, root = open_fs(join(output, "review_batches"))
    done = [p for p in fs.glob(f"{root.rstrip('/')}/b*.json")] if fs.exists(root) else []
    name = f"b{len(done) + 1:04d}"
    exported = int(pc.sum(pc.equal(masks["verdict"], "accept")).as_py() or 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    batch = ReviewBatch(name, stamp, budget, audit_share, seed, exported, strata, audit + fix, inclusion)
    write_bytes(fs, open_fs(join(output, "review_batches", f"{name}.json"))[1], batch.to_json())
    return batch


def write_batch(
    output: str, dest: str, budget: int, audit_share: float = 0.5, fmt: str = "label-studio", seed: int = 0
) -> tuple[ReviewBatch, ExportResult]:
    """:func:`make_batch`, then its images exported to ``dest`` for people (``fmt``: a registered export format;
    each image with all of its accepted and review labels, the batch's masks marked where the format can)."""
    from segflow.tasks.formats import export

    batch = make_batch(output, budget, audit_share, seed)
    marked = {it.annotation_id for it in batch.items if it.annotation_id is not None}
    result = export(output, fmt, dest, "all", images=set(batch.image_ids), marked=marked)
    return batch, result


def read_batch(output: str, batch: str | None = None) -> ReviewBatch | None:
    """The batch named ``batch`` (``b0001``), or the latest; None when the run has none."""
    fs, root = open_fs(join(output, "review_batches"))
    if not fs.exists(root):
        return None
    names = sorted(
        p.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json") for p in fs.glob(f"{root.rstrip('/')}/b*.json")
    )
    if not names:
        return None
    name = batch or names[-1]
    if name not in names:
        raise ExportError(f"no review batch {name!r} (the run has {', '.join(names)})")
    from segflow.tasks.formats.untrusted import read_capped

    url = join(output, "review_batches", f"{name}.json")
    try:  # a file in an output others can write: its size capped before it is read, its content checked
        return ReviewBatch.from_json(json.loads(read_capped(fs, open_fs(url)[1], f"review_batches/{name}.json")))
    except (TypeError, KeyError, AttributeError, ValueError, RecursionError) as e:
        raise ExportError(f"review_batches/{name}.json is not a review batch ({type(e).__name__}: {e})") from None


def _wilson(p: float, n_eff: float) -> tuple[float, float]:
    if n_eff <= 0:
        return 0.0, 1.0
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n_eff)) / (1 + z2 / n_eff)
    half = Z95 * math.sqrt(p * (1 - p) / n_eff + z2 / (4 * n_eff * n_eff)) / (1 + z2 / n_eff)
    return max(0.0, centre - half), min(1.0, centre + half)


def _interval(p: float, var: float, n: int) -> tuple[float, float]:
    """Wilson's interval at the effective sample size (the proportion's binomial variance over the design's, taken
    at (p n + 1/2) / (n + 1) so that an estimate of 0 or 1 keeps a size); with no variance at all, at ``n``."""
    q = (p * n + 0.5) / (n + 1)
    n_eff = q * (1 - q) / var if var > 0 else float(n)
    return _wilson(p, n_eff)


def _stratified(strata: dict[str, dict[str, int]], answers: dict[str, list[bool]]) -> tuple[float, float, float, int]:
    """``(estimate, low, high, audited)`` over the strata that have answers (their weights renormalised)."""
    seen = {h: a for h, a in answers.items() if a and h in strata}
    total = sum(strata[h]["N"] for h in seen)
    if not total:
        return math.nan, math.nan, math.nan, 0
    est = sum(strata[h]["N"] / total * sum(a) / len(a) for h, a in seen.items())
    var = 0.0
    for h, a in seen.items():
        big_n, small_n, w = strata[h]["N"], len(a), strata[h]["N"] / total
        # each stratum's variance with one more answer, at the overall estimate: a stratum whose few audited masks
        # all came out right (the top score bands, often) is not taken for one that cannot hold an error while the
        # set as a whole has them (that made the intervals too narrow); an audit with no error anywhere stays at 0
        q = (sum(a) + est) / (small_n + 1)
        var += w * w * (1 - small_n / big_n) * q * (1 - q) / max(small_n - 1, 1)
    n = sum(len(a) for a in seen.values())
    return (est, *_interval(est, var, n), n)


def _ratio(tp: np.ndarray, objects: np.ndarray, pi: np.ndarray) -> tuple[float, float, float]:
    """``sum(tp / pi) / sum(objects / pi)`` with its interval (linearised, with-replacement variance)."""
    w = 1.0 / pi
    den = float((w * objects).sum())
    if den <= 0:
        return math.nan, math.nan, math.nan
    r = float((w * tp).sum()) / den
    z = w * (tp - r * objects)
    n = len(z)
    var = n / (n - 1) * float(((z - z.mean()) ** 2).sum()) / den**2 if n > 1 else 0.0
    return (r, *_interval(r, var, n))


def estimate(batch: ReviewBatch, accepted: set[int], kept: set[int], objects: dict[int, int]) -> ReviewEstimate:
    """The exported set's precision and recall from the batch's audit, once reviewed.

    Arguments:
      accepted: annotation ids of the exported (accepted) masks.
      kept: annotation ids the reviewer kept as they were (every other mask shown was wrong).
      objects: reviewed image id -> its objects after review (kept, relabelled, reshaped and added labels).
        Audit items whose image was not reviewed are left out, their stratum re-weighted.
    """
    answers: dict[str, list[bool]] = {}
    by_class: dict[str, dict[str, list[bool]]] = {}
    for it in batch.items:
        if it.part != "audit" or it.image_id not in objects or it.stratum is None or it.annotation_id is None:
            continue
        right = it.annotation_id in kept
        answers.setdefault(it.stratum, []).append(right)
        by_class.setdefault(str(it.category_name), {}).setdefault(it.stratum, []).append(right)
    p, p_lo, p_hi, n = _stratified(batch.strata, answers)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for name, ans in sorted(by_class.items()):
        e, lo, hi, k = _stratified(batch.strata, ans)
        per_class[name] = {"precision": _r(e), "precision_low": _r(lo), "precision_high": _r(hi), "audited": k}
    images = [int(i) for i in batch.image_inclusion if int(i) in objects]
    tp_by_image: dict[int, int] = {}
    for a in kept & accepted:
        i = a // ANNOTATION_ID_STRIDE
        tp_by_image[i] = tp_by_image.get(i, 0) + 1
    tp = np.array([tp_by_image.get(i, 0) for i in images], np.float64)
    obj = np.array([objects[i] for i in images], np.float64)
    pi = np.array([batch.image_inclusion[str(i)] for i in images], np.float64)
    r, r_lo, r_hi = _ratio(tp, obj, pi) if len(images) else (math.nan,) * 3
    return {
        "batch": batch.batch,
        "precision": _r(p),
        "precision_low": _r(p_lo),
        "precision_high": _r(p_hi),
        "recall": _r(r),
        "recall_low": _r(r_lo),
        "recall_high": _r(r_hi),
        "audited_masks": n,
        "audited_images": len(images),
        "exported": batch.exported,
        "per_class": per_class,
    }


def _r(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def estimate_from_review(
    run: RunLabels, reviewed: list[int], actions: dict[str, list[int]], batch_name: str | None = None
) -> ReviewEstimate | None:
    """The estimate of a review import (:func:`segflow.tasks.ops.review.import_review`): from the batch named
    ``batch_name``, or the latest one when the review covers any of its audited images; None without one.

    Arguments:
      reviewed: the image ids the review file covers.
      actions: annotation ids per review action (``kept``, ``relabelled``, ``reshaped``, ``deleted``, ``added``).
    """
    batch = read_batch(run.output, batch_name)
    if batch is None:
        return None
    audited = {int(i) for i in batch.image_inclusion}
    if batch_name is None and not audited & set(reviewed):
        return None
    objects = dict.fromkeys(reviewed, 0)
    for action in ("kept", "relabelled", "reshaped", "added"):
        for a in actions.get(action, []):
            objects[a // ANNOTATION_ID_STRIDE] = objects.get(a // ANNOTATION_ID_STRIDE, 0) + 1
    accepted: set[int] = set()
    for _, masks in run.shard_tables():
        if masks is not None and masks.num_rows:
            mine = pc.and_(
                pc.equal(masks["verdict"], "accept"),
                pc.is_in(masks["image_id"], value_set=pa.array(sorted(audited), pa.int64())),
            )
            accepted.update(masks.filter(mine)["annotation_id"].to_pylist())
    return estimate(batch, accepted, set(actions.get("kept", [])), objects)


def audited_images(output: str) -> dict[int, float]:
    """Every image an audit of any of the run's review batches drew -> its chance of being drawn by at least one
    of them (the batches are independent draws: one minus the product of the chances it was not)."""
    fs, root = open_fs(join(output, "review_batches"))
    if not fs.exists(root):
        return {}
    missed: dict[int, float] = {}
    for path in fs.glob(f"{root.rstrip('/')}/b*.json"):
        batch = read_batch(output, path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json"))
        for i, p in (batch.image_inclusion if batch is not None else {}).items():
            missed[int(i)] = missed.get(int(i), 1.0) * (1.0 - float(p))
    return {i: 1.0 - m for i, m in missed.items()}
