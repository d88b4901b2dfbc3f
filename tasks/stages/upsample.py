"""Mask logits upsampled as matrices, and the box windows a mask is computed in.

The SAM family's post-processing takes low-resolution logits ``L`` (``l x l``)
to the original frame with bilinear interpolation (``align_corners=False``).
Bilinear interpolation is separable, so it is two matrices::

    full = Ry @ L @ Rx.T          Ry: H x l, Rx: W x l

Two frames, as the models' own post-processing has them:

* ``stretch`` (SAM 2.x, EdgeTAM, the SAM 3 tracker): ``l -> H`` in one step;
* ``pad`` (SAM 1, SAM-HQ): ``l -> pad`` (the encoder's square input), its first
  ``valid`` pixels kept (the resized image, before padding), then ``-> H``.

Each output pixel reads a contiguous run of low-res pixels (``first`` to
``last``, both non-decreasing along the axis), so a window of output pixels
``[r0, r1)`` is determined completely by low-res pixels
``first[r0] .. last[r1 - 1]``: logits inside a window equal the whole-frame
ones up to float rounding. A mask computed only in a window (its box grown by
a margin) costs the window, not the frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bilinear_matrix", "grown_windows", "window_logits"]


def bilinear_matrix(
    low: int, out_len: int, pad: int | None = None, valid: int | None = None
) -> tuple[Any, np.ndarray, np.ndarray]:
    """One axis of the upsampling as a matrix.

    Arguments:
      low: low-res side ``l``.
      out_len: output side (``H`` or ``W`` of the original image).
      pad, valid: for the ``pad`` frame, the encoder's input side and the resized image's side in it
        (both None for the ``stretch`` frame).

    Returns:
      ``R`` (``out_len x low`` float32 tensor), and for each output pixel the first and last low-res
      pixel of non-zero weight (int arrays of ``out_len``).
    """
    import torch
    import torch.nn.functional as F

    r = torch.eye(low, dtype=torch.float64)[:, None, :]  # row k: the unit signal at low-res pixel k
    if pad is not None:
        r = F.interpolate(r, pad, mode="linear", align_corners=False)[..., :valid]
    r = F.interpolate(r, out_len, mode="linear", align_corners=False)[:, 0, :].T.contiguous()
    nz = (r != 0).numpy()
    first, last = nz.argmax(1), low - 1 - nz[:, ::-1].argmax(1)
    return r.float(), first, last


def grown_windows(boxes_xyxy: np.ndarray, size_hw: tuple[int, int], margin: float) -> np.ndarray:
    """Boxes grown by ``margin`` x their longer side on every side, clipped to the frame.

    Arguments:
      boxes_xyxy: N x 4, XYXY, pixels.
      size_hw: (H, W) of the frame.

    Returns:
      N x 4 int, XYXY pixels, exclusive ends, each at least one pixel wide and high.
    """
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    h, w = size_hw
    grow = margin * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])[:, None]
    lo = np.clip(np.floor(b[:, :2] - grow), 0, [[w - 1, h - 1]])
    hi = np.clip(np.ceil(b[:, 2:] + grow), lo + 1, [[w, h]])
    return np.concatenate([lo, hi], 1).astype(np.int64)


def window_logits(
    low_res: Any, rows: tuple[Any, np.ndarray, np.ndarray], cols: tuple[Any, np.ndarray, np.ndarray], window: np.ndarray
) -> Any:
    """Logits of one mask inside ``window``, as the whole-frame upsampling gives them there.

    Arguments:
      low_res: ``l x l`` float32 tensor (rows y, columns x).
      rows, cols: :func:`bilinear_matrix` of the y and the x axis.
      window: 4 int, XYXY output pixels, exclusive ends.

    Returns:
      ``(y1 - y0) x (x1 - x0)`` float32 tensor.
    """
    x0, y0, x1, y1 = (int(v) for v in window)
    (ry, fy, ly), (rx, fx, lx) = rows, cols
    a, b = int(fy[y0]), int(ly[y1 - 1]) + 1  # the low-res rows these output rows read
    c, d = int(fx[x0]), int(lx[x1 - 1]) + 1
    return ry[y0:y1, a:b] @ low_res[a:b, c:d] @ rx[x0:x1, c:d].T
