"""The GPU path of the SAM stage, checked on CPU: SDPA attention equals the library's eager attention, a compiled
encoder the plain one,
and bfloat16 autocast keeps masks within the issue's bound (mean mask IoU >= 0.98 vs float32)."""

import numpy as np
import pytest

from segflow.config import SamStage, load_config
from segflow.demo.synthetic import make_scene
from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.sam import SamBoxSegmenter


def demo_sam():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    return (
        load_config(root / "configs" / "demo.yaml", overrides={"source": str(root), "output": "/tmp/unused"})
        .stages["masks"]
        .weights
    )


def scenes(n=4):
    rng = np.random.default_rng(31)
    return [make_scene(rng, *size) for size in [(320, 200), (180, 300), (400, 260), (256, 256)][:n]]


@pytest.mark.parametrize("attention", ["sdpa", "blocked", "auto"])
def test_fast_attention_equals_eager(attention):
    w = demo_sam()
    eager = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", attention="eager"), w)
    fast = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", attention=attention), w)
    for s in scenes():
        a, ia = eager.box_logits(s.pixels, np.asarray(s.boxes))
        b, ib = fast.box_logits(s.pixels, np.asarray(s.boxes))
        assert np.abs(a - b).max() < 1e-3 and np.abs(ia - ib).max() < 1e-4


def test_bfloat16_masks_match_float32():
    w = demo_sam()
    fp32 = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", dtype="float32"), w)
    bf16 = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", dtype="bfloat16", attention="sdpa"), w)
    ious = []
    for s in scenes():
        h, wd = s.pixels.shape[:2]
        prompts = Detections(
            (h, wd),
            np.asarray(s.boxes, np.float32),
            np.ones(len(s.boxes)),
            np.ones(len(s.boxes)),
            fields={"k": np.arange(len(s.boxes))},
        )
        a, b = fp32.segment([s.pixels], [prompts])[0], bf16.segment([s.pixels], [prompts])[0]
        ma = dict(zip(a.fields["k"].tolist(), rle.decode_many(list(a.rle_counts), h, wd)))
        mb = dict(zip(b.fields["k"].tolist(), rle.decode_many(list(b.rle_counts), h, wd)))
        for k in set(ma) | set(mb):
            x, y = ma.get(k, np.zeros((h, wd), bool)), mb.get(k, np.zeros((h, wd), bool))
            ious.append((x & y).sum() / max((x | y).sum(), 1))
    print(f"bf16 vs fp32 mean mask IoU {np.mean(ious):.4f} over {len(ious)} masks")
    assert len(ious) >= 8 and np.mean(ious) >= 0.98


def test_native_bf16_cpu_detection_reads_the_flags(tmp_path):
    from segflow.tasks.stages.device import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: "
        "1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    )
    assert cpu_has_native_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not cpu_has_native_bf16(str(info))
    info.write_text("flags\t\t: amx_tile amx_bf16 avx512f\n")
    assert cpu_has_native_bf16(str(info))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_compiled_encoder_gives_the_same_logits():
    """``compile: true`` (torch.compile of the image encoder, inductor's CPU backend here) changes speed, not
    results."""
    w = demo_sam()
    plain = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu"), w)
    compiled = SamBoxSegmenter(SamStage(kind="sam", weights=w, device="cpu", compile=True), w)
    assert type(compiled.model.image_encoder).__name__ == "OptimizedModule" and compiled.img_size == plain.img_size
    for s in scenes(1):  # one image: the encoder sees a fixed input size, a second would only repeat it
        a, ia = plain.box_logits(s.pixels, np.asarray(s.boxes))
        b, ib = compiled.box_logits(s.pixels, np.asarray(s.boxes))
        assert np.abs(a - b).max() < 1e-3 and np.abs(ia - ib).max() < 1e-4


@pytest.mark.parametrize("kernel", ["sdpa", "blocked"])
def test_blocked_attention_equals_eager(kernel):
    """Global attention with the queries in blocks, through SDPA or the in-place blocked kernel (the CPU float32
    default): every block size gives the library's output, including a last block shorter than the rest."""
    import torch
    from segment_anything.modeling.image_encoder import Attention

    from segflow.tasks.stages.sam_attention import _attention_forward

    torch.manual_seed(0)
    attn = Attention(32, num_heads=2, qkv_bias=True, use_rel_pos=True, input_size=(24, 20)).eval()
    with torch.no_grad():  # relative positions that matter (they start at zero)
        attn.rel_pos_h.normal_(0, 0.5)
        attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, 24, 20, 32)
    with torch.inference_mode():
        ref = attn(x)
        row_bytes = 2 * 2 * 24 * 20 * 4  # batch x heads x keys x float32: one query row of bias
        for rows in (1, 7, 100, 480, 10_000):
            out = _attention_forward(attn, x, block_bytes=rows * row_bytes, kernel=kernel)
            assert (out - ref).abs().max() < 1e-5, rows
        attn.rel_pos_h.mul_(
            2.0
        )  # negative control: other relative positions give another output (a constant shift would not)
        assert (_attention_forward(attn, x, block_bytes=7 * row_bytes, kernel=kernel) - ref).abs().max() > 1e-2


def test_unknown_attention_kernel_is_refused():
    from segflow.tasks.stages.sam_attention import use_fast_attention
    from segflow.tasks.stages.sam_checkpoint import build_sam
    from tests.support.tiny import TINY_SAM_ARCH

    sam = build_sam(TINY_SAM_ARCH)
    with pytest.raises(ValueError, match="'flash'"):
        use_fast_attention(sam, "flash")
    assert use_fast_attention(sam, "blocked") == len(sam.image_encoder.blocks)
