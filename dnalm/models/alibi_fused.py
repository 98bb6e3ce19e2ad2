"""ALiBi through PyTorch's fused CPU flash-attention kernel, with no (heads × L × L) bias in memory.

Encoders whose rows have consecutive positions and no padded key (pretraining windows): with the keys
taken in reverse order, key j' sits at T−1−j', so the bias −m·|i − (T−1−j')| depends on i + j' only.
That (T × T) Hankel matrix is a strided view of one line of 2T−1 values (row i starts one value
after row i−1), which the kernel reads as its additive mask: one non-causal pass on D-wide heads,
and memory that grows with T, not T².

Other encoders (padded keys, positions that restart) take two causal passes, and decoders one:
for keys at or before the query (positions non-decreasing, so j ≤ i means p_j ≤ p_i) the bias
−m·(p_i − p_j) is a row constant −m·p_i, which softmax ignores, plus m·p_j, which one extra
column folds into the scores: queries get a column of ones, keys the column m·p_j/scale. So the
causal part is the fused kernel's own causal attention on (D+1)-wide heads, and its log-sum-exp,
less m·p_i, is the true one. Keys after the query (j > i, bias −m·(p_j − p_i)) are the same on
the reversed sequence, shifted by one key so that the diagonal is counted once; the shifted-in
key gets a score that nothing sees. An encoder's output is the two halves weighted by their
log-sum-exps; the backward passes of the two halves with the gradient split by the same weights
(and the combined output, which the kernel only uses for its row sums) give the exact gradient.

Exact up to fp32 rounding of m·p (about 1e-4 relative at 8k positions), so it serves fp32 only.
Far keys' exp() lands in the denormal range, which x86 computes several times slower: importing
``dnalm.utils.devices`` (as ``dnalm.models`` does) turns on flush-to-zero (see there), which made this 3× faster at 8k.
The kernel is PyTorch's CPU one (``_scaled_dot_product_flash_attention_for_cpu``, which returns
the log-sum-exp); on CUDA, flash-attn takes ``alibi_slopes`` itself. Padded keys get the same
unseen score as the shifted-in key.
"""

from __future__ import annotations

import math

import torch

FORWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
UNSEEN = -1e20  # a key column value whose score no softmax row notices


# Below this length an encoder's two causal halves cost more than one pass with the explicit bias
# (docs/benchmarks/alibi.json: 0.019 s against 0.015 s at 1,024 tokens, 0.064 s against 0.089 s at 2,048).
SYMMETRIC_FROM = 2048


ONE_LINE, CAUSAL_PASSES = "one line", "causal passes"


def path(
    q: torch.Tensor,
    k: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    dropout: float,
    causal: bool,
    key_mask: torch.Tensor | None = None,
) -> str | None:
    """ONE_LINE, CAUSAL_PASSES, or None (the caller's explicit bias). The shape checks come first: the value checks
    after them break a torch.compile graph, and Inductor corrupted memory around such breaks (see
    attention._one_bias_for_the_batch), so a compiled short encoder must be turned away before them."""
    if not (q.device.type == "cpu" and q.dtype == torch.float32 and dropout == 0.0 and q.shape[2] == k.shape[2]):
        return None
    one_line = not causal and not torch.compiler.is_compiling()
    if not (one_line or causal or q.shape[2] >= SYMMETRIC_FROM) or not torch.equal(q_pos, k_pos):
        return None
    if one_line and _one_line_serves(q_pos, key_mask):
        return ONE_LINE
    if (causal or q.shape[2] >= SYMMETRIC_FROM) and bool((q_pos[:, 1:] >= q_pos[:, :-1]).all()):
        return CAUSAL_PASSES
    return None


def applicable(q, k, q_pos, k_pos, dropout: float, causal: bool, key_mask: torch.Tensor | None = None) -> bool:
    return path(q, k, q_pos, k_pos, dropout, causal, key_mask) is not None


def fused_alibi(
    q,
    k,
    v,
    *,
    slopes: torch.Tensor,
    positions: torch.Tensor,
    key_mask: torch.Tensor | None,
    causal: bool,
    chosen: str | None = None,
) -> torch.Tensor:
    """q, k, v (B, H, T, D); positions (B, T), non-decreasing; key_mask (B, T) True for real tokens; ``chosen``,
    when given, is what ``path`` returned for them (so that its checks do not run twice)."""
    if chosen is None:
        chosen = ONE_LINE if not causal and _one_line_serves(positions, key_mask) else CAUSAL_PASSES
    if chosen == ONE_LINE:
        return _KeysReversed.apply(q, k, v, slopes)
    return by_causal_passes(q, k, v, slopes=slopes, positions=positions, key_mask=key_mask, causal=causal)


def by_causal_passes(q, k, v, *, slopes, positions, key_mask, causal) -> torch.Tensor:
    """The (D+1)-wide causal pass(es): a decoder's only path, an encoder's when one line of bias cannot serve."""
    return _CausalHalves.apply(q, k, v, slopes, positions, key_mask, causal)


def _one_line_serves(positions: torch.Tensor, key_mask: torch.Tensor | None) -> bool:
    """Every row's positions step by one and no key is padded. Not under torch.compile (``path``), where
    Inductor is not known to keep a view whose rows overlap in memory."""
    if torch.compiler.is_compiling() or (key_mask is not None and not bool(key_mask.all())):
        return False
    return bool((positions[:, 1:] - positions[:, :-1] == 1).all())


def keys_reversed_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """(1, H, T, T): bias[i, j'] = −m·|i − (T−1−j')|, the ALiBi bias against the keys in reverse order, as a view
    of one (H, 2T−1) line."""
    offsets = torch.arange(2 * length - 1, dtype=torch.float32, device=slopes.device) - (length - 1)
    line = (-slopes.to(torch.float32)[:, None] * offsets.abs()).contiguous()
    return line.as_strided((1, line.shape[0], length, length), (0, 2 * length - 1, 1, 1))


class _KeysReversed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes):
        scale = 1 / math.sqrt(q.shape[-1])
        mask = keys_reversed_bias(slopes, q.shape[2])
        k, v = k.flip(2), v.flip(2)
        out, lse = FORWARD(q, k, v, is_causal=False, attn_mask=mask, scale=scale)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out, lse, slopes)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, slopes = ctx.saved_tensors
        mask = keys_reversed_bias(slopes, q.shape[2])
        dq, dk, dv = BACKWARD(grad.contiguous(), q, k, v, out, lse, 0.0, False, attn_mask=mask, scale=ctx.scale)
        return dq, dk.flip(2), dv.flip(2), None


def _widen(x: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, column.unsqueeze(-1).to(x.dtype)], -1)


def _reversed_after(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The sequence reversed, shifted one place on: ``first``, then x[T-1], …, x[1]."""
    return torch.cat([first, x.flip(2)[:, :, :-1]], 2)


class _CausalHalves(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, slopes, positions, key_mask, causal):
        scale = 1 / math.sqrt(q.shape[-1])
        shift = slopes.to(torch.float32)[None, :, None] * positions[:, None, :].to(torch.float32)  # m·p (B, H, T)
        hidden = 0.0 if key_mask is None else (~key_mask)[:, None, :].to(torch.float32) * UNSEEN
        ones, zeros = torch.ones_like(shift), torch.zeros_like(shift)
        wide_q, wide_v = _widen(q, ones), _widen(v, zeros)
        left = (wide_q, _widen(k, shift / scale + hidden), wide_v)
        out_left, lse_left = FORWARD(*left, is_causal=True, scale=scale)
        ctx.scale, ctx.causal = scale, causal
        if causal:
            ctx.save_for_backward(*left, out_left, lse_left)
            return out_left[..., :-1]
        nothing = torch.zeros_like(wide_q[:, :, :1])
        unseen_key = _widen(torch.zeros_like(q[:, :, :1]), torch.full_like(shift[:, :, :1], UNSEEN))
        right = (
            wide_q.flip(2),
            _reversed_after(_widen(k, -shift / scale + hidden), unseen_key),
            _reversed_after(wide_v, nothing),
        )
        out_right, lse_right = FORWARD(*right, is_causal=True, scale=scale)
        weight = torch.sigmoid((lse_left - shift) - (lse_right.flip(2) + shift)).unsqueeze(-1)  # the left half's share
        out = weight * out_left + (1 - weight) * out_right.flip(2)
        ctx.save_for_backward(*left, *right, out, lse_left, lse_right, weight)
        return out[..., :-1]

    @staticmethod
    def backward(ctx, grad):
        grad = torch.cat([grad, torch.zeros_like(grad[..., :1])], -1).contiguous()
        if ctx.causal:
            q, k, v, out, lse = ctx.saved_tensors
            dq, dk, dv = BACKWARD(grad, q, k, v, out, lse, 0.0, True, scale=ctx.scale)
            return dq[..., :-1], dk[..., :-1], dv[..., :-1], None, None, None, None
        ql, kl, vl, qr, kr, vr, out, lse_left, lse_right, weight = ctx.saved_tensors
        dq, dk, dv = BACKWARD(weight * grad, ql, kl, vl, out, lse_left, 0.0, True, scale=ctx.scale)
        dqr, dkr, dvr = BACKWARD(
            ((1 - weight) * grad).flip(2), qr, kr, vr, out.flip(2), lse_right, 0.0, True, scale=ctx.scale
        )
        dq = dq + dqr.flip(2)
        dk[:, :, 1:] += dkr[:, :, 1:].flip(2)  # right key j'' (≥ 1) is key T − j''
        dv[:, :, 1:] += dvr[:, :, 1:].flip(2)
        return dq[..., :-1], dk[..., :-1], dv[..., :-1], None, None, None, None
