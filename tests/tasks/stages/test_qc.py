"""Every QC rule has a case that trips it and one that passes it."""

import numpy as np

from segflow.config import QcStage
from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.qc import QcChecker, check_masks, count_outliers

H, W = 100, 120


def record(masks, boxes=None, scores=None, piou=None, stab=None):
    n = len(masks)
    if boxes is None:
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 1, 1])
    d = Detections(
        (H, W),
        np.asarray(boxes, np.float32),
        np.ones(n),
        np.asarray(scores if scores is not None else np.linspace(0.9, 0.5, n)),
    )
    return d.with_masks(
        rle.encode_nhw(np.stack(masks)),
        predicted_iou=np.asarray(piou if piou is not None else [0.95] * n, np.float32),
        stability_score=np.asarray(stab if stab is not None else [0.98] * n, np.float32),
    )


def square(x, y, s):
    m = np.zeros((H, W), bool)
    m[y : y + s, x : x + s] = True
    return m


def verdicts(rec, **cfg):
    v, r = check_masks(rec, QcStage(kind="qc", **cfg))
    return list(v), [x.split(",") if x else [] for x in r]


def test_predicted_iou_and_stability():
    rec = record(
        [square(5, 5, 20), square(50, 50, 20), square(80, 10, 15)], piou=[0.5, 0.95, 0.95], stab=[0.99, 0.99, 0.6]
    )
    v, r = verdicts(rec)
    assert v == ["reject", "pass", "reject"] and r == [["predicted_iou"], [], ["stability"]]


def test_area_rules():
    big = np.ones((H, W), bool)
    big[:3] = False
    v, r = verdicts(record([square(5, 5, 3), square(40, 40, 20), big]))
    assert v == ["reject", "pass", "flag"] and r[0] == ["min_area"] and r[2] == ["max_area"]
    v, _ = verdicts(record([square(40, 40, 20)]), min_area={"min_px": 0, "min_frac": 0.05})
    assert v == ["reject"]  # 400 px < 5% of 12000 px


def test_mask_box_iou():
    m = square(10, 10, 20)
    rec = record([m, m], boxes=[[10, 10, 30, 30], [60, 60, 90, 90]])  # second mask far from its prompt box
    v, r = verdicts(rec, duplicate={"action": "off"})
    assert v == ["pass", "reject"] and r[1] == ["mask_box_iou"]


def test_components():
    blobs = np.zeros((H, W), bool)
    for k in range(5):
        blobs[10 + 15 * k : 14 + 15 * k, 10:14] = True
    v, r = verdicts(record([blobs, square(60, 20, 20)]), mask_box_iou={"min": 0.0, "action": "off"})
    assert v == ["flag", "pass"] and r[0] == ["components"]


def test_duplicates_keep_the_higher_score():
    a = square(10, 10, 30)
    rec = record([a, a.copy(), square(60, 60, 20)], scores=[0.6, 0.9, 0.8])
    v, r = verdicts(rec)
    assert v == ["reject", "pass", "pass"] and r[0] == ["duplicate"]


def test_class_conflict_is_flagged_not_rejected():
    a = square(10, 10, 30)
    rec = record([a, a.copy()], scores=[0.6, 0.9])
    rec = type(rec)(
        rec.image_size, rec.boxes, [1, 2], rec.scores, rec.rle_counts, rec.fields
    )  # same object, two classes
    v, r = verdicts(rec)
    assert v == ["flag", "pass"] and r[0] == ["class_conflict"]


def test_strongest_action_wins_and_rules_can_be_off():
    rec = record([square(5, 5, 3)], piou=[0.1])
    v, r = verdicts(rec, min_area={"min_px": 25, "action": "flag"})
    assert v == ["reject"] and sorted(r[0]) == ["min_area", "predicted_iou"]
    v, r = verdicts(rec, predicted_iou={"min": 0.88, "action": "off"}, min_area={"action": "off"})
    assert v == ["pass"] and r == [[]]


def test_image_rules():
    out = QcChecker(QcStage(kind="qc")).check(
        [np.zeros((H, W, 3), np.uint8)] * 2, [Detections.empty((H, W), with_masks=True), record([square(5, 5, 20)])]
    )
    assert out[0].meta["qc_image_flags"] == ["no_labels"] and out[1].meta["qc_image_flags"] == []
    assert list(count_outliers([2, 3, 2, 2, 3, 40], mads=5, minimum=10)) == [False] * 5 + [True]
    assert not count_outliers([2, 3, 2, 2, 3, 9], mads=5, minimum=10).any()  # below the minimum
    assert not count_outliers([20, 21, 19, 22], mads=5, minimum=10).any()


def test_panoptic_agreement():
    """A SAM thing that the panoptic model sees as the same class in the same place passes; one it
    does not see there (or sees as another class) is flagged. Without panoptic segments the rule is silent."""
    things = record([square(10, 10, 30), square(60, 50, 30), square(70, 5, 20)])
    things = type(things)(things.image_size, things.boxes, [1, 1, 2], things.scores, things.rle_counts, things.fields)
    segs = [square(12, 12, 28), square(0, 80, 20), square(70, 5, 20)]  # same place; elsewhere; same place, other class
    panoptic = Detections(
        (H, W),
        [[12, 12, 40, 40], [0, 80, 20, 100], [70, 5, 90, 25]],
        [1, 1, 3],
        [0.9, 0.9, 0.9],
        rle_counts=rle.encode_nhw(np.stack(segs)),
        fields={"isthing": np.ones(3, bool)},
    )
    v, r = check_masks(things, QcStage(kind="qc"), panoptic)
    assert list(v) == ["pass", "flag", "flag"] and [x.split(",") if x else [] for x in r] == [
        [],
        ["panoptic_agreement"],
        ["panoptic_agreement"],
    ]
    v, _ = check_masks(things, QcStage(kind="qc", panoptic_agreement={"min": 0.5, "action": "reject"}), panoptic)
    assert list(v) == ["pass", "reject", "reject"]
    assert list(check_masks(things, QcStage(kind="qc"))[0]) == ["pass"] * 3
    out = QcChecker(QcStage(kind="qc")).check([np.zeros((H, W, 3), np.uint8)], [things], [panoptic])
    assert list(out[0].fields["qc_verdict"]) == ["pass", "flag", "flag"]
