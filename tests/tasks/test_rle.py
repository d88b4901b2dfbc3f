import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segflow.tasks import rle


def random_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        masks[i, y0 : rng.integers(y0 + 1, h), x0 : rng.integers(x0 + 1, w)] = True
        masks[i] ^= rng.random((h, w)) < 0.05  # holes and specks
    return masks


def test_round_trip_area_and_bbox(rng):
    h, w = 37, 53  # non-square, odd sizes
    masks = random_masks(rng, 5, h, w)
    masks[2] = False  # an empty mask too
    counts = rle.encode_nhw(masks)
    assert all(isinstance(c, str) for c in counts)
    decoded = rle.decode_many(counts, h, w)
    np.testing.assert_array_equal(decoded, masks)
    for i, c in enumerate(counts):
        np.testing.assert_array_equal(rle.decode(c, h, w), masks[i])
    np.testing.assert_array_equal(rle.area(counts, h, w), masks.reshape(5, -1).sum(1))
    boxes = rle.bbox_xywh(counts, h, w)
    for m, b in zip(masks, boxes):
        if not m.any():
            np.testing.assert_array_equal(b, [0, 0, 0, 0])
            continue
        ys, xs = np.nonzero(m)
        np.testing.assert_array_equal(b, [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])


def test_nwh_layout_equals_reference_encoder(rng):
    masks = random_masks(rng, 4, 30, 70)
    ours = rle.encode_nwh(np.ascontiguousarray(masks.transpose(0, 2, 1)))
    ref = [
        r["counts"].decode() for r in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    ]
    assert ours == ref


def test_transposed_input_is_not_confused_with_hw(rng):
    masks = random_masks(rng, 1, 20, 40)
    wrong = rle.encode_nwh(masks)  # passing N x H x W where N x W x H is expected
    assert rle.decode(wrong[0], 40, 20).T.tolist() == masks[0].tolist()
    assert rle.decode(rle.encode_nhw(masks)[0], 20, 40).tolist() == masks[0].tolist()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="N x W x H"):
        rle.encode_nwh(np.zeros((3, 3), bool))
    assert rle.encode_nhw(np.zeros((0, 4, 4), bool)) == []
