"""dnalm's transformer for ``transformers`` (``trust_remote_code=True``), with no dnalm installed.

Written by dnalm's exporter beside the weights; the same computation as ``dnalm.models.Transformer``
for every setting it exports (ALiBi, RoPE, learned or no positions; RMSNorm or LayerNorm;
SwiGLU or GELU; segment ids of multi-view inputs; a convolution stem), and tested for equal
logits. Attention is computed explicitly (softmax of scores plus ALiBi bias and masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput


class DnalmConfig(PretrainedConfig):
    """dnalm's model settings as flat attributes (``positions``, ``mlp``, ``d_model``, …)."""

    model_type = "dnalm"


def _norm(c):
    return nn.RMSNorm(c.d_model, eps=c.norm_eps) if c.norm == "rmsnorm" else nn.LayerNorm(c.d_model, eps=c.norm_eps)


def _hidden(c) -> int:
    if c.mlp_hidden:
        return c.mlp_hidden
    width = 8 * c.d_model / 3 if c.mlp == "swiglu" else 4 * c.d_model
    return int(-(-width // 64) * 64)


def alibi_slopes(n_heads: int, device) -> torch.Tensor:
    closest = 2 ** math.floor(math.log2(n_heads))
    exponents = torch.arange(1, closest + 1, device=device, dtype=torch.float32) * (-8 / closest)
    if closest < n_heads:
        odd = torch.arange(n_heads - closest, device=device, dtype=torch.float32) * 2 + 1
        exponents = torch.cat([exponents, odd * (-8 / (2 * closest))])
    return torch.exp2(exponents)


def rotate(x, positions, theta):
    """Rotary embedding on interleaved pairs (dims 0-1, 2-3, …), angles in fp32."""
    dim = x.shape[-1]
    inv_freq = theta ** -(torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = positions[:, None, :, None].float() * inv_freq
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.out = nn.Linear(c.d_model, c.d_model, bias=False)

    def forward(self, x, positions, key_mask):
        c, (batch, length, _) = self.c, x.shape
        heads, head_dim = c.n_heads, c.d_model // c.n_heads
        q, k, v = self.qkv(x).view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if c.positions == "rope":
            q, k = rotate(q, positions, c.rope_theta), rotate(k, positions, c.rope_theta)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(head_dim)
        distance = positions[:, None, :, None] - positions[:, None, None, :]
        causal = c.arch == "decoder"
        if c.positions == "alibi":
            distance_used = distance.clamp(min=0) if causal else distance.abs()
            scores = scores - alibi_slopes(heads, x.device)[None, :, None, None] * distance_used.float()
        blocked = torch.zeros_like(scores, dtype=torch.bool)
        if causal:
            blocked = blocked | (distance < 0)
        if key_mask is not None:
            blocked = blocked | ~key_mask[:, None, None, :]
        weights = torch.nan_to_num(torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)).to(v.dtype)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.swiglu = c.mlp == "swiglu"
        self.up = nn.Linear(c.d_model, _hidden(c) * (2 if self.swiglu else 1), bias=False)
        self.down = nn.Linear(_hidden(c), c.d_model, bias=False)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = _norm(c), Attention(c), _norm(c), MLP(c)

    def forward(self, x, positions, key_mask):
        x = x + self.attn(self.norm1(x), positions, key_mask)
        return x + self.mlp(self.norm2(x))


class ConvBlock(nn.Module):
    def __init__(self, c, dilation):
        super().__init__()
        self.norm = _norm(c)
        self.conv = nn.Conv1d(c.d_model, c.d_model, c.cnn_kernel, dilation=dilation, padding=dilation * (c.cnn_kernel // 2))

    def forward(self, x, mask):
        h = self.norm(x) * mask
        return x + F.gelu(self.conv(h.transpose(1, 2)).transpose(1, 2))


class HeadTransform(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense, self.norm = nn.Linear(c.d_model, c.d_model, bias=False), _norm(c)

    def forward(self, hidden):
        return self.norm(F.gelu(self.dense(hidden)))


class DnalmPreTrainedModel(PreTrainedModel):
    config_class = DnalmConfig
    base_model_prefix = "dnalm"

    def __init__(self, config: DnalmConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.segments = nn.Embedding(c.num_segments, c.d_model) if c.num_segments > 1 else None
        self.positions = nn.Embedding(c.max_seq_len, c.d_model) if c.positions == "learned" else None
        self.conv_stem = nn.ModuleList(ConvBlock(c, 2 ** (i % 4)) for i in range(c.conv_layers)) if c.conv_layers else None
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = _norm(c)
        self.head_transform = HeadTransform(c) if c.lm_head == "transform" else None
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)

    def run(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
        x = self.embed(input_ids)
        if self.segments is not None:
            x = x + self.segments(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        if self.positions is not None:
            x = x + self.positions(position_ids)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        if self.conv_stem is not None:
            mask = (key_mask if key_mask is not None else torch.ones_like(input_ids, dtype=torch.bool))[..., None].to(x.dtype)
            for conv in self.conv_stem:
                x = conv(x, mask)
        for block in self.blocks:
            x = block(x, position_ids, key_mask)
        hidden = self.norm(x)
        features = self.head_transform(hidden) if self.head_transform is not None else hidden
        return self.head(features), hidden


class DnalmForMaskedLM(DnalmPreTrainedModel):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        logits, hidden = self.run(input_ids, attention_mask, token_type_ids, position_ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=(hidden,) if output_hidden_states else None)


class DnalmForCausalLM(DnalmPreTrainedModel):
    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, output_hidden_states=None, **kwargs):
        logits, hidden = self.run(input_ids, attention_mask, None, position_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=(hidden,) if output_hidden_states else None)
