"""Verdicts: every mask is accepted (exported), sent to review, or rejected.

A calibration (``calibration.json``, fitted by :mod:`segflow.tasks.calibration`
on a gold set) holds per class an acceptance threshold ``threshold`` and a
lower ``review_threshold`` on a calibrated score, and how that score is made:

* ``detector``: the detector's confidence;
* ``combined``: a per-class logistic model of the features below (standardised
  with the fitted ``mean`` / ``scale``; ``coef`` and ``intercept``), i.e. the
  probability that the mask matches a gold instance.

Features of a mask (:func:`features`, N x 6, computed within its image):

=====  ===========================================================================
0      logit of the detector score (clipped to 1e-4 .. 1 - 1e-4)
1      predicted IoU (0 when the stage has none)
2      stability score (0 when none)
3      log of the mask's area as a fraction of the image
4      rival: the best score of another class's mask whose tight box has IoU > 0.5
       with this one's (0 when none): the detector's doubt about the class
5      score / (score + rival)
=====  ===========================================================================

Verdict of a mask (:func:`apply_acceptance`; ``verdict_reasons`` says why):

* a QC ``reject`` stays ``reject`` (its rules are the reasons); a QC ``flag``
  is at best ``review``;
* without a calibration: QC ``pass`` (or no qc stage) -> ``accept``;
* with one, per class: score >= ``threshold`` -> ``accept``; ``review_threshold``
  <= score < ``threshold`` -> ``review`` (``below_accept``); below ->
  ``reject`` (``below_review``); a class the calibration could not set a
  threshold for (too few gold instances, target not reachable) -> ``review``
  (``uncalibrated``), or ``reject`` below its review threshold.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.storage import open_fs, read_bytes, redact

__all__ = ["CalibrationError", "VERDICTS", "apply_acceptance", "features", "load_calibration", "predict"]

VERDICTS = ("accept", "review", "reject")
FEATURES = ("logit_score", "predicted_iou", "stability_score", "log_area_frac", "rival_score", "score_share")


class CalibrationError(ValueError):
    """A calibration file cannot be read or was fitted for another ontology."""


def _xyxy(bbox: np.ndarray) -> np.ndarray:
    return np.c_[bbox[:, :2], bbox[:, :2] + bbox[:, 2:]]


def features(masks: pa.Table) -> np.ndarray:
    """The features above for every row of a masks table (rows of one image contiguous or not). Shape N x 6."""
    from segflow.tasks.qc import box_iou_xyxy

    n = masks.num_rows
    out = np.zeros((n, len(FEATURES)), np.float64)
    if n == 0:
        return out
    score = np.clip(masks["score"].to_numpy(zero_copy_only=False).astype(np.float64), 1e-4, 1 - 1e-4)
    out[:, 0] = np.log(score / (1 - score))
    for j, col in ((1, "predicted_iou"), (2, "stability_score")):
        out[:, j] = pc.fill_null(masks[col], 0.0).to_numpy(zero_copy_only=False)
    area = masks["area"].to_numpy(zero_copy_only=False).astype(np.float64)
    pixels = (masks["width"].to_numpy(zero_copy_only=False) * masks["height"].to_numpy(zero_copy_only=False)).astype(
        np.float64
    )
    out[:, 3] = np.log(np.maximum(area, 1.0) / np.maximum(pixels, 1.0))
    boxes = _xyxy(np.asarray(masks["bbox"].combine_chunks().flatten().to_numpy(), np.float64).reshape(n, 4))
    cls = masks["category_id"].to_numpy(zero_copy_only=False)
    image = masks["image_id"].to_numpy(zero_copy_only=False)
    order = np.argsort(image, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(image[order])) + 1, n]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        idx = order[a:b]
        if len(idx) < 2:
            continue
        m = len(idx)
        iou = box_iou_xyxy(np.repeat(boxes[idx], m, 0), np.tile(boxes[idx], (m, 1))).reshape(m, m)
        rival = (iou > 0.5) & (cls[idx][:, None] != cls[idx][None, :])
        out[idx, 4] = np.where(rival, score[idx][None, :], 0.0).max(1)
    out[:, 5] = score / (score + out[:, 4])
    return out


def predict(model: dict | None, x: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The calibrated score of N rows: the logistic ``model`` on features ``x`` (N x 6), or ``score`` when None."""
    if model is None:
        return score.astype(np.float64)
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + model["intercept"])))


def load_calibration(url: str, ontology: dict[int, str]) -> dict[str, Any]:
    """A saved ``calibration.json``, refused unless it was fitted for exactly this ontology (ids and names)."""
    fs, path = open_fs(url)
    try:
        cal = json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        raise CalibrationError(f"calibration not found: {redact(url)}") from None
    except ValueError as e:
        raise CalibrationError(f"calibration {redact(url)} is not JSON: {e}") from None
    if not isinstance(cal, dict) or "classes" not in cal or "ontology" not in cal:
        raise CalibrationError(f"{redact(url)} is not a segflow calibration (no 'classes' / 'ontology')")
    theirs = {int(k): v for k, v in cal["ontology"].items()}
    if theirs != ontology:
        diff = sorted(set(theirs.items()) ^ set(ontology.items()))
        raise CalibrationError(
            f"calibration {redact(url)} was fitted for another ontology (differs in {diff[:6]}): "
            f"fit one for this job with a gold set (`gold_set`, or `segflow calibrate`)"
        )
    return cal


def apply_acceptance(masks: pa.Table, cal: dict | None) -> pa.Table:
    """``masks`` with ``verdict``, ``verdict_reasons`` and ``calibrated_score`` (null without a calibration)."""
    n = masks.num_rows
    qc = pc.fill_null(masks["qc_verdict"], "pass").to_numpy(zero_copy_only=False).astype(object)
    verdict = np.where(qc == "reject", "reject", np.where(qc == "flag", "review", "accept")).astype(object)
    qc_reasons = masks["qc_reasons"].to_pylist()
    extra = np.full(n, "", dtype=object)
    calibrated = None
    if cal is not None and n:
        calibrated = np.full(n, np.nan)
        entries = {e["category_id"]: e for e in cal["classes"].values()}
        cls = masks["category_id"].to_numpy(zero_copy_only=False)
        score = masks["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        x = features(masks) if cal.get("score") == "combined" else None
        for cid in np.unique(cls):
            rows = np.flatnonzero(cls == cid)
            entry = entries.get(int(cid))
            if entry is None:
                extra[rows] = "uncalibrated"
                continue
            s = predict(entry.get("model"), x[rows] if x is not None else None, score[rows])
            calibrated[rows] = s
            t, tr = entry.get("threshold"), entry.get("review_threshold")
            low = s < tr if tr is not None else np.zeros(len(rows), bool)
            band = ~low & (s < t if t is not None else True)
            extra[rows[band]] = "below_accept" if t is not None else "uncalibrated"
            extra[rows[low]] = "below_review"
        verdict = np.where((extra == "below_review") & (verdict != "reject"), "reject", verdict)
        verdict = np.where(np.isin(extra, ["below_accept", "uncalibrated"]) & (verdict == "accept"), "review", verdict)
    reasons = [list(q or []) + ([e] if e else []) for q, e in zip(qc_reasons, extra, strict=True)]
    return (
        masks.append_column("verdict", pa.array(verdict.tolist(), pa.string()))
        .append_column("verdict_reasons", pa.array(reasons, pa.list_(pa.string())))
        .append_column(
            "calibrated_score",
            pa.nulls(n, pa.float32()) if calibrated is None else pa.array(calibrated, pa.float32(), from_pandas=True),
        )
    )
