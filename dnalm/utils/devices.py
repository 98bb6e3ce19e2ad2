"""Where tensors live: one ``--device auto|cpu|cuda`` rule for every command, and what each device is.

Code never assumes CPU: a command resolves its device once, moves the model there, and every
tensor it builds afterwards follows the model (``move``); benchmarks name the device they measured
(``describe``) instead of stating one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from dnalm.utils.device_names import CHOICES
from dnalm.utils.errors import DnalmError

# Flush-to-zero for denormal floats, as TensorFlow does on CPU. ALiBi's far keys and attention tails
# produce exp() values below fp32's normal range, and a pretrained network's small gradients do too;
# x86 computes them several times slower. Set on import, before PyTorch starts its CPU thread pool:
# threads copy the setting only when they are created (measured: set after the pool exists, only the
# calling thread flushes: the fused ALiBi path stayed 3× slower at 8k, and a fine-tuning step of the
# pretrained CNN took 4.7–6.4× a step from scratch, against 1.2× with the setting made first).
torch.set_flush_denormal(True)


def local_gpu_index(env: Mapping[str, str], visible: int) -> int | None:
    """The GPU a process drives: its launcher's ``LOCAL_RANK`` (0 without a launcher); None without a GPU. Every rank
    of a node would otherwise start on cuda:0."""
    if visible == 0:
        return None
    index = int(env.get("LOCAL_RANK", "0"))
    if not 0 <= index < visible:
        raise DnalmError(
            f"LOCAL_RANK {index}, but this process sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES', 'unset')}); start as many processes per node as it has GPUs"
        )
    return index


def bind_local_gpu() -> None:
    """``torch.cuda.set_device(LOCAL_RANK)`` where there is a GPU: before a process group starts (NCCL binds its
    communicator to the current device) and before anything is placed on ``cuda``."""
    index = local_gpu_index(os.environ, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if index is not None:
        torch.cuda.set_device(index)


def resolve(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cuda`` without a GPU is an error naming the flag."""
    if name not in CHOICES:
        raise DnalmError(f"--device must be one of {', '.join(CHOICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DnalmError(
            "--device cuda: no CUDA device is visible to this process (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        bind_local_gpu()
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dtype_name(dtype) -> str:
    """fp32, bf16, fp16, fp8: how results and logs name a torch dtype."""
    return {
        "torch.float32": "fp32",
        "torch.bfloat16": "bf16",
        "torch.float16": "fp16",
        "torch.float8_e4m3fn": "fp8",
    }.get(str(dtype), str(dtype))


def move(tensors: dict, device: torch.device) -> dict:
    """Every tensor of ``tensors`` on ``device`` (asynchronously from pinned memory); other values as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (timings); nothing to wait for on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device | str) -> dict:
    """The measured device as a benchmark records it: its name, and for a GPU its memory and software."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": _nvidia_driver(),
    }


def cpu_name() -> str:
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device computes it natively (CUDA), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def _nvidia_driver() -> str | None:
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
