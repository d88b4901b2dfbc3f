"""SAM's mask decoder for many prompts on one image, without a copy of the image per prompt.

``segment_anything``'s ``MaskDecoder.predict_masks`` repeats the image
embedding once per prompt and runs every projection of the two-way transformer
on each copy. This computes the same function (same weights, same outputs up
to float rounding) with less work per prompt:

1. **Shared first layer.** Until the first image-to-token attention, the image
   side is the same for every prompt: its key, value and query projections are
   computed once per image, not once per prompt.
2. **Low-rank attention.** A prompt has only T tokens (5 output tokens and its
   prompt points, 7 for a box), and H*T is smaller than the attention width.
   So the projections of the N image tokens (N = h*w = 4096 in the official
   SAMs) are folded into the T-token side:

   * token -> image scores: ``q . (W_k x + b_k) = (W_k^T q) . x + const``, and the
     constant drops out of the softmax over the image;
   * token -> image values: ``sum_i a_i (W_v x_i + b_v) = W_v (sum_i a_i x_i) + b_v``
     (attention weights sum to 1);
   * image -> token scores: ``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k``;
   * image -> token output: ``W_o sum_t a_t v_t = sum_t a_t (W_o v_t)``.

   Per prompt and image token that is H*T*C multiply-adds instead of C*I
   (C = 256 channels, I = 128 attention width, H = 8 heads for the official
   decoder: 56*256 vs 256*128).

3. **Only the tokens that are read.** The final token -> image attention acts
   on each token alone, and after it only the IoU token and the mask tokens
   asked for are read: it runs on those (2 of 7 tokens for a box without
   ``multimask_output``), not on the unused mask tokens and prompt points.

4. **No B x N x C temporaries.** The image -> token output is added into the
   image side in place (``baddbmm``, the output projection's bias folded into
   the values), and keys + pe reuse one buffer: on CPU every fresh multi-MB
   tensor costs page faults (see :mod:`segflow.tasks.stages.allocator`) and memory traffic.

The output upscaling and the hypernetwork dot products are the decoder's own
modules, run on every prompt's image tokens as in the library.

Shapes: B prompts, T tokens per prompt, C channels, h x w embedding grid,
N = h*w, H heads, d channels per head, I = H*d.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "SharedImage",
    "decode_tokens",
    "decode_prompts",
    "decode_prompts_one_image",
    "upscale_grid",
    "upscale_windows",
]


def _split_heads(x: Any, heads: int) -> Any:
    """``... x n x (H*d)`` -> ``... x H x n x d``."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n, heads, c // heads).transpose(-2, -3)


def _merge_heads(x: Any) -> Any:
    """``... x H x n x d`` -> ``... x n x (H*d)``."""
    x = x.transpose(-2, -3)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def _softmax_over_tokens(x: Any) -> Any:
    """Softmax over the tokens of ``B x H x T x N`` scores (dim 2: a prompt's T tokens).

    Token-major scores make torch's softmax over a non-last dimension run
    vectorised along the N contiguous image tokens, much faster on CPU than a
    softmax over a short last dimension. In float32, as autocast runs ``torch.softmax``.
    """
    import torch

    return torch.softmax(x, 2, dtype=torch.float32)


def _head_weights(linear: Any, heads: int) -> tuple[Any, Any]:
    """A projection C -> I as per-head weights ``H x d x C`` and biases ``H x d``."""
    w, b = linear.weight, linear.bias
    return w.reshape(heads, w.shape[0] // heads, w.shape[1]), b.reshape(heads, -1)


def _tokens_to_shared_image(attn: Any, q: Any, k_heads: Any, v_heads: Any) -> Any:
    """Attention of each prompt's tokens to one image whose projections are precomputed.

    q: B x T x C tokens (with their positional encoding); k_heads, v_heads:
    H x N x d (``k_proj(image + pe)``, ``v_proj(image)`` split into heads).
    Returns B x T x C.
    """
    import torch

    heads = attn.num_heads
    qh = _split_heads(attn.q_proj(q), heads)  # B x H x T x d
    b, _, t, d = qh.shape
    qs = (
        (qh / math.sqrt(d)).transpose(0, 1).reshape(heads, b * t, d)
    )  # H x BT x d: one product per head for all prompts
    a = torch.softmax(torch.bmm(qs, k_heads.transpose(1, 2)), dim=-1)  # H x BT x N
    out = torch.bmm(a, v_heads).reshape(heads, b, t, d).permute(1, 2, 0, 3).reshape(b, t, heads * d)  # B x T x I
    return attn.out_proj(out)


def _tokens_to_image(attn: Any, q: Any, k_in: Any, v_in: Any) -> Any:
    """Attention of each prompt's tokens to its own image tokens, projections folded into the tokens.

    q: B x T x C; k_in (image + pe), v_in (image): B x N x C. Returns B x T x C.
    """
    import torch

    heads = attn.num_heads
    qh = _split_heads(attn.q_proj(q), heads)  # B x H x T x d
    b, _, t, d = qh.shape
    wk, _ = _head_weights(attn.k_proj, heads)  # q . b_k is constant over the image: it drops out of the softmax
    q_img = torch.einsum("bhtd,hdc->bhtc", qh / math.sqrt(d), wk).reshape(b, heads * t, -1)  # B x HT x C, scaled
    a = torch.softmax(q_img @ k_in.transpose(1, 2), dim=-1)  # B x HT x N
    mixed = (a @ v_in).reshape(b, heads, t, -1)  # B x H x T x C: the attention-weighted image, per head and token
    wv, bv = _head_weights(attn.v_proj, heads)
    out = torch.einsum("bhtc,hdc->bhtd", mixed, wv) + bv[None, :, None, :]  # = attention output (weights sum to 1)
    return attn.out_proj(_merge_heads(out))


def _image_to_tokens(attn: Any, q_in: Any, k: Any, v: Any, q_heads_t: Any = None) -> tuple[Any, Any]:
    """Attention of every image token to its prompt's T tokens, as two factors: output = ``a^T @ u``.

    q_in: B x N x C image tokens (+ pe), or None with ``q_heads_t`` = the shared
    ``q_proj(image + pe)`` split into heads and transposed (H x d x N); k (tokens + pe),
    v (tokens): B x T x C. Returns the attention weights a: B x HT x N (token-major:
    the softmax over tokens runs on contiguous rows of N) and u: B x HT x C, each
    token's value through the output projection, with the projection's bias folded in
    (each head's weights sum to 1: ``bias / H`` a row). The caller adds
    ``a^T @ u`` to the image side in place (``baddbmm``): no B x N x C temporary.
    """
    import torch

    heads = attn.num_heads
    kh = _split_heads(attn.k_proj(k), heads)  # B x H x T x d
    vh = _split_heads(attn.v_proj(v), heads)
    b, _, t, d = kh.shape
    if q_heads_t is not None:  # shared image queries: per prompt, one product per head into its B x H x T x N slot
        dtype = torch.promote_types(kh.dtype, q_heads_t.dtype)
        ks, qt = (kh / math.sqrt(d)).to(dtype), q_heads_t.to(dtype)
        s = torch.empty((b, heads, t, qt.shape[-1]), dtype=dtype, device=ks.device)
        for i in range(b):
            torch.bmm(ks[i], qt, out=s[i])
    else:
        wq, bq = _head_weights(attn.q_proj, heads)
        k_img = torch.einsum("bhtd,hdc->bhtc", kh, wq).reshape(b, heads * t, -1) / math.sqrt(d)  # B x HT x C
        bias = torch.einsum("hd,bhtd->bht", bq, kh).reshape(b, heads * t, 1) / math.sqrt(d)
        s = torch.baddbmm(bias, k_img, q_in.transpose(1, 2))  # B x HT x N
    a = _softmax_over_tokens(s.view(b, heads, t, -1))  # B x H x T x N
    wo = attn.out_proj.weight  # C x I
    u = (
        torch.einsum("bhtd,chd->bhtc", vh, wo.reshape(wo.shape[0], heads, d)) + attn.out_proj.bias / heads
    )  # B x H x T x C
    return a.reshape(b, heads * t, -1), u.reshape(b, heads * t, -1)


def _with_pe(keys: Any, pe: Any, buffer: Any) -> Any:
    """``keys + pe`` (B x N x C), written into ``buffer`` when there is one: one B x N x C buffer per decoder call."""
    import torch

    return keys + pe if buffer is None else torch.add(keys, pe, out=buffer)


def _upscale_tokens(parts: list, tokens: Any) -> Any:
    """The plain upscaling layout on channels-last tokens: M x C -> M x 16 x C2.

    Each 2x2, stride-2 transposed convolution touches each input pixel alone, so
    it is one matrix product per token; LayerNorm2d is a layer norm over channels.
    Output pixel order per token: (dy1, dx1, dy2, dx2) -> pixel (4i + 2 dy1 + dy2, 4j + 2 dx1 + dx2).
    """
    import torch
    import torch.nn.functional as F

    conv1, norm, act1, conv2, act2 = parts
    c, c1, c2 = tokens.shape[1], conv1.out_channels, conv2.out_channels
    y = torch.addmm(conv1.bias.repeat(4), tokens, conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)).reshape(
        -1, 4, c1
    )  # in x (dy, dx, out)
    y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
    return act2(
        torch.addmm(
            conv2.bias.repeat(4), y.reshape(-1, c1), conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        ).reshape(-1, 16, c2)
    )


def upscale_grid(decoder: Any, keys: Any, h: int, w: int, hyper_in: Any) -> Any:
    """``decoder.output_upscaling`` then the hypernetwork dot product, channels-last.

    keys: B x N x C (the transformer's image side, N = h*w); hyper_in: B x M x C2.
    Returns mask logits B x M x 4h x 4w.

    The two 2x2, stride-2 transposed convolutions touch each input pixel alone,
    so each is one matrix product on the channels-last tokens (no transpose of
    the image side, one fused layer norm over channels). Other upscaling
    layouts go through the module itself.
    """
    seq = decoder.output_upscaling
    b, _, c = keys.shape
    parts = list(seq)
    if not _plain_upscaling(decoder):
        up = seq(keys.transpose(1, 2).reshape(b, c, h, w))
        return (hyper_in @ up.reshape(b, up.shape[1], -1)).reshape(b, -1, up.shape[2], up.shape[3])
    y = _upscale_tokens(parts, keys.reshape(b * h * w, c)).reshape(b, h * w * 16, -1)  # B x (h w dy1 dx1 dy2 dx2) x C2
    m = hyper_in.shape[1]
    masks = (y @ hyper_in.transpose(1, 2)).reshape(b, h, w, 2, 2, 2, 2, m)  # pixel (4i + 2 dy1 + dy2, 4j + 2 dx1 + dx2)
    return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)


def _plain_upscaling(decoder: Any) -> bool:
    """The library's upscaling layout: 2x2 stride-2 transposed conv, LayerNorm2d, act, 2x2 stride-2 transposed conv,
    act."""
    import torch

    parts = list(decoder.output_upscaling)
    return (
        len(parts) == 5
        and all(
            isinstance(parts[i], torch.nn.ConvTranspose2d)
            and parts[i].kernel_size == (2, 2)
            and parts[i].stride == (2, 2)
            and parts[i].padding == (0, 0)
            and parts[i].output_padding == (0, 0)
            and parts[i].groups == 1
            and parts[i].dilation == (1, 1)
            and parts[i].bias is not None
            for i in (0, 3)
        )
        and type(parts[1]).__name__ == "LayerNorm2d"
    )


def upscale_windows(decoder: Any, keys: Any, hw: tuple[int, int], hyper_in: Any, windows: Any) -> list[Any]:
    """Mask logits of each prompt inside its own window of the token grid only.

    Arguments:
      keys: B x N x C, the transformer's image side (N = h*w, row-major).
      hw: (h, w) of the token grid.
      hyper_in: B x C2, the chosen mask token's hypernetwork output.
      windows: B x 4 int, XYXY in tokens (exclusive ends), inside [0, w] x [0, h].

    Returns:
      B tensors of logits ``4 (y1 - y0) x 4 (x1 - x0)``: exactly the library's
      low-res logits at those pixels. The two 2x2, stride-2 transposed
      convolutions and the channel norm act on each token alone, so the tokens
      of all windows are gathered into one batch and nothing outside them is
      computed.
    """
    import torch

    b, n, c = keys.shape
    h, w = hw
    win = [tuple(int(v) for v in row) for row in windows.tolist()]
    if not _plain_upscaling(decoder):  # another layout: run the module on the whole grid, then crop
        full = upscale_grid(decoder, keys, h, w, hyper_in[:, None])[:, 0]
        return [full[i, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1] for i, (x0, y0, x1, y1) in enumerate(win)]
    grid = torch.arange(n, device=keys.device).reshape(h, w)
    index = torch.cat([(grid[y0:y1, x0:x1] + i * n).reshape(-1) for i, (x0, y0, x1, y1) in enumerate(win)])
    owner = torch.cat(
        [torch.full(((y1 - y0) * (x1 - x0),), i, device=keys.device) for i, (x0, y0, x1, y1) in enumerate(win)]
    )
    y = _upscale_tokens(list(decoder.output_upscaling), keys.reshape(b * n, c).index_select(0, index))  # M x 16 x C2
    logits = torch.bmm(y, hyper_in.index_select(0, owner)[:, :, None])[
        :, :, 0
    ]  # M x 16: (dy1, dx1, dy2, dx2) per token
    out, start = [], 0
    for x0, y0, x1, y1 in win:
        th, tw = y1 - y0, x1 - x0
        part = logits[start : start + th * tw].reshape(th, tw, 2, 2, 2, 2)
        out.append(part.permute(0, 2, 4, 1, 3, 5).reshape(4 * th, 4 * tw))  # pixel (4i + 2 dy1 + dy2, 4j + 2 dx1 + dx2)
        start += th * tw
    return out


class SharedImage:
    """The per-image part of decoding: computed once, used by every chunk of prompts of that image.

    image, pe: N x C (image embedding + dense prompt embedding; positional
    encoding); ``first``: the first transformer layer's image-side projections,
    split into heads: token -> image keys and values H x N x d, image -> token
    queries transposed, H x d x N.
    """

    def __init__(self, decoder: Any, image_embedding: Any, image_pe: Any, dense: Any):
        _, c, h, w = image_embedding.shape
        if dense.shape[0] != 1:
            raise ValueError(
                f"SharedImage: expected one shared dense embedding 1 x {c} x {h} x {w}, got {tuple(dense.shape)}"
            )
        self.hw = (h, w)
        self.image = (image_embedding + dense).flatten(2).transpose(1, 2)[0].contiguous()  # N x C
        self.pe = image_pe.flatten(2).transpose(1, 2)[0].contiguous()
        self.image_and_pe = self.image + self.pe
        layers = decoder.transformer.layers
        self.first = None
        if len(layers):
            t2i, i2t = layers[0].cross_attn_token_to_image, layers[0].cross_attn_image_to_token
            kh, vh = (
                _split_heads(x, t2i.num_heads).contiguous()
                for x in (t2i.k_proj(self.image_and_pe), t2i.v_proj(self.image))
            )
            q = i2t.q_proj(self.image_and_pe)  # N x I -> H x d x N: the image-to-token scores come out token-major
            self.first = (kh, vh, q.T.reshape(i2t.num_heads, -1, q.shape[0]).contiguous())


def decode_tokens(decoder: Any, shared: SharedImage, sparse: Any, multimask_output: bool) -> tuple[Any, Any, Any]:
    """The two-way transformer and the heads of ``MaskDecoder`` for B prompts of the image in ``shared``.

    Returns the image side ``keys`` B x N x C, the hypernetwork outputs B x M x C2
    and predicted IoU B x M (M = 3 with ``multimask_output``, else 1).
    """
    import torch

    tf = decoder.transformer
    b = sparse.shape[0]
    image, pe = shared.image, shared.pe
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    point_pe = torch.cat(
        (out_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1
    )  # B x T x C: the tokens, also their pe

    queries, keys, keys_pe = point_pe, None, None
    for layer in tf.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = queries + point_pe
        if keys is None:  # first layer: the image side is the same for every prompt
            kh, vh, qh = shared.first
            queries = layer.norm2(queries + _tokens_to_shared_image(layer.cross_attn_token_to_image, q, kh, vh))
            queries = layer.norm3(queries + layer.mlp(queries))
            a, u = _image_to_tokens(layer.cross_attn_image_to_token, None, queries + point_pe, queries, q_heads_t=qh)
            keys = layer.norm4(torch.baddbmm(image.expand(b, -1, -1), a.transpose(1, 2), u))  # B x N x C
        else:
            keys_pe = _with_pe(keys, pe, keys_pe)
            queries = layer.norm2(queries + _tokens_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            a, u = _image_to_tokens(layer.cross_attn_image_to_token, keys_pe, queries + point_pe, queries)
            keys = layer.norm4(
                keys.baddbmm_(a.to(keys.dtype).transpose(1, 2), u.to(keys.dtype))
            )  # in place (not autocast): the previous keys are not used again
    if keys is None:  # a transformer without layers
        keys = image.expand(b, -1, -1)
    # The final attention acts on each token alone, and only the IoU token and the mask tokens
    # asked for are read after it: the other tokens (unused mask tokens, prompt points) are left out.
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    token_ids = list(range(decoder.num_mask_tokens)[mask_slice])
    read = [0] + [1 + i for i in token_ids]
    queries, point_pe = queries[:, read], point_pe[:, read]
    keys_pe = _with_pe(keys, pe, keys_pe)
    queries = tf.norm_final_attn(
        queries + _tokens_to_image(tf.final_attn_token_to_image, queries + point_pe, keys_pe, keys)
    )

    iou_pred = decoder.iou_prediction_head(queries[:, 0, :])[:, mask_slice]
    hyper_in = torch.stack(
        [decoder.output_hypernetworks_mlps[i](queries[:, 1 + j, :]) for j, i in enumerate(token_ids)], dim=1
    )  # B x M x C2
    return keys, hyper_in, iou_pred


def decode_prompts(decoder: Any, shared: SharedImage, sparse: Any, multimask_output: bool) -> tuple[Any, Any]:
    """``MaskDecoder(...)`` for B prompts of the image in ``shared``.

    Arguments:
      decoder: a ``segment_anything.modeling.MaskDecoder``.
      shared: :class:`SharedImage` of the image (and its dense prompt embedding).
      sparse: B x S x C sparse prompt embeddings (points, box corners).
      multimask_output: as in ``MaskDecoder.forward``.

    Returns:
      low-res mask logits B x M x 4h x 4w and predicted IoU B x M (M = 3 with
      ``multimask_output``, else 1), as ``MaskDecoder.forward`` returns them.
    """
    keys, hyper_in, iou_pred = decode_tokens(decoder, shared, sparse, multimask_output)
    return upscale_grid(decoder, keys, *shared.hw, hyper_in), iou_pred


def decode_prompts_one_image(
    decoder: Any, image_embedding: Any, image_pe: Any, dense: Any, sparse: Any, multimask_output: bool
) -> tuple[Any, Any]:
    """:func:`decode_prompts` in one call: image_embedding, image_pe, dense 1 x C x h x w; sparse B x S x C."""
    return decode_prompts(decoder, SharedImage(decoder, image_embedding, image_pe, dense), sparse, multimask_output)
