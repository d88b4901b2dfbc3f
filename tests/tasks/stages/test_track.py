"""The `track` stage: masks linked across a clip's frames by a tracker from the `trackers` library."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.settings.track import TrackStage
from segflow.tasks.stages.track import Tracker, _duplicates, object_scores

pytest.importorskip("trackers")


def _frame(boxes: list[tuple[float, float, float, float]], classes: list[int], scores: list[float]) -> Detections:
    return Detections(
        image_size=(120, 200),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        class_ids=np.asarray(classes, np.int64),
        scores=np.asarray(scores, np.float32),
    )


def _clip(frames: int = 16, hidden: range = range(6, 9)) -> list[Detections]:
    """A circle (class 1) moving right 4 px a frame, hidden behind something in ``hidden``; a square (class 2)
    standing still; rows in a different order on odd frames."""
    out = []
    for t in range(frames):
        rows = [((10 + 4 * t, 40, 30 + 4 * t, 60), 1, 0.9)] if t not in hidden else []
        rows.append(((150, 80, 180, 110), 2, 0.8))
        if t % 2:
            rows.reverse()
        out.append(_frame([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
    return out


def _ids(result: list[Detections], cls: int) -> list[int]:
    return [int(d.fields["track_id"][d.class_ids == cls][0]) for d in result if (d.class_ids == cls).any()]


def test_an_object_keeps_its_track_through_an_occlusion():
    stage = TrackStage(kind="track", lost_track_buffer=10)
    clip = _clip()
    result = Tracker(stage).session().track([None] * len(clip), clip)
    circle, square = _ids(result, 1), _ids(result, 2)
    # a track is confirmed on its second frame (the tracker's rule): its first has no id yet
    assert circle[0] == square[0] == -1 and len(circle) == 13  # seen on 13 frames
    assert len(set(circle[1:])) == 1 and len(set(square[1:])) == 1 and circle[1] != square[1] and circle[1] >= 1
    for d, given in zip(result, clip, strict=True):  # the rows stay as the stage gave them
        assert np.array_equal(d.boxes, given.boxes) and np.array_equal(d.class_ids, given.class_ids)


def test_a_track_lost_longer_than_its_buffer_comes_back_as_a_new_one():
    """Negative control: with no frames of grace, the circle after the occlusion is another track."""
    stage = TrackStage(kind="track", lost_track_buffer=0)
    clip = _clip()
    circle = _ids(Tracker(stage).session().track([None] * len(clip), clip), 1)
    before, after = circle[1:6], circle[7:]  # each track's first frame has no id yet
    assert len(set(before)) == len(set(after)) == 1 and before[0] != after[0] and circle[6] == -1


def test_per_class_each_class_has_its_own_tracks_and_each_session_its_own_state():
    """``classes: per_class``: a square at the circle's place in the next frame does not continue the circle's
    track; a second session (another clip) starts again from id 1 and is not disturbed by the first."""
    circle, square = (10, 10, 40, 40), (11, 10, 41, 40)
    frames = [_frame([circle], [1], [0.9]), _frame([circle, square], [1, 2], [0.9, 0.9])]
    frames += [_frame([square], [2], [0.9]), _frame([square], [2], [0.9])]
    tracker = Tracker(TrackStage(kind="track", lost_track_buffer=0, classes="per_class"))
    one, two = tracker.session(), tracker.session()
    a = [d.fields["track_id"].tolist() for d in one.track([None] * 4, frames)]
    assert a == [[-1], [1, -1], [2], [2]]  # the square never continues the circle's track
    b = two.track([None] * 2, frames[:2])
    assert [d.fields["track_id"].tolist() for d in b] == [[-1], [1, -1]]  # a new clip numbers from 1 again


def test_a_mask_too_unsure_to_start_a_track_has_none():
    stage = TrackStage(kind="track", track_activation_threshold=0.5, high_conf_det_threshold=0.6)
    frames = [_frame([(10, 10, 40, 40), (100, 10, 130, 40)], [1, 1], [0.9, 0.2]) for _ in range(3)]
    ids = [d.fields["track_id"].tolist() for d in Tracker(stage).session().track([None] * 3, frames)]
    assert ids == [[-1, -1], [1, -1], [1, -1]]


def test_vote_tracks_an_object_through_class_flicker_and_tracks_one_of_its_duplicates():
    """``classes: vote`` (the default): a circle the detector calls a square on some frames, and on one frame both
    (a duplicate, box IoU >= duplicate_iou), is one track; only the better-scored duplicate is tracked. Negative
    control: per class, the same frames make two tracks."""
    frames = []
    for t in range(8):
        box = (10 + 3 * t, 40, 40 + 3 * t, 70)
        if t == 4:
            frames.append(_frame([box, box], [1, 2], [0.5, 0.8]))
        else:
            frames.append(_frame([box], [2 if t in (3, 5) else 1], [0.9]))
    voted = [
        d.fields["track_id"].tolist() for d in Tracker(TrackStage(kind="track")).session().track([None] * 8, frames)
    ]
    assert voted == [[-1], [1], [1], [1], [-1, 1], [1], [1], [1]]
    split = Tracker(TrackStage(kind="track", classes="per_class")).session().track([None] * 8, frames)
    ids = {int(i) for d in split for i in d.fields["track_id"] if i >= 0}
    assert len(ids) >= 2


def test_two_boxes_of_one_mask_are_duplicates_and_two_masks_are_not():
    """Duplicates are judged on masks when the rows have them: a loose box and a tight one around one mask are one
    object (only the better-scored is tracked); two masks side by side in one box are two."""
    m = np.zeros((120, 200), bool)
    m[40:70, 10:40] = True
    other = np.zeros_like(m)
    other[40:70, 41:70] = True
    one = rle.encode_nhw(np.stack([m, m]))
    dets = _frame([(10, 40, 40, 70), (0, 20, 60, 100)], [1, 2], [0.6, 0.9]).with_masks(one)
    assert _duplicates(dets, 0.7).tolist() == [1, 1]  # row 0 duplicates row 1 (box IoU 0.375: boxes would keep both)
    two = _frame([(10, 40, 70, 70), (10, 40, 70, 70)], [1, 2], [0.6, 0.9]).with_masks(
        rle.encode_nhw(np.stack([m, other]))
    )
    assert _duplicates(two, 0.7).tolist() == [0, 1]  # same box, different masks: both kept
    assert _duplicates(_frame([(10, 40, 70, 70), (10, 40, 70, 70)], [1, 2], [0.6, 0.9]), 0.7).tolist() == [1, 1]


def test_an_object_the_detector_splits_between_classes_starts_a_track_on_its_summed_score():
    """The detector calls one object a square at 0.35 and a triangle at 0.3 in every frame: neither alone reaches
    the activation threshold 0.5, the object (0.65) does, and is tracked. Negative controls: per class no track
    starts, nor does an object whose guesses sum below the threshold."""
    box = (10, 40, 40, 70)
    frames = [_frame([box, box], [2, 3], [0.35, 0.3]) for _ in range(4)]
    stage = {"kind": "track", "track_activation_threshold": 0.5, "high_conf_det_threshold": 0.6}
    voted = [d.fields["track_id"].tolist() for d in Tracker(TrackStage(**stage)).session().track([None] * 4, frames)]
    assert voted[1:] == [[1, -1]] * 3
    split = Tracker(TrackStage(**stage, classes="per_class")).session().track([None] * 4, frames)
    assert all((d.fields["track_id"] < 0).all() for d in split)
    weak = [_frame([box, box], [2, 3], [0.25, 0.2]) for _ in range(4)]
    assert all((d.fields["track_id"] < 0).all() for d in Tracker(TrackStage(**stage)).session().track([None] * 4, weak))


def test_object_scores_sum_an_objects_guesses_up_to_one():
    owner = np.array([1, 1, 2, 1, 4])  # rows 0 and 3 duplicate row 1; rows 2 and 4 are alone
    out = object_scores(np.array([0.3, 0.4, 0.2, 0.5, 0.6]), owner)
    assert out.tolist() == pytest.approx([0.3, 1.0, 0.2, 0.5, 0.6])
    assert object_scores(np.array([0.3, 0.4]), np.array([1, 1])).tolist() == pytest.approx([0.3, 0.7])
