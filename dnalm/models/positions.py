"""Position schemes that act inside attention: ALiBi slopes and biases, rotary embeddings."""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Press et al.: a geometric sequence starting at 2^(-8/n); for n not a power of two, interleave the next power's."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool) -> torch.Tensor:
    """Additive bias (B, H, T, S): −slope·|i−j| (encoders, symmetric) or −slope·(i−j) for j ≤ i (decoders)."""
    distance = q_pos[:, None, :, None] - k_pos[:, None, None, :]
    distance = distance.clamp(min=0) if causal else distance.abs()
    return -slopes.to(torch.float32)[None, :, None, None] * distance.to(torch.float32)


class Rotary(torch.nn.Module):
    """Rotary position embedding (RoFormer), applied to queries and keys at their position ids."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, D) rotated by positions (B, T)."""
        angles = positions[:, None, :, None].to(torch.float32) * self.inv_freq
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
        rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        return rotated.to(x.dtype)
