"""The transformer: one pre-norm block type serving the encoder (masked LM) and the decoder (causal LM).

A plain ``nn.Module``; parallelism and DeepSpeed are applied from outside. Inputs are token
ids with optional segment ids and position ids (a concatenated multi-view input restarts
positions per view, each token at its first base); the output holds per-token logits (over the
vocabulary, or per base for ``mlm_target: bases``) and, when asked, the decoding cache:
keys and values for the softmax backends, the running (S, z) sums for causal Performer.
An encoder may put dilated convolutions before its attention blocks (``conv_layers``: a hybrid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dnalm.models.attention import ATTENTION
from dnalm.models.config import ModelConfig
from dnalm.models.lean import head_loss, tiled
from dnalm.models.performer import PerformerFeatures
from dnalm.models.positions import Rotary, alibi_slopes


def check_learned_positions(last: int | None, max_seq_len: int) -> None:
    if last is not None and last >= max_seq_len:
        raise ValueError(f"position {last} is beyond max_seq_len {max_seq_len} of learned positions")


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # None when the loss was computed in chunks (``loss_chunk``)
    hidden: torch.Tensor
    cache: list | None = None
    # with ``labels``: each target's cross-entropy and whether it was predicted (0 where the label is ignored),
    # shaped like the labels; a loss weighs them (repeats, genomes) or sums them
    token_loss: torch.Tensor | None = None
    token_correct: torch.Tensor | None = None

    @property
    def loss_sum(self) -> torch.Tensor | None:
        return self.token_loss.sum() if self.token_loss is not None else None

    @property
    def correct(self) -> torch.Tensor | None:
        return self.token_correct.sum() if self.token_correct is not None else None


class NormalLinear(nn.Linear):
    """An ``nn.Linear`` (bias-free unless ``bias``, zeros) whose weight is drawn N(0, std) by its own constructor.
    ``deepspeed.zero.Init`` partitions each layer as soon as it is built, so weights set afterwards would need a gather
    per layer (the
    decoder-1.5b partition launch on 2 CPU ranks took 47 s that way, 28 s this way); set here, the partition simply
    receives them."""

    def __init__(self, in_features: int, out_features: int, std: float, bias: bool = False):
        self.std = std
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class NormalEmbedding(nn.Embedding):
    """``nn.Embedding`` drawn N(0, std) by its own constructor, as ``NormalLinear``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float):
        self.std = std
        super().__init__(num_embeddings, embedding_dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)


def residual_std(config: ModelConfig) -> float:
    """Projections back into the residual stream start smaller with depth (GPT-2): init_std / sqrt(2 · layers)."""
    return config.init_std / (2 * config.n_layers) ** 0.5


def norm_layer(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.qkv = NormalLinear(config.d_model, 3 * config.d_model, config.init_std, config.linear_bias)
        self.out = NormalLinear(config.d_model, config.d_model, residual_std(config), config.linear_bias)
        self.backend = ATTENTION[config.attention]
        self.rotary = (
            Rotary(config.head_dim, config.rope_theta, config.rope_scale) if config.positions == "rope" else None
        )
        self.performer = (
            PerformerFeatures(
                config.head_dim, config.performer_features, config.performer_kernel, config.performer_chunk
            )
            if config.attention == "performer"
            else None
        )

    def forward(self, x, positions, key_mask, cache=None):
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.config.n_heads, self.config.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        dropout = self.config.dropout if self.training else 0.0
        if self.performer is not None and self.config.causal and cache is not None:
            out, state = self.performer.step(q, k, v, cache.get("state"))
            new_cache = {"state": state, "length": cache.get("length", 0) + length}
        else:
            k_pos = positions
            if cache is not None and "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                k_pos = torch.cat([cache["pos"], positions], 1)
            new_cache = {"k": k, "v": v, "pos": k_pos} if cache is not None else None
            alibi = alibi_slopes(self.config.n_heads, q.device) if self.config.positions == "alibi" else None
            out = self.backend(
                q,
                k,
                v,
                causal=self.config.causal,
                q_pos=positions,
                k_pos=k_pos,
                key_mask=key_mask,
                alibi=alibi,
                dropout=dropout,
                performer=self.performer,
            )
        return self.out(out.transpose(1, 2).reshape(batch, length, -1)), new_cache


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.up = NormalLinear(
            config.d_model, config.hidden * (2 if self.swiglu else 1), config.init_std, config.linear_bias
        )
        self.down = NormalLinear(config.hidden, config.d_model, residual_std(config), config.linear_bias)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1, self.attn = norm_layer(config), Attention(config)
        self.norm2, self.mlp = norm_layer(config), MLP(config)
        self.dropout = nn.Dropout(config.dropout)
        self.mlp_tile = config.mlp_tile

    def forward(self, x, positions, key_mask, cache=None):
        attended, new_cache = self.attn(self.norm1(x), positions, key_mask, cache)
        x = x + self.dropout(attended)
        return x + self.dropout(tiled(lambda h: self.mlp(self.norm2(h)), x, self.mlp_tile)), new_cache


class ConvBlock(nn.Module):
    """A pre-norm residual dilated convolution: the CNN's block, and the stem of a hybrid encoder (``conv_layers``)."""

    def __init__(self, config: ModelConfig, dilation: int):
        super().__init__()
        self.norm = norm_layer(config)
        self.conv = nn.Conv1d(
            config.d_model,
            config.d_model,
            config.cnn_kernel,
            dilation=dilation,
            padding=dilation * (config.cnn_kernel // 2),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask):
        """mask (B, T, 1): 1 for real tokens, so padding never reaches a neighbour's convolution."""
        h = self.norm(x) * mask
        h = F.gelu(self.conv(h.transpose(1, 2)).transpose(1, 2))
        return x + self.dropout(h)


def conv_stack(config: ModelConfig, count: int) -> nn.ModuleList:
    """``count`` ConvBlocks with dilations 1, 2, 4, 8, 1, 2, …"""
    return nn.ModuleList(ConvBlock(config, dilation=2 ** (i % 4)) for i in range(count))


def token_mask(input_ids, attention_mask, dtype) -> torch.Tensor:
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    return mask[..., None].to(dtype)


class HeadTransform(nn.Module):
    """dense → GELU → norm, between the final norm and the output projection (BERT, ESM)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = NormalLinear(config.d_model, config.d_model, config.init_std, config.linear_bias)
        self.norm = norm_layer(config)

    def forward(self, hidden):
        return self.norm(F.gelu(self.dense(hidden)))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        std = config.init_std
        self.embed = NormalEmbedding(config.vocab_size, config.d_model, std)
        self.segments = NormalEmbedding(config.num_segments, config.d_model, std) if config.num_segments > 1 else None
        self.positions = (
            NormalEmbedding(config.max_seq_len, config.d_model, std) if config.positions == "learned" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.conv_stem = conv_stack(config, config.conv_layers) if config.conv_layers else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = norm_layer(config)
        self.head_transform = HeadTransform(config) if config.lm_head == "transform" else None
        self.head: nn.Module = NormalLinear(config.d_model, config.head_size, std, config.linear_bias)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(
        self,
        input_ids,
        *,
        segment_ids=None,
        positions=None,
        attention_mask=None,
        cache=None,
        use_cache: bool = False,
        labels=None,
        logits: bool = True,
    ) -> ModelOutput:
        """input_ids (B, T); attention_mask (B, T) True for real tokens; cache from a previous call (decoders);
        labels (B, T[, K]) aligned with the logits (a decoder's already shifted): the loss too, chunked by
        ``loss_chunk``;
        ``logits`` False: the hidden states alone (``head_logits`` projects the rows a caller needs)."""
        batch, length = input_ids.shape
        past = _cache_length(cache)
        if self.positions is not None:  # learned positions end at max_seq_len; checked without a device sync
            last = (
                past + length - 1
                if positions is None
                else int(positions.max())
                if positions.device.type == "cpu"
                else None
            )  # on an accelerator the caller checks the host batch (the trainer does)
            check_learned_positions(last, self.config.max_seq_len)
        if positions is None:
            positions = torch.arange(past, past + length, device=input_ids.device).expand(batch, length)
        x = self.embed(input_ids)
        if self.segments is not None:
            x = x + self.segments(segment_ids if segment_ids is not None else torch.zeros_like(input_ids))
        if self.positions is not None:
            x = x + self.positions(positions)
        x = self.dropout(x)
        if self.conv_stem is not None:
            mask = token_mask(input_ids, attention_mask, x.dtype)
            for conv in self.conv_stem:
                x = conv(x, mask)
        if use_cache and cache is None:
            cache = [{} for _ in self.blocks]
        key_mask = attention_mask.bool() if attention_mask is not None else None
        layer_caches = []
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            if self.config.activation_checkpointing and self.training and layer_cache is None:
                x, _ = checkpoint(block, x, positions, key_mask, use_reentrant=False)
            else:
                x, layer_cache = block(x, positions, key_mask, layer_cache)
            layer_caches.append(layer_cache)
        hidden = self.norm(x)
        new_cache = layer_caches if cache is not None else None
        if labels is not None:
            token_loss, token_correct, all_logits = head_loss(self.head_logits, hidden, labels, self.config.loss_chunk)
            return ModelOutput(all_logits, hidden, new_cache, token_loss, token_correct)
        return ModelOutput(self.head_logits(hidden) if logits else None, hidden, new_cache)

    def head_logits(self, hidden):
        """The LM head on (…, d_model) final hidden states."""
        features = self.head_transform(hidden) if self.head_transform is not None else hidden
        return self.config.shape_logits(self.head(features))

    def redraw_performer_features(self) -> None:
        for module in self.modules():
            if isinstance(module, PerformerFeatures):
                module.redraw()


def _cache_length(cache) -> int:
    if not cache or not cache[0]:
        return 0
    layer = cache[0]
    return int(layer["pos"].shape[1]) if "pos" in layer else int(layer.get("length", 0))
