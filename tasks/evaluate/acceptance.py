"""Verdicts: every mask is accepted (exported), sent to review, or rejected.

A calibration (``calibration.json``, fitted by :mod:`segflow.tasks.evaluate.calibration`
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
  (``uncalibrated``), or ``reject`` below its review threshold;
* an otherwise accepted mask whose shape is unlike the gold set's right masks of its class (its ``novelty``
  above the class's limit, :mod:`segflow.tasks.evaluate.novelty`) -> ``review`` (``novel``);
* with ``accept.on_drift: review`` and a calibration that does not hold (:mod:`segflow.tasks.evaluate.drift`), every
  otherwise accepted mask -> ``review`` (``drift``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import Calibration, ClassCalibration, ScoreModel
from segflow.tasks.evaluate.novelty import novelty, shape_matrix
from segflow.tasks.io.storage import open_fs, read_bytes, redact
from segflow.tasks.records import Verdict

__all__ = [
    "CalibrationError",
    "VERDICTS",
    "apply_acceptance",
    "box_agreement",
    "correct_probability",
    "features",
    "load_calibration",
    "predict",
]

VERDICTS = tuple(v.value for v in Verdict)  # accept, review, reject
FEATURES = ("logit_score", "predicted_iou", "stability_score", "log_area_frac", "rival_score", "score_share")


class CalibrationError(ValueError):
    """A calibration file cannot be read or was fitted for another ontology."""


def _xyxy(bbox: np.ndarray) -> np.ndarray:
    return np.c_[bbox[:, :2], bbox[:, :2] + bbox[:, 2:]]


def features(masks: pa.Table) -> np.ndarray:
    """The features above for every row of a masks table (rows of one image contiguous or not). Shape N x 6."""
    from segflow.tasks.stages.qc import box_iou_pairs

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
        iou = box_iou_pairs(boxes[idx], boxes[idx])
        rival = (iou > 0.5) & (cls[idx][:, None] != cls[idx][None, :])
        out[idx, 4] = np.where(rival, score[idx][None, :], 0.0).max(1)
    out[:, 5] = score / (score + out[:, 4])
    return out


def predict(model: ScoreModel | None, x: np.ndarray | None, score: np.ndarray) -> np.ndarray:
    """The calibrated score of N rows: the logistic ``model`` on features ``x`` (N x 6), or ``score`` when None."""
    if model is None:
        return score.astype(np.float64)
    if x is None:
        raise ValueError("a combined-score calibration needs the masks' features")
    z = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(model["coef"]) + model["intercept"])))


def _novelty_limit(entry: ClassCalibration | None) -> float:
    """The novelty above which a mask of the class goes to review (inf: the class has no shape reference)."""
    reference = entry.get("novelty") if entry is not None else None
    return reference["limit"] if reference else np.inf


def load_calibration(url: str, ontology: dict[int, str]) -> Calibration:
    """A saved ``calibration.json``, refused unless it was fitted for exactly this ontology (ids and names)."""
    fs, path = open_fs(url)
    try:
        cal: Calibration = json.loads(read_bytes(fs, path))
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


def apply_acceptance(
    masks: pa.Table, cal: Calibration | None, drifted: bool = False, use_novelty: bool = True
) -> pa.Table:
    """``masks`` with ``verdict``, ``verdict_reasons``, ``calibrated_score`` and ``novelty`` (null without a
    calibration, or for a class it has no shape reference for).

    ``drifted``: the calibration does not hold for this run (:mod:`segflow.tasks.evaluate.drift`) and the job says
    ``accept.on_drift: review``: what would be accepted goes to review, reason ``drift``.
    ``use_novelty``: a mask whose :func:`segflow.tasks.evaluate.novelty.novelty` is above its class's limit is not
    accepted: review, reason ``novel`` (off: the score is reported only).
    """
    n = masks.num_rows
    qc = pc.fill_null(masks["qc_verdict"], "pass").to_numpy(zero_copy_only=False).astype(object)
    verdict = np.where(qc == "reject", "reject", np.where(qc == "flag", "review", "accept")).astype(object)
    qc_reasons = masks["qc_reasons"].to_pylist()
    extra = np.full(n, "", dtype=object)
    calibrated = None
    novel_score = np.full(n, np.nan)
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
            look = entry.get("novelty")
            if look and "shape" in masks.column_names:
                shapes = masks["shape"].take(pa.array(rows)).to_pylist()
                novel_score[rows] = novelty(shape_matrix(shapes), look)
            t, tr = entry.get("threshold"), entry.get("review_threshold")
            low = s < tr if tr is not None else np.zeros(len(rows), bool)
            band = ~low & (s < t if t is not None else True)
            extra[rows[band]] = "below_accept" if t is not None else "uncalibrated"
            extra[rows[low]] = "below_review"
        verdict = np.where((extra == "below_review") & (verdict != "reject"), "reject", verdict)
        verdict = np.where(np.isin(extra, ["below_accept", "uncalibrated"]) & (verdict == "accept"), "review", verdict)
        if use_novelty:  # unlike the gold set's right masks of its class: people look before it is a label
            limit = np.array([_novelty_limit(entries.get(int(c))) for c in cls], np.float64)
            novel = (verdict == "accept") & (np.nan_to_num(novel_score, nan=0.0) > limit)
            extra = np.where(novel, "novel", extra)
            verdict = np.where(novel, "review", verdict)
        if drifted:
            extra = np.where(verdict == "accept", "drift", extra)
            verdict = np.where(verdict == "accept", "review", verdict)
    reasons = [list(q or []) + ([e] if e else []) for q, e in zip(qc_reasons, extra, strict=True)]
    return (
        masks.append_column("verdict", pa.array(verdict.tolist(), pa.string()))
        .append_column("verdict_reasons", pa.array(reasons, pa.list_(pa.string())))
        .append_column(
            "calibrated_score",
            pa.nulls(n, pa.float32()) if calibrated is None else pa.array(calibrated, pa.float32(), from_pandas=True),
        )
        .append_column("novelty", pa.array(novel_score, pa.float32(), from_pandas=True))
    )


def box_agreement(masks: pa.Table) -> np.ndarray:
    """IoU of each mask's tight box (``bbox``) with the box that prompted it (``prompt_box``: the detector's, or
    the instance model's own), N floats; NaN without a prompt box. A mask that fails (segments something else
    than its box holds, or a speck of it) disagrees with its box whatever its scores say."""
    n = masks.num_rows
    if not n or "prompt_box" not in masks.column_names:
        return np.full(n, np.nan)
    pb = np.full((n, 4), np.nan)
    valid = pc.is_valid(masks["prompt_box"]).to_numpy(zero_copy_only=False)
    if valid.any():
        pb[valid] = np.asarray(
            masks["prompt_box"].filter(pa.array(valid)).combine_chunks().flatten().to_numpy(zero_copy_only=False),
            np.float64,
        ).reshape(-1, 4)
    bb = _xyxy(np.asarray(masks["bbox"].combine_chunks().flatten().to_numpy(), np.float64).reshape(n, 4))
    ix = np.clip(np.minimum(pb[:, 2], bb[:, 2]) - np.maximum(pb[:, 0], bb[:, 0]), 0, None)
    iy = np.clip(np.minimum(pb[:, 3], bb[:, 3]) - np.maximum(pb[:, 1], bb[:, 1]), 0, None)
    inter = ix * iy
    union = (pb[:, 2] - pb[:, 0]) * (pb[:, 3] - pb[:, 1]) + (bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def correct_probability(masks: pa.Table, cal: Calibration) -> np.ndarray:
    """Per mask, the probability it is right (matches a gold instance), without any label of this run.

    Two failures, told apart (``masks`` is :func:`apply_acceptance`'s output):

    * the detection: its class's reliability curve (the gold set's labels, isotonic in the score;
      :func:`segflow.tasks.evaluate.calibration.reliability`) at the mask's ``calibrated_score``;
    * the mask: 0 when its :func:`box_agreement` is below the class's ``mask_check`` (the lowest agreement the
      gold set's right masks had, its 1% quantile): a mask that does not fill its box, as segmenters produce on
      images unlike their training (dark, blurred), is wrong however confident the detector was.

    NaN for a class without a curve.
    """
    out = np.full(masks.num_rows, np.nan)
    if not masks.num_rows:
        return out
    entries = {e["category_id"]: e for e in cal["classes"].values()}
    cls = masks["category_id"].to_numpy(zero_copy_only=False)
    s = pc.fill_null(masks["calibrated_score"].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    agree = box_agreement(masks)
    for cid in np.unique(cls):
        entry = entries.get(int(cid))
        curve = entry.get("reliability") if entry is not None else None
        if entry is not None and curve and curve.get("x"):
            rows = cls == cid
            out[rows] = np.interp(s[rows], curve["x"], curve["y"])
            floor = (entry.get("mask_check") or {}).get("box_agreement_min")
            if floor is not None:
                out[rows & (agree < floor)] = 0.0  # NaN agreement (no prompt box) is never below
    return out
