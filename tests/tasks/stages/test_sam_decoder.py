"""tasks.models.sam_decoder against segment_anything's own MaskDecoder, same weights and prompts."""

import pytest
import torch

from segflow.tasks.stages.sam_checkpoint import build_sam
from segflow.tasks.stages.sam_decoder import (
    SharedImage,
    decode_prompts,
    decode_prompts_one_image,
    decode_tokens,
    upscale_windows,
)

#: the official decoder (256 channels, 8 heads, 64 x 64 grid) behind a small encoder (the encoder is not used here)
OFFICIAL_DECODER = dict(
    img_size=1024,
    patch_size=16,
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[0],
    window_size=8,
)
#: a small decoder of another shape (64 channels, 4 heads, 3 layers)
SMALL_DECODER = dict(
    img_size=256,
    patch_size=8,
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[0],
    window_size=8,
    prompt_embed_dim=64,
    decoder_depth=3,
    decoder_mlp_dim=128,
    decoder_num_heads=4,
    iou_head_hidden_dim=32,
    mask_in_chans=16,
)


def prompts(sam, kind, n, gen):
    size = sam.image_encoder.img_size
    xy = torch.rand(n, 2, generator=gen) * size * 0.7
    boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * size * 0.3], 1)
    centres = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
    points = (centres, torch.ones(n, 1)) if kind != "box" else None
    return sam.prompt_encoder(points=points, boxes=boxes if kind != "point" else None, masks=None)


@pytest.mark.parametrize("arch", [OFFICIAL_DECODER, SMALL_DECODER], ids=["official", "small"])
@pytest.mark.parametrize("kind", ["box", "point", "box+point"])
@pytest.mark.parametrize("multimask", [False, True])
def test_same_masks_and_scores_as_the_library_decoder(arch, kind, multimask):
    torch.manual_seed(0)
    sam = build_sam(arch).eval()
    gen = torch.Generator().manual_seed(1)
    h, w = sam.prompt_encoder.image_embedding_size
    emb = torch.randn(1, sam.prompt_encoder.embed_dim, h, w, generator=gen)
    pe = sam.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        sparse, dense = prompts(sam, kind, 6, gen)
        ref_masks, ref_iou = sam.mask_decoder(
            image_embeddings=emb,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        masks, iou = decode_prompts_one_image(sam.mask_decoder, emb, pe, dense[:1], sparse, multimask)
        shared = SharedImage(sam.mask_decoder, emb, pe, dense[:1])  # chunks of prompts share the image side
        chunked = torch.cat([decode_prompts(sam.mask_decoder, shared, sparse[s : s + 4], multimask)[0] for s in (0, 4)])
    assert masks.shape == ref_masks.shape == (6, 3 if multimask else 1, 4 * h, 4 * w) and iou.shape == ref_iou.shape
    scale = ref_masks.abs().max().item()
    torch.testing.assert_close(masks, ref_masks, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, masks, atol=1e-5 * max(scale, 1.0), rtol=1e-4)
    # negative control: another prompt's masks are far off, so the tolerance above can fail
    assert (masks[1:] - ref_masks[:-1]).abs().max() > 100 * 1e-5 * max(scale, 1.0)


def test_other_upscaling_layouts_run_through_the_module():
    torch.manual_seed(0)
    sam = build_sam(SMALL_DECODER).eval()
    c1 = sam.mask_decoder.output_upscaling[0].out_channels
    sam.mask_decoder.output_upscaling[1] = torch.nn.GroupNorm(
        4, c1
    )  # not LayerNorm2d: the channels-last shortcut must not apply
    gen = torch.Generator().manual_seed(2)
    h, w = sam.prompt_encoder.image_embedding_size
    emb = torch.randn(1, sam.prompt_encoder.embed_dim, h, w, generator=gen)
    pe = sam.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        sparse, dense = prompts(sam, "box", 3, gen)
        ref, _ = sam.mask_decoder(
            image_embeddings=emb,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        masks, _ = decode_prompts_one_image(sam.mask_decoder, emb, pe, dense[:1], sparse, False)
    torch.testing.assert_close(masks, ref, atol=1e-4, rtol=1e-4)


def test_per_prompt_dense_embeddings_are_refused():
    sam = build_sam(SMALL_DECODER).eval()
    h, w = sam.prompt_encoder.image_embedding_size
    emb = torch.zeros(1, 64, h, w)
    with pytest.raises(ValueError, match="one shared dense embedding"):
        SharedImage(sam.mask_decoder, emb, sam.prompt_encoder.get_dense_pe(), torch.zeros(2, 64, h, w))


@pytest.mark.parametrize("layout", ["plain", "other"])
def test_upscaling_inside_windows_equals_the_whole_grid_cropped(layout):
    """Windows at the grid's edges, one token, the whole grid: each equals the library's low-res logits there."""
    torch.manual_seed(0)
    sam = build_sam(SMALL_DECODER).eval()
    if layout == "other":  # the fallback: the module on the whole grid, then cropped
        sam.mask_decoder.output_upscaling[1] = torch.nn.GroupNorm(4, sam.mask_decoder.output_upscaling[0].out_channels)
    gen = torch.Generator().manual_seed(3)
    h, w = sam.prompt_encoder.image_embedding_size
    emb = torch.randn(1, sam.prompt_encoder.embed_dim, h, w, generator=gen)
    pe = sam.prompt_encoder.get_dense_pe()
    windows = torch.tensor(
        [[0, 0, w, h], [0, 0, 3, 5], [w - 4, h - 2, w, h], [7, 9, 8, 10], [2, 11, 30, 20]]
    )  # XYXY tokens
    with torch.inference_mode():
        sparse, dense = prompts(sam, "box", len(windows), gen)
        ref, _ = sam.mask_decoder(
            image_embeddings=emb,
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        keys, hyper, _ = decode_tokens(
            sam.mask_decoder, SharedImage(sam.mask_decoder, emb, pe, dense[:1]), sparse, False
        )
        crops = upscale_windows(sam.mask_decoder, keys, (h, w), hyper[:, 0], windows.numpy())
    for k, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        expected = ref[k, 0, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
        assert crops[k].shape == expected.shape
        torch.testing.assert_close(crops[k], expected, atol=1e-4, rtol=1e-4)
    assert (
        crops[1] - ref[1, 0, 4:24, 0:12]
    ).abs().max() > 1e-2  # negative control: a window shifted by one token differs
