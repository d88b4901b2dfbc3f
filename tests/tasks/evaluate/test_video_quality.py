"""Tracking quality against YouTube-VIS ground truth (segflow.tasks.evaluate.video_quality): which tracks are right,
the tracks' threshold fitted for a precision target, HOTA / IDF1 through trackers.eval."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from segflow.tasks import rle
from segflow.tasks.evaluate.video_quality import GoldTracks, evaluate_vis, fit_track_threshold

H, W, T = 40, 60, 6


def _sq(x: int, y: int = 10, s: int = 10) -> str:
    m = np.zeros((H, W), bool)
    m[y : y + s, x : x + s] = True
    return rle.encode_nhw(m)[0]


def _gold() -> dict:
    segs = [{"size": [H, W], "counts": _sq(5 + 3 * t)} for t in range(T)]
    return {
        "videos": [{"id": 1, "name": "v", "file_names": [f"v/{t:06d}" for t in range(T)], "width": W, "height": H}],
        "annotations": [{"id": 1, "video_id": 1, "category_id": 2, "segmentations": segs}],
        "categories": [{"id": 2, "name": "square"}],
    }


def _masks(rows: list[tuple[int, int, int, str]]) -> pa.Table:
    """rows: (track id, frame, class, rle)."""
    return pa.table(
        {
            "track_id": [r[0] for r in rows],
            "frame_index": [r[1] for r in rows],
            "category_id": [r[2] for r in rows],
            "rle_counts": [r[3] for r in rows],
            "height": [H] * len(rows),
            "width": [W] * len(rows),
        }
    )


def test_a_track_is_right_when_it_follows_one_gold_track_of_its_class_in_half_its_frames():
    gold = GoldTracks(_gold())
    names = {t: f"v/{t:06d}" for t in range(T)}
    rows = [(1, t, 2, _sq(5 + 3 * t)) for t in range(T)]  # right
    rows += [(2, t, 3, _sq(5 + 3 * t)) for t in range(T)]  # the right place, another class
    rows += [(3, t, 2, _sq(40, 25)) for t in range(T)]  # the right class, elsewhere
    right = gold.judge("v", _masks(rows), names)
    assert right == {1: True, 2: False, 3: False}
    assert gold.n_tracks == 1
    # one to one: a second track on the same object (a duplicate) is not right too
    dup = [(1, t, 2, _sq(5 + 3 * t)) for t in range(T)] + [(4, t, 2, _sq(5 + 3 * t)) for t in range(3, T)]
    assert sorted(GoldTracks(_gold()).judge("v", _masks(dup), names).values()) == [False, True]
    # a track right in fewer than half of its frames is not right
    half = [(5, t, 2, _sq(5 + 3 * t) if t < 2 else _sq(45, 25)) for t in range(T)]
    assert GoldTracks(_gold()).judge("v", _masks(half), names) == {5: False}


def test_the_threshold_keeps_the_most_tracks_that_hold_the_target_halfway_to_the_next():
    cands = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False)]
    # 3 of the top 4 are right: halfway between the lowest kept (0.6) and the first dropped (0.5)
    assert fit_track_threshold(cands, 5, 3, 0.75).threshold == pytest.approx(0.55)
    assert fit_track_threshold(cands, 5, 3, 0.9).threshold == pytest.approx(0.75)  # negative control: top 2 only
    fit = fit_track_threshold(cands, 7, 3, 0.9)
    assert (fit.kept, fit.precision, fit.tracks) == (2, 1.0, 7)
    assert fit_track_threshold([(0.5, False)], 1, 0, 0.5).threshold is None  # no threshold reaches it
    # none dropped: halfway between the lowest kept and the floor the candidates passed (0 by default)
    assert fit_track_threshold([(0.9, True), (0.6, True)], 2, 2, 0.9, floor=0.4).threshold == pytest.approx(0.5)
    assert fit_track_threshold([(0.9, True), (0.6, True)], 2, 2, 0.9).threshold == pytest.approx(0.3)
    # a dropped candidate, not the floor, bounds it when there is one
    assert fit_track_threshold(cands, 5, 3, 0.75, floor=0.45).threshold == pytest.approx(0.55)
    # ties go together: 0.8 keeps both of its tracks (1 of 2 right), so 0.85 is the threshold for 0.75
    assert fit_track_threshold([(0.9, True), (0.8, True), (0.8, False)], 3, 2, 0.75).threshold == pytest.approx(0.85)


def test_evaluate_vis_is_one_for_the_truth_and_lower_for_swapped_identities():
    g = _gold()
    g["annotations"].append(
        {"id": 2, "video_id": 1, "category_id": 2, "segmentations": [{"size": [H, W], "counts": _sq(45, 25)}] * T}
    )
    assert evaluate_vis(g, g).to_dict()["idf1"] == pytest.approx(1.0)
    p = {**g, "annotations": [dict(a, segmentations=list(a["segmentations"])) for a in g["annotations"]]}
    a, b = p["annotations"]
    a["segmentations"][3:], b["segmentations"][3:] = b["segmentations"][3:], a["segmentations"][3:]
    q = evaluate_vis(g, p)
    assert q.idf1 == pytest.approx(0.5) and q.assa < 0.6 and q.deta == pytest.approx(1.0)
    assert (q.track_precision, q.track_recall) == (1.0, 1.0)  # each still follows one gold track half its frames
