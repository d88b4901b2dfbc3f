"""Train the demo's semantic model: a small U-Net (segmentation-models-pytorch) on the synthetic scenes.

Seeded and CPU-sized: scenes with a long side of 128-192 px and 3-8 shapes are rendered on the fly and
padded to 192 x 192 (padding carries the ignore index); a U-Net on a ResNet-10-T encoder (timm, ~1.6M
parameters, no pretrained weights) learns the 8 labels 0 = void/background and the ontology ids 1-7 with
cross-entropy, thing pixels weighted ``thing_weight`` (their class is in their shape, and they are a small
share of the pixels). The result is a segflow semantic checkpoint (:mod:`segflow.tasks.models.semantic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segflow.demo.synthetic import CATEGORIES, make_scene, scene_size

#: The demo U-Net: smp.Unet keyword arguments.
DEMO_UNET_ARCH = {
    "encoder_name": "tu-resnet10t",
    "encoder_depth": 5,
    "decoder_channels": [96, 64, 32, 16, 8],
    "encoder_weights": None,
}
DEMO_LABELS = ["void"] + [c["name"] for c in CATEGORIES]
SIDE = 192
IGNORE = 255


def scene_batch(rng: np.random.Generator, n: int, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes padded to ``side`` x ``side``: images N x side x side x 3 uint8, labels N x side x side
    (category ids, 255 on the padding)."""
    images = np.zeros((n, side, side, 3), np.uint8)
    labels = np.full((n, side, side), IGNORE, np.uint8)
    for i in range(n):
        w, h = scene_size(rng, (side * 2 // 3, side))
        s = make_scene(rng, w, h, max_objects=8, min_objects=3)
        images[i, :h, :w] = s.pixels
        labels[i, :h, :w] = s.semantic
    return images, labels


def train_unet(
    out_path: str | Path,
    minutes: float = 5.0,
    seed: int = 0,
    batch: int = 8,
    lr: float = 2e-3,
    thing_weight: float = 3.0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train for ``minutes`` of wall time (cosine schedule over the steps the first ones predict) and save the
    checkpoint at ``out_path``. Returns the step count and the last losses."""
    import torch
    import torch.nn.functional as F

    from segflow.tasks.models.semantic import build_smp, save_semantic_checkpoint

    torch.manual_seed(seed)
    rng = np.random.default_rng(10_000 + seed)  # scene seeds >= 10000: the demo's and the tests' seeds stay unseen
    model = build_smp("Unet", DEMO_UNET_ARCH, len(DEMO_LABELS)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # things cover a small share of the pixels and their class is in their shape: their pixels weigh more
    weight = torch.tensor([1.0] + [thing_weight if c["isthing"] else 1.0 for c in CATEGORIES])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    t0, step, losses, total = time.time(), 0, [], None
    while True:
        elapsed = time.time() - t0
        if elapsed >= minutes * 60:
            break
        if step == 20:  # the schedule's length, from the pace of the first steps
            total = max(40, int(step * minutes * 60 / elapsed))
        frac = min(1.0, step / total) if total else 0.0
        for g in opt.param_groups:
            g["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))
        images, labels = scene_batch(rng, batch)
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std
        y = torch.from_numpy(labels).long()
        loss = F.cross_entropy(model(x), y, weight=weight, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if log and step % 50 == 0:
            log(f"unet step {step}: loss {np.mean(losses[-50:]):.3f}")
    save_semantic_checkpoint(model.eval(), "Unet", DEMO_UNET_ARCH, DEMO_LABELS, out_path, tile=SIDE, half=True)
    return {"steps": step, "loss": round(float(np.mean(losses[-50:])), 4)}
