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


def _runs_reference(counts: str, limit: int):
    """pycocotools' rleFrString, one character at a time (the decoder rle_runs replaced), None when malformed."""
    runs, total, p = [], 0, 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts) or not 0 <= ord(counts[p]) - 48 < 64 or k >= 13:
                return None
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more, p, k = bool(c & 0x20), p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        x += runs[-2] if len(runs) > 2 else 0
        total += x
        if x < 0 or total > limit:
            return None
        runs.append(x)
    return runs


def _mask_runs(m):
    """Run lengths of a mask in COCO's order (column-major, zeros first), from the pixels."""
    flat = m.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))  # where each run ends
    return np.diff(edges, prepend=0).tolist()


def test_rle_runs_are_the_masks_runs_and_match_the_reference_on_damaged_strings(rng):
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        m = rng.random((h, w)) < rng.random()
        counts = rle.encode_nhw(m[None])[0]
        runs = rle.rle_runs(counts, h * w)
        assert runs == _runs_reference(counts, h * w) and sum(runs) == h * w
        assert [r for r in runs if r] == [r for r in _mask_runs(m) if r]
        assert rle.rle_runs(counts, h * w - 1) is None  # more pixels than the limit
    # damaged strings: the numpy decoder refuses exactly what the reference refuses, and agrees where it reads
    alphabet = [chr(48 + i) for i in range(64)] + ["/", "~", "\u00e9"]
    masks = [rle.encode_nhw((rng.random((30, 30)) < 0.5)[None])[0] for _ in range(30)]
    cases = ["", "0", "`", "o", "P", "1" * 13, "h" * 12 + "1", "h" * 13 + "1", "h" * 14 + "1", "nnnnnnnnnnnn7"]
    for counts in masks:
        for _ in range(20):
            s = list(counts)
            for _ in range(int(rng.integers(1, 4))):
                s[int(rng.integers(len(s)))] = alphabet[int(rng.integers(len(alphabet)))]
            cases.append("".join(s))
        cases += [counts[:-1], counts + "0", counts[: len(counts) // 2]]
    refused = 0
    for counts in cases:
        want = _runs_reference(counts, 900)
        assert rle.rle_runs(counts, 900) == want, counts
        refused += want is None
    assert 0 < refused < len(cases)  # both kinds were tried
