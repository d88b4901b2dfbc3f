"""Small SAM 2 and SAM 3 models that really localise, for the ``sam2`` and ``sam3`` placement tests.

Both train from scratch on CPU in minutes, on the scenes of :mod:`tests.support.localizers`
(red shapes on a grey noisy background, non-square images), with targets in the models'
own input frames (the processors' resize), never from the adapters' conversions:

* SAM 2 (box -> mask): the box of a red shape is the prompt, its mask the target. The placement
  test gives it scenes with two shapes: a model that ignored the box would segment both, so each
  box getting its own object shows the box is read where it is.
* SAM 3 (text -> instances): one shape, found from the text prompt ``target``; a quarter of the
  scenes have none (the presence head learns "absent"). One object per image, so DETR's
  Hungarian matching is the lowest-cost query.

Two settings a fresh random transformers model gets wrong and a released checkpoint has right:
SAM 2's prompt encoder and image positional encodings are separate random buffers in a freshly
built ``Sam2Model`` (one shared matrix in the released weights): they are tied here, or box
corners and image positions would be encoded by unrelated frequencies that training cannot
align. SAM 2's ``dynamic_multimask_via_stability`` (eval mode swaps an unstable single mask
for the best of the three multimask outputs) is switched off, as only the single output is trained.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tests.support.localizers import TARGET, TargetScene, _cosine, _optimise, _processed_box, target_scene

__all__ = ["scene_with_objects", "train_sam2_box_localizer", "train_sam3_localizer"]


def scene_with_objects(rng: np.random.Generator, n: int, size_range: tuple[int, int] = (96, 192)) -> list[TargetScene]:
    """One image with ``n`` red shapes that do not touch (4-px gaps); one TargetScene per shape, pixels shared."""
    while True:
        first = target_scene(rng, size_range)
        h, w = first.mask.shape
        pixels, masks, taken = first.pixels.copy(), [], np.zeros((h, w), bool)
        bg = np.median(first.pixels[~first.mask], axis=0)
        pixels[first.mask] = (bg + rng.normal(0, 14, (int(first.mask.sum()), 3))).clip(0, 255)  # start empty
        short = min(h, w)
        yy, xx = np.mgrid[:h, :w]
        for _ in range(60):
            if len(masks) == n:
                break
            oh, ow = (rng.uniform(0.2, 0.4, 2) * short).astype(int).clip(6)
            y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
            if taken[max(0, y0 - 4) : y0 + oh + 4, max(0, x0 - 4) : x0 + ow + 4].any():
                continue
            if rng.random() < 0.5:
                m = (((yy + 0.5 - y0 - oh / 2) / (oh / 2)) ** 2 + ((xx + 0.5 - x0 - ow / 2) / (ow / 2)) ** 2) <= 1
            else:
                m = (yy >= y0) & (yy < y0 + oh) & (xx >= x0) & (xx < x0 + ow)
            taken[max(0, y0 - 4) : y0 + oh + 4, max(0, x0 - 4) : x0 + ow + 4] = True
            colour = np.array([215, 45, 45]) + rng.integers(-30, 31, 3)
            pixels[m] = (colour + rng.normal(0, 8, (int(m.sum()), 3))).clip(0, 255)
            masks.append(m)
        if len(masks) == n:
            out = []
            for m in masks:
                ys, xs = np.nonzero(m)
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                out.append(TargetScene(pixels, m, box))
            return out


def _mask_losses(logits, target):
    """BCE (x20, on the hard mask) + dice of ``B x L x L`` logits against area-resized targets in [0, 1]."""
    import torch.nn.functional as F

    from segflow.demo.training import _dice_loss

    return F.binary_cross_entropy_with_logits(logits, (target > 0.5).float()) * 20 + _dice_loss(logits, target)


def _low_res(mask: np.ndarray, side: int):
    """A mask stretched to the square input frame (as both processors resize), area-downsampled to ``side``."""
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(mask).float()[None, None], (side, side), mode="area")[0, 0]


def train_sam2_box_localizer(
    directory: str | Path, steps: int = 1500, seed: int = 0, batch: int = 8, lr: float = 1e-3, objects: int = 1
) -> dict:
    """A tiny SAM 2 (:func:`tests.support.tiny._tiny_sam2_parts`, 128-px input) that segments the object in the box
    it is given; saved with ``save_pretrained`` (model + processor).

    Trained on ``objects`` shapes a scene, the box of one of them the prompt. With one object a scene (the
    default, 1500 steps) it still learns to follow the box: on scenes with two shapes, each box gets its own
    (median mask IoU ~0.89). Trained on two or three shapes from the start, it stalls at segmenting all of them
    (IoU ~0.45 after 4000 steps): the easy solution traps it.
    """
    import torch
    import torch.nn.functional as F
    import transformers as T

    from tests.support.tiny import _tiny_sam2_parts

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    parts = _tiny_sam2_parts()
    parts["mask_decoder_config"].num_attention_heads = 2  # 8 dims a head: room to match box and image positions
    parts["mask_decoder_config"].dynamic_multimask_via_stability = False
    model = T.Sam2Model(T.Sam2Config(**parts))
    with torch.no_grad():  # one positional encoding for prompts and image, as in the released weights
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )
    proc = T.Sam2Processor(image_processor=T.Sam2ImageProcessor(size={"height": 128, "width": 128}))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for step in range(steps):
        _cosine(opt, lr, step, step / steps)
        chosen = [s[int(rng.integers(objects))] for s in (scene_with_objects(rng, objects) for _ in range(batch))]
        boxes = []
        for s in chosen:  # the detector's box, a little off (4% of the object's size)
            size = np.r_[s.box[2:] - s.box[:2], s.box[2:] - s.box[:2]]
            boxes.append([(s.box + rng.normal(0, 0.04, 4) * size).tolist()])
        inputs = proc(images=[s.pixels for s in chosen], input_boxes=boxes, return_tensors="pt")
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False)
        logits = out.pred_masks[:, 0, 0]  # B x L x L, the square input frame
        target = torch.stack([_low_res(s.mask, logits.shape[-1]) for s in chosen])
        with torch.no_grad():
            pred, hard = logits > 0, target > 0.5
            real_iou = (pred & hard).flatten(1).sum(1) / (pred | hard).flatten(1).sum(1).clamp(min=1)
        loss = _mask_losses(logits, target) + F.mse_loss(out.iou_scores[:, 0, 0], real_iou.float())
        _optimise(opt, loss, model.parameters(), 1.0)
    model.eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}


def train_sam3_localizer(
    directory: str | Path, steps: int = 6000, seed: int = 0, batch: int = 8, lr: float = 5e-4, empty: float = 0.25
) -> dict:
    """A tiny SAM 3 (:func:`tests.support.tiny.make_tiny_sam3`) that finds ``target`` from its text prompt; saved
    with ``save_pretrained``.

    Per image: the query of lowest matching cost (class, L1 and GIoU of its box; boxes XYXY normalised, the
    model's convention) learns the class, the box and the mask; the others learn "no object"; the presence
    head learns whether the object is there at all.
    """
    import torch
    import torch.nn.functional as F
    import transformers as T
    from torchvision.ops import generalized_box_iou, generalized_box_iou_loss

    from tests.support.localizers import _cxcywh_to_xyxy
    from tests.support.tiny import make_tiny_sam3

    t0 = time.time()
    directory = Path(directory)
    make_tiny_sam3(directory, seed=seed, queries=8, image_size=112, vit_width=48, vit_layers=2, width=32, layers=1)
    model = T.Sam3Model.from_pretrained(directory, local_files_only=True)
    proc = T.Sam3Processor.from_pretrained(directory, local_files_only=True)
    tokens = proc.tokenizer([TARGET] * batch, padding="max_length", max_length=32, return_tensors="pt")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    rows = torch.arange(batch)
    for step in range(steps):
        _cosine(opt, lr, step, step / steps, warmup=50)
        scenes = [target_scene(rng) for _ in range(batch)]
        present = torch.as_tensor(rng.random(batch) >= empty)
        images = []
        for s, p in zip(scenes, present.tolist()):
            px = s.pixels.copy()
            if not p:  # the object painted over with background
                bg = np.median(px[~s.mask], axis=0)
                px[s.mask] = (bg + rng.normal(0, 14, (int(s.mask.sum()), 3))).clip(0, 255)
            images.append(px)
        pixels = proc(images=images, return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        target = _cxcywh_to_xyxy(
            torch.as_tensor(np.stack([_processed_box(proc.image_processor, s.mask) for s in scenes]))
        )  # B x 4, XYXY normalised in the input frame
        with torch.no_grad():
            cost = (
                -out.pred_logits.sigmoid()
                + 5 * (out.pred_boxes - target[:, None]).abs().sum(-1)
                - 2 * torch.stack([generalized_box_iou(b, t[None])[:, 0] for b, t in zip(out.pred_boxes, target)])
            )
        j = cost.argmin(1)  # B: the matched query
        labels = torch.zeros_like(out.pred_logits)
        labels[rows[present], j[present]] = 1.0
        loss = F.binary_cross_entropy_with_logits(out.pred_logits, labels, pos_weight=torch.tensor(4.0))
        loss = loss + F.binary_cross_entropy_with_logits(out.presence_logits[:, 0], present.float())
        if present.any():
            box = out.pred_boxes[rows, j][present]
            loss = (
                loss
                + 5 * F.l1_loss(box, target[present])
                + 2 * generalized_box_iou_loss(box, target[present], reduction="mean")
            )
            masks = out.pred_masks[rows, j][present]
            goal = torch.stack([_low_res(s.mask, masks.shape[-1]) for s, p in zip(scenes, present) if p])
            loss = loss + _mask_losses(masks, goal)
        _optimise(opt, loss, model.parameters(), 1.0)
    model.eval()
    model.save_pretrained(directory)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
