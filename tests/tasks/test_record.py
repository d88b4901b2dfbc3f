import numpy as np
import pytest

from segflow.tasks import rle
from segflow.tasks.record import Detections


def make(n=4, h=20, w=30):
    boxes = np.array([[i, i, i + 5, i + 6] for i in range(n)], np.float32)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        masks[i, i : i + 6, i : i + 5] = True
    d = Detections((h, w), boxes, np.arange(n) + 1, np.linspace(0.1, 0.9, n))
    return d.with_masks(rle.encode_nhw(masks), predicted_iou=np.linspace(0.5, 0.8, n)), masks


def test_vectorised_filter_keeps_rows_aligned():
    d, masks = make()
    keep = d.scores > 0.4
    f = d[keep]
    assert len(f) == int(keep.sum()) == 2
    np.testing.assert_array_equal(f.class_ids, d.class_ids[keep])
    np.testing.assert_array_equal(f.fields["predicted_iou"], d.fields["predicted_iou"][keep])
    np.testing.assert_array_equal(rle.decode_many(list(f.rle_counts), 20, 30), masks[keep])
    np.testing.assert_array_equal(f.mask_areas(), masks[keep].reshape(2, -1).sum(1))


def test_validators_state_expected_and_actual_shapes():
    with pytest.raises(ValueError, match=r"boxes: expected shape \(N x 4\), got \(3, 5\)"):
        Detections((10, 10), np.zeros((3, 5)), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"class_ids: expected shape \(2\), got \(3,\)"):
        Detections((10, 10), np.zeros((2, 4)), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"fields\['predicted_iou'\]: expected 2 rows"):
        Detections((10, 10), np.zeros((2, 4)), np.zeros(2), np.zeros(2), fields={"predicted_iou": np.zeros(5)})
    d, _ = make()
    with pytest.raises(ValueError, match="boolean index must have shape"):
        d[np.array([True, False])]


def test_geometry_needs_masks():
    d = Detections.empty((5, 5))
    assert len(d) == 0 and not d.has_masks
    with pytest.raises(ValueError, match="no masks yet"):
        d.mask_areas()
