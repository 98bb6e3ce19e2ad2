"""Performer attention: FAVOR+ random features from performer-pytorch, causal prefix sums of our own.

The random projection (and its redraw) is performer-pytorch's ``FastAttention``'s; the softmax
feature map is its ``softmax_kernel`` written as one matmul (tested equal), with padded keys
zeroed in feature space; non-causal attention is its ``linear_attention``. Causal attention is computed chunk by chunk
("Sub-Linear Memory Performers"): inside a chunk of C tokens an explicit C×C lower-triangular
product, across chunks the running sums S = Σ φ(k)ᵀv and z = Σ φ(k). Memory grows linearly
with sequence length (no T×features×head_dim tensor, which performer-pytorch's non-CUDA causal
path builds), and the result equals naive causal linear attention. Decoding carries (S, z) as
a recurrent state: constant memory per generated token.

In the causal form keys are mapped without performer-pytorch's data-dependent stabiliser (the
maximum over all keys, which would let a later token change earlier outputs by rounding); queries
keep their per-token one, which cancels in the normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6


class PerformerFeatures(nn.Module):
    """One layer's FAVOR+ feature map (its random projection is a buffer, redrawn on request)."""

    def __init__(self, head_dim: int, nb_features: int, kernel: str = "softmax", chunk: int = 128):
        super().__init__()
        from performer_pytorch import FastAttention

        self.fast = FastAttention(
            dim_heads=head_dim,
            nb_features=nb_features,
            causal=False,
            generalized_attention=kernel == "relu",
            kernel_fn=nn.ReLU(),
        )
        self.kernel, self.chunk = kernel, chunk

    def redraw(self) -> None:
        """New random features (FAVOR+ feature redraw during training)."""
        self.fast.redraw_projection_matrix(self.fast.projection_matrix.device)

    def features(self, x: torch.Tensor, is_query: bool, key_mask=None, stabilise_keys: bool = True) -> torch.Tensor:
        projection = self.fast.projection_matrix.to(x.dtype)
        if self.kernel == "relu":
            from performer_pytorch.performer_pytorch import generalized_kernel

            features = generalized_kernel(x, projection_matrix=projection, kernel_fn=nn.ReLU(), device=x.device)
        else:
            features = softmax_features(x, projection, is_query=is_query, key_mask=key_mask, stabilise=stabilise_keys)
        if key_mask is not None and not is_query:
            features = features * key_mask[:, None, :, None].to(features.dtype)
        return features

    def attend(self, q, k, v, *, causal: bool, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q_features = self.features(q, is_query=True)
        k_features = self.features(k, is_query=False, key_mask=key_mask, stabilise_keys=not causal)
        if not causal:
            from performer_pytorch.performer_pytorch import linear_attention

            return linear_attention(q_features, k_features, v)
        return causal_linear_attention(q_features, k_features, v, self.chunk)

    def step(self, q, k, v, state: tuple[torch.Tensor, torch.Tensor] | None):
        """Causal attention of new tokens given the running (S, z) of the tokens before them."""
        q_features = self.features(q, is_query=True)
        k_features = self.features(k, is_query=False, stabilise_keys=False)
        return causal_linear_attention(q_features, k_features, v, self.chunk, state=state, return_state=True)


def softmax_features(
    x: torch.Tensor,
    projection: torch.Tensor,
    *,
    is_query: bool,
    key_mask=None,
    stabilise: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """FAVOR+ positive features exp(w·x − |x|²/2)/√m, x scaled by d^-1/4: performer-pytorch's softmax_kernel.

    Written as one matmul and one broadcast (faster than its einsum over a repeated projection).
    The shift that keeps exp finite is per token for queries (it cancels in the normalisation),
    shared by all real keys of a sequence otherwise (padding excluded, so it cannot change the
    result), and absent when ``stabilise`` is False (causal: no key may depend on later ones).
    """
    normaliser = x.shape[-1] ** -0.25
    projected = torch.matmul(x * normaliser, projection.t())
    offset = (x * x).sum(-1, keepdim=True) * (normaliser**2 / 2)
    if is_query:
        offset = offset + projected.detach().amax(-1, keepdim=True)
    elif stabilise:
        real = projected.detach()
        if key_mask is not None:
            real = real.masked_fill(~key_mask[:, None, :, None], float("-inf"))
        offset = offset + real.amax((-1, -2), keepdim=True)
    return (torch.exp(projected - offset) + eps) * projection.shape[0] ** -0.5


def causal_linear_attention(q, k, v, chunk: int, state=None, return_state: bool = False):
    """out_i = Σ_{j≤i} (q_i·k_j) v_j / Σ_{j≤i} q_i·k_j, chunk by chunk; q, k (B, H, T, M), v (B, H, T, D).

    Computed and accumulated in fp32 at least (the running sums add up thousands of terms, which bf16's
    8-bit mantissa cannot hold); the output comes back in v's dtype, the state stays fp32.
    """
    out_dtype = v.dtype
    compute = torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    batch, heads, length, features = q.shape
    if state is None:
        kv = q.new_zeros(batch, heads, features, v.shape[-1])
        k_sum = q.new_zeros(batch, heads, features)
    else:
        kv, k_sum = state
    outputs = []
    # split, not slicing: the backward of a slice builds a full-length zero gradient per chunk (quadratic)
    for qc, kc, vc in zip(q.split(chunk, dim=2), k.split(chunk, dim=2), v.split(chunk, dim=2)):
        scores = torch.tril(qc @ kc.transpose(-1, -2))
        numerator = qc @ kv + scores @ vc
        denominator = (qc * k_sum[:, :, None, :]).sum(-1) + scores.sum(-1)
        outputs.append(numerator / (denominator[..., None] + EPS))
        kv = kv + kc.transpose(-1, -2) @ vc
        k_sum = k_sum + kc.sum(2)
    out = (torch.cat(outputs, dim=2) if outputs else v[:, :, :0]).to(out_dtype)
    return (out, (kv, k_sum)) if return_state else out


def naive_causal_linear_attention(q, k, v):
    """The reference: the full T×T masked product (quadratic memory), for tests."""
    scores = torch.tril(q @ k.transpose(-1, -2))
    return (scores @ v) / (scores.sum(-1, keepdim=True) + EPS)
