"""What an image looks like, in a few numbers: the image side of the drift check (:mod:`segflow.tasks.evaluate.drift`).

Computed by the shard's read threads right after decoding (so the models never wait for them) and kept in the
images manifest (``brightness``, ``contrast``, ``sharpness``, ``jpeg_quality``):

=============  ==============================================================================================
brightness     mean luma (Rec. 601) of the upright RGB image, 0..1
contrast       standard deviation of luma, 0..1
sharpness      log10 of the variance of the 4-neighbour Laplacian of luma (0..255 scale), on the image scaled
               to a long side of at most 1024 px (so the figure does not depend on resolution above that)
jpeg_quality   the JPEG quality the file was saved at, estimated from its luminance quantisation table against
               libjpeg's standard one (1..100; None for other formats)
=============  ==============================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageStats", "image_stats", "jpeg_quality"]

#: libjpeg's standard luminance quantisation table (Annex K), in any order: only its sum is used
_STD_LUMA_SUM = sum(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56]
    + [14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92]
    + [49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
)
_MAX_SIDE = 1024


@dataclass(frozen=True)
class ImageStats:
    brightness: float
    contrast: float
    sharpness: float
    jpeg_quality: float | None


def jpeg_quality(quantization: dict | None) -> float | None:
    """The quality (1..100) a JPEG was saved at, from PIL's ``Image.quantization`` (None when unknown).

    libjpeg scales its standard table by ``s = 5000 / q`` (q < 50) or ``200 - 2 q`` (q >= 50) percent; the
    ratio of table sums recovers ``s``, and so ``q``, for files written by libjpeg and most encoders.
    """
    if not quantization or 0 not in quantization or len(quantization[0]) != 64:
        return None
    s = 100.0 * float(sum(quantization[0])) / _STD_LUMA_SUM
    q = (200.0 - s) / 2.0 if s <= 100 else 5000.0 / s
    return float(min(100.0, max(1.0, round(q))))


def image_stats(pixels: np.ndarray, quality: float | None = None) -> ImageStats:
    """The numbers of the module docstring for one image.

    Arguments:
      pixels: H x W x 3 uint8 RGB, upright.
      quality: the file's :func:`jpeg_quality` (None when it is not a JPEG).
    """
    h, w = pixels.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / _MAX_SIDE)))
    rgb = pixels[::step, ::step].astype(np.float32)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        lap = 4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
        sharp = float(np.log10(float(lap.var()) + 1e-3))
    else:
        sharp = 0.0
    return ImageStats(float(luma.mean() / 255.0), float(luma.std() / 255.0), sharp, quality)
