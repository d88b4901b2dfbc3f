"""Tracks across clips (segflow.tasks.outputs.tracks): clips joined on their shared frames by mask IoU, one row per
track, verdicts and class conflicts."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from segflow.tasks.outputs.tracks import (
    TrackRow,
    TrackRule,
    TrackStitcher,
    TrackSummary,
    class_conflicts,
    track_verdict,
    tracks_table,
)
from segflow.tasks.outputs.video_exports import fitted_rule, mots_multiplier, video_name
from tests.support.track_rows import masks as _masks
from tests.support.track_rows import square as _square


def _clip(frames: range, objects: dict[int, tuple[int, int]], dx: int = 2) -> list[tuple]:
    """objects: local id -> (class, start x): squares moving ``dx`` px a frame."""
    return [(f, t, c, _square(x0 + dx * f, 20)) for f in frames for t, (c, x0) in objects.items()]


def test_clips_are_joined_on_their_shared_frames_and_new_tracks_numbered_after():
    s = TrackStitcher()
    s.add_clip("s0", "v.mp4", _masks(_clip(range(0, 6), {1: (1, 0), 2: (2, 40)})), None)
    # the next clip numbers its tracks again; its context (frames 4, 5) shows its 2 is s0's 1 and its 1 is s0's 2
    context = _masks(_clip(range(4, 6), {2: (1, 0), 1: (2, 40)}))
    own = _masks(_clip(range(6, 10), {2: (1, 0), 1: (2, 40), 3: (1, 0)}, dx=2)[:8] + [(6, 3, 1, _square(60, 45))])
    s.add_clip("s1", "v.mp4", own, context)
    assert (s.global_id("s1", 2), s.global_id("s1", 1), s.global_id("s1", 3)) == (1, 2, 3)
    assert s.apply("s1", own)["track_id"].to_pylist()[:2] == [1, 2]
    # another video starts again at 1
    s.add_clip("s2", "w.mp4", _masks(_clip(range(0, 2), {5: (1, 0)}), "w.mp4"), None)
    assert s.global_id("s2", 5) == 1


@pytest.mark.parametrize(
    "context_rows",
    [
        _clip(range(4, 6), {2: (1, 30)}),  # elsewhere in the frame: IoU 0
        [(f, 2, 2, r) for f, _, _, r in _clip(range(4, 6), {2: (1, 0)})],  # same place, another class
    ],
)
def test_tracks_that_do_not_overlap_or_differ_in_class_are_not_joined(context_rows):
    s = TrackStitcher()
    s.add_clip("s0", "v.mp4", _masks(_clip(range(0, 6), {1: (1, 0)})), None)
    s.add_clip("s1", "v.mp4", _masks([(6, 2, 1, _square(12, 20))]), _masks(context_rows))
    assert s.global_id("s1", 2) == 2


def _gap_clips(shift: int = 0, cls: int = 1) -> tuple[pa.Table, pa.Table]:
    """A square moving 2 px a frame: track 1 on frames 0-5, hidden on 6-8, back on 9-11 as the clip's track 2 (at
    ``shift`` px from where it was heading, as class ``cls``); a new clip's track 5 on frames 14-16 continues it."""
    first = _clip(range(0, 6), {1: (1, 0)}) + [(f, 2, cls, _square(2 * f + shift, 20)) for f in range(9, 12)]
    return _masks(first), _masks([(f, 5, cls, _square(2 * f + shift, 20)) for f in range(14, 17)])


def test_a_track_back_after_a_gap_rejoins_the_track_it_continues():
    """In the clip (hidden longer than the tracker waited) and across clips (no context shows it): the new track
    starts where the old one was heading, so it gets its id."""
    s = TrackStitcher(rejoin_gap=5)
    a, b = _gap_clips()
    s.add_clip("s0", "v.mp4", a, None)
    s.add_clip("s1", "v.mp4", b, None)
    assert (s.global_id("s0", 1), s.global_id("s0", 2), s.global_id("s1", 5)) == (1, 1, 1)


@pytest.mark.parametrize(
    "shift, cls, gap, expect",
    [
        (0, 1, 0, (2, 3)),  # rejoining off
        (30, 1, 5, (2, 2)),  # elsewhere: 30 px from where it was heading (> 1.5 x its 12 px); the next clip follows it
        (0, 2, 5, (2, 2)),  # another class
        (0, 1, 2, (2, 3)),  # gaps of 4 and 3 frames (> rejoin_gap 2)
    ],
)
def test_a_track_elsewhere_or_of_another_class_or_after_a_longer_gap_is_new(shift, cls, gap, expect):
    s = TrackStitcher(rejoin_gap=gap)
    a, b = _gap_clips(shift, cls)
    s.add_clip("s0", "v.mp4", a, None)
    s.add_clip("s1", "v.mp4", b, None)
    assert s.global_id("s0", 1) == 1 and (s.global_id("s0", 2), s.global_id("s1", 5)) == expect


def test_track_rows_and_verdicts():
    summary = TrackSummary(TrackRule(prior_frames=0))  # scores are the means (prior frames: their own test)
    rows = _clip(range(0, 4), {1: (1, 0)}) + [(2, 2, 2, _square(50, 40))]
    t = _masks(rows)
    verdicts = ["accept", "accept", "review", "accept", "accept"]
    t = t.set_column(t.schema.get_field_index("verdict"), "verdict", pa.array(verdicts))
    summary.add(t)
    one, two = summary.finish_video("v.mp4")
    assert (one.first_frame, one.last_frame, one.frames, one.accepted, one.verdict) == (0, 3, 4, 3, "accept")
    assert one.mean_step_iou == pytest.approx(120 / 168)  # 12x12 squares 2 px apart
    assert (two.frames, two.verdict) == (1, "review")  # one frame: not a track to export alone
    assert summary.finish_video("v.mp4") == []
    assert track_verdict(3, 0, 3, 0.9) == ("reject", ["rejected"])
    assert track_verdict(4, 1, 0, 0.9) == ("review", ["masks_not_accepted"])
    assert track_verdict(4, 4, 0, 0.6) == ("accept", [])
    assert track_verdict(4, 4, 0, 0.25) == ("review", ["low_score"])  # low-scored masks followed frame to frame
    assert track_verdict(2, 2, 0, 0.9) == ("review", ["short"])  # min_frames 3
    assert track_verdict(2, 2, 0, 0.3, TrackRule(min_frames=2, min_mean_score=0.2)) == ("accept", [])
    assert track_verdict(4, 4, 0, 0.9, conflict=True) == ("review", ["class_conflict"])


def test_two_tracks_of_different_classes_on_one_object_keep_the_stronger():
    square = _clip(range(0, 6), {1: (2, 0)})
    triangle = [(f, 2, 3, r) for f, _, _, r in _clip(range(1, 4), {2: (2, 1)})]  # the same object, 3 frames
    apart = [(f, 3, 1, _square(60, 40)) for f in range(0, 6)]  # a circle elsewhere
    t = _masks(square + triangle + apart)
    summary = TrackSummary(TrackRule(prior_frames=0))
    summary.add(t)
    rows = summary.finish_video("v.mp4")
    class_conflicts(rows, t)
    by = {r.track_id: r for r in rows}
    assert by[2].conflict_with == 1 and by[2].verdict_reasons == ["class_conflict"] and by[2].verdict == "review"
    assert by[1].conflict_with is None and by[1].verdict == "accept"
    assert by[3].conflict_with is None  # negative control: no overlap, no conflict


def test_mots_ids_and_names():
    assert mots_multiplier(999) == 1000 and mots_multiplier(1000) == 10000
    assert video_name("dash/day1.mp4") == "dash/day1" and video_name("park") == "park"


def _row(tid: int, mean: float, frames: int = 10) -> TrackRow:
    return TrackRow("v.mp4", tid, 1, "c1", 0, frames - 1, frames=frames, score_sum=mean * frames, accepted=frames)


def test_the_fitted_score_threshold_raises_min_mean_score_and_never_lowers_it():
    """Fitted for precision 0.95 on the gold videos' tracks (right or not): halfway between the lowest score where
    the tracks the rule accepts are right at the target and the next, or the floor when none is dropped. The rule's
    min_mean_score is a floor: tracks under it are not candidates, so a fit on right tracks scoring 0.3 and 0.4
    stays above it. (Prior frames 0: scores are the means.)"""
    rows = [_row(1, 0.9), _row(2, 0.8), _row(3, 0.7), _row(4, 0.6), _row(5, 0.4), _row(6, 0.3)]
    right = {("v.mp4", t): t != 3 for t in range(1, 7)}  # track 3 (0.7) is wrong
    floor = TrackRule(min_mean_score=0.5, prior_frames=0)
    rule, fit = fitted_rule(rows, right, floor, 0.95)
    assert rule.min_mean_score == pytest.approx(0.75) and fit.kept == 2  # with track 3, precision 0.67
    right[("v.mp4", 3)] = True
    rule, fit = fitted_rule(rows, right, floor, 0.95)
    # the floor keeps 0.4 and 0.3 out: halfway between the lowest kept (0.6) and the floor (0.5)
    assert rule.min_mean_score == pytest.approx(0.55) and fit.kept == 4
    rule, fit = fitted_rule(rows, right, replace(floor, min_mean_score=0.0), 0.95)
    assert rule.min_mean_score == pytest.approx(0.15) and fit.kept == 6  # negative control: without it, lower
    right = {("v.mp4", t): False for t in range(1, 7)}
    rule, fit = fitted_rule(rows, right, floor, 0.95)
    assert rule.min_mean_score == float("inf") and fit.threshold is None  # nothing reaches the target: all review


def test_a_tracks_score_counts_prior_frames_at_zero():
    """A short track needs a higher mean to pass: with the defaults (5 prior frames, floor 0.3), 4 frames at 0.6
    score 0.27 (review) and 40 frames at 0.4 score 0.36 (accept). Negative control: with none, both pass on their
    means."""
    short, long = _row(1, 0.6, frames=4), _row(2, 0.4, frames=40)
    for r in (short, long):
        r.rule = TrackRule()
    assert short.score == pytest.approx(2.4 / 9) and short.verdict_reasons == ["low_score"]
    assert long.score == pytest.approx(16 / 45) and long.verdict == "accept"
    for r in (short, long):
        r.rule = TrackRule(prior_frames=0)
    assert short.verdict == long.verdict == "accept"
    assert tracks_table([short, long])["score"].to_pylist() == pytest.approx([0.6, 0.4])
