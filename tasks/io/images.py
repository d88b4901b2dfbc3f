"""Decoding source images into what every model sees: upright RGB uint8, H x W x 3.

* EXIF orientation is applied first (``ImageOps.exif_transpose``), so labels are
  in the upright frame a viewer shows; ``width``/``height`` are the upright size.
* Modes are normalised: ``L``/``CMYK``/``YCbCr`` convert to RGB; 16- and 32-bit
  greyscale (``I;16``, ``I``, ``F``) are rescaled to 8 bit by their min..max
  range (a plain convert would clip to white); anything with alpha (``RGBA``,
  ``LA``, ``P`` with transparency) is composited over white.
* Multi-frame files (GIF, TIFF) use frame 0.
* Decompression bombs are refused before pixels are decoded: the header size is
  checked against ``max_pixels``.

Failures raise :class:`ImageLoadError` with a short reason that the shard
records in the images table; the run goes on with the other images.
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segflow.tasks.io.image_stats import ImageStats, jpeg_quality

__all__ = ["ImageLoadError", "DecodedImage", "decode_image", "DEFAULT_MAX_PIXELS"]

DEFAULT_MAX_PIXELS = 178_956_970  # 2x Pillow's warning threshold, Pillow's own hard limit

#: Decoders tried on source bytes. An explicit list keeps the attack surface small and
#: stops openers registered by other libraries (ultralytics' lazy HEIF opener, say) from
#: turning "not an image" into an import error.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO", "PPM", "TGA", "JPEG2000", "ICO")


def _pil_open():
    """``PIL.Image.open`` as Pillow ships it.

    Importing ultralytics replaces ``Image.open`` process-wide with a wrapper that, on
    an unidentified file, tries to install and register a HEIF plugin. Source
    files here are untrusted and runs are offline: use the original.
    """
    op = Image.open
    module = sys.modules.get(getattr(op, "__module__", "") or "")
    if module is not None and module.__name__.startswith("ultralytics"):
        op = getattr(module, "_image_open", op)
    return op


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


class ImageLoadError(Exception):
    """An image that cannot be used; ``str(err)`` is the reason recorded in the manifest."""


@dataclass(frozen=True)
class DecodedImage:
    """Pixels of one image, upright.

    Attributes:
      pixels: H x W x 3, uint8, RGB.
      exif_orientation: the EXIF orientation tag that was applied (1 = none).
      jpeg_quality: the quality a JPEG file was saved at (:func:`segflow.tasks.io.image_stats.jpeg_quality`),
        None for other formats.
      stats: brightness, contrast, sharpness (:mod:`segflow.tasks.io.image_stats`), when computed.
    """

    pixels: np.ndarray
    exif_orientation: int
    jpeg_quality: float | None = None
    stats: ImageStats | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (
            np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)
        )
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("LA", "La", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode encoded image bytes to upright RGB uint8.

    Raises:
      ImageLoadError: empty file, unknown format, truncated data, too many pixels.
    """
    if len(data) == 0:
        raise ImageLoadError("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = _pil_open()(io.BytesIO(data), formats=_formats())
        except Image.DecompressionBombError as e:
            raise ImageLoadError(f"decompression bomb refused: {e}") from None
        except UnidentifiedImageError:
            raise ImageLoadError("not a recognised image format") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is a per-image error
            raise ImageLoadError(f"cannot open image: {type(e).__name__}: {e}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise ImageLoadError(
                f"decompression bomb refused: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}"
            )
        if w == 0 or h == 0:
            raise ImageLoadError(f"image has no pixels ({w}x{h})")
        try:
            im.seek(0)
            im.load()
            quality = jpeg_quality(getattr(im, "quantization", None)) if im.format == "JPEG" else None
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            pixels = np.asarray(rgb, dtype=np.uint8)
        except OSError as e:
            raise ImageLoadError(f"truncated or corrupt image data: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise ImageLoadError(f"cannot decode image: {type(e).__name__}: {e}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageLoadError(f"unexpected decoded shape {pixels.shape}")
    return DecodedImage(pixels=np.ascontiguousarray(pixels), exif_orientation=orientation, jpeg_quality=quality)
