"""Train the demo's semantic model: a small U-Net (segmentation-models-pytorch) on the synthetic scenes.

Seeded and CPU-sized: a U-Net on a ResNet-10-T encoder (timm, no pretrained weights) learns the 8 labels
0 = void/background and the ontology ids 1-7 with cross-entropy on ``CROP`` x ``CROP`` crops. The crops come from
a rolling pool of scenes rendered at the demo's sizes (long side 200-600 px, 4-10 shapes) and scaled to a long
side of ``SIDE`` as the stage's ``max_side`` scales them at inference; most crops are centred on a shape, and
padding carries the ignore index.

A curriculum: for the first ``flat_share`` of the budget the shapes are drawn in flat colours, then with the
demo's textures. Trained on textured shapes from the start, the U-Net separates things from stuff within a few
hundred steps but tells circle, square and triangle apart no better than chance for as long as a CPU budget lasts
(the textures' own edges and corners drown the outline); with flat shapes first it learns the outlines, and
keeps them when the textures come. The log reports the share of thing pixels classed right on the training
batches. The result is a segflow semantic checkpoint (:mod:`segflow.tasks.stages.semantic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segflow.demo.synthetic import CATEGORIES, make_scene, scene_size

#: The demo U-Net: smp.Unet keyword arguments.
DEMO_UNET_ARCH = {
    "encoder_name": "tu-resnet10t",
    "encoder_depth": 5,
    "decoder_channels": [96, 64, 32, 16, 8],
    "encoder_weights": None,
}
DEMO_LABELS = ["void"] + [c["name"] for c in CATEGORIES]
SIDE = 128  # scenes' long side in training = the stage's max_side in configs/demo-semantic.yaml
CROP = 64
IGNORE = 255


class ScenePool:
    """A rolling pool of rendered scenes: ``fresh`` new ones replace the oldest at each :meth:`crops` call."""

    def __init__(self, rng: np.random.Generator, size: int = 240, fresh: int = 2, flat: bool = False):
        self.rng, self.fresh, self.flat = rng, fresh, flat
        self.scenes = [self._render() for _ in range(size)]

    def _render(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """A scene at the demo's sizes, scaled to a long side of ``SIDE`` as the stage's ``max_side`` does."""
        w, h = scene_size(self.rng, (200, 600))
        s = make_scene(self.rng, w, h, max_objects=10, min_objects=4, flat=self.flat)
        k = SIDE / max(w, h)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        pixels = np.asarray(Image.fromarray(s.pixels).resize(size, Image.BILINEAR))
        semantic = np.asarray(Image.fromarray(s.semantic).resize(size, Image.NEAREST))
        centres = [np.array(np.nonzero(m)).mean(1) * k for m in s.masks if m.any()]
        return pixels, semantic, centres

    def crops(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` crops: images N x CROP x CROP x 3 uint8, labels N x CROP x CROP (255 outside the scene)."""
        rng = self.rng
        self.scenes = self.scenes[self.fresh :] + [self._render() for _ in range(self.fresh)]
        images = np.zeros((n, CROP, CROP, 3), np.uint8)
        labels = np.full((n, CROP, CROP), IGNORE, np.uint8)
        for i in range(n):
            pixels, semantic, centres = self.scenes[int(rng.integers(len(self.scenes)))]
            h, w = semantic.shape
            if centres and rng.random() < 0.8:  # centred on a shape, give or take
                cy, cx = centres[int(rng.integers(len(centres)))] + rng.uniform(-CROP / 8, CROP / 8, 2)
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            y0 = int(np.clip(cy - CROP / 2, 0, max(0, h - CROP)))
            x0 = int(np.clip(cx - CROP / 2, 0, max(0, w - CROP)))
            px, lb = pixels[y0 : y0 + CROP, x0 : x0 + CROP], semantic[y0 : y0 + CROP, x0 : x0 + CROP]
            images[i, : px.shape[0], : px.shape[1]] = px
            labels[i, : lb.shape[0], : lb.shape[1]] = lb
        return images, labels


def train_unet(
    out_path: str | Path,
    minutes: float = 5.0,
    seed: int = 0,
    batch: int = 24,
    lr: float = 2e-3,
    flat_share: float = 0.3,
    decay_share: float = 0.25,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train for ``minutes`` of wall time and save the checkpoint at ``out_path``: flat shapes for ``flat_share`` of
    the time, then textured; AdamW at ``lr``, cosine-decayed over the last ``decay_share`` of the time. Returns the
    step count, the last loss and the last share of thing pixels classed right."""
    import torch
    import torch.nn.functional as F

    from segflow.tasks.stages.semantic import build_smp, save_semantic_checkpoint

    torch.manual_seed(seed)
    rng = np.random.default_rng(10_000 + seed)  # scene seeds >= 10000: the demo's and the tests' seeds stay unseen
    model = build_smp("Unet", DEMO_UNET_ARCH, len(DEMO_LABELS)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    thing_ids = torch.tensor([c["id"] for c in CATEGORIES if c["isthing"]])
    size = int(np.clip(minutes * 8, 8, 240))  # scenes in the pool: a short smoke run renders few
    pool = ScenePool(rng, size, flat=True)
    t0, step, losses, thing_acc = time.time(), 0, [], []
    while True:
        elapsed = time.time() - t0
        if elapsed >= minutes * 60:
            break
        if pool.flat and elapsed >= flat_share * minutes * 60:
            pool = ScenePool(rng, size, flat=False)
            if log:
                log(f"unet step {step}: textured shapes from here")
        frac = max(0.0, (elapsed / (minutes * 60) - 1 + decay_share) / decay_share)  # 0 until the decay starts
        for g in opt.param_groups:
            g["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))
        images, labels = pool.crops(batch)
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std
        y = torch.from_numpy(labels).long()
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        things = torch.isin(y, thing_ids)
        thing_acc.append(float((logits.argmax(1)[things] == y[things]).float().mean()) if things.any() else 1.0)
        step += 1
        if log and step % 50 == 0:
            log(
                f"unet step {step} ({time.time() - t0:.0f}s): loss {np.mean(losses[-50:]):.3f}, "
                f"thing pixels classed right {np.mean(thing_acc[-50:]):.3f}"
            )
    save_semantic_checkpoint(model.eval(), "Unet", DEMO_UNET_ARCH, DEMO_LABELS, out_path, tile=SIDE, half=True)
    return {
        "steps": step,
        "loss": round(float(np.mean(losses[-50:])), 4),
        "thing_accuracy": round(float(np.mean(thing_acc[-50:])), 4),
    }
