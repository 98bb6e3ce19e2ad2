"""The GPUs a plan knows (nominal dense bf16 peaks, memory, links) and the MFU it assumes for each: measured where
docs/benchmarks/gpu.json has a run, else stated as assumed."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from dnalm.train import flops
from dnalm.train.config import REPO_CONFIGS
from dnalm.utils.errors import DnalmError

GIB = 2**30
GPU_JSON = REPO_CONFIGS.parent / "docs" / "benchmarks" / "gpu.json"


class PlanError(DnalmError):
    """A plan that cannot be made, with the reason."""


@dataclass(frozen=True)
class Gpu:
    label: str
    memory_gib: float  # what the device holds (the vendor's GB, in GiB)
    bf16_tflops: float  # nominal dense peak, no sparsity
    link_gb_s: float  # within a node: each GPU's bandwidth in one direction, GB/s
    network_gb_s: float  # between nodes: each GPU's share, one direction, GB/s
    per_node: int  # GPUs a node holds
    runtime_gib: float  # what is not a tensor: CUDA context, NCCL's communicators, library workspaces
    fragmentation: float  # the caching allocator's reserve above its live tensors, as a share of them
    host: bool = False  # a CPU: the memory is the host's, shared by the ranks on it


# Sources: NVIDIA's datasheets. Memory: H100 SXM 80 GB HBM3, H200 SXM 141 GB HBM3e, A100 SXM 80 or 40 GB, L40S
# 48 GB GDDR6. bf16 dense peaks: dnalm.train.flops.NOMINAL's (its source there), and the L40S's 362 TFLOP/s.
# Links: NVLink 900 GB/s both ways on H100/H200 SXM, 600 on A100 SXM; the L40S has none (PCIe Gen4 x16, 64 GB/s
# both ways). Networks: the DGX reference designs' InfiniBand port a GPU (NDR 400 Gb/s on DGX H100/H200, HDR
# 200 Gb/s on DGX A100); L40S servers have no reference design, so 100 Gb/s a GPU is an assumption. The runtime
# (CUDA context ~0.5 GiB, NCCL ~1 GiB, cuBLAS workspaces) and the 5% fragmentation are assumptions, not measured.
_BF16 = {name: peak.tflops["bf16"] for name, peak in flops.NOMINAL.items()}
GPUS = {
    "h100": Gpu("H100 SXM 80GB", 80e9 / GIB, _BF16["H100 SXM"], 450.0, 50.0, 8, 2.0, 0.05),
    "h200": Gpu("H200 SXM 141GB", 141e9 / GIB, _BF16["H200 SXM"], 450.0, 50.0, 8, 2.0, 0.05),
    "a100-80g": Gpu("A100 SXM 80GB", 80e9 / GIB, _BF16["A100"], 300.0, 25.0, 8, 2.0, 0.05),
    "a100-40g": Gpu("A100 SXM 40GB", 40e9 / GIB, _BF16["A100"], 300.0, 25.0, 8, 2.0, 0.05),
    "l40s": Gpu("L40S 48GB", 48e9 / GIB, 362.0, 32.0, 12.5, 8, 2.0, 0.05),
}
# This host's CPU as the device (the validation runs, fp32): its memory is shared by the ranks on it; its "peak"
# is the fp32 matmul docs/benchmarks/train.json measured on 2 cores; each process holds the interpreter, torch,
# DeepSpeed and what the trainer loads once (~0.4 GiB, the baseline python -m dnalm.bench.plan measures from).
CPU = Gpu("CPU (this host)", 0.0, 0.28, 10.0, 1.25, 1, 0.4, 0.0, host=True)
CPU_MFU = 0.5  # assumed (docs/benchmarks/train.json: 0.58 of the measured matmul for ZeRO-2 on 2 processes)
ASSUMED_MFU = 0.30  # where docs/benchmarks/gpu.json offers no measurement
LEAN_TILE, LEAN_CHUNK = 1024, 4096  # the lean step the ladder proposes (dnalm bench context's tiles; chunks)


def gpu_spec(name: str, ranks: int = 1) -> Gpu:
    if name == "cpu":
        import psutil

        return replace(CPU, memory_gib=psutil.virtual_memory().total / GIB, per_node=max(ranks, 1))
    if name not in GPUS:
        raise PlanError(f"--gpu {name!r}: not a device this plan knows; choose from {', '.join([*GPUS, 'cpu'])}")
    return GPUS[name]


def measured_mfu(gpu: Gpu, recompute: bool) -> tuple[float, str]:
    """The best MFU docs/benchmarks/gpu.json measured (among runs with recomputation as the plan has it, if any),
    and where it comes from: this GPU, another one (an assumption), or ASSUMED_MFU."""
    try:
        record = json.loads(GPU_JSON.read_text())
    except (OSError, ValueError):
        return ASSUMED_MFU, f"assumed ({GPU_JSON} not found)"
    device = record.get("device", {}).get("name", "")
    runs = [r for r in record.get("training", []) if r.get("mfu")]
    runs = [r for r in runs if r.get("activation_recomputation") == recompute] or runs
    if not runs:
        return ASSUMED_MFU, "assumed (no measured MFU)"
    best = max(runs, key=lambda r: r["mfu"])
    how = f"{best['run']}, recomputation {'on' if best.get('activation_recomputation') else 'off'}"
    if gpu.label.split()[0] in device:
        return best["mfu"], f"measured on {device} ({how}; docs/benchmarks/gpu.json)"
    return best["mfu"], f"assumed: measured on {device} ({how}), not on this GPU"
