"""ALiBi on a GPU without flash-attn: PyTorch's FlexAttention, compiled, with the bias as its score_mod.

The bias −m·|p_i − p_j| (decoders: keys after the query blocked), and padded keys, are computed
inside the fused kernel from the position ids and the key mask, so no (B, H, T, S) bias is built.
On an H200 at 32k tokens (bf16, 4 heads × 32, forward + backward) an encoder's attention took
1.47× less time and 372× less memory (77 MB against 28.7 GB) than with the explicit bias
(docs/benchmarks/gpu/call2/bench/alibi.json). Keys are masked in
the score_mod rather than by a block mask: built on every call as create_block_mask does by default,
one took 10 GB at 32k tokens (call1/bench/attention.json). A decoder therefore computes the blocks
above the diagonal, which it then discards.

A query whose keys are all masked (padding) gets zeros, where the explicit bias lets it attend to
every key; such rows are padding and never reach a loss. Not for dropout (FlexAttention has none)
nor for an incremental decoding step (q shorter than k), whose one-row bias is cheap to build.
"""

from __future__ import annotations

import torch

_compiled = None


def applicable(q: torch.Tensor, k: torch.Tensor, dropout: float) -> bool:
    return q.is_cuda and dropout == 0.0 and q.shape[2] == k.shape[2]


def flex_alibi(
    q,
    k,
    v,
    *,
    slopes: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    key_mask: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """q, k, v (B, H, T, D); positions (B, T); key_mask (B, T) True for real tokens, or None."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled
    if _compiled is None:
        _compiled = torch.compile(flex_attention)  # uncompiled, FlexAttention materialises the scores
    slopes = slopes.to(q.device, torch.float32)
    keys = key_mask if key_mask is not None else torch.ones_like(k_pos, dtype=torch.bool)

    def alibi(score, b, h, q_idx, kv_idx):
        distance = q_pos[b, q_idx] - k_pos[b, kv_idx]
        blocked = ~keys[b, kv_idx]
        if causal:
            blocked = blocked | (distance < 0)
        return torch.where(blocked, -float("inf"), score - slopes[h] * distance.abs())

    return _compiled(q, k, v, score_mod=alibi)
