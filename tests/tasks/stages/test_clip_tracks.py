"""A clip's tracks once labelled (segflow.tasks.stages.clip_tracks): first frames filled in, classes voted."""

from __future__ import annotations

import pyarrow as pa
import pytest

from segflow.tasks.stages.clip_tracks import fill_track_starts, vote_track_classes
from tests.support.track_rows import masks, square

NAMES = {1: "circle", 2: "square", 3: "triangle"}


def test_a_tracks_first_frames_get_its_id_when_the_mask_continues_it():
    rows = [
        (0, None, 1, square(10, 10)),  # the track's unconfirmed first frames
        (1, None, 1, square(12, 10)),
        (2, 7, 1, square(14, 10)),
        (3, 7, 1, square(16, 10)),
        (1, None, 2, square(13, 11)),  # another class at the same place: not the track's
        (1, None, 1, square(50, 40)),  # the same class elsewhere: not the track's
    ]
    out = fill_track_starts(masks(rows))["track_id"].to_pylist()
    assert out == [7, 7, 7, 7, None, None]
    # negative control: a mask that does not overlap enough stays without a track
    far = [(0, None, 1, square(30, 30)), (1, 7, 1, square(10, 10))]
    assert fill_track_starts(masks(far))["track_id"].to_pylist() == [None, 7]


def test_fill_track_starts_across_classes_when_asked():
    """``same_class=False`` (a clip tracked across classes): the first frame's mask of another class continues the
    track; a mask elsewhere still does not."""
    rows = [(0, None, 2, square(10, 10)), (0, None, 1, square(50, 40)), (1, 7, 1, square(12, 10))]
    assert fill_track_starts(masks(rows), same_class=False)["track_id"].to_pylist() == [7, None, 7]
    assert fill_track_starts(masks(rows))["track_id"].to_pylist() == [None, None, 7]


def test_a_tracks_masks_take_the_class_its_frames_vote_for():
    """Track 1 is a square in two frames and a triangle in one: all three become squares, their scores times the
    squares' share of the votes; track 2 (all circles) keeps its class and scores; untracked rows are unchanged."""
    rows = [
        (0, 1, 2, square(10, 10), 0.9),
        (1, 1, 3, square(12, 10), 0.6),
        (2, 1, 2, square(14, 10), 0.8),
        (0, 2, 1, square(50, 40), 0.7),
        (1, 2, 1, square(50, 40), 0.7),
        (1, None, 3, square(30, 40), 0.4),  # elsewhere: no vote
    ]
    out = vote_track_classes(masks(rows), NAMES)
    assert out["category_id"].to_pylist() == [2, 2, 2, 1, 1, 3]
    assert out["category_name"].to_pylist() == ["square"] * 3 + ["circle"] * 2 + ["c3"]
    share = 1.7 / 2.3
    assert out["score"].to_pylist() == pytest.approx([0.9 * share, 0.6 * share, 0.8 * share, 0.7, 0.7, 0.4], rel=1e-5)
    assert out["track_id"].to_pylist() == [1, 1, 1, 2, 2, None]


def test_an_untracked_duplicate_of_a_tracks_mask_votes_with_it():
    """The detector's second guess on the same object (untracked, mask IoU >= 0.5) votes: two squares at 0.7 outvote
    two triangles at 0.5. Negative control: the same masks elsewhere do not vote, and the track stays a triangle."""
    track = [(f, 4, 3, square(10 + 2 * f, 10), 0.5) for f in range(2)]
    same = [(f, None, 2, square(10 + 2 * f, 11), 0.7) for f in range(2)]
    away = [(f, None, 2, square(40, 40), 0.7) for f in range(2)]
    voted = vote_track_classes(masks(track + same), NAMES)
    assert voted["category_id"].to_pylist() == [2, 2, 2, 2]
    # each tracked mask: the object's belief in its frame (0.5 + 0.7, at most 1) times the squares' share
    assert voted["score"].to_pylist()[:2] == pytest.approx([1.0 * 1.4 / 2.4] * 2, rel=1e-5)
    control = vote_track_classes(masks(track + away), NAMES)
    assert control["category_id"].to_pylist() == [3, 3, 2, 2]
    assert control["score"].to_pylist() == pytest.approx([0.5, 0.5, 0.7, 0.7], rel=1e-5)


def test_a_clip_without_tracks_is_left_as_it_is():
    table = masks([(0, None, 1, square(10, 10))])
    assert vote_track_classes(table, NAMES).equals(table)
    assert isinstance(table, pa.Table)


def test_a_class_missing_from_the_names_keeps_the_name_its_rows_have():
    rows = [(0, 1, 2, square(10, 10), 0.9), (1, 1, 3, square(12, 10), 0.5), (2, 1, 2, square(14, 10), 0.8)]
    table = masks(rows)
    table = table.set_column(
        table.schema.get_field_index("category_name"), "category_name", pa.array(["sq", "tri", "sq"])
    )
    assert vote_track_classes(table, {})["category_name"].to_pylist() == ["sq", "sq", "sq"]
