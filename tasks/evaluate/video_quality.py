"""Tracking quality of a video run against ground truth, both in YouTube-VIS JSON.

* **HOTA** (DetA, AssA) and **IDF1** (IDP, IDR) from Roboflow's ``trackers.eval`` (TrackEval's definitions), with
  mask IoU as the similarity and 0 between different classes, over every labelled frame of every video (ids are
  the files' annotation ids, so no track is ever associated across videos).
* **The exported track set's precision and recall.** A predicted track is a true positive when it matches one gold
  track of its class, one to one, in at least half of its own frames at mask IoU >= ``iou`` (greedy, most matched
  frames first). Recall: the gold tracks so matched, of all gold tracks.

Videos are paired by ``name``, frames by ``file_names``; a video the prediction lacks counts as all misses, and
a predicted video the gold set lacks is left out (it was not asked about).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["TrackingQuality", "evaluate_vis", "GoldTracks", "TrackFit", "fit_track_threshold", "gold_track_quality"]


@dataclass(frozen=True)
class TrackingQuality:
    """What :func:`evaluate_vis` measures (module docs)."""

    hota: float
    deta: float
    assa: float
    idf1: float
    idp: float
    idr: float
    track_precision: float | None
    track_recall: float | None
    tracks: int  # predicted tracks
    gold_tracks: int
    matched: int
    frames: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class _Rle(TypedDict):
    size: list[int]
    counts: bytes


def _rle(seg: Any) -> _Rle:
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _match_tracks(hits: Mapping[tuple[int, int], int], frames: Mapping[int, int]) -> dict[int, int]:
    """Predicted track -> the gold track it matches, one to one: ``hits`` (predicted, gold) -> frames they agree on
    (class included, mask IoU at the threshold), most first; a pair counts when it agrees in at least half of the
    predicted track's ``frames``."""
    out: dict[int, int] = {}
    used: set[int] = set()
    for (p, g), n in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0])):
        if p in out or g in used or 2 * n < frames.get(p, 0):
            continue
        out[p] = g
        used.add(g)
    return out


def evaluate_vis(gold: Mapping[str, Any], pred: Mapping[str, Any], iou: float = 0.5) -> TrackingQuality:
    """Score ``pred`` against ``gold`` (both YouTube-VIS documents; module docs)."""
    from trackers.eval import compute_hota_metrics, compute_identity_metrics

    pred_videos = {v["name"]: v for v in pred.get("videos", [])}
    pred_anns: dict[int, list[dict]] = {}
    for a in pred.get("annotations", []):
        pred_anns.setdefault(int(a["video_id"]), []).append(a)
    gold_anns: dict[int, list[dict]] = {}
    for a in gold.get("annotations", []):
        gold_anns.setdefault(int(a["video_id"]), []).append(a)

    gt_ids: list[np.ndarray] = []
    tr_ids: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    # per (pred annotation id, gold annotation id) of one class: frames matched at >= iou
    hits: dict[tuple[int, int], int] = {}
    pred_frames: dict[int, int] = {}
    n_pred = 0
    for v in gold.get("videos", []):
        gv = gold_anns.get(int(v["id"]), [])
        pv_doc = pred_videos.get(v["name"])
        pv = pred_anns.get(int(pv_doc["id"]), []) if pv_doc is not None else []
        pred_pos = {f: k for k, f in enumerate(pv_doc["file_names"])} if pv_doc is not None else {}
        n_pred += len(pv)
        for a in pv:
            pred_frames[int(a["id"])] = sum(1 for s in a["segmentations"] if s is not None)
        for t, name in enumerate(v["file_names"]):
            g = [(int(a["id"]), int(a["category_id"]), a["segmentations"][t]) for a in gv]
            g = [x for x in g if x[2] is not None]
            k = pred_pos.get(name)
            p = [] if k is None else [(int(a["id"]), int(a["category_id"]), a["segmentations"][k]) for a in pv]
            p = [x for x in p if x[2] is not None]
            sim = np.zeros((len(g), len(p)))
            if g and p:
                sim = np.asarray(
                    mask_utils.iou([_rle(x[2]) for x in g], [_rle(x[2]) for x in p], [0] * len(p)), np.float64
                ).reshape(len(g), len(p))
                same = np.array([[gc == pc for _, pc, _ in p] for _, gc, _ in g])
                sim = np.where(same, sim, 0.0)
                for i, j in zip(*np.nonzero(sim >= iou), strict=True):
                    key = (p[j][0], g[i][0])
                    hits[key] = hits.get(key, 0) + 1
            gt_ids.append(np.array([x[0] for x in g], np.int64))
            tr_ids.append(np.array([x[0] for x in p], np.int64))
            sims.append(sim)
    hota = compute_hota_metrics(gt_ids, tr_ids, sims)
    ident = compute_identity_metrics(gt_ids, tr_ids, sims, threshold=iou)
    # tracks: one to one, most matched frames first, each needing half of the predicted track's frames
    matched = _match_tracks(hits, pred_frames)
    n_gold = sum(len(x) for x in gold_anns.values())
    return TrackingQuality(
        hota=float(hota["HOTA"]),
        deta=float(hota["DetA"]),
        assa=float(hota["AssA"]),
        idf1=float(ident["IDF1"]),
        idp=float(ident["IDP"]),
        idr=float(ident["IDR"]),
        track_precision=len(matched) / n_pred if n_pred else None,
        track_recall=len(matched) / n_gold if n_gold else None,
        tracks=n_pred,
        gold_tracks=n_gold,
        matched=len(matched),
        frames=len(gt_ids),
    )


class GoldTracks:
    """A gold set of video labels (YouTube-VIS): which of a run's tracks are right (:meth:`judge`), by the rule of
    :func:`evaluate_vis` -- one to one with a gold track of its class, in at least half of its frames at mask IoU
    >= ``iou``."""

    def __init__(self, doc: Mapping[str, Any], iou: float = 0.5):
        self.iou = iou
        self.videos = {str(v["name"]): v for v in doc.get("videos", [])}
        by_id: dict[int, list[dict]] = {}
        for a in doc.get("annotations", []):
            by_id.setdefault(int(a["video_id"]), []).append(a)
        self.tracks = {name: by_id.get(int(v["id"]), []) for name, v in self.videos.items()}
        self.seen: set[str] = set()

    @property
    def n_tracks(self) -> int:
        """Gold tracks of the gold videos the run had (the denominator of recall)."""
        return sum(len(self.tracks[v]) for v in self.seen)

    def judge(self, name: str, masks: Any, file_names: Mapping[int, str]) -> dict[int, bool]:
        """Track id -> right, for the tracks of ``masks`` (one video's mask rows: ``track_id``, ``frame_index``,
        ``category_id``, ``rle_counts``, ``height``, ``width``; ``file_names``: frame index -> its file name)."""
        self.seen.add(name)
        gold = self.tracks[name]
        pos = {f: k for k, f in enumerate(self.videos[name]["file_names"])}
        names = file_names
        length: dict[int, int] = {}
        hits: dict[tuple[int, int], int] = {}
        cols = ("track_id", "frame_index", "category_id", "rle_counts", "height", "width")
        for t, f, c, r, h, w in zip(*(masks[k].to_pylist() for k in cols), strict=True):
            length[int(t)] = length.get(int(t), 0) + 1
            k = pos.get(names.get(int(f), ""))
            if k is None:
                continue
            for g in gold:
                seg = g["segmentations"][k]
                if seg is None or int(g["category_id"]) != int(c):
                    continue
                mine = {"size": [int(h), int(w)], "counts": r.encode("ascii")}
                if mask_utils.iou([mine], [_rle(seg)], [0])[0][0] >= self.iou:
                    hits[(int(t), int(g["id"]))] = hits.get((int(t), int(g["id"])), 0) + 1
        matched = _match_tracks(hits, length)
        return {t: t in matched for t in length}


@dataclass(frozen=True)
class TrackFit:
    """The tracks' score threshold fitted on the gold videos: ``threshold`` (None: no threshold reaches the
    target), the gold tracks it was fitted on, and their precision and how many of them are right at it."""

    threshold: float | None
    target: float
    tracks: int
    right: int
    precision: float | None
    kept: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def fit_track_threshold(
    candidates: list[tuple[float, bool]], judged: int, right: int, target: float, floor: float = 0.0
) -> TrackFit:
    """The score threshold at which the ``candidates`` -- (track score, right) of the gold videos' tracks that pass
    every rule, ``min_mean_score`` included -- are right at ``target`` precision or more (``judged``, ``right``: all
    the gold videos' tracks, and how many are right). The tracks kept are the most that hold the target, from the
    highest score down (ties kept or dropped together); the threshold lies halfway between the lowest kept and the
    highest dropped (any value between keeps the same gold tracks: halfway leaves the held-out tracks near either
    the same margin) or, when none is dropped, halfway between the lowest kept and ``floor`` (the rule's
    ``min_mean_score``: every candidate is at or above it, so any value down to it keeps them all)."""
    scored = sorted(candidates, key=lambda x: -x[0])
    best: tuple[int, int] | None = None  # (kept, right among them)
    tp = 0
    for k, (m, y) in enumerate(scored, 1):
        tp += y
        if k < len(scored) and scored[k][0] == m:
            continue  # ties: a threshold keeps all of them or none
        if tp / k >= target:
            best = (k, tp)
    if best is None:
        return TrackFit(None, target, judged, right, None, 0)
    kept, tp = best
    low = scored[kept - 1][0]
    threshold = (low + (scored[kept][0] if kept < len(scored) else min(floor, low))) / 2
    return TrackFit(threshold, target, judged, right, tp / kept, kept)


def gold_track_quality(
    rows: list[Any], right: Mapping[tuple[str, int], bool], n_gold: int, keep: tuple[str, ...]
) -> dict[str, float | int | None]:
    """The exported tracks of the gold videos against them: precision and recall (optimistic where the threshold
    was fitted on them)."""
    exported = [right[(r.video, r.track_id)] for r in rows if (r.video, r.track_id) in right and r.verdict in keep]
    tp = sum(exported)
    return {
        "tracks": len(exported),
        "right": tp,
        "precision": round(tp / len(exported), 4) if exported else None,
        "recall": round(tp / n_gold, 4) if n_gold else None,
        "gold_tracks": n_gold,
    }
