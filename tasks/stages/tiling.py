"""Sliced inference: a detector or instance labeler run over overlapping windows of large images, merged back.

A model sees an image at its input size (``imgsz`` 640, say): on a 3000-px image every object shrinks about five
times and the small ones vanish. With ``tiles`` set on the stage (:class:`~segflow.tasks.stages.settings.TilesConfig`),
the model runs over windows of ``size`` x ``size`` pixels at native resolution, ``overlap`` of a window shared with its
neighbour, plus -- with ``whole_image`` -- the whole image at the model's input size, for objects larger than a
window. Windows of many images go through the model together, ``batch`` at a time; a window is a view of the
decoded image (no copy), so memory stays at one batch of windows whatever the image's size.

Merging (:func:`merge`), per class: detections sorted by score; each one absorbs the later ones that overlap it
by ``match_threshold`` -- IoU, or intersection over the smaller box (``ios``: a part of an object cut by a window
edge lies inside the whole one). ``greedy`` merging (SAHI's "greedy NMM") unites what it absorbs: the union of
the boxes, the union of the masks, the highest score, so an object cut by a window edge comes back whole;
``nms`` keeps the best and drops the rest. Masks of absorbed parts are pasted into the image frame one object at
a time (memory: one image-sized mask).

Conventions: boxes ``N x 4`` XYXY in pixels; windows ``K x 4`` XYXY ints, exclusive ends; masks COCO RLE
(:mod:`segflow.tasks.rle`) in the frame of the image (or of the window, for a window's own detections).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.record import Detections

__all__ = ["TilePlan", "merge", "plan_tiles", "run_tiled", "segment_in_crops", "window_starts", "windows"]


def window_starts(n: int, tile: int, overlap: float) -> list[int]:
    """Offsets along a side of ``n`` pixels: every ``tile * (1 - overlap)``, the last flush with the end."""
    if n <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, n - tile + 1, stride))
    return starts if starts[-1] == n - tile else [*starts, n - tile]


def windows(height: int, width: int, size: int, overlap: float) -> np.ndarray:
    """The windows covering an image: ``K x 4`` int XYXY (exclusive ends), row by row."""
    ys, xs = window_starts(height, size, overlap), window_starts(width, size, overlap)
    return np.array(
        [[x, y, min(x + size, width), min(y + size, height)] for y in ys for x in xs], dtype=np.int64
    ).reshape(-1, 4)


@dataclass(frozen=True)
class TilePlan:
    """How one stage tiles (resolved from its ``tiles`` setting and its model's input size)."""

    size: int
    overlap: float
    whole_image: bool
    min_side: int  # images whose longer side is at most this are not tiled
    merge: str  # "greedy" | "nms"
    match: str  # "ios" | "iou"
    match_threshold: float

    def tiles(self, height: int, width: int) -> bool:
        return max(height, width) > self.min_side


def plan_tiles(setting: Any, input_size: int) -> TilePlan | None:
    """The :class:`TilePlan` of a stage's ``tiles`` setting (None: no tiling). ``auto``: windows of twice the
    model's input size, for images more than three times as large as it."""
    if setting is None:
        return None
    if setting == "auto":
        return TilePlan(2 * input_size, 0.2, True, 3 * input_size, "greedy", "ios", 0.5)
    min_side = setting.min_side if setting.min_side is not None else int(1.5 * setting.size)
    return TilePlan(
        setting.size,
        setting.overlap,
        setting.whole_image,
        min_side,
        setting.merge,
        setting.match,
        setting.match_threshold,
    )


def run_tiled(
    call: Callable[[list[np.ndarray]], list[Detections]],
    images: Sequence[np.ndarray],
    plan: TilePlan,
    batch: int,
) -> list[Detections]:
    """``call`` (a detector's ``detect`` or an instance labeler's ``label``) over every image's windows, merged.

    Arguments:
      call: images (list of H x W x 3 uint8 RGB) -> one Detections per image, in that image's frame.
      images: the images; those :meth:`TilePlan.tiles` leaves out go to ``call`` whole, as without tiles.
      batch: windows per ``call``.
    Returns one Detections per image in its frame, merged (:func:`merge`); ``meta["tiles"]`` holds the number of
    windows it was cut into.
    """
    parts: list[list[tuple[Detections, np.ndarray | None]]] = [[] for _ in images]
    whole = [i for i, im in enumerate(images) if not plan.tiles(*im.shape[:2]) or plan.whole_image]
    for s in range(0, len(whole), batch):  # whole images (at the model's own input size)
        idx = whole[s : s + batch]
        for i, d in zip(idx, call([images[i] for i in idx]), strict=True):
            parts[i].append((d, None))
    queue: list[tuple[int, np.ndarray]] = []
    counts = [0] * len(images)

    def flush() -> None:
        crops = [images[i][y0:y1, x0:x1] for i, (x0, y0, x1, y1) in queue]
        for (i, win), d in zip(queue, call(crops), strict=True):
            parts[i].append((d, win))
        queue.clear()

    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if not plan.tiles(h, w):
            continue
        for win in windows(h, w, plan.size, plan.overlap):
            queue.append((i, win))
            counts[i] += 1
            if len(queue) >= batch:
                flush()
    if queue:
        flush()
    out = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if counts[i] == 0:
            out.append(parts[i][0][0])
            continue
        merged = merge(_to_frame(parts[i], (h, w)), plan.merge, plan.match, plan.match_threshold)
        out.append(merged.with_fields(meta={**merged.meta, "tiles": counts[i]}))
    return out


def _to_frame(parts: list[tuple[Detections, np.ndarray | None]], size: tuple[int, int]) -> Detections:
    """The detections of an image's windows (and of the whole image) in the image's frame, one table.

    A window's masks stay in the window's frame (``fields["window"]`` says where): :func:`merge` pastes them.
    """
    boxes, cls, scores, counts, wins, fields = [], [], [], [], [], []
    with_masks = any(d.rle_counts is not None for d, _ in parts)
    for d, win in parts:
        if not len(d):
            continue
        off = np.zeros(4, np.float32) if win is None else np.array([win[0], win[1], win[0], win[1]], np.float32)
        boxes.append(d.boxes + off)
        cls.append(d.class_ids)
        scores.append(d.scores)
        if with_masks:
            counts.append(d.rle_counts)
        full = np.array([0, 0, size[1], size[0]], np.int64) if win is None else win
        wins.append(np.repeat(full[None], len(d), 0))
        fields.append({k: v for k, v in d.fields.items() if k not in ("window",)})
    if not boxes:
        return Detections.empty(size, with_masks=with_masks)
    keys = set.intersection(*(set(f) for f in fields)) if fields else set()
    extra = {k: np.concatenate([f[k] for f in fields]) for k in keys}
    return Detections(
        size,
        np.concatenate(boxes),
        np.concatenate(cls),
        np.concatenate(scores),
        np.concatenate(counts) if with_masks else None,
        {**extra, "window": np.concatenate(wins)},
    )


def _overlap(box: np.ndarray, others: np.ndarray, how: str) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = ix * iy
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    denom = np.minimum(a, b) if how == "ios" else a + b - inter
    return inter / np.maximum(denom, 1e-9)


_EDGE = 2.0  # a box this close to a window's inner edge was cut by it
_SAME_OBJECT = 0.7  # IoU at which whole detections of two windows are one object, whatever their classes


def _cut(boxes: np.ndarray, wins: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Whether each box touches an edge of its window that is not an edge of the image (the window cut it)."""
    h, w = size
    x0, y0, x1, y1 = (wins[:, k].astype(np.float64) for k in range(4))
    inner = np.c_[x0 > 0, y0 > 0, x1 < w, y1 < h]
    near = np.c_[
        boxes[:, 0] <= x0 + _EDGE, boxes[:, 1] <= y0 + _EDGE, boxes[:, 2] >= x1 - _EDGE, boxes[:, 3] >= y1 - _EDGE
    ]
    return (inner & near).any(axis=1)


def merge(dets: Detections, how: str = "greedy", match: str = "ios", threshold: float = 0.5) -> Detections:
    """Merge the detections of one image's windows (see the module docstring), per class.

    Candidates are taken in order of trust: detections that lie whole inside a window, then those a window's
    inner edge cut, then those of the whole image (found at a coarse scale), each by score. Each one joins the
    first group whose box it overlaps by ``threshold`` (``match``: ``ios`` or ``iou``) or starts a group. A group
    is the box (and mask) of its best whole member; with none, ``greedy`` unites its parts (box and mask) and
    ``nms`` keeps its best part. A cut part inside an object some window saw whole is dropped whatever its class
    (a fragment is weaker evidence than the whole), and so is a whole detection that another window saw as the
    same object (IoU >= 0.7) under another class with a better score: windows overlap, so every object is seen
    several times, and each sighting is another chance of a wrong class. So a coarse whole-image box never swallows
    the finer ones inside it, and an object cut by every window comes back whole from its parts.

    Arguments:
      dets: boxes XYXY in the image's frame; masks (if any) in the frame of ``fields["window"]`` (``K x 4`` XYXY
        per row; without it, the image's frame: one whole-image pass).
      how: ``greedy`` (unite parts) or ``nms`` (keep the best).
      match: ``ios`` (intersection over the smaller box) or ``iou``.
    Returns the merged detections, masks in the image's frame, ``window`` dropped.
    """
    h, w = dets.image_size
    wins = dets.fields.get("window")
    if wins is None:
        wins = np.repeat(np.array([[0, 0, w, h]], np.int64), len(dets), 0)
    boxes = dets.boxes.astype(np.float64)
    whole_image = (wins[:, 0] == 0) & (wins[:, 1] == 0) & (wins[:, 2] == w) & (wins[:, 3] == h)
    cut = _cut(boxes, wins, (h, w)) & ~whole_image
    tier = np.where(whole_image, 2, np.where(cut, 1, 0))  # 0: whole in a window, 1: cut part, 2: coarse
    grouping = _Grouping(boxes, dets.class_ids, tier, wins, how, match, threshold)
    for i in np.lexsort((-dets.scores, tier)):
        grouping.add(int(i))
    groups, rep = grouping.result()
    first = np.array([g[0] for g in groups], np.int64)
    best = np.array([max(g, key=lambda j: dets.scores[j]) for g in groups], np.int64)
    fields = {k: v[first] for k, v in dets.fields.items() if k != "window"}
    counts = None
    if dets.rle_counts is not None:
        members = [[j for j in g if tier[j] == 1] if how == "greedy" and tier[g[0]] == 1 else g[:1] for g in groups]
        counts = np.array([_union_mask(dets, m, wins, (h, w)) for m in members], dtype=object)
    out_boxes = np.asarray(rep, np.float32).reshape(-1, 4)
    if counts is not None and len(counts):  # a mask's box is its own where it has pixels
        tight = rle.bbox_xywh(list(counts), h, w)
        has = tight[:, 2] > 0
        out_boxes[has] = np.c_[tight[has, :2], tight[has, :2] + tight[has, 2:]]
    return Detections((h, w), out_boxes, dets.class_ids[first], dets.scores[best], counts, fields, dets.meta)


class _Grouping:
    """The groups of :func:`merge`, built candidate by candidate (in order of trust).

    Arguments:
      boxes: N x 4 XYXY in the image's frame; class_ids, tier (0 whole in a window, 1 cut part, 2 coarse): N;
        wins: N x 4 XYXY, each detection's window.
    """

    def __init__(self, boxes, class_ids, tier, wins, how: str, match: str, threshold: float):
        n = len(boxes)
        self.boxes, self.class_ids, self.tier, self.wins = boxes, class_ids, tier, wins
        self.how, self.match, self.threshold = how, match, threshold
        self.groups: list[list[int]] = []
        self.rep = np.zeros((n, 4))  # each group's current box (the first len(groups) rows)
        self.g_cls = np.zeros(n, np.int64)
        self.g_tier = np.zeros(n, np.int64)
        self.g_win = np.zeros((n, 4), np.int64)

    def add(self, i: int) -> None:
        """Candidate ``i`` joins a group, is dropped, or starts a group."""
        if not self._absorbed(i):
            k = len(self.groups)
            self.groups.append([i])
            self.rep[k], self.g_cls[k], self.g_tier[k], self.g_win[k] = (
                self.boxes[i],
                self.class_ids[i],
                self.tier[i],
                self.wins[i],
            )

    def _absorbed(self, i: int) -> bool:
        """Whether candidate ``i`` belongs to a group already (joining it when of its class). Vectorised over the
        groups so far: the merge stays linear in the detections of a region, whatever the image's size."""
        m = len(self.groups)
        if not m:
            return False
        boxes, rep, tier = self.boxes, self.rep, self.tier
        near = _overlap(boxes[i], rep[:m], self.match)
        same = np.flatnonzero((self.g_cls[:m] == self.class_ids[i]) & (near >= self.threshold))
        if len(same):
            g = int(same[0])
            self.groups[g].append(i)
            if self.how == "greedy" and self.g_tier[g] == 1 and tier[i] == 1:  # parts only: their union
                rep[g] = np.r_[np.minimum(rep[g, :2], boxes[i, :2]), np.maximum(rep[g, 2:], boxes[i, 2:])]
            return True
        whole = self.g_tier[:m] == 0
        if tier[i] == 1 and (whole & (near >= self.threshold)).any():
            return True  # a fragment inside an object a window saw whole, whatever its class: dropped
        if tier[i] == 0:
            other_window = (self.g_win[:m] != self.wins[i]).any(axis=1)
            iou = near if self.match == "iou" else _overlap(boxes[i], rep[:m], "iou")
            if (whole & other_window & (iou >= _SAME_OBJECT)).any():
                return True  # the same object, another window's call of another class with a lower score: dropped
        return False

    def result(self) -> tuple[list[list[int]], np.ndarray]:
        """The groups (detection indices, first the one that started it) and their boxes (G x 4 XYXY)."""
        groups, rep = self.groups, self.rep[: len(self.groups)]
        if self.how != "greedy":
            return groups, rep
        # parts that met only through other parts (a large object cut into many): one object
        parts = [k for k in range(len(groups)) if self.g_tier[k] == 1]
        while len(parts) > 1 and self._join_two(parts, groups, rep):
            pass
        alive = [k for k in range(len(groups)) if groups[k]]
        return [groups[k] for k in alive], rep[alive]

    def _join_two(self, parts: list[int], groups: list[list[int]], rep: np.ndarray) -> bool:
        """Join the first two part groups (of one class) that overlap; False when none do."""
        g_cls = self.g_cls
        for a_pos, a in enumerate(parts):
            others = np.array(parts[a_pos + 1 :])
            if not len(others):
                return False
            hit = others[(g_cls[others] == g_cls[a]) & (_overlap(rep[a], rep[others], self.match) >= self.threshold)]
            if len(hit):
                b = int(hit[0])
                groups[a] += groups[b]
                groups[b] = []
                rep[a] = np.r_[np.minimum(rep[a, :2], rep[b, :2]), np.maximum(rep[a, 2:], rep[b, 2:])]
                parts.remove(b)
                return True
        return False


def _union_mask(dets: Detections, group: list[int], wins: np.ndarray, size: tuple[int, int]) -> str:
    """The union of the group's masks, each pasted from its window into the image's frame, as RLE."""
    h, w = size
    if len(group) == 1 and tuple(wins[group[0]]) == (0, 0, w, h):
        return dets.rle_counts[group[0]]
    canvas = np.zeros((h, w), bool)
    for j in group:
        x0, y0, x1, y1 = (int(v) for v in wins[j])
        canvas[y0:y1, x0:x1] |= rle.decode(dets.rle_counts[j], y1 - y0, x1 - x0).astype(bool)
    return rle.encode_nhw(canvas[None])[0]


def segment_in_crops(
    segment: Callable[[list[np.ndarray], list[Detections]], list[Detections]],
    images: Sequence[np.ndarray],
    prompts: Sequence[Detections],
    context: float,
) -> list[Detections]:
    """A box -> mask stage's ``segment`` with every small box segmented in a crop around it, at its own resolution.

    A box whose square window (its longer side x ``1 + 2 context``, moved inside the image:
    :func:`segflow.tasks.stages.sam.zoom_windows_xyxy`) is smaller than the image goes to ``segment`` as that
    crop with the box in the crop's frame; the other boxes go with the whole image. One call of ``segment``
    for all of them (it batches as it does), then each crop's mask is pasted back into the image's frame, one
    image-sized mask at a time. Rows keep their order; a row ``segment`` drops (too small a mask) stays dropped.

    Arguments:
      images: H x W x 3 uint8 RGB.
      prompts: one Detections per image, boxes N x 4 XYXY pixels.
    """
    from segflow.tasks.stages.sam import zoom_windows_xyxy

    sub_images: list[np.ndarray] = []
    sub_prompts: list[Detections] = []
    back: list[tuple[int, np.ndarray | None]] = []  # (image, crop window or None) per request
    for i, (im, p) in enumerate(zip(images, prompts, strict=True)):
        if not len(p):
            continue
        tagged = p.with_fields(_row=np.arange(len(p)))
        wins, zoom = zoom_windows_xyxy(p.boxes, im.shape[:2], context)
        if (~zoom).any():
            sub_images.append(im)
            sub_prompts.append(tagged[~zoom])
            back.append((i, None))
        for r in np.flatnonzero(zoom):
            x0, y0, x1, y1 = (int(v) for v in wins[r])
            one = tagged[np.array([r])]
            shift = np.array([x0, y0, x0, y0], np.float32)
            sub_images.append(im[y0:y1, x0:x1])
            sub_prompts.append(
                Detections((y1 - y0, x1 - x0), one.boxes - shift, one.class_ids, one.scores, None, one.fields)
            )
            back.append((i, wins[r]))
    results = segment(sub_images, sub_prompts) if sub_images else []
    rows: list[list[tuple[int, Detections, np.ndarray | None]]] = [[] for _ in images]
    for (i, win), d in zip(back, results, strict=True):
        for k in range(len(d)):
            rows[i].append((int(d.fields["_row"][k]), d[np.array([k])], win))
    out = []
    for i, (im, p) in enumerate(zip(images, prompts, strict=True)):
        h, w = im.shape[:2]
        got = sorted(rows[i], key=lambda t: t[0])
        if not got:
            out.append(Detections.empty(p.image_size, with_masks=True))
            continue
        counts = []
        for _, d, win in got:
            if win is None:
                counts.append(d.rle_counts[0])
                continue
            x0, y0, x1, y1 = (int(v) for v in win)
            canvas = np.zeros((1, h, w), bool)
            canvas[0, y0:y1, x0:x1] = rle.decode(d.rle_counts[0], y1 - y0, x1 - x0).astype(bool)
            counts.append(rle.encode_nhw(canvas)[0])
        idx = np.array([r for r, _, _ in got])
        keys = set.intersection(*(set(d.fields) for _, d, _ in got)) - {"_row"}
        fields = {k: np.concatenate([d.fields[k] for _, d, _ in got]) for k in keys}
        base = p[idx]
        out.append(
            Detections(
                p.image_size,
                base.boxes,
                base.class_ids,
                base.scores,
                np.array(counts, dtype=object),
                {**base.fields, **fields},
                base.meta,
            )
        )
    return out
