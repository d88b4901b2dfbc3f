"""tasks/stages/upsample.py: the matrices equal torch's bilinear interpolation in both frames, and a window's
logits equal the whole frame's there."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segflow.tasks.stages.upsample import bilinear_matrix, grown_windows, window_logits

LOW, H, W = 16, 45, 70


@pytest.fixture()
def low():
    return torch.randn(LOW, LOW, generator=torch.Generator().manual_seed(0))


def test_stretch_frame_equals_interpolate(low):
    ry, rx = bilinear_matrix(LOW, H)[0], bilinear_matrix(LOW, W)[0]
    full = F.interpolate(low[None, None], (H, W), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(ry @ low @ rx.T, full, atol=1e-5, rtol=0)
    # negative control: the axes swapped do not match
    assert not torch.allclose(bilinear_matrix(LOW, W)[0][:H] @ low @ bilinear_matrix(LOW, H)[0].T, full[:, :H])


def test_pad_frame_equals_interpolate_crop_interpolate(low):
    pad, valid_h, valid_w = 64, 40, 64  # a wide image resized into a padded square
    up = F.interpolate(low[None, None], (pad, pad), mode="bilinear", align_corners=False)[..., :valid_h, :valid_w]
    full = F.interpolate(up, (H, W), mode="bilinear", align_corners=False)[0, 0]
    ry, rx = bilinear_matrix(LOW, H, pad, valid_h)[0], bilinear_matrix(LOW, W, pad, valid_w)[0]
    torch.testing.assert_close(ry @ low @ rx.T, full, atol=1e-5, rtol=0)


def test_a_window_equals_the_whole_frame_there(low):
    rows, cols = bilinear_matrix(LOW, H), bilinear_matrix(LOW, W)
    full = rows[0] @ low @ cols[0].T
    for win in grown_windows(np.array([[10, 5, 30, 20], [0, 0, 3, 3], [60, 30, 70, 45]], np.float32), (H, W), 0.25):
        x0, y0, x1, y1 = win
        torch.testing.assert_close(window_logits(low, rows, cols, win), full[y0:y1, x0:x1], atol=1e-5, rtol=0)


def test_grown_windows_clip_to_the_frame():
    got = grown_windows(np.array([[10, 10, 20, 30], [-5, -5, 200, 200]], np.float32), (H, W), 0.5)
    assert got.tolist() == [[0, 0, 30, 40], [0, 0, W, H]]  # grown by 0.5 x 20 = 10 px each side, then clipped
