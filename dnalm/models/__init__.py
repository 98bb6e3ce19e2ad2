"""Models: typed configs with named sizes, the transformer (encoder/decoder), the CNN baseline.

    cfg = dnalm.models.get_config("decoder-1.5b")
    model = dnalm.models.build_model(cfg, device="meta")   # no memory allocated
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from dnalm.models.attention import ATTENTION
from dnalm.models.cnn import ConvNet
from dnalm.models.config import NAMED_CONFIGS, ModelConfig, ModelConfigError, get_config
from dnalm.models.transformer import ModelOutput, Transformer

ARCHITECTURES = {"encoder": Transformer, "decoder": Transformer, "cnn": ConvNet}

# Flush-to-zero for denormal floats, as TensorFlow does on CPU. ALiBi's far keys and attention tails
# produce exp() values below fp32's normal range, which x86 computes several times slower and which
# round away in every softmax sum. Set on import, before PyTorch starts its CPU thread pool: threads
# copy the setting only when they are created (measured: set after the pool exists, only the calling
# thread flushes and the fused ALiBi path stays 3× slower at 8k).
torch.set_flush_denormal(True)


def build_model(config: ModelConfig | str, device: str | torch.device | None = None) -> torch.nn.Module:
    """A plain ``nn.Module`` for ``config`` (a ModelConfig or a named size); ``device="meta"`` allocates nothing."""
    config = get_config(config) if isinstance(config, str) else config
    with torch.device(device) if device is not None else nullcontext():
        return ARCHITECTURES[config.arch](config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["ARCHITECTURES", "ATTENTION", "ModelConfig", "ModelConfigError", "ModelOutput", "NAMED_CONFIGS", "build_model",
           "count_parameters", "get_config"]
