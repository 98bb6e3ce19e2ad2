"""Model-FLOPs utilisation by the field's formula (PaLM appendix B, llm-foundry).

FLOPs per token = 6·N + 12·L·d·T: N parameters in matmuls (everything but the input embedding
lookup; a tied head counts), L layers, d model width, T sequence length; the attention term is
counted in full (causal masking not subtracted), recomputation not counted. MFU = that × tokens/s
per device ÷ the device's nominal dense (no sparsity) peak for the precision used. A device not in
``NOMINAL`` has no nominal peak: the caller divides by a matmul it measured, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dnalm.models import DnaModel

SOURCE = (
    "NVIDIA datasheets, dense Tensor Core TFLOP/s without sparsity: H100 SXM and H200 SXM "
    "(bf16 989, fp8 1979), H100 PCIe (bf16 756, fp8 1513), A100 (bf16 312, no fp8)"
)


@dataclass(frozen=True)
class Peak:
    marker: tuple[str, ...]  # every one of these in torch.cuda.get_device_name()
    excluded: tuple[str, ...]  # none of these
    tflops: dict[str, float]


# first match wins: the PCIe H100 before the SXM one
NOMINAL = {
    "H200 SXM": Peak(("H200",), (), {"bf16": 989.0, "fp8": 1979.0}),
    "H100 PCIe": Peak(("H100", "PCIe"), (), {"bf16": 756.0, "fp8": 1513.0}),
    "H100 SXM": Peak(("H100",), ("PCIe", "NVL"), {"bf16": 989.0, "fp8": 1979.0}),
    "A100": Peak(("A100",), (), {"bf16": 312.0}),
}


def flops_per_token(model: DnaModel, config, seq_len: int) -> float:
    """6·N + 12·L·d·T for a built model (whole, or partitioned by ZeRO-3: ``ds_numel`` is a parameter's full size)."""

    def size(p):
        return getattr(p, "ds_numel", p.numel())

    matmul_params = sum(
        size(p) for name, p in model.named_parameters() if not name.startswith(("embed.", "segments.", "positions."))
    )
    if config.tie_embeddings:
        matmul_params += size(model.embed.weight)
    return 6 * matmul_params + 12 * config.n_layers * config.d_model * seq_len


def nominal_peak(device_name: str, precision: str) -> tuple[str, float] | None:
    """(the table's name for the device, peak FLOP/s) for a CUDA device name and a precision (bf16, fp8), or None."""
    for name, peak in NOMINAL.items():
        if all(m in device_name for m in peak.marker) and not any(x in device_name for x in peak.excluded):
            tflops = peak.tflops.get(precision)
            return (name, tflops * 1e12) if tflops else None
    return None


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float] | None:
    """``nominal_peak`` of a torch device (None on CPU and on CUDA devices the table does not hold)."""
    from dnalm.utils.devices import dtype_name

    if device.type != "cuda":
        return None
    # fp16's dense Tensor Core peak is bf16's on every device of the table
    return nominal_peak(torch.cuda.get_device_name(device), {"fp16": "bf16"}.get(dtype_name(dtype), dtype_name(dtype)))
