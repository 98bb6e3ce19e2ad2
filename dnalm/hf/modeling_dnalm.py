"""dnalm's transformer for ``transformers`` (``trust_remote_code=True``), with no dnalm installed.

Written by dnalm's exporter beside the weights; the same computation as ``dnalm.models.Transformer``
for every setting it exports (ALiBi, RoPE with interpolation, learned or no positions; RMSNorm or
LayerNorm; SwiGLU or GELU; linear biases; segment ids of multi-view inputs; a convolution stem;
Performer's FAVOR+ with the trained random features), and tested for equal logits. Softmax attention
is computed explicitly (softmax of scores plus ALiBi bias and masks).

The classes follow ``transformers``' conventions: ``DnalmModel`` is the backbone (``last_hidden_state``,
per-layer ``hidden_states``), the heads hold it as ``.dnalm``; ``DnalmForCausalLM`` generates with a
key-value cache (a Performer decoder also keeps each layer's running sums, so a new token does not recompute
the features of every earlier key); the sequence classifier mean-pools real tokens, as ``dnalm finetune`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast, CausalLMOutputWithPast, MaskedLMOutput, SequenceClassifierOutput, TokenClassifierOutput,
)
from transformers.utils import ModelOutput

# transformers 5 renamed past_key_values to cache, in arguments and outputs
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class DnalmConfig(PretrainedConfig):
    """dnalm's model settings as flat attributes (``positions``, ``mlp``, ``d_model``, …)."""

    model_type = "dnalm"
    # the names transformers' generation and caches read
    attribute_map = {"num_hidden_layers": "n_layers", "hidden_size": "d_model", "num_attention_heads": "n_heads"}


def _norm(c):
    return nn.RMSNorm(c.d_model, eps=c.norm_eps) if c.norm == "rmsnorm" else nn.LayerNorm(c.d_model, eps=c.norm_eps)


def _hidden(c) -> int:
    if c.mlp_hidden:
        return c.mlp_hidden
    width = 8 * c.d_model / 3 if c.mlp == "swiglu" else 4 * c.d_model
    return int(-(-width // 64) * 64)


def _linear(c, n_in, n_out):
    return nn.Linear(n_in, n_out, bias=c.linear_bias)


def alibi_slopes(n_heads: int, device) -> torch.Tensor:
    closest = 2 ** math.floor(math.log2(n_heads))
    exponents = torch.arange(1, closest + 1, device=device, dtype=torch.float32) * (-8 / closest)
    if closest < n_heads:
        odd = torch.arange(n_heads - closest, device=device, dtype=torch.float32) * 2 + 1
        exponents = torch.cat([exponents, odd * (-8 / (2 * closest))])
    return torch.exp2(exponents)


def rotate(x, positions, theta, scale=1.0):
    """Rotary embedding on interleaved pairs (dims 0-1, 2-3, …), angles in fp32 and the rotation in x's dtype, as
    dnalm's; ``scale`` interpolates positions."""
    dim = x.shape[-1]
    inv_freq = theta ** -(torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = positions[:, None, :, None].float() * (inv_freq / scale)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class _Projection(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.register_buffer("projection_matrix", torch.zeros(c.performer_features, c.d_model // c.n_heads))


class Performer(nn.Module):
    """FAVOR+ attention as dnalm computes it: the trained model's random projection, positive softmax
    (or ReLU) features, linear attention; causal by chunked prefix sums, keys unstabilised. A copy of
    ``dnalm.models.performer``'s arithmetic, since this file runs where dnalm is not installed."""

    def __init__(self, c):
        super().__init__()
        self.fast, self.kernel, self.chunk = _Projection(c), c.performer_kernel, c.performer_chunk

    def features(self, x, is_query, key_mask=None, stabilise=True):
        projection = self.fast.projection_matrix.to(x.dtype)
        normaliser = x.shape[-1] ** -0.25
        projected = (x * normaliser) @ projection.t()
        if self.kernel == "relu":
            features = F.relu(projected) + 1e-3
        else:
            offset = (x * x).sum(-1, keepdim=True) * (normaliser**2 / 2)
            if is_query:
                offset = offset + projected.detach().amax(-1, keepdim=True)
            elif stabilise:
                real = projected.detach()
                if key_mask is not None:
                    real = real.masked_fill(~key_mask[:, None, :, None], float("-inf"))
                offset = offset + real.amax((-1, -2), keepdim=True)
            features = (torch.exp(projected - offset) + 1e-4) * projection.shape[0] ** -0.5
        if key_mask is not None and not is_query:
            features = features * key_mask[:, None, :, None].to(features.dtype)
        return features

    def forward(self, q, k, v, causal, key_mask, past, sums=None):
        """q: the new tokens; k, v: every token so far (a cache's first ``past`` are earlier ones). ``sums``: this
        layer's running (S, z) over the first ``past`` keys, kept between decoding steps so that a new token does not
        recompute every earlier key's features; rebuilt from the cached keys when they do not match ``past``."""
        fq = self.features(q, True)
        if not causal:
            fk = self.features(k, False, key_mask)
            return (fq @ (fk.transpose(-1, -2) @ v)) / (fq @ fk.sum(-2)[..., None])
        compute = torch.promote_types(q.dtype, torch.float32)

        def key_features(start, end):
            mask = key_mask[:, start:end] if key_mask is not None else None
            return self.features(k[:, :, start:end], False, mask, stabilise=False).to(compute), v[:, :, start:end].to(compute)

        if sums is not None and sums.get("length") == past:
            kv, k_sum = sums["kv"], sums["k_sum"]
        else:
            fk, vp = key_features(0, past)
            kv, k_sum = fk.transpose(-1, -2) @ vp, fk.sum(2)
        fk, vn = key_features(past, k.shape[2])
        outputs = []
        for qc, kc, vc in zip(*(t.split(self.chunk, dim=2) for t in (fq.to(compute), fk, vn))):
            scores = torch.tril(qc @ kc.transpose(-1, -2))
            numerator = qc @ kv + scores @ vc
            denominator = (qc * k_sum[:, :, None, :]).sum(-1) + scores.sum(-1)
            outputs.append(numerator / (denominator[..., None] + 1e-6))
            kv, k_sum = kv + kc.transpose(-1, -2) @ vc, k_sum + kc.sum(2)
        if sums is not None:
            sums.update(kv=kv, k_sum=k_sum, length=k.shape[2])
        return torch.cat(outputs, dim=2).to(v.dtype)


class Attention(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.c, self.layer_idx = c, layer_idx
        self.qkv = _linear(c, c.d_model, 3 * c.d_model)
        self.out = _linear(c, c.d_model, c.d_model)
        self.performer = Performer(c) if c.attention == "performer" else None

    def forward(self, x, positions, key_positions, key_mask, cache):
        c, (batch, length, _) = self.c, x.shape
        heads, head_dim = c.n_heads, c.d_model // c.n_heads
        q, k, v = self.qkv(x).view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        if c.positions == "rope":
            q, k = rotate(q, positions, c.rope_theta, c.rope_scale), rotate(k, positions, c.rope_theta, c.rope_scale)
        past = 0
        if cache is not None:
            past = cache.get_seq_length(self.layer_idx)
            k, v = cache.update(k, v, self.layer_idx)
        if self.performer is not None:
            # the running sums ride on the cache object, per layer (transformers' caches hold keys and values only)
            sums = cache.__dict__.setdefault("dnalm_performer_sums", {}).setdefault(self.layer_idx, {}) \
                if cache is not None else None
            out = self.performer(q, k, v, c.arch == "decoder", key_mask, past, sums)
            return self.out(out.transpose(1, 2).reshape(batch, length, -1))
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(head_dim)
        distance = positions[:, None, :, None] - key_positions[:, None, None, :]
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
        self.up = _linear(c, c.d_model, _hidden(c) * (2 if self.swiglu else 1))
        self.down = _linear(c, _hidden(c), c.d_model)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = _norm(c), Attention(c, layer_idx), _norm(c), MLP(c)

    def forward(self, x, positions, key_positions, key_mask, cache):
        x = x + self.attn(self.norm1(x), positions, key_positions, key_mask, cache)
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
        self.dense, self.norm = _linear(c, c.d_model, c.d_model), _norm(c)

    def forward(self, hidden):
        return self.norm(F.gelu(self.dense(hidden)))


class DnalmPreTrainedModel(PreTrainedModel):
    config_class = DnalmConfig
    base_model_prefix = "dnalm"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class DnalmModel(DnalmPreTrainedModel):
    """The backbone: embeddings, convolution stem, blocks and final norm."""

    def __init__(self, config: DnalmConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.segments = nn.Embedding(c.num_segments, c.d_model) if c.num_segments > 1 else None
        self.positions = nn.Embedding(c.max_seq_len, c.d_model) if c.positions == "learned" else None
        self.conv_stem = nn.ModuleList(ConvBlock(c, 2 ** (i % 4)) for i in range(c.conv_layers)) if c.conv_layers else None
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
        self.norm = _norm(c)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, cache=None, use_cache=None,
                output_hidden_states=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        batch, length = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        key_mask = attention_mask.bool() if attention_mask is not None else None
        if cache is not None:
            # generation: positions count real tokens (left padding), queries and keys alike
            every = (key_mask.long().cumsum(-1) - 1).clamp(min=0) if key_mask is not None else \
                torch.arange(past + length, device=input_ids.device).expand(batch, -1)
            key_positions = every
            position_ids = position_ids if position_ids is not None else every[:, past:]
        else:
            if position_ids is None:
                position_ids = torch.arange(length, device=input_ids.device).expand(batch, length)
            key_positions = position_ids
        x = self.embed(input_ids)
        if self.segments is not None:
            x = x + self.segments(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        if self.positions is not None:
            x = x + self.positions(position_ids)
        if self.conv_stem is not None:
            mask = (key_mask if key_mask is not None else torch.ones_like(input_ids, dtype=torch.bool))[..., None].to(x.dtype)
            for conv in self.conv_stem:
                x = conv(x, mask)
        states = [x]
        for block in self.blocks:
            x = block(x, position_ids, key_positions, key_mask, cache)
            states.append(x)
        hidden = self.norm(x)
        states[-1] = hidden
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None,
                                       **{CACHE_FIELD: cache if use_cache else None})


class _WithBackbone(DnalmPreTrainedModel):
    def __init__(self, config: DnalmConfig):
        super().__init__(config)
        self.dnalm = DnalmModel(config)

    def backbone(self, input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states, **kwargs):
        return self.dnalm(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
                          output_hidden_states=output_hidden_states, **kwargs)


class _LanguageModel(_WithBackbone):
    def __init__(self, config: DnalmConfig):
        super().__init__(config)
        self.head_transform = HeadTransform(config) if config.lm_head == "transform" else None
        self.head = _linear(config, config.d_model, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    def head_logits(self, hidden):
        return self.head(self.head_transform(hidden) if self.head_transform is not None else hidden)


class DnalmForMaskedLM(_LanguageModel):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states)
        logits = self.head_logits(out.last_hidden_state)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class DnalmForCausalLM(_LanguageModel, GenerationMixin):
    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, cache=None, use_cache=None,
                output_hidden_states=None, past_key_values=None, logits_to_keep=0, **kwargs):
        out = self.backbone(input_ids, attention_mask, None, position_ids, output_hidden_states,
                            cache=cache if cache is not None else past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state
        logits = self.head_logits(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                      **{CACHE_FIELD: getattr(out, CACHE_FIELD)})


def _mean_pool(hidden, attention_mask):
    weights = (attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device))
    weights = weights[..., None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _classification_loss(config, logits, labels):
    """transformers' convention: problem_type from num_labels and the labels' dtype when not set."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(logits.shape[:-1])) if config.num_labels == 1 \
            else F.mse_loss(logits.float(), labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels).float(), labels.view(-1), ignore_index=-100)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class _Classifier(_WithBackbone):
    """A linear classifier on the backbone's final hidden states, pooled by ``pool``, scored by ``loss``."""

    output: type[ModelOutput]  # the transformers output class, set by each head

    def __init__(self, config: DnalmConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.1)
        assert config.num_labels is not None  # PretrainedConfig sets it (2 unless given)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                output_hidden_states=None, **kwargs):
        out = self.backbone(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states)
        logits = self.classifier(self.dropout(self.pool(out.last_hidden_state, attention_mask)))
        loss = self.loss(logits, labels) if labels is not None else None
        return self.output(loss=loss, logits=logits, hidden_states=out.hidden_states)


class DnalmForSequenceClassification(_Classifier):
    """The backbone's final hidden states, mean-pooled over real tokens (as ``dnalm finetune`` pools)."""

    output = SequenceClassifierOutput

    def pool(self, hidden, attention_mask):
        return _mean_pool(hidden, attention_mask)

    def loss(self, logits, labels):
        return _classification_loss(self.config, logits, labels)


class DnalmForTokenClassification(_Classifier):
    """A label per token (segmentation)."""

    output = TokenClassifierOutput

    def pool(self, hidden, attention_mask):
        return hidden

    def loss(self, logits, labels):
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
