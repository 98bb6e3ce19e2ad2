"""Models: typed configs with named sizes, the transformer (encoder/decoder), the CNN baseline.

cfg = dnalm.models.get_config("decoder-1.5b")
model = dnalm.models.build_model(cfg, device="meta")   # no memory allocated
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TypeAlias

import torch

import dnalm.utils.devices  # noqa: F401  (flush-to-zero for denormals, set there on import)
from dnalm.models.attention import ATTENTION
from dnalm.models.cnn import ConvNet
from dnalm.models.config import NAMED_CONFIGS, ModelConfig, ModelConfigError, get_config
from dnalm.models.transformer import ModelOutput, Transformer

DnaModel: TypeAlias = Transformer | ConvNet  # a plain nn.Module with its ModelConfig as ``.config``

ARCHITECTURES: dict[str, type[DnaModel]] = {"encoder": Transformer, "decoder": Transformer, "cnn": ConvNet}


def build_model(config: ModelConfig | str, device: str | torch.device | None = None) -> DnaModel:
    """A plain ``nn.Module`` for ``config`` (a ModelConfig or a named size); ``device="meta"`` allocates nothing."""
    config = get_config(config) if isinstance(config, str) else config
    with torch.device(device) if device is not None else nullcontext():
        return ARCHITECTURES[config.arch](config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = [
    "ARCHITECTURES",
    "ATTENTION",
    "DnaModel",
    "ModelConfig",
    "ModelConfigError",
    "ModelOutput",
    "NAMED_CONFIGS",
    "build_model",
    "count_parameters",
    "get_config",
]
