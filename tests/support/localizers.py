"""Small models that find one known synthetic object, for the adapters' placement tests.

Random weights find nothing, so a test of *where* an adapter puts its boxes and
masks needs a model that really localises. These trainers fit each adapter's
model family, from scratch on CPU in about a minute, to one easy class
(``target``: a red ellipse or rectangle on a grey noisy background) on images
of varied **non-square** sizes, the object anywhere, the far end of the long
side included (where a wrong padding or aspect convention shows most).

The training targets come from each model's own conventions, never from the
adapter's conversion code:

* YOLO-seg: ultralytics label files (polygons normalised to the original image);
* Mask R-CNN: torchvision targets in original pixels (the model resizes inside);
* OWLv2 / OWL-ViT: the object's mask is sent through the model's own image
  processor, and the box is read off the processed mask in the model's input
  frame (OWLv2 pads to a square, OWL-ViT stretches).

* Grounding DINO: the same processed-mask box, normalised by the unpadded
  image, as DETR-style models take it; trained with transformers' own
  Hungarian loss.

So an adapter that converts model boxes back to pixels the wrong way fails its
test (boxes checked by IoU against the known object).

Scene format: ``pixels`` H x W x 3 uint8 RGB, ``mask`` H x W bool, ``box``
XYXY pixels (exclusive ends), tight around the mask.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TargetScene",
    "target_scene",
    "box_iou_xyxy",
    "train_yolo_seg_localizer",
    "train_maskrcnn_localizer",
    "train_owl_localizer",
    "train_gdino_localizer",
    "train_sam_point_localizer",
]

TARGET = "target"


@dataclass
class TargetScene:
    pixels: np.ndarray  # H x W x 3 uint8 RGB
    mask: np.ndarray  # H x W bool
    box: np.ndarray  # 4, XYXY pixels, exclusive ends


def target_scene(rng: np.random.Generator, size_range: tuple[int, int] = (96, 192)) -> TargetScene:
    """One red ellipse or rectangle (30-60% of the short side) on a noisy grey background, aspect 1.4-2."""
    long = int(rng.integers(size_range[0], size_range[1] + 1))
    short = max(16, int(long / rng.uniform(1.4, 2.0)))
    h, w = (short, long) if rng.random() < 0.5 else (long, short)
    bg = rng.integers(70, 150, 3)
    pixels = (bg + rng.normal(0, 14, (h, w, 3))).clip(0, 255)
    oh, ow = (rng.uniform(0.3, 0.6, 2) * short).astype(int).clip(6)
    y0, x0 = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.5:
        mask = (((yy + 0.5 - y0 - oh / 2) / (oh / 2)) ** 2 + ((xx + 0.5 - x0 - ow / 2) / (ow / 2)) ** 2) <= 1
    else:
        mask = (yy >= y0) & (yy < y0 + oh) & (xx >= x0) & (xx < x0 + ow)
    colour = np.array([215, 45, 45]) + rng.integers(-30, 31, 3)
    pixels[mask] = (colour + rng.normal(0, 8, (int(mask.sum()), 3))).clip(0, 255)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    return TargetScene(pixels.astype(np.uint8), mask, box)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes, each 4 values XYXY."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


# -- YOLO-seg (ultralytics' own trainer) ------------------------------------------------------------


def train_yolo_seg_localizer(
    out_path: str | Path, images: int = 160, epochs: int = 12, imgsz: int = 160, seed: int = 0
) -> dict:
    """A yolo11n-seg for the one class ``target``, trained by ultralytics on polygon labels; a segflow checkpoint."""
    import yaml
    from PIL import Image
    from ultralytics import YOLO

    import segflow.tasks.stages.yolo as yolo_adapter  # offline ultralytics settings first
    from segflow.demo.training import _polygon

    t0 = time.time()
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="segflow-localizer-") as tmp:
        root = Path(tmp)
        for split, n in (("train", images), ("val", 16)):
            (root / "images" / split).mkdir(parents=True)
            (root / "labels" / split).mkdir(parents=True)
            for i in range(n):
                s = target_scene(rng)
                h, w = s.mask.shape
                Image.fromarray(s.pixels).save(root / "images" / split / f"{i}.png")
                poly = " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in _polygon(s.mask))
                (root / "labels" / split / f"{i}.txt").write_text(f"0 {poly}\n")
        (root / "data.yaml").write_text(
            yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": {0: TARGET}})
        )
        with yolo_adapter.keep_torch_threads():  # ultralytics lowers torch's thread count for the whole process
            model = YOLO("yolo11n-seg.yaml")
            model.train(
                data=str(root / "data.yaml"),
                epochs=epochs,
                imgsz=imgsz,
                batch=8,
                device="cpu",
                plots=False,
                seed=seed,
                deterministic=True,
                amp=False,
                project=str(root / "runs"),
                name="loc",
                exist_ok=True,
                verbose=False,
                val=False,
                cache="ram",
                mosaic=0.0,
                close_mosaic=0,
                scale=0.2,
                workers=1,
                optimizer="AdamW",
                lr0=0.002,
                warmup_epochs=1,
                patience=0,
            )
            yolo_adapter.save_yolo_checkpoint(YOLO(str(root / "runs" / "loc" / "weights" / "last.pt")), out_path)
    return {"seconds": round(time.time() - t0, 1)}


# -- Mask R-CNN (torchvision's own losses) -----------------------------------------------------------


def train_maskrcnn_localizer(
    out_path: str | Path, steps: int = 90, seed: int = 0, batch: int = 4, lr: float = 0.01
) -> dict:
    """A small Mask R-CNN (ResNet-18 FPN) for ``target``, trained with torchvision's losses; a segflow checkpoint."""
    import torch

    from segflow.tasks.stages.instances import build_maskrcnn, save_maskrcnn_checkpoint

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_maskrcnn("resnet18_fpn", 2, min_size=128, max_size=256)
    # training-time sampling sized for one object per image (torchvision's defaults, 512 RoIs and 2000
    # proposals an image, cost ~3 s a step here, mostly in the mask head); inference settings are untouched
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.rpn._pre_nms_top_n["training"], model.rpn._post_nms_top_n["training"] = 300, 100
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        scenes = [target_scene(rng) for _ in range(batch)]
        images = [torch.from_numpy(s.pixels).permute(2, 0, 1).float() / 255 for s in scenes]
        targets = [
            {
                "boxes": torch.from_numpy(s.box)[None],
                "labels": torch.ones(1, dtype=torch.int64),
                "masks": torch.from_numpy(s.mask)[None].to(torch.uint8),
            }
            for s in scenes
        ]
        loss = sum(model(images, targets).values())
        _optimise(opt, loss, model.parameters(), 10.0)
    model.eval()
    save_maskrcnn_checkpoint(model, "resnet18_fpn", {0: "__background__", 1: TARGET}, out_path, half=True)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}


# -- processor-frame boxes (OWL, Grounding DINO) ---------------------------------------------------------


def _processed_box(image_processor: Any, mask: np.ndarray) -> np.ndarray:
    """The object's box, cx cy w h normalised, in the model's input frame: the mask sent alone through the image
    processor.

    Object pixels are white on black; the processed copy is read at 0.5 (the
    resized edge), outside any padding the processor added (found by sending an
    all-black copy through too).
    """

    def raw(img: np.ndarray) -> np.ndarray:
        px = image_processor(images=[img], return_tensors="np")["pixel_values"][0]  # 3 x S x S, normalised
        mean, std = (
            np.asarray(image_processor.image_mean)[:, None, None],
            np.asarray(image_processor.image_std)[:, None, None],
        )
        return (px * std + mean).mean(0)  # back to 0..1

    white = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    padding = raw(np.zeros_like(white)) > 0.05  # OWLv2 pads with grey
    ys, xs = np.nonzero((raw(white) > 0.5) & ~padding)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    h, w = padding.shape
    return np.array([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], np.float32)


def _cxcywh_to_xyxy(b: Any) -> Any:
    import torch

    return torch.stack(
        [b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2, b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2], -1
    )


def _optimise(opt: Any, loss: Any, params: Any, clip: float) -> None:
    """One optimiser step on ``loss``, gradients clipped to norm ``clip``."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def _cosine(opt: Any, lr: float, step: int, frac: float, warmup: int = 30) -> None:
    """Warmup, then cosine decay over the time budget (``frac`` of it used)."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _box_loss(pred_cxcywh: Any, target_cxcywh: Any) -> Any:
    """L1 + generalised IoU, both boxes cx cy w h normalised (P x 4 each)."""
    import torch.nn.functional as F
    from torchvision.ops import generalized_box_iou_loss

    return (
        F.l1_loss(pred_cxcywh, target_cxcywh) * 5
        + generalized_box_iou_loss(_cxcywh_to_xyxy(pred_cxcywh), _cxcywh_to_xyxy(target_cxcywh), reduction="mean") * 2
    )


# -- OWLv2 / OWL-ViT (dense per-patch loss) -------------------------------------------------------------


def train_owl_localizer(
    directory: str | Path, kind: str = "owlv2", steps: int = 1600, seed: int = 0, batch: int = 8, lr: float = 2e-3
) -> dict:
    """A tiny OWLv2 / OWL-ViT that finds ``target`` for the text query "target", saved with ``save_pretrained``.

    Each image patch predicts one box (OWL's design): patches whose centre lies
    in the middle of the object's box (in the input frame) learn the class and
    the box, the others learn "no object".
    """
    import torch
    import torch.nn.functional as F
    from torchvision.ops import box_iou
    from transformers import AutoProcessor, Owlv2ForObjectDetection, OwlViTForObjectDetection

    from tests.support.tiny import make_tiny_owl

    t0 = time.time()
    directory = Path(directory)
    make_tiny_owl(directory, kind, seed=seed, image_size=96, patch_size=8)  # a 12 x 12 patch grid
    cls = Owlv2ForObjectDetection if kind == "owlv2" else OwlViTForObjectDetection
    model = cls.from_pretrained(directory, local_files_only=True)
    torch.manual_seed(seed)
    torch.nn.init.normal_(
        model.box_head.dense2.weight, std=0.01
    )  # start from OWL's per-patch box prior, not saturated boxes
    proc = AutoProcessor.from_pretrained(directory, local_files_only=True)
    rng = np.random.default_rng(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for step in range(steps):
        _cosine(opt, lr, step, step / steps)
        scenes = [target_scene(rng) for _ in range(batch)]
        inputs = proc(text=[[TARGET]] * batch, images=[s.pixels for s in scenes], return_tensors="pt", padding=True)
        target = torch.as_tensor(np.stack([_processed_box(proc.image_processor, s.mask) for s in scenes]))  # B x 4
        out = model(**inputs)
        n = out.pred_boxes.shape[1]
        side = int(round(n**0.5))
        c = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        cx, cy = cx.flatten()[None], cy.flatten()[None]  # patch centres, row-major as OWL orders them
        t = target[:, None, :]
        # positives: patches whose centre lies in the box, and always the nearest one
        pos = ((cx - t[..., 0]).abs() <= t[..., 2] / 2) & ((cy - t[..., 1]).abs() <= t[..., 3] / 2)  # B x P
        pos[torch.arange(batch), ((cx - t[..., 0]) ** 2 + (cy - t[..., 1]) ** 2).argmin(1)] = True
        logits = out.logits[..., 0]  # B x P (one query)
        with (
            torch.no_grad()
        ):  # IoU-aware scores: a positive patch's target is its own box's IoU, so the top score has the best box
            quality = torch.stack(
                [box_iou(_cxcywh_to_xyxy(b), _cxcywh_to_xyxy(tt[None]))[:, 0] for b, tt in zip(out.pred_boxes, target)]
            )
        cls_loss = F.binary_cross_entropy_with_logits(
            logits, torch.where(pos, quality.clamp(min=0.2), 0.0), pos_weight=torch.tensor(4.0)
        )
        box_loss = (
            _box_loss(out.pred_boxes[pos], target[:, None, :].expand(-1, n, -1)[pos]) if pos.any() else logits.sum() * 0
        )
        loss = cls_loss + box_loss
        _optimise(opt, loss, model.parameters(), 1.0)
    model.eval()
    model.save_pretrained(directory)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}


# -- Grounding DINO (transformers' own Hungarian loss) ---------------------------------------------------


def train_gdino_localizer(
    directory: str | Path, steps: int = 1500, seed: int = 0, batch: int = 8, lr: float = 1e-4
) -> dict:
    """A tiny Grounding DINO that finds ``target`` for the caption "target .", saved with ``save_pretrained``.

    The library's loss (Hungarian matching; focal class loss on the phrase's
    tokens, L1 and GIoU on boxes, on every decoder layer and the encoder's
    proposals). One image processed alone is not padded, so its processed mask
    gives the box normalised by the unpadded image, as DETR-style boxes are.
    """
    import torch
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    from tests.support.tiny import make_tiny_grounding_dino

    t0 = time.time()
    directory = Path(directory)
    make_tiny_grounding_dino(directory, [TARGET, "forklift", "pallet"], seed=seed, image_edges=(96, 192))
    model = GroundingDinoForObjectDetection.from_pretrained(directory, local_files_only=True)
    proc = AutoProcessor.from_pretrained(directory, local_files_only=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        _cosine(opt, lr, step, step / steps, warmup=50)
        scenes = [target_scene(rng) for _ in range(batch)]
        inputs = proc(images=[s.pixels for s in scenes], text=[f"{TARGET} ."] * batch, return_tensors="pt")
        labels = [
            {
                "class_labels": torch.zeros(1, dtype=torch.long),
                "boxes": torch.as_tensor(_processed_box(proc.image_processor, s.mask))[None],
            }
            for s in scenes
        ]
        loss = model(**inputs, labels=labels).loss
        _optimise(opt, loss, model.parameters(), 0.1)
    model.eval()
    model.save_pretrained(directory)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}


# -- SAM with point prompts (for the automatic mode) -----------------------------------------------------


def train_sam_point_localizer(
    out_path: str | Path, steps: int = 400, seed: int = 0, batch: int = 8, lr: float = 1e-3
) -> dict:
    """A tiny SAM (:data:`TINY_SAM_ARCH`) that segments ``target`` from one foreground point inside it; a segflow
    checkpoint.

    The point-grid automatic mode prompts with single points and ``multimask_output``,
    so the three multimask outputs are trained, each sample's loss on its best one
    (as SAM was), with the IoU head regressing every output's IoU. Targets: the
    mask taken to the model's low-res frame (resize to the input size, pad, area
    downsampling), as in :func:`segflow.demo.training.train_sam`.
    """
    import torch
    import torch.nn.functional as F
    from segment_anything.utils.transforms import ResizeLongestSide

    from segflow.demo.training import _dice_loss
    from segflow.tasks.stages.sam_checkpoint import build_sam, save_sam_checkpoint
    from tests.support.tiny import TINY_SAM_ARCH

    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sam = build_sam(TINY_SAM_ARCH)
    sam.train()
    size = sam.image_encoder.img_size
    low_res = 4 * sam.prompt_encoder.image_embedding_size[0]
    transform = ResizeLongestSide(size)
    pe = sam.prompt_encoder.get_dense_pe()
    dec = sam.mask_decoder
    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    for step in range(steps):
        _cosine(opt, lr, step, step / steps)
        imgs, points, targets = [], [], []
        for s in (target_scene(rng) for _ in range(batch)):
            img = transform.apply_image(s.pixels)
            ih, iw = img.shape[:2]
            imgs.append(sam.preprocess(torch.as_tensor(img).permute(2, 0, 1).float()[None])[0])
            ys, xs = np.nonzero(s.mask)
            k = int(rng.integers(len(xs)))
            points.append(transform.apply_coords(np.array([[xs[k] + 0.5, ys[k] + 0.5]]), s.mask.shape))
            padded = torch.zeros((1, 1, size, size))
            padded[..., :ih, :iw] = F.interpolate(torch.from_numpy(s.mask).float()[None, None], (ih, iw), mode="area")
            targets.append(F.interpolate(padded, (low_res, low_res), mode="area")[0, 0])
        emb = sam.image_encoder(torch.stack(imgs))
        coords = torch.as_tensor(np.stack(points), dtype=torch.float32)  # B x 1 x 2, input frame
        sparse, dense = sam.prompt_encoder(points=(coords, torch.ones(batch, 1)), boxes=None, masks=None)
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0).unsqueeze(0).expand(batch, -1, -1)
        hs, src = dec.transformer(emb + dense, pe.expand(batch, -1, -1, -1), torch.cat([tokens, sparse], 1))
        b, c, h, w = emb.shape
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        masks = (hyper @ up.flatten(2)).view(b, -1, *up.shape[-2:])[:, 1:]  # B x 3 x L x L: the multimask outputs
        iou_pred = dec.iou_prediction_head(hs[:, 0, :])[:, 1:]
        tgt = torch.stack(targets)
        hard = (tgt > 0.5).float()
        per = torch.stack(
            [
                F.binary_cross_entropy_with_logits(masks[:, j], hard, reduction="none").flatten(1).mean(1) * 20
                + torch.stack([_dice_loss(masks[i : i + 1, j], tgt[i : i + 1]) for i in range(batch)])
                for j in range(3)
            ],
            1,
        )
        with torch.no_grad():
            pred = masks > 0
            real_iou = (pred & (hard[:, None] > 0)).flatten(2).sum(2).float() / (pred | (hard[:, None] > 0)).flatten(
                2
            ).sum(2).float().clamp(min=1)
        loss = per.min(1).values.mean() + F.mse_loss(iou_pred, real_iou)
        _optimise(opt, loss, sam.parameters(), 1.0)
    sam.eval()
    save_sam_checkpoint(sam, TINY_SAM_ARCH, out_path)
    return {"steps": steps, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
