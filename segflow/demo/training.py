"""Training the demo models on synthetic scenes (CPU, seeded, minutes).

* :func:`train_detector` -- an ultralytics YOLO detector (``yolo11n.yaml``
  architecture, from scratch) through ultralytics' own trainer.
* :func:`train_sam` -- a small model of the Segment Anything architecture
  (``segment_anything.modeling`` classes, :data:`DEMO_SAM_ARCH`) trained from
  scratch on box prompt -> mask, with SAM's losses (focal-free variant: BCE +
  dice on the mask, MSE on the IoU head).
* :func:`finetune_sam_zoom` -- that SAM fine-tuned on zoom-window crops, one
  object per crop framed as the stage's ``zoom_context`` frames it, with the
  loss on the logits upsampled to the input size (sharper boundaries where the
  stability score measures them).

All save segflow checkpoints (weights-only, fp16) that the normal loaders
read. ``segflow train-demo-models --output configs/models`` runs them and
prints the sha256 values to put into ``configs/demo.yaml``.

Training scenes use seeds >= 10000; tests and the demo use small seeds, so
evaluation is always on scenes never seen in training.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.demo.synthetic import THING_CLASSES, make_scene, scene_size, write_scene_set

__all__ = [
    "DEMO_SAM_ARCH",
    "train_detector",
    "train_sam",
    "finetune_sam_zoom",
    "train_mask2former",
    "mean_box_prompt_iou",
]

#: 256-px input with 8-px patches: a 32x32 embedding and 128x128 low-res masks.
#: Measured on this task: per training step it learns boundaries far faster than
#: the 16-px-patch layout of the official SAMs (IoU 0.78 after 400 steps vs 0.69
#: after 1000), which needs sub-token boundary codes a small model learns slowly.
DEMO_SAM_ARCH = dict(
    img_size=256,
    patch_size=8,
    encoder_embed_dim=48,
    encoder_depth=3,
    encoder_num_heads=3,
    encoder_global_attn_indexes=[2],
    window_size=8,
    prompt_embed_dim=64,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
    mask_in_chans=16,
)

TRAIN_SEED = 10_000
VAL_SEED = 20_000


def _log(msg: str, log: Callable[[str], None] | None) -> None:
    (log or print)(msg)


# -- detector -----------------------------------------------------------------------------------


def _polygon(mask: np.ndarray) -> np.ndarray:
    """The largest outer contour of a mask, K x 2 (x, y) pixels (YOLO-seg labels are one polygon per object)."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)


def _yolo_split(root: Path, split: str, n: int, seed: int, size_range: tuple[int, int], segment: bool = False) -> None:
    scenes = write_scene_set(root / "images" / split, n, seed=seed, exif_fraction=0.0, size_range=size_range)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, s in scenes:
        h, w = s.pixels.shape[:2]
        if segment:
            lines = [
                f"{THING_CLASSES.index(c)} " + " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in _polygon(m))
                for c, m in zip(s.class_names, s.masks)
            ]
        else:
            lines = [
                f"{THING_CLASSES.index(c)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
                for c, b in zip(s.class_names, s.boxes)
            ]
        (root / "labels" / split / (Path(name).stem + ".txt")).write_text("\n".join(lines) + "\n")


def _yolo_video_split(root: Path, split: str, n: int, seed: int, every: int = 6, frames: int = 48) -> None:
    """``n`` frames of the video demo's videos (:func:`segflow.demo.video.make_video`, one frame in ``every``) in
    ultralytics' layout: a box per labelled object, around its visible part (what the video demo's ground truth
    labels: objects hidden more than :data:`~segflow.demo.video.MIN_VISIBLE` are not labelled)."""
    import cv2

    from segflow.demo.video import make_video

    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    written = 0
    while written < n:
        truth = make_video(rng, frames, things=int(rng.integers(4, 7)))
        start = int(rng.integers(every))
        for t in range(start, frames, every):
            if written == n:
                break
            h, w = truth.frames[t].shape[:2]
            lines = []
            for k, m in truth.masks[t].items():
                ys, xs = np.nonzero(m)
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                lines.append(
                    f"{THING_CLASSES.index(truth.classes[k - 1])} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                    f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
                )
            name = f"frame-{written:05d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), truth.frames[t][:, :, ::-1])
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")
            written += 1


#: ultralytics train() settings of the demo detector (besides data, epochs, size, seed and the schedule)
_YOLO_TRAIN = dict(
    batch=8,
    device="cpu",
    plots=False,
    deterministic=True,
    amp=False,
    name="det",
    exist_ok=True,
    verbose=False,
    val=False,
    cache="ram",
    mosaic=0.0,
    close_mosaic=0,
    scale=0.25,
    workers=1,
    optimizer="AdamW",
    patience=0,
)


def _yolo_dataset(
    root: Path, images: int, seed: int, size_range: tuple[int, int], segment: bool, video: bool = False
) -> Path:
    """Training and validation scenes (``video``: frames of the video demo's videos) in ultralytics' layout under
    ``root``; its ``data.yaml``."""
    import yaml

    if video:
        _yolo_video_split(root, "train", images, TRAIN_SEED + seed)
        _yolo_video_split(root, "val", max(20, images // 10), VAL_SEED + seed)
    else:
        _yolo_split(root, "train", images, TRAIN_SEED + seed, size_range, segment)
        _yolo_split(root, "val", max(20, images // 10), VAL_SEED + seed, size_range, segment)
    data = root / "data.yaml"
    data.write_text(
        yaml.safe_dump(
            {
                "path": str(root),
                "train": "images/train",
                "val": "images/val",
                "names": dict(enumerate(THING_CLASSES)),
            }
        )
    )
    return data


def train_detector(
    out_path: str | Path,
    images: int = 400,
    epochs: int = 34,
    imgsz: int = 288,
    seed: int = 0,
    size_range: tuple[int, int] = (200, 640),
    log: Callable[[str], None] | None = None,
    segment: bool = False,
    init: str | Path | None = None,
    lr0: float = 0.002,
    video: bool = False,
) -> dict:
    """Train a YOLO detector (``segment``: a YOLO-seg instance labeler) on synthetic scenes (``video``: frames of the
    video demo's videos); save a segflow checkpoint.

    ``init``: continue from this segflow checkpoint (a fine-tune on fresh scenes, with a cosine learning rate from
    ``lr0`` and no warmup) instead of starting from scratch. Returns validation metrics.

    From scratch on CPU the short schedule matters most: no mosaic (it shrinks
    objects at this input size), mild scale jitter, small batches for more
    steps, AdamW, one warmup epoch, images cached in RAM, validation at the end.
    """
    from ultralytics import YOLO

    import segflow.tasks.stages.yolo as yolo_adapter  # offline ultralytics settings first

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="segflow-yolo-train-") as tmp:
        data = _yolo_dataset(Path(tmp) / "data", images, seed, size_range, segment, video)
        _log(
            f"detector: {images} training scenes written ({time.time() - t0:.0f}s); "
            f"training {epochs} epochs at {imgsz}px",
            log,
        )
        with yolo_adapter.keep_torch_threads():  # ultralytics lowers torch's thread count for the whole process
            if init is None:
                model = YOLO("yolo11n-seg.yaml" if segment else "yolo11n.yaml")
            else:  # its own architecture (3 classes), then marked as the weights train() starts from
                model = yolo_adapter.load_yolo(str(init))
                model.load(model.model)
            model.train(
                data=str(data),
                epochs=epochs,
                imgsz=imgsz,
                seed=seed,
                project=str(Path(tmp) / "runs"),
                lr0=lr0,
                warmup_epochs=0 if init is not None else 1,
                cos_lr=init is not None,
                **_YOLO_TRAIN,
            )
            trained = YOLO(str(Path(tmp) / "runs" / "det" / "weights" / "last.pt"))  # our own fresh file: trusted
            yolo_adapter.save_yolo_checkpoint(trained, out_path)  # before val(), which fuses Conv+BN in place
            metrics = trained.val(
                data=str(data),
                imgsz=imgsz,
                batch=16,
                device="cpu",
                plots=False,
                verbose=False,
                project=str(Path(tmp) / "runs"),
                name="val",
            )
    result = {
        "box_map50_val": round(float(metrics.box.map50), 4),
        "box_map_val": round(float(metrics.box.map), 4),
        "seconds": round(time.time() - t0, 1),
    }
    if segment:
        result["mask_map50_val"] = round(float(metrics.seg.map50), 4)
    _log(f"detector: done {result}", log)
    return result


# -- SAM ----------------------------------------------------------------------------------------


def _coverage_targets(masks: np.ndarray, resized_hw: tuple[int, int], img_size: int, low_res: int | None):
    """Masks (K x H x W, bool or uint8) as SAM's frame sees them: resized to ``resized_hw``, zero-padded to the square
    input.

    Returns K x S x S float coverage (fraction of each pixel inside the mask), S
    = ``img_size``, or averaged down to ``low_res`` (the decoder's mask grid).
    """
    import torch
    import torch.nn.functional as F

    ih, iw = resized_hw
    m = torch.from_numpy(np.asarray(masks)).float()[:, None]
    padded = torch.zeros((len(m), 1, img_size, img_size))
    padded[..., :ih, :iw] = F.interpolate(m, (ih, iw), mode="area")
    return (padded if low_res is None else F.interpolate(padded, (low_res, low_res), mode="area"))[:, 0]


def _scene_samples(
    rng: np.random.Generator, n: int, transform, img_size: int, low_res: int, size_range: tuple[int, int]
):
    """Pre-render ``n`` scenes: (resized image HxWx3 uint8, input size, soft low-res targets K x L x L, boxes K x 4 in
    the input frame)."""
    samples = []
    for _ in range(n):
        s = make_scene(rng, *scene_size(rng, size_range))
        if not s.masks:
            continue
        img = transform.apply_image(s.pixels)
        ih, iw = img.shape[:2]
        targets = _coverage_targets(np.stack(s.masks), (ih, iw), img_size, low_res)
        boxes = transform.apply_boxes(np.asarray(s.boxes, np.float64), s.pixels.shape[:2]).astype(np.float32)
        samples.append((img, (ih, iw), targets, boxes))
    return samples


def _decode_all_prompts(decoder, embeddings, image_pe, sparse, dense):
    """``MaskDecoder.predict_masks`` for P prompts with one image embedding each (P x C x h x w).

    The library repeats a single image's embedding per prompt; in training the
    prompts of a whole batch of images go through in one call instead. Single
    mask output (token 0), as at inference with ``multimask_output=False``.
    """
    import torch

    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = embeddings + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out, mask_tokens_out = hs[:, 0, :], hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks[:, :1], decoder.iou_prediction_head(iou_token_out)[:, :1]


def _dice_loss(logits, target):
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def train_sam(
    out_path: str | Path,
    minutes: float = 13.5,
    seed: int = 0,
    scenes: int = 600,
    batch_images: int = 6,
    boxes_per_image: int = 8,
    prompts_per_object: int = 1,
    lr: float = 2e-3,
    size_range: tuple[int, int] = (256, 640),
    log: Callable[[str], None] | None = None,
    threads: Callable[[], int] | None = None,
    hard_targets: bool = True,
) -> dict:
    """Train :data:`DEMO_SAM_ARCH` on box -> mask for ``minutes`` of wall time; save a segflow checkpoint.

    ``threads``, when given, is asked every 50 steps how many CPU threads to use
    (the side-by-side trainer hands SAM the second core once the detector is done).
    """
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    from segflow.tasks.stages.sam_checkpoint import build_sam

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(TRAIN_SEED + 1000 + seed)
    sam = build_sam(DEMO_SAM_ARCH)
    sam.train()
    size = sam.image_encoder.img_size
    transform = ResizeLongestSide(size)
    low_res = 4 * sam.prompt_encoder.image_embedding_size[0]
    pool = _scene_samples(rng, scenes, transform, size, low_res, size_range)
    _log(
        f"sam: {len(pool)} training scenes rendered ({time.time() - t0:.0f}s); "
        f"{sum(p.numel() for p in sam.parameters()) / 1e6:.2f}M parameters",
        log,
    )
    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    budget = minutes * 60 - (time.time() - t0)
    t_start = time.time()
    step, ema = 0, None
    pe = sam.prompt_encoder.get_dense_pe()  # fixed (a random-Fourier buffer, not trained)
    while True:
        elapsed = time.time() - t_start
        if elapsed > budget:
            break
        frac = elapsed / budget
        for g in opt.param_groups:  # warmup then cosine
            g["lr"] = lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = rng.choice(len(pool), size=batch_images, replace=False)
        imgs, prompts, targets = [], [], []
        for i in idx:
            img, (ih, iw), m, b = pool[i]
            imgs.append(sam.preprocess(torch.as_tensor(img).permute(2, 0, 1).float()[None])[0])
            k = rng.choice(len(b), size=min(boxes_per_image, len(b)), replace=False)
            k = np.repeat(k, prompts_per_object)  # each object prompted with differently jittered boxes
            bb = b[k]
            wh = np.stack([bb[:, 2] - bb[:, 0], bb[:, 3] - bb[:, 1]], 1).repeat(2, 1)
            bb = bb + rng.normal(0, 0.06, bb.shape).astype(np.float32) * wh  # detector-like box noise
            prompts.append(torch.as_tensor(bb, dtype=torch.float32))
            targets.append(m[k])
        emb = sam.image_encoder(torch.stack(imgs))
        owner = torch.cat([torch.full((len(p),), j, dtype=torch.long) for j, p in enumerate(prompts)])
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.cat(prompts), masks=None)
        low, iou_pred = _decode_all_prompts(
            sam.mask_decoder, emb[owner], pe, sparse, dense
        )  # every image's prompts in one call
        logits, tgt = low[:, 0], torch.cat(targets)  # loss on the 4x-upscaled decoder output against soft targets
        loss = _sam_step(sam, opt, logits, tgt, iou_pred, hard_bce=hard_targets)
        step += 1
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        if step % 50 == 0:
            _log(f"sam: step {step} loss {ema:.4f} ({time.time() - t0:.0f}s)", log)
            if threads is not None and torch.get_num_threads() != threads():
                torch.set_num_threads(threads())
    return _save_trained_sam(sam, out_path, step, ema, t0, log, "sam")


def _sam_step(sam: Any, opt: Any, logits: Any, tgt: Any, iou_pred: Any, hard_bce: bool) -> float:
    """One optimiser step of the SAM losses; returns the loss.

    logits: B x H x W mask logits; tgt: B x H x W soft targets in [0, 1];
    iou_pred: B x 1. Loss: BCE x 20 against the hard targets (``hard_bce``:
    sharp logits at edges, so masks are stable under threshold offsets, SA-1B's
    stability score) or the soft ones, + dice, + MSE of the IoU head against
    the mask's actual IoU with the hard target.
    """
    import torch
    import torch.nn.functional as F

    hard = tgt > 0.5
    with torch.no_grad():
        pred = logits > 0
        iou = (pred & hard).flatten(1).sum(1).float() / (pred | hard).flatten(1).sum(1).float().clamp(min=1)
    loss = (
        F.binary_cross_entropy_with_logits(logits, hard.float() if hard_bce else tgt) * 20
        + _dice_loss(logits, tgt)
        + F.mse_loss(iou_pred[:, 0], iou)
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
    opt.step()
    return loss.item()


def _save_trained_sam(
    sam: Any, out_path: str | Path, steps: int, ema: float | None, t0: float, log: Any, name: str
) -> dict:
    """Save the trained model as a half-precision segflow checkpoint; the run's summary."""
    from segflow.tasks.stages.sam_checkpoint import save_sam_checkpoint

    sam.eval()
    save_sam_checkpoint(sam, DEMO_SAM_ARCH, out_path, half=True)
    result = {"steps": steps, "final_loss": round(float(ema or 0), 4), "seconds": round(time.time() - t0, 1)}
    _log(f"{name}: done {result}", log)
    return result


def _zoom_crop_sample(
    rng: np.random.Generator,
    scene: Any,
    k: int,
    context: float,
    transform,
    img_size: int,
    low_res: int,
    box_noise: float,
    full_res_target: bool = False,
):
    """One training sample as the zoomed SAM stage sees it at inference.

    Object ``k``'s box (with detector-like noise) -> its :func:`zoom_windows_xyxy`
    window at ``context`` -> the crop resized to the model input; returns
    (crop HxWx3 uint8 at input scale, box 4 XYXY in the input frame, soft
    target at the low-res mask size L x L, or at the input size when
    ``full_res_target``).
    """
    from segflow.tasks.stages.sam import zoom_windows_xyxy

    h, w = scene.pixels.shape[:2]
    box = np.asarray(scene.boxes[k], np.float64)
    wh = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    noisy = box + rng.normal(0, box_noise, 4) * wh
    noisy = np.clip(noisy, 0, [w, h, w, h])
    windows, _ = zoom_windows_xyxy(noisy[None], (h, w), context)
    x0, y0, x1, y1 = (int(v) for v in windows[0])
    crop = np.ascontiguousarray(scene.pixels[y0:y1, x0:x1])
    img = transform.apply_image(crop)
    target = _coverage_targets(
        scene.masks[k][None, y0:y1, x0:x1], img.shape[:2], img_size, None if full_res_target else low_res
    )[0]
    b = transform.apply_boxes((noisy - np.array([x0, y0, x0, y0]))[None], crop.shape[:2])[0].astype(np.float32)
    return img, b, target


def _scene_pool(rng: np.random.Generator, scenes: int, size_range: tuple[int, int]) -> list:
    """``scenes`` synthetic scenes with at least one object each (masks as uint8)."""
    pool = []
    while len(pool) < scenes:
        s = make_scene(rng, *scene_size(rng, size_range))
        if s.masks:
            s.masks = [np.asarray(m, np.uint8) for m in s.masks]
            pool.append(s)
    return pool


def finetune_sam_zoom(
    init_path: str | Path,
    out_path: str | Path,
    minutes: float = 40.0,
    seed: int = 0,
    scenes: int = 400,
    crops_per_step: int = 8,
    lr: float = 3e-4,
    context_range: tuple[float, float] = (0.3, 1.2),
    size_range: tuple[int, int] = (200, 1000),
    box_noise: float = 0.04,
    upsampled_loss: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fine-tune a demo SAM on zoom-window crops: one object per crop, framed as ``zoom_context`` frames it.

    The SAM stage segments small boxes in a crop of ``longer side x (1 + 2 x
    context)`` resized to the model input; :func:`train_sam` only saw whole
    scenes, where objects are small. Training on those crops (context drawn
    from ``context_range``) teaches the scale the model actually works at:
    sharper boundaries in its 128 x 128 mask grid, so higher IoU and a higher
    stability score (SA-1B's gate) for the same object.
    """
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    from segflow.tasks.stages.sam_checkpoint import load_sam

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(TRAIN_SEED + 3000 + seed)
    sam = load_sam(str(init_path)).float()
    sam.train()
    size = sam.image_encoder.img_size
    transform = ResizeLongestSide(size)
    low_res = 4 * sam.prompt_encoder.image_embedding_size[0]
    pool = _scene_pool(rng, scenes, size_range)
    _log(f"sam zoom fine-tune: {len(pool)} scenes rendered ({time.time() - t0:.0f}s)", log)
    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    budget = minutes * 60 - (time.time() - t0)
    t_start = time.time()
    step, ema = 0, None
    pe = sam.prompt_encoder.get_dense_pe()
    while True:
        elapsed = time.time() - t_start
        if elapsed > budget:
            break
        frac = elapsed / budget
        for g in opt.param_groups:  # short warmup, then cosine to 5%
            g["lr"] = lr * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        crops = [
            _zoom_crop_sample(
                rng,
                s := pool[int(rng.integers(len(pool)))],
                int(rng.integers(len(s.masks))),
                float(rng.uniform(*context_range)),
                transform,
                size,
                low_res,
                box_noise,
                upsampled_loss,
            )
            for _ in range(crops_per_step)
        ]
        imgs = [sam.preprocess(torch.as_tensor(img).permute(2, 0, 1).float()[None])[0] for img, _, _ in crops]
        boxes, targets = [b for _, b, _ in crops], [t for _, _, t in crops]
        emb = sam.image_encoder(torch.stack(imgs))
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.as_tensor(np.stack(boxes)), masks=None)
        low, iou_pred = _decode_all_prompts(sam.mask_decoder, emb, pe, sparse, dense)
        logits, tgt = low[:, 0], torch.stack(targets)
        if upsampled_loss:  # as the stage upsamples them (bilinear, to the input size): learnt where it is scored
            logits = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)[:, 0]
        loss = _sam_step(sam, opt, logits, tgt, iou_pred, hard_bce=True)
        step += 1
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 100 == 0:
            _log(f"sam zoom fine-tune: step {step} loss {ema:.4f} ({time.time() - t0:.0f}s)", log)
    return _save_trained_sam(sam, out_path, step, ema, t0, log, "sam zoom fine-tune")


def _detector_process(out_path: str, kwargs: dict, queue) -> None:
    import torch

    torch.set_num_threads(1)
    queue.put(train_detector(out_path, **kwargs))


def train_demo_models(
    out_dir: str | Path,
    seed: int = 0,
    det_images: int = 400,
    det_epochs: int = 34,
    det_imgsz: int = 288,
    sam_minutes: float = 13.5,
    sam_scenes: int = 600,
) -> tuple[dict, dict]:
    """Train the detector and the SAM side by side, one CPU core each.

    Neither model's training scales well past one core on a small CPU, so two
    single-threaded trainings in parallel get about twice the work done in the
    same wall time as one after the other.
    """
    import multiprocessing as mp

    import torch

    out_dir = Path(out_dir)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    det = ctx.Process(
        target=_detector_process,
        args=(
            str(out_dir / "demo-yolo.pt"),
            dict(images=det_images, epochs=det_epochs, imgsz=det_imgsz, seed=seed),
            queue,
        ),
    )
    det.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sam = train_sam(
            out_dir / "demo-sam.pt",
            minutes=sam_minutes,
            seed=seed,
            scenes=sam_scenes,
            threads=lambda: 1 if det.is_alive() else threads,
        )
    finally:
        torch.set_num_threads(threads)
    det_result = queue.get()
    det.join()
    if det.exitcode != 0:
        raise RuntimeError(f"detector training failed (exit code {det.exitcode})")
    return det_result, sam


def mean_box_prompt_iou(
    sam_weights: str | Path,
    seed: int = 1,
    n: int = 30,
    size_range: tuple[int, int] = (200, 1000),
    box_shift: float = 0.0,
    stage: Any = None,
) -> tuple[float, list[float]]:
    """Mean mask IoU of the SAM stage prompted with ground-truth boxes on fresh scenes.

    Runs the production stage (``stage`` settings, e.g. the demo job's, or the
    defaults) on each scene's exact boxes; ``box_shift`` moves every box right and
    down by that fraction of its size (a negative control). A box whose mask the
    stage dropped counts as IoU 0.
    """
    from segflow.config import SamStage
    from segflow.tasks import rle
    from segflow.tasks.record import Detections
    from segflow.tasks.stages.sam import SamBoxSegmenter

    stage = stage or SamStage(kind="sam", weights=str(sam_weights), device="cpu")
    seg = SamBoxSegmenter(stage, str(sam_weights))
    rng = np.random.default_rng(seed)
    ious: list[float] = []
    for _ in range(n):
        s = make_scene(rng, *scene_size(rng, size_range))
        if not s.masks:
            continue
        boxes = np.asarray(s.boxes, np.float32)
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(2, 1)
        boxes = boxes + box_shift * wh
        h, w = s.pixels.shape[:2]
        prompts = Detections(
            (h, w), boxes, np.ones(len(boxes)), np.ones(len(boxes)), fields={"gt": np.arange(len(boxes))}
        )
        out = seg.segment([s.pixels], [prompts])[0]
        best = np.zeros(len(boxes))
        for k, m in zip(out.fields["gt"], rle.decode_many(list(out.rle_counts), h, w)):
            gt = s.masks[int(k)]
            best[int(k)] = (m & gt).sum() / max((m | gt).sum(), 1)
        ious.extend(best.tolist())
    return float(np.mean(ious)), ious


# -- Mask2Former --------------------------------------------------------------------------------


#: The demo's panoptic model, also the tests' tiny one (~1.7M parameters, Swin backbone, 256-px input).
DEMO_M2F_ARCH = dict(
    backbone=dict(
        image_size=256, patch_size=4, embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=8
    ),
    feature_size=64,
    mask_feature_size=64,
    hidden_dim=64,
    encoder_feedforward_dim=128,
    encoder_layers=2,
    decoder_layers=3,
    num_attention_heads=4,
    dim_feedforward=128,
    num_queries=24,
    train_num_points=1024,
    input_size=256,
)


def _m2f_arch() -> dict:
    """The demo's panoptic model: :data:`DEMO_M2F_ARCH` (~1.7M parameters)."""
    return dict(DEMO_M2F_ARCH)


def _panoptic_targets(s: Any, size: int) -> tuple[Any, Any]:
    """A scene's panoptic ground truth as Mask2Former targets: K x size x size masks, K labels (0-based category
    index)."""
    import torch
    import torch.nn.functional as F

    from segflow.demo.synthetic import CATEGORIES

    index = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    thing_any = np.zeros(s.semantic.shape, bool)
    masks, labels = [], []
    for name, m in zip(s.class_names, s.masks):
        masks.append(m)
        labels.append(next(i for i, c in enumerate(CATEGORIES) if c["name"] == name))
        thing_any |= m
    for c in CATEGORIES:
        if c["isthing"]:
            continue
        m = (s.semantic == c["id"]) & ~thing_any
        if m.any():
            masks.append(m)
            labels.append(index[c["id"]])
    t = torch.from_numpy(np.stack(masks)).float()[None]
    t = (F.interpolate(t, (size, size), mode="area")[0] > 0.5).float()
    return t, torch.tensor(labels, dtype=torch.long)


def train_mask2former(
    out_path: str | Path,
    minutes: float = 14.0,
    seed: int = 0,
    scenes: int = 700,
    batch_images: int = 8,
    lr: float = 4e-4,
    size_range: tuple[int, int] = (256, 640),
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train a small Mask2Former on the scenes' panoptic ground truth for ``minutes``; save a segflow checkpoint.

    Labels are the synthetic categories by name (things and stuff), so a job's
    ontology with the same names maps them without a ``label_map``. The
    image processor (fixed square resize) is the one inference uses.
    """
    import torch

    from segflow.demo.synthetic import CATEGORIES
    from segflow.tasks.stages.mask2former import build_mask2former, save_mask2former_checkpoint

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(TRAIN_SEED + 2000 + seed)
    arch = _m2f_arch()
    model, processor = build_mask2former(arch, [c["name"] for c in CATEGORIES])
    model.train()
    size = arch["input_size"]
    pool = []
    for _ in range(scenes):
        s = make_scene(rng, *scene_size(rng, size_range))
        pv = processor(images=[s.pixels], return_tensors="pt")["pixel_values"][0].half()
        masks, labels = _panoptic_targets(s, size)
        pool.append((pv, masks.bool(), labels))
    _log(
        f"mask2former: {len(pool)} training scenes rendered ({time.time() - t0:.0f}s); "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters",
        log,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    budget = minutes * 60 - (time.time() - t0)
    t_start = time.time()
    step, ema = 0, None
    while True:
        elapsed = time.time() - t_start
        if elapsed > budget:
            break
        frac = elapsed / budget
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = rng.choice(len(pool), size=batch_images, replace=False)
        pvs, mls, cls = [], [], []
        for i in idx:
            pv, m, c = pool[i]
            if rng.random() < 0.5:  # horizontal flip
                pv, m = pv.flip(-1), m.flip(-1)
            pvs.append(pv.float())
            mls.append(m.float())
            cls.append(c)
        out = model(pixel_values=torch.stack(pvs), mask_labels=mls, class_labels=cls)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        step += 1
        ema = out.loss.item() if ema is None else 0.95 * ema + 0.05 * out.loss.item()
        if step % 50 == 0:
            _log(f"mask2former: step {step} loss {ema:.3f} ({time.time() - t0:.0f}s)", log)
    model.eval()
    save_mask2former_checkpoint(model, processor, out_path, half=True)
    result = {"steps": step, "final_loss": round(float(ema or 0), 4), "seconds": round(time.time() - t0, 1)}
    _log(f"mask2former: done {result}", log)
    return result


# -- the demo set: `segflow train-demo-models` -----------------------------------------------------


@dataclass(frozen=True)
class DemoTraining:
    """What ``segflow train-demo-models`` trains, and for how long (its flags of the same names)."""

    seed: int = 0
    det_images: int = 400
    det_epochs: int = 34
    det_imgsz: int = 288
    det_finetune_epochs: tuple[int, ...] = (25, 15)
    det_finetune_images: int = 800
    det_finetune_imgsz: int = 320
    sam_minutes: float = 13.5
    sam_scenes: int = 600
    sam_zoom_minutes: tuple[float, ...] = (45.0, 30.0)
    zoom_scenes: int = 400
    m2f_minutes: float = 14.0
    unet_minutes: float = 35.0
    video_det_epochs: int = 12
    video_det_frames: int = 600


def train_demo_set(
    out: Path, s: DemoTraining, only: str | None = None, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Train the demo models into ``out`` (``only``: ``instances``, ``panoptic`` or ``semantic``; default all):
    file name -> sha256."""
    import torch

    from segflow.tasks.io.weights import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    names = []
    if only in (None, "instances"):
        t0 = time.time()
        det, sam = train_demo_models(
            out,
            seed=s.seed,
            det_images=s.det_images,
            det_epochs=s.det_epochs,
            det_imgsz=s.det_imgsz,
            sam_minutes=s.sam_minutes,
            sam_scenes=s.sam_scenes,
        )
        log(f"instances trained in {time.time() - t0:.0f}s: detector {det}, sam {sam}")
        _finetune_detector(out, s, log)
        _finetune_sam(out, s, log)
        names += ["demo-yolo.pt", "demo-sam.pt"]
    if only in (None, "video"):  # after the detector it starts from
        _finetune_video_detector(out, s, log)
        names.append("demo-video-yolo.pt")
    if only in (None, "panoptic"):
        t1 = time.time()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        m2f = train_mask2former(out / "demo-m2f.pt", minutes=s.m2f_minutes, seed=s.seed)
        log(f"panoptic model trained in {time.time() - t1:.0f}s: {m2f}")
        names.append("demo-m2f.pt")
    if only in (None, "semantic"):
        from segflow.demo.semantic_training import train_unet

        t1 = time.time()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        unet = train_unet(out / "demo-unet.pt", minutes=s.unet_minutes, seed=s.seed, log=log)
        log(f"semantic U-Net trained in {time.time() - t1:.0f}s: {unet}")
        names.append("demo-unet.pt")
    return {name: sha256_file(out / name) for name in names}


def _finetune_detector(out: Path, s: DemoTraining, log: Callable[[str], None]) -> None:
    """Continue the detector on fresh scenes at the inference size: one cosine cycle per value of
    ``det_finetune_epochs``, each at half the previous peak learning rate."""
    import torch

    cycles = [e for e in s.det_finetune_epochs if e > 0]
    if cycles:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    for k, epochs in enumerate(cycles):
        t1 = time.time()
        tmp = out / "demo-yolo.finetune.pt"
        ft = train_detector(
            tmp,
            images=s.det_finetune_images,
            epochs=epochs,
            imgsz=s.det_finetune_imgsz,
            seed=s.seed + 1 + k,
            init=out / "demo-yolo.pt",
            lr0=1e-3 / 2**k,
        )
        os.replace(tmp, out / "demo-yolo.pt")
        log(f"detector fine-tuned (cycle {k + 1} of {len(cycles)}) in {time.time() - t1:.0f}s: {ft}")


def _finetune_video_detector(out: Path, s: DemoTraining, log: Callable[[str], None]) -> None:
    """``demo-video-yolo.pt``: the demo detector fine-tuned on frames of the video demo's videos (one cosine cycle
    of ``video_det_epochs`` on ``video_det_frames`` frames at the inference size), where objects pass behind each
    other and enter the frame: half-hidden shapes, which the scene-trained detector often calls by another class."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t1 = time.time()
    tmp = out / "demo-video-yolo.finetune.pt"
    ft = train_detector(
        tmp,
        images=s.video_det_frames,
        epochs=s.video_det_epochs,
        imgsz=s.det_finetune_imgsz,
        seed=s.seed + 7,
        init=out / "demo-yolo.pt",
        lr0=5e-4,
        video=True,
    )
    os.replace(tmp, out / "demo-video-yolo.pt")
    log(f"video detector fine-tuned in {time.time() - t1:.0f}s: {ft}")


def _finetune_sam(out: Path, s: DemoTraining, log: Callable[[str], None]) -> None:
    """Fine-tune the SAM on zoom crops: cosine cycles, each from the last one's weights at half its peak
    learning rate."""
    import torch

    cycles = [m for m in s.sam_zoom_minutes if m > 0]
    if cycles:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    for k, minutes in enumerate(cycles):
        t1 = time.time()
        tmp = out / "demo-sam.zoom.pt"
        zoom = finetune_sam_zoom(
            out / "demo-sam.pt", tmp, minutes=minutes, seed=s.seed, lr=3e-4 / 2**k, scenes=s.zoom_scenes
        )
        os.replace(tmp, out / "demo-sam.pt")
        log(f"sam fine-tuned on zoom crops (cycle {k + 1} of {len(cycles)}) in {time.time() - t1:.0f}s: {zoom}")


def update_config_sha256(cfg: Path, shas: dict[str, str]) -> None:
    """Write new sha256 values into a job file: the ``sha256:`` line after each ``weights: models/<name>``.
    Raises ValueError (naming the file) when a model has no such pair of lines."""
    import re

    text = cfg.read_text()
    for name, sha in shas.items():
        text, n = re.subn(rf"(weights: models/{re.escape(name)}\n\s*sha256: )[0-9a-fA-F]{{64}}", rf"\g<1>{sha}", text)
        if n != 1:
            raise ValueError(f"{cfg}: no 'weights: models/{name}' followed by a sha256 line")
    cfg.write_text(text)
