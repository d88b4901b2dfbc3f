"""Does the calibration hold for this run's data? Histograms of what a calibration saw, compared with a run's.

A calibration's thresholds and its promised precision were measured on the gold set's images. They carry over to
other images only as far as those images, and what the models make of them, look like the gold set's. So:

* **per shard** (:func:`histograms`, kept in the commit record's ``stats``): fixed-bin histograms of image
  features (brightness, contrast, sharpness, JPEG quality, megapixels: :mod:`segflow.tasks.io.image_stats`;
  masks per image) and, per class, of mask features (detector score, predicted IoU, stability score, area as a
  fraction of the image). Fixed bins make them exact to merge, bounded in size (about 6 KB a shard) and streaming;
* **the reference** (:func:`reference`, saved in ``calibration.json`` under ``reference``): the same histograms
  over the gold set's images, when the calibration is fitted;
* **the check** (:func:`compare`, at finalize, before any verdict is written): per feature, the two-sample
  Kolmogorov-Smirnov statistic ``D`` between reference and run histograms (the largest gap between their
  CDFs at the bin edges) and its asymptotic p-value, plus the population stability index (PSI) for reading.
  A feature has **drifted** when ``p < ALPHA`` (the differences are not noise) and ``D >= D_MIN`` (they are
  large enough to matter: at a million images every difference is significant). The verdict is ``holds``, or
  ``drifted: <features>``; classes with fewer than ``MIN_MASKS`` masks on either side are not tested.

What the run does on drift is the job's ``accept.on_drift``: ``warn`` (say so everywhere the calibration's
figure is shown), ``review`` (what would be accepted goes to review, reason ``drift``) or ``fail``.
docs/gold-sets.md has the measured figures on the demo's shifts (darkened, blurred, JPEG quality 25).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import DriftHistograms

__all__ = [
    "ALPHA",
    "DRIFT_ADVICE",
    "D_MIN",
    "Drift",
    "DriftError",
    "FeatureDrift",
    "compare",
    "histograms",
    "merge",
    "reference",
]

#: significance of a feature's difference (per feature; about 25 features are tested)
ALPHA = 1e-3
#: the smallest Kolmogorov-Smirnov distance that counts as drift
D_MIN = 0.2
#: masks a class needs on both sides to be tested
MIN_MASKS = 30
#: what to do when the calibration does not hold (said wherever the verdict is)
DRIFT_ADVICE = (
    "check a sample of this run's labels by hand (segflow export --format label-studio), or fit a calibration on a "
    "gold set drawn from data like this run's (docs/gold-sets.md)"
)


@dataclass(frozen=True)
class _Bins:
    lo: float
    hi: float
    n: int
    log10: bool = False

    def counts(self, values: np.ndarray) -> list[int]:
        """``[below lo, n bins..., at or above hi, missing]``."""
        v = np.asarray(values, np.float64)
        missing = ~np.isfinite(v)
        v = v[~missing]
        if self.log10:
            v = np.log10(np.maximum(v, 1e-12))
        idx = np.floor((v - self.lo) / (self.hi - self.lo) * self.n).astype(np.int64) + 1
        idx = np.clip(idx, 0, self.n + 1)
        out = np.bincount(idx, minlength=self.n + 2).tolist()
        return [int(c) for c in out] + [int(missing.sum())]


IMAGE_FEATURES: dict[str, _Bins] = {
    "brightness": _Bins(0.0, 1.0, 40),
    "contrast": _Bins(0.0, 0.5, 40),
    "sharpness": _Bins(-1.0, 5.0, 48),
    "jpeg_quality": _Bins(0.0, 101.0, 20),  # missing: not a JPEG
    "megapixels": _Bins(-2.0, 2.0, 40, log10=True),
    "masks_per_image": _Bins(0.0, 100.0, 50),
}
MASK_FEATURES: dict[str, _Bins] = {
    "score": _Bins(0.0, 1.0, 40),
    "predicted_iou": _Bins(0.0, 1.1, 44),
    "stability_score": _Bins(0.0, 1.0, 40),
    "area_fraction": _Bins(-6.0, 0.0, 48, log10=True),
}


class DriftError(RuntimeError):
    """The calibration does not hold for this run's data and the job says ``accept.on_drift: fail``."""


def _col(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return pc.fill_null(table[name].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def histograms(images: pa.Table, masks: pa.Table) -> DriftHistograms:
    """The histograms of one shard (or of any set of images and their masks).

    Arguments:
      images: images manifest rows (only ``status == "ok"`` ones count).
      masks: masks manifest rows of those images (every verdict: what the models made of the images).
    Returns ``{"images": n, "features": {name: counts}, "classes": {category_id: {"masks": n, name: counts}}}``.
    """
    ok = images.filter(pc.equal(images["status"], "ok"))
    w, h = _col(ok, "width"), _col(ok, "height")
    values = {name: _col(ok, name) for name in ("brightness", "contrast", "sharpness", "jpeg_quality")}
    values["megapixels"] = w * h / 1e6
    values["masks_per_image"] = _col(ok, "num_masks")
    out: DriftHistograms = {
        "images": ok.num_rows,
        "features": {name: IMAGE_FEATURES[name].counts(v) for name, v in values.items()},
        "classes": {},
    }
    if masks.num_rows:
        ids = set(ok["image_id"].to_pylist())
        masks = masks.filter(pc.is_in(masks["image_id"], value_set=pa.array(sorted(ids), pa.int64())))
        area = _col(masks, "area") / np.maximum(_col(masks, "width") * _col(masks, "height"), 1.0)
        feats = {"score": _col(masks, "score"), "predicted_iou": _col(masks, "predicted_iou")}
        feats |= {"stability_score": _col(masks, "stability_score"), "area_fraction": area}
        cls = masks["category_id"].to_numpy(zero_copy_only=False)
        for c in np.unique(cls):
            sel = cls == c
            out["classes"][str(int(c))] = {"masks": int(sel.sum())} | {
                name: MASK_FEATURES[name].counts(v[sel]) for name, v in feats.items()
            }
    return out


def merge(a: DriftHistograms | None, b: DriftHistograms) -> DriftHistograms:
    """The histograms of both (the sum of their counts)."""
    if a is None:
        return {"images": b["images"], "features": dict(b["features"]), "classes": dict(b["classes"])}

    def add(x: list[int] | None, y: list[int]) -> list[int]:
        return list(y) if x is None else [i + j for i, j in zip(x, y, strict=True)]

    out: DriftHistograms = {
        "images": a["images"] + b["images"],
        "features": {k: add(a["features"].get(k), v) for k, v in b["features"].items()},
        "classes": dict(a["classes"]),
    }
    for c, feats in b["classes"].items():
        mine = out["classes"].get(c, {})
        out["classes"][c] = {"masks": mine.get("masks", 0) + feats["masks"]} | {
            k: add(mine.get(k), v) for k, v in feats.items() if k != "masks"
        }
    return out


def reference(hist: DriftHistograms) -> DriftHistograms:
    """What ``calibration.json`` keeps of the gold images' histograms (all of it: a few KB), with the bins."""
    bins = {name: asdict(b) for name, b in {**IMAGE_FEATURES, **MASK_FEATURES}.items()}
    return {"bins": bins, **hist}


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison: ``name`` (``brightness``, or ``score[circle]`` for a class's mask feature)."""

    name: str
    d: float  # Kolmogorov-Smirnov distance of the binned CDFs
    p: float  # its asymptotic p-value
    psi: float  # population stability index over the bins
    n_reference: int
    n_run: int
    reference_median: float | None
    run_median: float | None
    drifted: bool


@dataclass(frozen=True)
class Drift:
    """The check of one run against a calibration's reference."""

    verdict: str  # "holds" or "drifted: a, b"
    features: list[FeatureDrift] = field(default_factory=list)
    untested: list[str] = field(default_factory=list)  # features or classes without enough data on a side
    alpha: float = ALPHA
    d_min: float = D_MIN

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def holds(self) -> bool:
        return not self.drifted

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drifted": self.drifted,
            "alpha": self.alpha,
            "d_min": self.d_min,
            "features": [asdict(f) for f in self.features],
            "untested": self.untested,
        }


def _median(counts: list[int], b: _Bins) -> float | None:
    c = np.asarray(counts[:-1], np.float64)  # without the missing bin
    if c.sum() == 0:
        return None
    k = int(np.searchsorted(np.cumsum(c), c.sum() / 2))
    centre = b.lo + (k - 0.5) * (b.hi - b.lo) / b.n  # bin k covers [lo + (k-1) w, lo + k w)
    return float(10**centre if b.log10 else centre)


def _test(name: str, ref: list[int], run: list[int], b: _Bins, alpha: float, d_min: float) -> FeatureDrift:
    from scipy.stats import kstwobign

    r, x = np.asarray(ref, np.float64), np.asarray(run, np.float64)
    nr, nx = r.sum(), x.sum()
    d = float(np.abs(np.cumsum(r) / nr - np.cumsum(x) / nx).max())
    n_eff = nr * nx / (nr + nx)
    p = float(kstwobign.sf(d * math.sqrt(n_eff))) if d > 0 else 1.0
    pr, px = (r + 0.5) / (nr + 0.5 * len(r)), (x + 0.5) / (nx + 0.5 * len(x))
    psi = float(np.sum((px - pr) * np.log(px / pr)))
    return FeatureDrift(
        name,
        round(d, 4),
        p,
        round(psi, 4),
        int(nr),
        int(nx),
        _median(ref, b),
        _median(run, b),
        p < alpha and d >= d_min,
    )


def compare(
    ref: DriftHistograms,
    run: DriftHistograms,
    class_names: dict[int, str],
    alpha: float = ALPHA,
    d_min: float = D_MIN,
    min_masks: int = MIN_MASKS,
) -> Drift:
    """Test every feature of ``run`` against ``ref`` (both :func:`histograms`; ``ref`` may be a :func:`reference`)."""
    features, untested = [], []
    for name, b in IMAGE_FEATURES.items():
        a, x = ref["features"].get(name), run["features"].get(name)
        if a is None or x is None or sum(a) == 0 or sum(x) == 0:
            untested.append(name)
            continue
        features.append(_test(name, a, x, b, alpha, d_min))
    for cid, cname in sorted(class_names.items()):
        ca, cx = ref["classes"].get(str(cid)), run["classes"].get(str(cid))
        if not ca and not cx:  # no masks of it on either side (a stuff class, say): nothing to compare
            continue
        if not ca or not cx or ca["masks"] < min_masks or cx["masks"] < min_masks:
            untested.append(f"masks of {cname} (fewer than {min_masks} on a side)")
            continue
        for name, b in MASK_FEATURES.items():
            if sum(ca[name][:-1]) == 0 or sum(cx[name][:-1]) == 0:  # the stage has no such score
                continue
            features.append(_test(f"{name}[{cname}]", ca[name], cx[name], b, alpha, d_min))
    drifted = [f.name for f in features if f.drifted]
    return Drift("drifted: " + ", ".join(drifted) if drifted else "holds", features, untested, alpha, d_min)
