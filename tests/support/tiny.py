"""Tiny random-weight models built offline from configs, saved as segflow checkpoints.

For plumbing tests, benchmarks and the offline demo: they load through the
same code path as real weights. Random weights label nothing meaningful (and a
random YOLO only outputs boxes with a confidence threshold of 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "make_tiny_yolo",
    "make_tiny_sam",
    "make_tiny_mask2former",
    "make_tiny_maskrcnn",
    "make_tiny_owl",
    "make_tiny_grounding_dino",
    "make_tiny_promptable",
    "make_tiny_sam3",
]


def make_tiny_yolo(path: str | Path, class_names: Sequence[str], seed: int = 0, cfg: str = "yolo11n-seg.yaml") -> Path:
    """A random ultralytics YOLO with ``class_names``, saved as a segflow YOLO checkpoint."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    import segflow.tasks.stages.yolo  # sets offline ultralytics defaults

    torch.manual_seed(seed)
    cls = SegmentationModel if "-seg" in cfg else DetectionModel
    model = cls(cfg, nc=len(class_names), verbose=False)
    model.names = {i: n for i, n in enumerate(class_names)}
    model.task = "segment" if cls is SegmentationModel else "detect"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    segflow.tasks.stages.yolo.save_yolo_checkpoint(model, path)
    return path


#: A small SAM for tests and benchmarks (~0.6M parameters, 256-px input).
TINY_SAM_ARCH = dict(
    img_size=256,
    patch_size=16,
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=[1, 3],
    window_size=4,
    prompt_embed_dim=64,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
    mask_in_chans=16,
)


def make_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """A random ~0.8M-parameter SAM (256-px input), saved as a segflow SAM checkpoint."""
    import torch

    from segflow.tasks.stages.sam_checkpoint import build_sam, save_sam_checkpoint

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sam_checkpoint(build_sam(TINY_SAM_ARCH), TINY_SAM_ARCH, path)
    return path


def make_tiny_mask2former(
    path: str | Path, labels: Sequence[str], seed: int = 0, pretrained_dir: str | Path | None = None
) -> Path:
    """A random ~1.7M-parameter Mask2Former (Swin backbone from a config object, no download), saved as a
    segflow checkpoint; with ``pretrained_dir`` also in the ``save_pretrained`` layout there."""
    import torch

    from segflow.demo.training import DEMO_M2F_ARCH
    from segflow.tasks.stages.mask2former import build_mask2former, save_mask2former_checkpoint

    torch.manual_seed(seed)
    model, processor = build_mask2former(DEMO_M2F_ARCH, labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mask2former_checkpoint(model, processor, path)
    if pretrained_dir is not None:
        model.save_pretrained(pretrained_dir)
        processor.save_pretrained(pretrained_dir)
    return path


def make_tiny_maskrcnn(path: str | Path, class_names: Sequence[str], seed: int = 0) -> Path:
    """A random small torchvision Mask R-CNN (ResNet-18 FPN, 128-256 px inputs), saved as a segflow checkpoint."""
    import torch

    from segflow.tasks.stages.instances import build_maskrcnn, save_maskrcnn_checkpoint

    torch.manual_seed(seed)
    names = {0: "__background__", **{i + 1: n for i, n in enumerate(class_names)}}
    model = build_maskrcnn("resnet18_fpn", len(names), min_size=128, max_size=256)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_maskrcnn_checkpoint(model, "resnet18_fpn", names, path)
    return path


def _byte_vocab() -> dict[str, int]:
    """A CLIP byte-level BPE vocabulary with no merges: every byte a token (tiny, offline)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def make_tiny_owl(
    directory: str | Path, kind: str = "owlv2", seed: int = 0, image_size: int = 96, patch_size: int = 16
) -> Path:
    """A random tiny OWLv2 / OWL-ViT with its processor (byte-level CLIP tokenizer), saved with ``save_pretrained``."""
    import torch
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    vocab = _byte_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    if kind == "owlv2":
        from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
        proc = Owlv2Processor(
            image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tok
        )
    else:
        from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32))
        ip = OwlViTImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False)
        proc = OwlViTProcessor(image_processor=ip, tokenizer=tok)
    directory = Path(directory)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def make_tiny_grounding_dino(
    directory: str | Path, words: Sequence[str], seed: int = 0, image_edges: tuple[int, int] = (64, 128)
) -> Path:
    """A random tiny Grounding DINO (Swin and BERT from config objects, 2 decoder layers) with a word-level
    BERT tokenizer over ``words``, saved with ``save_pretrained``.

    The vocabulary keeps BERT's ids for ``[PAD]`` (0), ``[UNK]`` (100), ``[CLS]``
    (101), ``[SEP]`` (102), ``.`` (1012) and ``?`` (1029): transformers' Grounding
    DINO loss finds the caption's phrases by those ids. ``image_edges``: the
    processor's shortest and longest edge.
    """
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = [f"[unused{i}]" for i in range(1030)]
    for i, t in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        vocab[i] = t
    vocab += sorted({w.lower() for w in words} - set(vocab))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(directory / "vocab.txt"))
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    cfg = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        num_queries=20,
        encoder_layers=1,
        decoder_layers=2,
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=3,
        max_text_len=32,
    )
    model = GroundingDinoForObjectDetection(cfg)
    size = {"shortest_edge": image_edges[0], "longest_edge": image_edges[1]}
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=size), tokenizer=tok)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def _tiny_sam2_parts(image_size: int = 128) -> dict:
    """Vision (Hiera, 3 feature levels), prompt encoder and mask decoder configs of a ~0.2M-parameter SAM 2."""
    from transformers import Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=image_size,
        patch_stride=4,
        patch_kernel_size=7,
        patch_padding=3,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        global_attention_blocks=[3],  # a global block may not open a stage
        window_positional_embedding_background_size=[4, 4],
    )
    q = image_size // 4
    return dict(
        vision_config=Sam2VisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[96, 48, 24, 12],
            backbone_feature_sizes=[[q, q], [q // 2, q // 2], [q // 4, q // 4]],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=8
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32
        ),
    )


def _tiny_repvit():
    """EdgeTAM's RepViT backbone through timm, built from its config (no download), 4 tiny stages."""
    import transformers as T

    return T.TimmWrapperConfig(
        architecture="repvit_m1",
        model_args={
            "in_chans": 3,
            "features_only": True,
            "out_indices": (0, 1, 2, 3),
            "embed_dim": (16, 32, 48, 64),
            "depth": (1, 1, 1, 1),
        },
    )


def _tiny_sam3_vision(fpn_hidden_size: int):
    """The SAM 3 tracker's vision config: a 2-layer ViT of 14-px patches on a 112-px input, 3 feature levels."""
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=112,
    )
    return Sam3VisionConfig(
        backbone_config=vit, fpn_hidden_size=fpn_hidden_size, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]
    )


def make_tiny_promptable(directory: str | Path, family: str, seed: int = 0) -> Path:
    """A random tiny box-promptable model of ``family`` (sam2, edgetam, sam3_tracker, sam_hq) with its processor, in
    the ``save_pretrained`` layout: what `kind: sam2` loads."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    if family == "sam2":
        model = T.Sam2Model(T.Sam2Config(**_tiny_sam2_parts()))
        proc = T.Sam2Processor(image_processor=T.Sam2ImageProcessor(size={"height": 128, "width": 128}))
    elif family == "edgetam":  # a RepViT backbone through timm, built from its config (no download)
        backbone = _tiny_repvit()
        parts = _tiny_sam2_parts()
        vision = T.EdgeTamVisionConfig(
            backbone_config=backbone,
            backbone_channel_list=[64, 48, 32, 16],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
            fpn_hidden_size=32,
        )
        model = T.EdgeTamModel(
            T.EdgeTamConfig(
                vision_config=vision,
                prompt_encoder_config=parts["prompt_encoder_config"].to_dict(),
                mask_decoder_config=parts["mask_decoder_config"].to_dict(),
            )
        )
        proc = T.Sam2Processor(image_processor=T.Sam2ImageProcessor(size={"height": 128, "width": 128}))
    elif family == "sam3_tracker":  # ViT with 14-px patches: the input side must be a multiple of 14
        vision = _tiny_sam3_vision(32)
        model = T.Sam3TrackerModel(
            T.Sam3TrackerConfig(
                vision_config=vision,
                prompt_encoder_config={
                    "hidden_size": 32,
                    "image_size": 112,
                    "patch_size": 14,
                    "mask_input_channels": 8,
                },
                mask_decoder_config={
                    "hidden_size": 32,
                    "mlp_dim": 64,
                    "num_attention_heads": 4,
                    "iou_head_hidden_dim": 32,
                },
            )
        )
        proc = T.Sam3TrackerProcessor(image_processor=T.Sam3ImageProcessor(size={"height": 112, "width": 112}))
    elif family == "sam_hq":  # SAM 1 frame: longest side 128, padded
        from transformers.models.sam_hq.configuration_sam_hq import (
            SamHQMaskDecoderConfig,
            SamHQPromptEncoderConfig,
            SamHQVisionConfig,
        )

        vision = SamHQVisionConfig(
            hidden_size=32,
            output_channels=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=128,
            patch_size=16,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,  # the prompt encoder's width / 2
            initializer_range=0.02,  # its default (1e-10) leaves the HQ fusion's input at ~0
        )
        model = T.SamHQModel(
            T.SamHQConfig(
                vision_config=vision,
                prompt_encoder_config=SamHQPromptEncoderConfig(
                    hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8
                ),
                mask_decoder_config=SamHQMaskDecoderConfig(
                    hidden_size=32, mlp_dim=64, num_attention_heads=4, iou_head_hidden_dim=32, vit_dim=32
                ),
            )
        )
        proc = T.SamHQProcessor(
            image_processor=T.SamImageProcessor(size={"longest_edge": 128}, pad_size={"height": 128, "width": 128})
        )
    else:
        raise ValueError(f"unknown family {family!r}")
    directory = Path(directory)
    model.eval().save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def make_tiny_sam3(
    directory: str | Path,
    seed: int = 0,
    queries: int = 8,
    image_size: int = 112,
    vit_width: int = 32,
    vit_layers: int = 2,
    width: int = 32,
    layers: int = 1,
    heads: int = 2,
) -> Path:
    """A random small SAM 3 with its processor (byte-level CLIP tokenizer, padded to 32 tokens), saved with
    ``save_pretrained``. Defaults: ~0.25M parameters (ViT at 112 px, one layer per transformer, 8 queries); the
    bench builds a larger one with the same function."""
    import torch
    import transformers as T
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

    torch.manual_seed(seed)
    vocab = _byte_vocab()
    grid = image_size // 14  # the input side must be a multiple of the 14-px patch
    vit = Sam3ViTConfig(
        hidden_size=vit_width,
        intermediate_size=2 * vit_width,
        num_hidden_layers=vit_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=14,
        window_size=max(4, grid // 3),
        global_attn_indexes=[vit_layers - 1],
        pretrain_image_size=image_size,
    )
    small = dict(hidden_size=width, num_layers=layers, num_attention_heads=heads, intermediate_size=2 * width)
    config = T.Sam3Config(
        vision_config=Sam3VisionConfig(
            backbone_config=vit,
            fpn_hidden_size=width,
            backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
        ),
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=width,
            intermediate_size=2 * width,
            projection_dim=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=32,
            pad_token_id=vocab["<|endoftext|>"],
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
        ),
        geometry_encoder_config=small,
        detr_encoder_config=small,
        detr_decoder_config=dict(small, num_queries=queries),
        mask_decoder_config=dict(hidden_size=width, num_attention_heads=heads),
    )
    model = T.Sam3Model(config).eval()
    proc = T.Sam3Processor(
        image_processor=T.Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=T.CLIPTokenizer(vocab=vocab, merges=[]),
    )
    directory = Path(directory)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


def make_tiny_semantic(path: str | Path, labels: Sequence[str], seed: int = 0) -> Path:
    """A random smp U-Net (ResNet-10-T encoder, depth 3) saved as a segflow semantic checkpoint, 64-px windows."""
    import torch

    from segflow.tasks.stages.semantic import build_smp, save_semantic_checkpoint

    torch.manual_seed(seed)
    arch = {"encoder_name": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
    model = build_smp("Unet", arch, len(labels)).eval()
    save_semantic_checkpoint(model, "Unet", arch, labels, path, tile=64)
    return Path(path)


#: the memory-side settings of a tiny video model: the memory encoder's 64 channels are fixed by the
#: transformers implementation (its cross-attention keys are 64 wide), and the image features must be a multiple of
#: them wider (a 64-wide model stacks its object pointers one dimension too deep)
_TINY_VIDEO_MEMORY = dict(
    memory_attention_hidden_size=128,
    memory_attention_num_layers=1,
    memory_encoder_hidden_size=128,
    memory_encoder_output_channels=64,
    mask_downsampler_embed_dim=128,
    memory_fuser_embed_dim=128,
    memory_fuser_intermediate_dim=64,
    memory_fuser_num_layers=1,
)


def make_tiny_video_model(directory: str | Path, family: str, seed: int = 0, image_size: int = 128) -> Path:
    """A random tiny video model of ``family`` (sam2_video, edgetam_video, sam3_tracker_video) with its processor,
    in the ``save_pretrained`` layout: what `kind: sam2_video` loads (``image_size``: sam2_video only, a multiple
    of 64; the bench uses larger inputs, whose per-frame state weighs as a real model's does)."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    wide = {"hidden_size": 128}
    if family in ("sam2_video", "edgetam_video"):
        if family == "edgetam_video":
            image_size = 128
        parts = _tiny_sam2_parts(image_size)
        vision = parts["vision_config"]
        vision.fpn_hidden_size = 128
        prompt = {**parts["prompt_encoder_config"].to_dict(), **wide}
        decoder = {**parts["mask_decoder_config"].to_dict(), **wide}
        if family == "edgetam_video":
            backbone = _tiny_repvit()
            vision = T.EdgeTamVisionConfig(
                backbone_config=backbone,
                backbone_channel_list=[64, 48, 32, 16],
                backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
                fpn_hidden_size=128,
            )
            memory = {k: v for k, v in _TINY_VIDEO_MEMORY.items() if k != "memory_attention_feed_forward_hidden_size"}
            model = T.EdgeTamVideoModel(
                T.EdgeTamVideoConfig(
                    vision_config=vision,
                    prompt_encoder_config=prompt,
                    mask_decoder_config=decoder,
                    image_size=128,
                    memory_attention_mlp_hidden_size=64,
                    memory_attention_rope_feat_sizes=[8, 8],
                    perceiver_resampler_num_latents=16,
                    perceiver_resampler_num_latents_2d=16,
                    memory_attention_rope_k_sizes=[4, 4],
                    perceiver_resampler_num_layers=1,
                    **memory,
                )
            )
        else:
            model = T.Sam2VideoModel(
                T.Sam2VideoConfig(
                    vision_config=vision.to_dict(),
                    prompt_encoder_config=prompt,
                    mask_decoder_config=decoder,
                    image_size=image_size,
                    memory_attention_feed_forward_hidden_size=64,
                    memory_attention_rope_feat_sizes=[image_size // 16] * 2,
                    **_TINY_VIDEO_MEMORY,
                )
            )
        size = {"height": image_size, "width": image_size}
        proc = T.Sam2VideoProcessor(
            image_processor=T.Sam2ImageProcessor(size=size), video_processor=T.Sam2VideoVideoProcessor(size=size)
        )
    elif family == "sam3_tracker_video":
        vision = _tiny_sam3_vision(128)
        model = T.Sam3TrackerVideoModel(
            T.Sam3TrackerVideoConfig(
                vision_config=vision,
                prompt_encoder_config={
                    "hidden_size": 128,
                    "image_size": 112,
                    "patch_size": 14,
                    "mask_input_channels": 8,
                },
                mask_decoder_config={
                    "hidden_size": 128,
                    "mlp_dim": 64,
                    "num_attention_heads": 4,
                    "iou_head_hidden_dim": 32,
                },
                image_size=112,
                memory_attention_feed_forward_hidden_size=64,
                memory_attention_rope_feat_sizes=[8, 8],
                **_TINY_VIDEO_MEMORY,
            )
        )
        size = {"height": 112, "width": 112}
        proc = T.Sam3TrackerVideoProcessor(
            image_processor=T.Sam3ImageProcessor(size=size),
            video_processor=T.Sam2VideoVideoProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        )
    else:
        raise ValueError(f"unknown video family {family!r}")
    out = Path(directory)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
