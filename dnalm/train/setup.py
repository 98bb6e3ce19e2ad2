"""A run's pieces before its first step: the data's tokenizer, the model it builds (sized to the data), the weights
it starts from, AdamW's parameter groups and the learning-rate schedule, the nominal MFU per token."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from dnalm.data.manifest import Manifest
from dnalm.data.masking import sized_head
from dnalm.models import DnaModel, ModelConfig, get_config
from dnalm.tokenizers import Tokenizer, ViewTokenizer, load_folder
from dnalm.train import checkpoint as ckpt
from dnalm.train.config import TrainConfig
from dnalm.train.distributed import init_distributed, launched, release_shared_memory  # noqa: F401 (re-exported)
from dnalm.train.spawn import free_port  # noqa: F401 (re-exported)
from dnalm.utils.errors import DnalmError


def data_tokenizer(folder: Path, manifest: Manifest) -> Tokenizer:
    tokenizers = [load_folder(Path(folder) / t.folder) for t in manifest.tokenizers]
    return ViewTokenizer(tokenizers) if manifest.views else tokenizers[0]


def resolve_model(config: TrainConfig, manifest: Manifest, tokenizer: Tokenizer) -> ModelConfig:
    name = config.model.name
    if config.model.init_from:
        from dnalm.bundle import read_config

        bundle = read_config(config.model.init_from)
        if bundle["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
            raise DnalmError(
                f"model.init_from {config.model.init_from}: its tokenizer ({bundle['tokenizer']['name']}, "
                f"{bundle['tokenizer']['fingerprint']}) is not the data's ({tokenizer.name}, {tokenizer.fingerprint})"
            )
        return ModelConfig(**bundle["model"]).replace(
            activation_checkpointing=config.activation_checkpointing, **config.model.overrides
        )
    base = ModelConfig.from_yaml(name) if name.endswith((".yaml", ".yml")) else get_config(name)
    return sized_head(
        base.replace(
            vocab_size=tokenizer.vocab_size,
            num_segments=len(manifest.tokenizers) if manifest.views else 1,
            max_seq_len=max(base.max_seq_len, manifest.seq_len),
            activation_checkpointing=config.activation_checkpointing,
            **config.model.overrides,
        ),
        tokenizer.vocab,
    )


def lr_lambda(config: TrainConfig, total_steps: int):
    warmup, floor = config.optim.warmup_steps, config.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def load_bundle_weights(model: DnaModel, bundle: str, partitioned: bool) -> None:
    """Copy a bundle's weights into a freshly built model.

    Under ZeRO-3 only rank 0 reads the file, one tensor at a time (safetensors opens it lazily); each parameter is
    gathered, filled by rank 0 and partitioned again, so another rank holds one parameter at most, not the bundle:
    8 ranks a node each reading a whole 7B model would need over 200 GB of host memory.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = str(Path(bundle) / "model.safetensors")
    if not partitioned:
        state = load_file(path)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=not model.config.tie_embeddings)
        return
    import deepspeed

    named = dict(model.named_parameters()) | dict(model.named_buffers())
    reader = safe_open(path, framework="pt") if dist.get_rank() == 0 else None

    def bundle_names() -> list[str]:  # run by rank 0, the one reader
        assert reader is not None
        return list(reader.keys())

    names = ckpt.decided_by_rank0(bundle_names)
    for name in names:
        target = named[name]
        partitioned_here = hasattr(target, "ds_id")
        with deepspeed.zero.GatheredParameters([target] if partitioned_here else [], modifier_rank=0):
            with torch.no_grad():
                if reader is not None:  # rank 0
                    target.data.copy_(reader.get_tensor(name).float())
                if not partitioned_here and dist.get_world_size() > 1:  # a whole tensor on every rank: rank 0's
                    dist.broadcast(target.data, src=0)


def nominal_mfu_per_token(model, model_config, seq_len: int, ds_config: dict, precision: str) -> float | None:
    """FLOPs per token ÷ the device's nominal peak for the run's precision (``dnalm.train.flops``; fp8 runs against the
    fp8 peak), or None."""
    from dnalm.train.flops import device_peak, flops_per_token
    from dnalm.utils.devices import model_device

    dtype = (
        torch.float8_e4m3fn
        if precision == "fp8"
        else torch.bfloat16
        if ds_config.get("bf16", {}).get("enabled")
        else torch.float32
    )
    peak = device_peak(model_device(model), dtype)
    return flops_per_token(model, model_config, seq_len) / peak[1] if peak else None


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, none on norms, biases and embeddings."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        shape = getattr(p, "ds_shape", p.shape)
        (
            decay
            if len(shape) >= 2 and "embed" not in name and "segments" not in name and "positions" not in name
            else plain
        ).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class PoisonGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradients are not (tests)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")
