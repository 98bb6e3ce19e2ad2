"""Attention backends: one registry of functions with one signature, chosen by ``config.attention``.

    backend(q, k, v, *, causal, q_pos, k_pos, key_mask, alibi, dropout, performer) -> out

q (B, H, T, D), k and v (B, H, S, D); ``q_pos`` (B, T) and ``k_pos`` (B, S) are position ids
(queries of an incremental decoding step sit after the cached keys); ``key_mask`` (B, S) is True
for real tokens; ``alibi`` holds the per-head slopes or None. ``eager`` is the readable
reference the others are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dnalm.models import alibi_flex, alibi_fused
from dnalm.models.positions import alibi_bias

AttentionFn = Callable[..., torch.Tensor]
ATTENTION: dict[str, AttentionFn] = {}

# PyTorch's CPU flash kernel reads each head in place, so it gets contiguous copies rather than strided views of
# the (B, T, 3·H·D) projection. In whole training steps ``dnalm bench alibi`` measured the difference within its
# noise (strided ÷ copied 0.99–1.21×); the copies cost a few MB. False only to measure the difference.
COPY_HEADS_ON_CPU = True


def register(name: str):
    def add(fn: AttentionFn) -> AttentionFn:
        ATTENTION[name] = fn
        return fn

    return add


def additive_mask(q, k, *, causal, q_pos, k_pos, key_mask, alibi) -> torch.Tensor | None:
    """Everything but the scores as one additive (B or 1, H or 1, T, S) float mask, or None. With ALiBi it is fp32
    whatever q's dtype: a bf16 bias rounds −slope·distance (by 0.03 at distance 2,000 for the gentlest slope), so
    cached bf16 decoding, which takes this path, would not see the fp32 bias training saw."""
    mask = None
    if alibi is not None:
        q_pos, k_pos, key_mask = _one_bias_for_the_batch(q_pos, k_pos, key_mask)
        mask = alibi_bias(alibi.to(q.device), q_pos, k_pos, causal)
    blocked = None
    if causal:
        blocked = k_pos[:, None, None, :] > q_pos[:, None, :, None]
    if key_mask is not None:
        padded = ~key_mask[:, None, None, :]
        blocked = padded if blocked is None else blocked | padded
    if blocked is not None:
        blocked = blocked & ~blocked.all(
            -1, keepdim=True
        )  # a query with no key to see (padding) keeps them all: finite
        dtype = mask.dtype if mask is not None else q.dtype
        minus_inf = torch.zeros(blocked.shape, dtype=dtype, device=q.device).masked_fill(blocked, float("-inf"))
        mask = minus_inf if mask is None else mask + minus_inf
    return mask


def _one_bias_for_the_batch(q_pos, k_pos, key_mask):
    """On CPU, rows that share positions (the usual case) share one (1, H, T, S) ALiBi bias, and a key mask with
    nothing padded is dropped, so that no (B, H, T, S) copy is built. The checks read tensor values, which costs
    nothing on CPU and a device sync elsewhere (on CUDA, flash-attn takes the slopes itself), so other devices
    keep the per-row bias. Under torch.compile the checks are skipped too: the graph break they force around a
    (1, H, T, S) bias corrupted memory in Inductor (torch 2.13, CPU)."""
    if q_pos.device.type != "cpu" or torch.compiler.is_compiling():
        return q_pos, k_pos, key_mask
    if q_pos.shape[0] > 1 and bool((q_pos == q_pos[:1]).all()) and bool((k_pos == k_pos[:1]).all()):
        q_pos, k_pos = q_pos[:1], k_pos[:1]
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    return q_pos, k_pos, key_mask


@register("eager")
def eager(q, k, v, *, causal, q_pos, k_pos, key_mask=None, alibi=None, dropout=0.0, performer=None):
    mask = additive_mask(q, k, causal=causal, q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, alibi=alibi)
    return _attend(q, k, v, mask, dropout)


def _attend(q, k, v, mask, dropout: float) -> torch.Tensor:
    """softmax(q·kᵀ/√d + mask)·v with the scores and the mask added in fp32 (the mask may be fp32 over bf16 q)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.float() + mask
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return F.dropout(weights, dropout) @ v


@register("sdpa")
def sdpa(q, k, v, *, causal, q_pos, k_pos, key_mask=None, alibi=None, dropout=0.0, performer=None):
    """PyTorch's fused kernels; ALiBi too: on CPU in fp32 (``alibi_fused``: decoders, unpadded encoders with
    consecutive positions, and other encoders from 2k tokens), on CUDA through FlexAttention (``alibi_flex``),
    else as an explicit bias."""
    if COPY_HEADS_ON_CPU and q.device.type == "cpu" and not torch.compiler.is_compiling():
        q, k, v = (x.contiguous() for x in (q, k, v))
    chosen = None if alibi is None else alibi_fused.path(q, k, q_pos, k_pos, dropout, causal, key_mask)
    if chosen is not None:
        return alibi_fused.fused_alibi(
            q, k, v, slopes=alibi, positions=q_pos, key_mask=key_mask, causal=causal, chosen=chosen
        )
    if alibi is not None and alibi_flex.applicable(q, k, dropout):
        return alibi_flex.flex_alibi(q, k, v, slopes=alibi, q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, causal=causal)
    plain_causal = causal and q.shape[2] == k.shape[2] and key_mask is None and alibi is None
    mask = (
        None
        if plain_causal
        else additive_mask(q, k, causal=causal, q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, alibi=alibi)
    )
    if mask is not None and mask.dtype != q.dtype:  # an fp32 ALiBi bias over bf16 q: SDPA would round it to q's dtype
        return _attend(q, k, v, mask, dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=plain_causal)


@register("flash")
def flash(q, k, v, *, causal, q_pos, k_pos, key_mask=None, alibi=None, dropout=0.0, performer=None):
    """flash-attn on CUDA half precision when installed; otherwise the ``sdpa`` backend, with PyTorch choosing the
    kernel. Restricting SDPA to its own flash kernel, as this backend once did, left out cuDNN's fused attention,
    which PyTorch picks on an H200, and made attention 1.2-1.6x slower at 8k-32k tokens
    (docs/benchmarks/gpu-h200-2026-11.md)."""
    if _flash_attn_usable(q) and (alibi is None or _positions_are_indices(q_pos, k_pos)):
        return _flash_attn(q, k, v, causal=causal, key_mask=key_mask, alibi=alibi, dropout=dropout)
    return sdpa(q, k, v, causal=causal, q_pos=q_pos, k_pos=k_pos, key_mask=key_mask, alibi=alibi, dropout=dropout)


@register("performer")
def performer(q, k, v, *, causal, q_pos, k_pos, key_mask=None, alibi=None, dropout=0.0, performer=None):
    if alibi is not None:
        raise ValueError("performer attention cannot take an ALiBi bias")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError("incremental causal Performer goes through its recurrent state (PerformerFeatures.step)")
    return performer.attend(q, k, v, causal=causal, key_mask=key_mask)


def _flash_attn_usable(q: torch.Tensor) -> bool:
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _positions_are_indices(q_pos, k_pos) -> bool:
    offset = k_pos.shape[1] - q_pos.shape[1]
    return bool(
        (k_pos == torch.arange(k_pos.shape[1], device=k_pos.device)).all() and (q_pos == k_pos[:, offset:]).all()
    )


def _flash_attn(q, k, v, *, causal, key_mask, alibi, dropout):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # flash-attn wants (B, T, H, D)
    slopes = alibi.to(q.device, torch.float32) if alibi is not None else None
    if key_mask is None or bool(key_mask.all()):
        out = flash_attn_func(q, k, v, dropout_p=dropout, causal=causal, alibi_slopes=slopes)
        return out.transpose(1, 2)
    # padded batch: unpad into one packed sequence with cumulative lengths (varlen)
    lengths = key_mask.sum(-1, dtype=torch.int32)
    cu = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    index = key_mask.flatten().nonzero().squeeze(-1)
    packed = [x.reshape(-1, *x.shape[2:])[index] for x in (q, k, v)]
    out = flash_attn_varlen_func(
        *packed, cu, cu, int(lengths.max()), int(lengths.max()), dropout_p=dropout, causal=causal, alibi_slopes=slopes
    )
    full = torch.zeros(q.shape[0] * q.shape[1], *q.shape[2:], dtype=out.dtype, device=out.device)
    full[index] = out
    return full.view(q.shape).transpose(1, 2)
