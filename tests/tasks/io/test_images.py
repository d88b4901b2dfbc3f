import io

import numpy as np
import pytest
from PIL import Image

from segflow.tasks.io.images import ImageLoadError, decode_image


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("RGB", "JPEG"),
        ("1", "PNG"),
    ],
)
def test_every_mode_becomes_rgb_uint8(mode, fmt):
    src = Image.new("RGB", (31, 17), (200, 30, 60))
    im = (
        src.convert(mode)
        if mode != "I;16"
        else Image.fromarray((np.arange(31 * 17).reshape(17, 31) * 100).astype(np.uint16))
    )
    d = decode_image(encode(im, fmt))
    assert d.pixels.shape == (17, 31, 3) and d.pixels.dtype == np.uint8


def test_16_bit_is_rescaled_not_clipped():
    arr = np.linspace(0, 65535, 40 * 10).reshape(10, 40).astype(np.uint16)
    d = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert d.pixels.min() == 0 and d.pixels.max() == 255
    assert len(np.unique(d.pixels[..., 0])) > 100  # a gradient, not white


def test_transparency_composited_over_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    d = decode_image(encode(im, "PNG"))
    assert tuple(d.pixels[0, 0]) == (0, 0, 255)
    assert tuple(d.pixels[3, 3]) == (255, 255, 255)
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((1, 1), 1)
    d = decode_image(encode(p, "PNG", transparency=0))
    assert tuple(d.pixels[1, 1]) == (0, 255, 0) and tuple(d.pixels[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    upright = np.zeros((20, 40, 3), np.uint8)
    upright[:5, :10] = 255  # bright block at the top-left of the upright image
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # pixels stored rotated CCW (40 x 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    d = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=100))
    assert (d.height, d.width) == (20, 40) and d.exif_orientation == 6
    assert d.pixels[:5, :10].mean() > 200 and d.pixels[10:, 20:].mean() < 50


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "zero-byte file"),
        (b"<html><body>not found</body></html>", "not a recognised image format"),
        (None, "truncated or corrupt"),
    ],
)
def test_bad_files_raise_with_reason(data, reason):
    if data is None:
        good = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
        data = good[: len(good) // 2]
    with pytest.raises(ImageLoadError, match=reason):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding():
    big = encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(ImageLoadError, match="decompression bomb refused: 300x300"):
        decode_image(big, max_pixels=10_000)
    assert decode_image(big, max_pixels=90_000).width == 300  # the limit, not the file, decides


def test_multi_frame_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    d = decode_image(buf.getvalue())
    assert d.pixels[0, 0, 0] > 200 and d.pixels[0, 0, 1] < 50


def test_not_an_image_after_ultralytics_patched_pillow():
    import ultralytics  # noqa: F401 - replaces PIL.Image.open on import
    from PIL import Image as PILImage

    import segflow.tasks.stages.yolo  # noqa: F401 - offline ultralytics settings

    assert PILImage.open.__module__.startswith("ultralytics")
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        decode_image(b"<html>404</html>")
