"""Image-encoder attention of Segment Anything in query blocks: the relative-position bias is never built whole.

``sdpa``: fused ``scaled_dot_product_attention`` with each block's bias as its
mask (GPUs, bfloat16). ``blocked``: each block's scores go into one reused
buffer, biased and soft-maxed in place (CPU float32). Both equal the library's
eager attention to float rounding; :func:`use_fast_attention` swaps them into a
loaded ``Sam``'s encoder.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ATTENTION_BLOCK_BYTES", "MIN_BLOCK_ROWS", "use_fast_attention"]

#: Bytes of relative-position bias (and attention scores) one block of queries may hold, by device type.
#: Over 4,096 tokens the full bias is 64 MB a head; queries in blocks never build it whole. On a CPU the
#: blocks are also at least :data:`MIN_BLOCK_ROWS` queries: each block costs a few op calls, and larger
#: blocks run their products faster (bench/README.md, "Design measurements"). GPUs take larger blocks; the
#: budget only bounds memory there.
ATTENTION_BLOCK_BYTES = {"cpu": 8 << 20, "cuda": 256 << 20}
MIN_BLOCK_ROWS = {"cpu": 64, "cuda": 1}


def _rel_pos_attention_blocked_(q: Any, k: Any, v: Any, rel_h: Any, rel_w: Any, rows: int) -> Any:
    """``softmax(q k^T / sqrt(d) + rel_h + rel_w) v`` with the queries in blocks: the CPU float32 kernel.

    Arguments:
      q, k, v: (B*heads) x N x d, N = h*w tokens, row-major.
      rel_h: (B*heads) x N x h x 1 and rel_w: (B*heads) x N x 1 x w, the
        decomposed relative-position terms of each query (``get_rel_pos`` einsums).
      rows: queries per block.

    Returns (B*heads) x N x d. Each block's scores (B*heads) x rows x N go into
    one reused buffer, take both position terms and the softmax in place, and
    are multiplied by v: no bias tensor and no fresh score tensor per block. On
    2 CPU cores this is ~15% faster than ``scaled_dot_product_attention`` with
    the bias as a mask, at head dim 24 (bench SAM) and 64 (ViT-B), with the
    same blocks; the output is the library's eager attention's to float rounding.
    """
    import torch

    bh, n, d = q.shape
    h, w = rel_h.shape[2], rel_w.shape[3]
    qs = q * d**-0.5
    kt = k.transpose(1, 2)
    out = q.new_empty(bh, n, v.shape[-1])
    buf = q.new_empty(bh * min(rows, n) * n)
    for s in range(0, n, rows):
        r = min(rows, n - s)
        scores = torch.bmm(qs[:, s : s + r], kt, out=buf[: bh * r * n].view(bh, r, n))
        scores.view(bh, r, h, w).add_(rel_h[:, s : s + r]).add_(
            rel_w[:, s : s + r]
        )  # + rel_h[query, key row] + rel_w[query, key column]
        torch.softmax(scores, -1, out=scores)
        out[:, s : s + r] = torch.bmm(scores, v)
    return out


def _attention_forward(self: Any, x: Any, block_bytes: int | None = None, kernel: str | None = None) -> Any:
    """``ImageEncoderViT`` attention with the queries in blocks, the decomposed relative
    positions added per block (same result as the library's eager forward, to float rounding).

    Queries run in blocks whose bias (or scores) take at most ``block_bytes``
    (default: :data:`ATTENTION_BLOCK_BYTES` of the device, and at least
    :data:`MIN_BLOCK_ROWS` queries), so the ``(B*heads) x N x N`` bias is never
    built whole; each query's result does not depend on the block. ``kernel``
    (default: the module's ``attention_kernel``, set by :func:`use_fast_attention`):
    ``sdpa`` runs each block through ``F.scaled_dot_product_attention`` with the
    bias as a mask (fused kernels; bfloat16 autocast); ``blocked`` through
    :func:`_rel_pos_attention_blocked_`; ``auto`` takes ``blocked`` for float32
    on a CPU, where it is faster, and ``sdpa`` otherwise.
    """
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    kernel = kernel or getattr(self, "attention_kernel", "auto")
    b, h, w, _ = x.shape
    n, bh = h * w, b * self.num_heads
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, bh, n, -1).unbind(0)
    if not self.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        r_q = q.reshape(bh, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h)).reshape(bh, n, h, 1).to(q.dtype)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w)).reshape(bh, n, 1, w).to(q.dtype)
        dev = x.device.type
        budget = block_bytes if block_bytes is not None else ATTENTION_BLOCK_BYTES.get(dev, 256 << 20)
        rows = max(1, min(n, budget // max(1, bh * n * q.element_size())))
        if block_bytes is None:
            rows = min(n, max(rows, MIN_BLOCK_ROWS.get(dev, 1)))
        if kernel == "blocked" or (kernel == "auto" and dev == "cpu" and q.dtype == torch.float32):
            out = _rel_pos_attention_blocked_(q, k, v, rel_h, rel_w, rows)
        else:
            out = q.new_empty(q.shape[:-1] + v.shape[-1:])
            for s in range(0, n, rows):  # bias of queries s..s+rows: rel_h[query, key row] + rel_w[query, key column]
                bias = (rel_h[:, s : s + rows] + rel_w[:, s : s + rows]).reshape(bh, -1, n)
                out[:, s : s + rows] = F.scaled_dot_product_attention(
                    q[:, s : s + rows], k, v, attn_mask=bias
                )  # scale = head_dim ** -0.5
    out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return self.proj(out)


def use_fast_attention(sam: Any, kernel: str = "auto") -> int:
    """Switch every image-encoder attention block of ``sam`` to :func:`_attention_forward`
    (``kernel``: ``auto``, ``sdpa`` or ``blocked``). Returns the count."""
    import types

    from segment_anything.modeling.image_encoder import Attention

    if kernel not in ("auto", "sdpa", "blocked"):
        raise ValueError(f"attention kernel: expected 'auto', 'sdpa' or 'blocked', got {kernel!r}")
    n = 0
    for m in sam.image_encoder.modules():
        if isinstance(m, Attention):
            m.attention_kernel = kernel
            m.forward = types.MethodType(_attention_forward, m)
            n += 1
    return n
