"""The convolutional baseline of the DNA_Performer comparison: residual 1-D convolutions, per-token logits.

Same surrounding layers as the transformer (embedding, norm, output head), convolutions in place
of attention, so a comparison isolates the mixing layer.
"""

from __future__ import annotations

from torch import nn

from dnalm.models.config import ModelConfig
from dnalm.models.lean import head_loss
from dnalm.models.transformer import ModelOutput, conv_stack, norm_layer, token_mask


class ConvNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.segments = nn.Embedding(config.num_segments, config.d_model) if config.num_segments > 1 else None
        self.blocks = conv_stack(config, config.n_layers)
        self.norm = norm_layer(config)
        self.head: nn.Module = nn.Linear(config.d_model, config.head_size, bias=False)

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
        x = self.embed(input_ids)
        if self.segments is not None and segment_ids is not None:
            x = x + self.segments(segment_ids)
        mask = token_mask(input_ids, attention_mask, x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        hidden = self.norm(x)
        if labels is not None:
            token_loss, token_correct, all_logits = head_loss(self.head_logits, hidden, labels, self.config.loss_chunk)
            return ModelOutput(all_logits, hidden, None, token_loss, token_correct)
        return ModelOutput(self.head_logits(hidden) if logits else None, hidden, None)

    def head_logits(self, hidden):
        return self.config.shape_logits(self.head(hidden))
