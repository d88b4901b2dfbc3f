"""Synthetic scenes with exact ground truth, deterministic for a seed.

A scene is a "stuff" layout -- a sky band above a wavy horizon, the ground
split into grass, water and road regions, each with its own texture -- with
"thing" shapes on top: circles, squares and triangles of random colour and
texture (flat, stripes, gradient, noise, checker), rotated, touching and
occluding each other, some cut by the image border.

Ground truth is exact (rendered from the same masks) and always in the
upright orientation, also for JPEGs written with pixels stored rotated and an
EXIF orientation tag:

* ``ground_truth/instances.json`` -- COCO instances (things), compressed RLE;
* ``ground_truth/panoptic.json`` + ``ground_truth/panoptic/<stem>.png`` -- COCO
  panoptic (segment id = R + 256 G + 256^2 B, 0 = void);
* ``ground_truth/semantic/<stem>.png`` -- one byte per pixel holding the
  category id (0 = void), palette PNG (colours from :data:`CATEGORIES`).

Category ids: things 1-3 (circle, square, triangle), stuff 4-7 (sky, grass,
water, road).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segflow.tasks import rle

__all__ = [
    "THING_CLASSES",
    "STUFF_CLASSES",
    "SHAPE_CLASSES",
    "UNKNOWN_SHAPES",
    "add_unknown_shapes",
    "CATEGORIES",
    "Scene",
    "make_scene",
    "scene_size",
    "write_scene_set",
    "write_large_scene_set",
    "rotate_for_exif",
]

THING_CLASSES = ["circle", "square", "triangle"]
STUFF_CLASSES = ["sky", "grass", "water", "road"]
SHAPE_CLASSES = THING_CLASSES
CATEGORIES = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "square", "isthing": 1, "color": [255, 165, 0]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [148, 0, 211]},
    {"id": 4, "name": "sky", "isthing": 0, "color": [135, 206, 235]},
    {"id": 5, "name": "grass", "isthing": 0, "color": [34, 139, 34]},
    {"id": 6, "name": "water", "isthing": 0, "color": [0, 0, 205]},
    {"id": 7, "name": "road", "isthing": 0, "color": [105, 105, 105]},
]
_ID = {c["name"]: c["id"] for c in CATEGORIES}


@dataclass
class Scene:
    """One image and its ground truth, upright.

    Attributes:
      pixels: H x W x 3 uint8 RGB.
      class_names: one per thing instance.
      boxes: XYXY pixels, tight around each visible mask.
      masks: H x W bool per thing instance (visible part only).
      semantic: H x W uint8 category ids (0 = void).
      unknown: H x W bool per object of a shape outside the ontology (:func:`add_unknown_shapes`); not in
        the ground truth's instances (void in its semantic and panoptic maps).
    """

    pixels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    semantic: np.ndarray | None = None
    unknown: list[np.ndarray] = field(default_factory=list)


# -- textures ----------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth-ish noise in [-1, 1]: coarse random grid upsampled bilinearly."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    fine = rng.normal(0, 1, (h, w)).astype(np.float32)
    if name == "sky":
        top, bottom = (
            np.array([70, 130, 210]) + rng.integers(-20, 20, 3),
            np.array([200, 225, 245]) + rng.integers(-15, 10, 3),
        )
        img = top[None, None] * (1 - yy[..., None]) + bottom[None, None] * yy[..., None]
        img = img + 18 * _noise(rng, h, w, 60)[..., None] * np.array([1, 1, 1])
    elif name == "grass":
        base = np.array([60, 140, 50]) + rng.integers(-20, 20, 3)
        img = base[None, None] + 14 * _noise(rng, h, w, 12)[..., None] + 6 * fine[..., None] * np.array([0.6, 1.0, 0.4])
    elif name == "water":
        base = np.array([30, 80, 160]) + rng.integers(-20, 20, 3)
        waves = np.sin(yy * rng.uniform(40, 90) + 3 * np.sin(xx * rng.uniform(5, 15)))
        img = base[None, None] + 10 * waves[..., None] * np.array([0.4, 0.7, 1.0]) + 4 * fine[..., None]
    else:  # road
        g = rng.integers(70, 110)
        img = np.full((h, w, 3), g, np.float32) + 5 * fine[..., None] + 6 * _noise(rng, h, w, 30)[..., None]
        stripe = (np.abs(xx - rng.uniform(0.3, 0.7)) < 0.01) & ((yy * 20 % 1) < 0.5)
        img = np.where(stripe[..., None], np.array([230, 230, 210], np.float32), img)
    return np.clip(img, 0, 255).astype(np.uint8)


def _thing_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    hue = rng.uniform(0, 1)
    c1 = np.array(_hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)), np.float32)
    c2 = np.array(_hsv((hue + rng.uniform(0.05, 0.2)) % 1, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)), np.float32)
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # flat
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes
        a = rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) / rng.uniform(3, 9)) > 0).astype(np.float32)
    elif kind == 2:  # gradient
        t = (xx / max(w - 1, 1) + yy / max(h - 1, 1)) / 2
    elif kind == 3:  # noise
        t = (_noise(rng, h, w, 6) + 1) / 2
    else:  # checker
        s = rng.uniform(4, 12)
        t = ((np.floor(xx / s) + np.floor(yy / s)) % 2).astype(np.float32)
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    return np.clip(img + rng.normal(0, 4, (h, w, 1)), 0, 255).astype(np.uint8)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


# -- layout ------------------------------------------------------------------------------------


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """H x W category ids of the stuff regions."""
    sem = np.zeros((h, w), np.uint8)
    xs = np.arange(w, dtype=np.float32)
    horizon = h * rng.uniform(0.2, 0.55) + h * 0.04 * np.sin(xs / w * rng.uniform(2, 8) + rng.uniform(0, 6))
    yy = np.arange(h, dtype=np.float32)[:, None]
    sky = yy < horizon[None, :]
    ground = ["grass", "water", "road"]
    rng.shuffle(ground)
    parts = ground[: int(rng.integers(1, 4))]
    # split the ground with slanted boundaries
    cuts = np.sort(rng.uniform(0.25, 0.75, len(parts) - 1)) * w
    slope = rng.uniform(-0.4, 0.4)
    xx = np.arange(w, dtype=np.float32)[None, :] + slope * (yy - h)
    region = np.zeros((h, w), np.int64)
    for c in cuts:
        region += xx > c
    for i, name in enumerate(parts):
        sem[(region == i) & ~sky] = _ID[name]
    sem[sky] = _ID["sky"]
    return sem


#: Area of each shape, as a fraction of size^2, when fully inside the image.
_FULL_AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 3 * math.sqrt(3) / 4 * 1.15**2 / 4}


def _shape_layer(cls: str, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    """An H x W bool mask of one shape: a class of the ontology or one of :data:`UNKNOWN_SHAPES`."""
    layer = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(layer)
    r = size / 2
    if cls in ("circle", "ring"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if cls == "ring":
            d.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
        return np.asarray(layer) > 0
    if cls == "star":  # 5 points, inner radius 0.45
        radii, n = [r if k % 2 == 0 else 0.45 * r for k in range(10)], 10
    else:
        n = {"square": 4, "triangle": 3, "pentagon": 5}[cls]
        radii = [r * {4: math.sqrt(2), 3: 1.15, 5: 1.0}[n]] * n
    pts = [
        (cx + radii[k] * math.cos(angle + 2 * math.pi * k / n), cy + radii[k] * math.sin(angle + 2 * math.pi * k / n))
        for k in range(n)
    ]
    d.polygon(pts, fill=255)
    return np.asarray(layer) > 0


#: shapes no class of the demo's ontology names, drawn by :func:`add_unknown_shapes`
UNKNOWN_SHAPES = ("star", "pentagon", "ring")


def add_unknown_shapes(scene: Scene, rng: np.random.Generator, count: int) -> int:
    """Draw up to ``count`` objects of :data:`UNKNOWN_SHAPES` into free space of ``scene`` (no overlap with its
    things), textured as things are. They are not instances of the ground truth (the ontology does not name
    them) and are void in its semantic map. Returns how many were drawn."""
    h, w = scene.pixels.shape[:2]
    taken = np.zeros((h, w), bool)
    for m in scene.masks:
        taken |= m
    drawn = 0
    for _ in range(count * 20):
        if drawn == count:
            break
        kind = UNKNOWN_SHAPES[int(rng.integers(len(UNKNOWN_SHAPES)))]
        size = min(h, w) * rng.uniform(0.15, 0.32)
        cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        m = _shape_layer(kind, cx, cy, size, rng.uniform(0, 2 * math.pi), h, w)
        if m.sum() < 150:
            continue
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        # a gap around it: the 9 x 9 max filter's reach (4 px) around the shape's box is all it can change
        wy0, wy1, wx0, wx1 = max(y0 - 4, 0), min(y1 + 4, h), max(x0 - 4, 0), min(x1 + 4, w)
        grown = np.asarray(Image.fromarray(m[wy0:wy1, wx0:wx1]).filter(ImageFilter.MaxFilter(9))) > 0
        if (grown & taken[wy0:wy1, wx0:wx1]).any():
            continue
        tex = _thing_texture(rng, int(y1 - y0), int(x1 - x0))
        sub = m[y0:y1, x0:x1]
        scene.pixels[y0:y1, x0:x1][sub] = tex[sub]
        scene.semantic[m] = 0
        scene.unknown.append(m)
        taken[wy0:wy1, wx0:wx1] |= grown
        drawn += 1
    return drawn


def make_scene(
    rng: np.random.Generator, width: int, height: int, max_objects: int = 6, min_objects: int = 2, flat: bool = False
) -> Scene:
    """Render one scene of ``width`` x ``height`` with exact ground truth (``flat``: things in one flat colour each,
    no texture, for a training curriculum)."""
    h, w = int(height), int(width)
    semantic = _stuff_layout(rng, h, w)
    pixels = np.zeros((h, w, 3), np.uint8)
    for name in STUFF_CLASSES:
        sel = semantic == _ID[name]
        if sel.any():
            pixels[sel] = _stuff_texture(rng, name, h, w)[sel]

    masks: list[np.ndarray] = []
    names: list[str] = []
    full_areas: list[int] = []
    short = min(h, w)
    target = int(rng.integers(min_objects, max_objects + 1))
    tries = 0
    while len(masks) < target and tries < target * 12:
        tries += 1
        cls = THING_CLASSES[int(rng.integers(len(THING_CLASSES)))]
        size = short * rng.uniform(0.15, 0.38)
        if masks and rng.random() < 0.35:  # touch or overlap an earlier object
            ys, xs = np.nonzero(masks[int(rng.integers(len(masks)))])
            k = int(rng.integers(len(xs)))
            ang = rng.uniform(0, 2 * math.pi)
            cx, cy = xs[k] + math.cos(ang) * size * 0.55, ys[k] + math.sin(ang) * size * 0.55
        elif rng.random() < 0.2:  # cut by the border
            side = int(rng.integers(4))
            cx = [0, w, rng.uniform(0, w), rng.uniform(0, w)][side] + rng.uniform(-0.15, 0.15) * size
            cy = [rng.uniform(0, h), rng.uniform(0, h), 0, h][side] + rng.uniform(-0.15, 0.15) * size
        else:
            cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        m = _shape_layer(cls, cx, cy, size, rng.uniform(0, 2 * math.pi), h, w)
        area = int(m.sum())
        if area < max(150, 0.55 * _FULL_AREA[cls] * size * size):  # mostly outside the image
            continue
        # occlusion limit: never hide more than 30% of an earlier object
        if any((prev & m).sum() > 0.3 * prev.sum() for prev in masks):
            continue
        masks = [prev & ~m for prev in masks]
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        if flat:
            colour = np.array(_hsv(rng.uniform(0, 1), rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)), np.uint8)
            tex = np.broadcast_to(colour, (int(y1 - y0), int(x1 - x0), 3))
        else:
            tex = _thing_texture(rng, int(y1 - y0), int(x1 - x0))  # textures only as large as the object
        sub = m[y0:y1, x0:x1]
        pixels[y0:y1, x0:x1][sub] = tex[sub]
        masks.append(m)
        names.append(cls)
        full_areas.append(area)
    keep = [i for i, m in enumerate(masks) if m.sum() >= 100]
    scene = Scene(pixels=pixels, semantic=semantic)
    for i in keep:
        m = masks[i]
        ys, xs = np.nonzero(m)
        scene.masks.append(m)
        scene.class_names.append(names[i])
        scene.boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
        semantic[m] = _ID[names[i]]
    return scene


# -- EXIF ----------------------------------------------------------------------------------------

_STORE_FOR_ORIENTATION = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def rotate_for_exif(upright: Image.Image, orientation: int) -> tuple[Image.Image, bytes]:
    """Pixels as a camera stores them for ``orientation`` (3, 6 or 8), and the EXIF block saying so."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return upright.transpose(_STORE_FOR_ORIENTATION[orientation]), exif.tobytes()


def scene_size(rng: np.random.Generator, size_range: tuple[int, int], landscape: bool | None = None) -> tuple[int, int]:
    """``(width, height)``: long side in ``size_range``, aspect ratio between 1 and 2."""
    lo, hi = size_range
    long = int(rng.integers(lo, hi + 1))
    short = int(rng.integers(max(lo, long // 2), long + 1))
    if landscape is None:
        landscape = bool(rng.random() < 0.5)
    return (long, short) if landscape else (short, long)


# -- writing a set with ground truth ---------------------------------------------------------------


def _bbox_xywh(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _palette() -> list[int]:
    pal = [0, 0, 0] * 256
    for c in CATEGORIES:
        pal[c["id"] * 3 : c["id"] * 3 + 3] = c["color"]
    return pal


#: how a camera, a site or a codec can change the images (``segflow demo --shift``), ground truth unchanged
SHIFTS = {
    "dark": lambda im: Image.fromarray((np.asarray(im, np.float32) * 0.55).round().astype(np.uint8)),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "jpeg": lambda im: im,  # saved as JPEG quality 25
}


def write_scene_set(
    folder: str | Path,
    num_images: int,
    seed: int = 0,
    corrupt: bool = False,
    gt_dir: str | Path | None = None,
    size_range: tuple[int, int] = (200, 1000),
    exif_fraction: float = 0.25,
    max_objects: int = 6,
    shift: str | None = None,
    unknown: int = 0,
) -> list[tuple[str, Scene]]:
    """Write ``num_images`` scenes into ``folder`` (JPEG and PNG; some JPEGs EXIF-rotated).

    ``shift`` renders the same scenes as another camera would (:data:`SHIFTS`; the ground truth is unchanged):
    ``dark`` (brightness x 0.55), ``blur`` (Gaussian, radius 2), ``jpeg`` (every image a JPEG of quality 25).
    ``unknown``: that many objects of shapes outside the ontology per image (:func:`add_unknown_shapes`, drawn
    from a generator of their own: the known scene is the same as without them).

    With ``gt_dir`` the ground truth is written there (instances, panoptic,
    semantic; see the module docstring). With ``corrupt=True`` a truncated JPEG
    and a zero-byte file are added, as a real bucket would have them.
    Returns ``(file name, scene)`` of the good images.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Scene]] = []
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, got {shift!r}")
    for i in range(num_images):
        w, h = scene_size(rng, size_range, landscape=(i % 2 == 0))
        scene = make_scene(rng, w, h, max_objects=max_objects)
        if unknown:
            add_unknown_shapes(scene, np.random.default_rng([seed, i, 0x0BAD]), unknown)
        upright = SHIFTS[shift](Image.fromarray(scene.pixels)) if shift else Image.fromarray(scene.pixels)
        quality = 25 if shift == "jpeg" else 92  # the same draws of rng whatever the shift: the same scenes
        if i % 3 == 2 and shift != "jpeg":
            name = f"scene_{seed}_{i:04d}.png"
            upright.save(folder / name)
        elif i % 3 == 2:
            name = f"scene_{seed}_{i:04d}.jpg"
            upright.save(folder / name, quality=quality)
        else:
            name = f"scene_{seed}_{i:04d}.jpg"
            if rng.random() < exif_fraction:
                stored, exif = rotate_for_exif(upright, int(rng.choice([3, 6, 8])))
                stored.save(folder / name, quality=quality, exif=exif)
            else:
                upright.save(folder / name, quality=quality)
        out.append((name, scene))
    if corrupt:
        buf = io.BytesIO()
        Image.fromarray(make_scene(rng, 200, 150).pixels).save(buf, format="JPEG")
        (folder / "broken_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (folder / "broken_empty.jpg").write_bytes(b"")
    if gt_dir is not None:
        write_ground_truth(gt_dir, out)
    return out


def write_ground_truth(gt_dir: str | Path, scenes: list[tuple[str, Scene]]) -> None:
    gt = Path(gt_dir)
    (gt / "panoptic").mkdir(parents=True, exist_ok=True)
    (gt / "semantic").mkdir(parents=True, exist_ok=True)
    things = [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in CATEGORIES if c["isthing"]]
    images, anns, pan_anns = [], [], []
    for image_id, (name, s) in enumerate(scenes, 1):
        h, w = s.pixels.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns += _instances(image_id, s.masks, [_ID[c] for c in s.class_names], h, w, first_id=len(anns) + 1)
        pan_anns.append(_write_panoptic_and_semantic(gt, image_id, name, s))
    (gt / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": things}))
    if any(s.unknown for _, s in scenes):  # where the shapes outside the ontology are: to count what became of them
        unknown: list[dict] = []
        for image_id, (_, s) in enumerate(scenes, 1):
            h, w = s.pixels.shape[:2]
            unknown += _instances(image_id, s.unknown, [99] * len(s.unknown), h, w, first_id=len(unknown) + 1)
        cats = [{"id": 99, "name": "unknown", "supercategory": "shape"}]
        (gt / "unknown.json").write_text(json.dumps({"images": images, "annotations": unknown, "categories": cats}))
    pan_cats = [
        {
            "id": c["id"],
            "name": c["name"],
            "isthing": c["isthing"],
            "color": c["color"],
            "supercategory": "shape" if c["isthing"] else "stuff",
        }
        for c in CATEGORIES
    ]
    (gt / "panoptic.json").write_text(json.dumps({"images": images, "annotations": pan_anns, "categories": pan_cats}))


def _instances(image_id: int, masks: list, category_ids: list[int], h: int, w: int, first_id: int) -> list[dict]:
    """COCO instance annotations of one image's masks (H x W bools), ids from ``first_id``."""
    counts = rle.encode_nhw(np.stack(masks)) if masks else []
    return [
        {
            "id": first_id + k,
            "image_id": image_id,
            "category_id": cid,
            "iscrowd": 0,
            "segmentation": {"size": [h, w], "counts": c},
            "area": int(m.sum()),
            "bbox": _bbox_xywh(m),
        }
        for k, (cid, m, c) in enumerate(zip(category_ids, masks, counts))
    ]


def _write_panoptic_and_semantic(gt: Path, image_id: int, name: str, s: Scene) -> dict:
    """One scene's panoptic PNG (stuff segments first, ids 1.., then things) and semantic PNG; its panoptic
    annotation."""
    h, w = s.pixels.shape[:2]
    seg_map = np.zeros((h, w), np.int64)
    infos = []
    regions = [(_ID[stuff], s.semantic == _ID[stuff]) for stuff in STUFF_CLASSES]
    regions = [(cid, sel) for cid, sel in regions if sel.any()]
    regions += [(_ID[cls], m) for cls, m in zip(s.class_names, s.masks)]
    for sid, (cid, sel) in enumerate(regions, 1):
        seg_map[sel] = sid
        infos.append({"id": sid, "category_id": cid, "iscrowd": 0, "area": int(sel.sum()), "bbox": _bbox_xywh(sel)})
    stem = Path(name).stem
    rgb = np.stack([seg_map % 256, seg_map // 256 % 256, seg_map // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(gt / "panoptic" / f"{stem}.png")
    sem = Image.fromarray(s.semantic.astype(np.uint8))  # "L": the bytes are category ids
    sem.putpalette(_palette())  # becomes "P" with the same indices
    sem.save(gt / "semantic" / f"{stem}.png")
    return {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos}


def write_large_scene_set(
    folder: str | Path,
    num_images: int,
    seed: int = 0,
    gt_dir: str | Path | None = None,
    grid: int = 3,
    size_range: tuple[int, int] = (850, 1000),
) -> list[str]:
    """Write ``num_images`` large scenes (``segflow demo --large``): each a ``grid`` x ``grid`` mosaic of the demo's
    scenes at their usual pixel sizes (about 2,700-3,000 px a side, a few dozen objects), saved as JPEG.

    With ``gt_dir``, ``instances.json`` (COCO, things only: every object, its mask in the mosaic's frame).
    Memory: one mosaic and one mosaic-sized mask at a time. Returns the file names.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns, names = [], [], []
    for i in range(num_images):
        sizes = [[scene_size(rng, size_range, landscape=None) for _ in range(grid)] for _ in range(grid)]
        col_w = [max(sizes[r][c][0] for r in range(grid)) for c in range(grid)]
        row_h = [max(sizes[r][c][1] for c in range(grid)) for r in range(grid)]
        h, w = sum(row_h), sum(col_w)
        canvas = np.zeros((h, w, 3), np.uint8)
        y = 0
        placed: list[tuple[int, int, Scene]] = []
        for r in range(grid):
            x = 0
            for c in range(grid):
                scene = make_scene(rng, col_w[c], row_h[r])  # a scene fills its cell: no gaps between cells
                canvas[y : y + row_h[r], x : x + col_w[c]] = scene.pixels
                placed.append((x, y, scene))
                x += col_w[c]
            y += row_h[r]
        name = f"large_{seed}_{i:04d}.jpg"
        Image.fromarray(canvas).save(folder / name, quality=92)
        names.append(name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        full = np.zeros((1, h, w), bool)
        for x, y, scene in placed:
            sh, sw = scene.pixels.shape[:2]
            for cls, m in zip(scene.class_names, scene.masks):
                full[:] = False
                full[0, y : y + sh, x : x + sw] = m
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": _ID[cls],
                        "iscrowd": 0,
                        "segmentation": {"size": [h, w], "counts": rle.encode_nhw(full)[0]},
                        "area": int(m.sum()),
                        "bbox": [float(v) for v in np.r_[_bbox_xywh(m)[:2] + np.array([x, y]), _bbox_xywh(m)[2:]]],
                    }
                )
    if gt_dir is not None:
        gt = Path(gt_dir)
        gt.mkdir(parents=True, exist_ok=True)
        things = [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in CATEGORIES if c["isthing"]]
        (gt / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": things}))
    return names
