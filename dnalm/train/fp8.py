"""``precision: fp8``: float8 training of the linear layers (torchao's ``convert_to_float8_training``, tensorwise
scaling), the rest in bf16, applied from outside the model before DeepSpeed wraps it.

Refused, with the reason, where it cannot run: without a CUDA GPU, on a GPU older than compute capability 8.9
(Ada, Hopper: the first with float8 tensor cores), or without torchao. Layers whose dimensions are not multiples of
16 (float8 matmuls need them) stay bf16, and so does the LM head, whose logits feed the loss.

Not yet run on a GPU: the refusals are tested on CPU; conversion and its speed are measured by
``scripts/gpu/run.sh``'s fp8 section when a GPU is lent.
"""

from __future__ import annotations

import torch

from dnalm.utils.errors import DnalmError

MIN_CAPABILITY = (8, 9)


class Fp8Error(DnalmError):
    """fp8 training asked for where it cannot run."""


def check(device: torch.device) -> None:
    """Refuse fp8 on ``device`` unless it is a CUDA GPU of compute capability ≥ 8.9 and torchao is installed."""
    if device.type != "cuda":
        raise Fp8Error(
            f"precision fp8: float8 training needs an NVIDIA GPU of compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper); this run is on {device.type}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise Fp8Error(
            f"precision fp8: {torch.cuda.get_device_name(device)} has compute capability "
            f"{capability[0]}.{capability[1]}; float8 tensor cores start at "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ada, Hopper): use precision bf16"
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise Fp8Error("precision fp8: needs torchao (pip install torchao, a build matching this torch)") from None


def qualifies(module: torch.nn.Module, name: str) -> bool:
    """A linear layer float8 can take: both dimensions multiples of 16, and not the LM head."""
    return (
        isinstance(module, torch.nn.Linear)
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and not name.split(".")[-1].startswith("head")
    )


def convert(model: torch.nn.Module) -> int:
    """Swap every qualifying linear layer for torchao's Float8Linear, in place; how many were swapped."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    count = sum(qualifies(m, n) for n, m in model.named_modules())
    convert_to_float8_training(model, config=Float8LinearConfig(), module_filter_fn=qualifies)
    return count
