"""Position schemes that act inside attention: ALiBi slopes and biases, rotary embeddings."""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Press et al.: a geometric sequence starting at 2^(-8/n); for n not a power of two, interleave the next power's.

    Computed in fp32 on ``device`` (no host copy): the model keeps no slope buffer, which a bf16 cast
    of the module would round.
    """
    closest = 2 ** math.floor(math.log2(n_heads))
    exponents = torch.arange(1, closest + 1, device=device, dtype=torch.float32) * (-8 / closest)
    if closest < n_heads:  # the odd powers of the next power of two's sequence
        odd = torch.arange(n_heads - closest, device=device, dtype=torch.float32) * 2 + 1
        exponents = torch.cat([exponents, odd * (-8 / (2 * closest))])
    return torch.exp2(exponents)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool) -> torch.Tensor:
    """Additive bias (B, H, T, S): −slope·|i−j| (encoders, symmetric) or −slope·(i−j) for j ≤ i (decoders)."""
    distance = q_pos[:, None, :, None] - k_pos[:, None, None, :]
    distance = distance.clamp(min=0) if causal else distance.abs()
    return -slopes.to(torch.float32)[None, :, None, None] * distance.to(torch.float32)


class Rotary(torch.nn.Module):
    """Rotary position embedding (RoFormer), applied to queries and keys at their position ids.

    Frequencies and angles are computed in fp32 in every forward, whatever the module's dtype: a bf16
    frequency buffer would put positions a few thousand apart at the same angle. The rotation itself runs in
    the activations' dtype (cos and sin cast to it, as Llama's does), so bf16 queries and keys are not copied
    to fp32 and back. ``scale`` > 1 is position
    interpolation (Chen et al. 2023): positions are divided by it, so a window ``scale`` times longer than the
    trained one spans the angles the model has seen.
    """

    def __init__(self, head_dim: int, theta: float, scale: float = 1.0):
        super().__init__()
        self.head_dim, self.theta, self.scale = head_dim, theta, scale

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) rotated by positions (B, T)."""
        exponents = torch.arange(0, self.head_dim, 2, device=x.device, dtype=torch.float32) / self.head_dim
        inv_freq = self.theta**-exponents
        angles = positions[:, None, :, None].to(torch.float32) * (inv_freq / self.scale)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
