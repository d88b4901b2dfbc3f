"""A clip's tracks once the clip is labelled (a tracker's ``finish_clip``): first frames filled in, classes voted.

Both work on the clip's mask rows (a pyarrow table with the masks manifest's ``frame_index``, ``track_id``,
``category_id``, ``category_name``, ``score``, ``rle_counts``, ``height``, ``width``; the context frames first), in
the shard, before the commit. Finalize then joins the clips' tracks (:mod:`segflow.tasks.outputs.tracks`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from segflow.tasks import rle

__all__ = ["fill_track_starts", "vote_track_classes", "MIN_TRACK_IOU"]

#: Mask IoU at which a mask continues a track (a first frame filled in, two clips' tracks joined, a vote counted).
MIN_TRACK_IOU = 0.5


def fill_track_starts(masks: pa.Table, min_iou: float = MIN_TRACK_IOU, same_class: bool = True) -> pa.Table:
    """``masks`` (one clip's mask rows: ``frame_index``, ``track_id``, ``category_id``, ``rle_counts``, ``width``,
    ``height``) with each track's first frames filled in (module docs, step 1; ``same_class``: only by a mask of the
    track's class). Rows keep their order."""
    if masks.num_rows == 0 or masks["track_id"].null_count == masks.num_rows:
        return masks
    frames = masks["frame_index"].to_numpy(zero_copy_only=False)
    tracks = np.array([-1 if t is None else t for t in masks["track_id"].to_pylist()], np.int64)
    classes = masks["category_id"].to_numpy(zero_copy_only=False)
    counts = masks["rle_counts"].to_pylist()
    h, w = int(masks["height"][0].as_py()), int(masks["width"][0].as_py())
    order = np.unique(frames)
    position = {int(f): k for k, f in enumerate(order)}
    for tid in np.unique(tracks[tracks >= 0]):
        while True:
            rows = np.flatnonzero(tracks == tid)
            first = rows[np.argmin(frames[rows])]
            k = position[int(frames[first])]
            if k == 0:
                break
            cand = np.flatnonzero(
                (frames == order[k - 1]) & (tracks < 0) & ((classes == classes[first]) | (not same_class))
            )
            if len(cand) == 0:
                break
            ious = rle.iou([counts[first]], [counts[c] for c in cand], h, w)[0]
            best = int(np.argmax(ious))
            if ious[best] < min_iou:
                break
            tracks[cand[best]] = tid
    column = pa.array([None if t < 0 else int(t) for t in tracks], pa.int64())
    return masks.set_column(masks.schema.get_field_index("track_id"), "track_id", column)


def vote_track_classes(masks: pa.Table, names: dict[int, str], min_iou: float = MIN_TRACK_IOU) -> pa.Table:
    """``masks`` (one clip's mask rows, tracked class-agnostically) with each track's masks under the track's class.

    A detector that sees one object over many frames calls it by the wrong class in some of them (half hidden,
    entering the frame): tracked one tracker per class, that object is split into short tracks of each class. Tracked
    across classes, it is one track, and its class is the vote of its frames: each of its masks votes its score for
    its class, and so does every untracked mask of its frame that is the same object (mask IoU >= ``min_iou`` with
    its mask; the detector's second guess, left out of tracking as a duplicate). The track's masks take the winning
    class (``category_id``; ``category_name`` from ``names``, else from the clip's rows of that class). A mask's
    ``score`` becomes its frame's belief in the object (its score plus those of the untracked masks that voted with
    it, at most 1: the detector's scores for one object's classes are shares of one belief) times the winner's share
    of the track's votes: a track of disputed class scores lower, and the track's mean score is about the votes
    for its class per frame. Rows keep their order; untracked rows are unchanged."""
    if masks.num_rows == 0 or masks["track_id"].null_count == masks.num_rows:
        return masks
    frames = masks["frame_index"].to_numpy(zero_copy_only=False)
    tracks = np.array([-1 if t is None else t for t in masks["track_id"].to_pylist()], np.int64)
    classes = masks["category_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    scores = np.nan_to_num(masks["score"].to_numpy(zero_copy_only=False).astype(np.float64))
    counts = masks["rle_counts"].to_pylist()
    h, w = int(masks["height"][0].as_py()), int(masks["width"][0].as_py())
    votes: dict[int, dict[int, float]] = {}
    belief = np.where(tracks >= 0, scores, 0.0)  # a tracked mask's score as an object: its own and its duplicates'
    for r in np.flatnonzero(tracks >= 0):
        v = votes.setdefault(int(tracks[r]), {})
        v[int(classes[r])] = v.get(int(classes[r]), 0.0) + float(scores[r])
    for f in np.unique(frames[tracks < 0]):
        loose = np.flatnonzero((frames == f) & (tracks < 0))
        held = np.flatnonzero((frames == f) & (tracks >= 0))
        if len(held) == 0:
            continue
        ious = rle.iou([counts[r] for r in loose], [counts[r] for r in held], h, w)
        for i, r in enumerate(loose):
            best = int(np.argmax(ious[i]))
            if ious[i, best] >= min_iou:
                v = votes[int(tracks[held[best]])]
                v[int(classes[r])] = v.get(int(classes[r]), 0.0) + float(scores[r])
                belief[held[best]] += scores[r]
    named = dict(zip(classes.tolist(), masks["category_name"].to_pylist(), strict=True)) | names
    new_class, new_score = classes.copy(), scores.copy()
    for tid, v in votes.items():
        winner = min(v, key=lambda c: (-v[c], c))
        total = sum(v.values())
        share = v[winner] / total if total > 0 else 1.0
        rows = tracks == tid
        new_class[rows] = winner
        new_score[rows] = np.minimum(1.0, belief[rows]) * share
    out = masks
    for name, column in (
        ("category_id", pa.array(new_class, masks.schema.field("category_id").type)),
        (
            "category_name",
            pa.array(
                [
                    named.get(int(c), n) if t >= 0 else n
                    for c, t, n in zip(new_class, tracks, masks["category_name"].to_pylist(), strict=True)
                ],
                pa.string(),
            ),
        ),
        ("score", pa.array(new_score, masks.schema.field("score").type)),
    ):
        out = out.set_column(out.schema.get_field_index(name), name, column)
    return out
