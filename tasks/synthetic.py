"""Synthetic scenes with exact ground truth: shapes of known classes on plain backgrounds.

Deterministic for a given seed. Used by the offline demo, the tests and the
benchmarks, so nothing needs downloading.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CLASSES", "Scene", "make_scene", "write_scene_set"]

SHAPE_CLASSES = ["square", "circle", "triangle"]


@dataclass
class Scene:
    """One image and its objects. Masks are H x W bool, boxes XYXY pixels, upright frame."""

    pixels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)


def make_scene(rng: np.random.Generator, width: int, height: int, max_objects: int = 4) -> Scene:
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    im = Image.new("RGB", (width, height), bg)
    scene = Scene(pixels=np.zeros(0))
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        s = int(rng.integers(max(8, min(width, height) // 8), max(9, min(width, height) // 3)))
        x0, y0 = int(rng.integers(0, width - s)), int(rng.integers(0, height - s))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        layer = Image.new("L", (width, height), 0)
        d = ImageDraw.Draw(layer)
        if cls == "square":
            d.rectangle([x0, y0, x0 + s - 1, y0 + s - 1], fill=255)
        elif cls == "circle":
            d.ellipse([x0, y0, x0 + s - 1, y0 + s - 1], fill=255)
        else:
            d.polygon([(x0 + s / 2, y0), (x0, y0 + s - 1), (x0 + s - 1, y0 + s - 1)], fill=255)
        mask = np.asarray(layer) > 0
        im.paste(colour, mask=layer)
        # occlusion: earlier masks lose the pixels this object covers
        scene.masks = [m & ~mask for m in scene.masks]
        scene.masks.append(mask)
        scene.class_names.append(cls)
    keep = [i for i, m in enumerate(scene.masks) if m.any()]
    scene.masks = [scene.masks[i] for i in keep]
    scene.class_names = [scene.class_names[i] for i in keep]
    for m in scene.masks:
        ys, xs = np.nonzero(m)
        scene.boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    scene.pixels = np.asarray(im)
    return scene


def write_scene_set(folder: str | Path, num_images: int, seed: int = 0, corrupt: bool = False) -> list[tuple[str, Scene]]:
    """Write ``num_images`` scenes (JPEG and PNG, portrait and landscape) into ``folder``.

    With ``corrupt=True`` one truncated JPEG and one zero-byte file are added, as
    a real bucket would have them. Returns ``(file name, scene)`` of the good images.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_images):
        w, h = (int(rng.integers(160, 400)), int(rng.integers(120, 300)))
        if i % 3 == 1:
            w, h = h, w
        scene = make_scene(rng, w, h)
        name = f"img_{i:04d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(scene.pixels).save(folder / name, quality=95)
        out.append((name, scene))
    if corrupt:
        buf = io.BytesIO()
        Image.fromarray(make_scene(rng, 200, 150).pixels).save(buf, format="JPEG")
        (folder / "broken_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (folder / "broken_empty.jpg").write_bytes(b"")
    return out
