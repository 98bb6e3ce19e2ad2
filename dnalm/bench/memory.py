"""Peak memory of one piece of work on the device it runs on: the CUDA allocator's high-water mark, or on CPU the
process's resident high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) above what it held before."""

from __future__ import annotations

import re
from pathlib import Path

import torch


def peak_memory_mb(device: torch.device | str, work) -> tuple[float, object]:
    """(peak MB that ``work()`` added on ``device``, its result)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = work()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, result
    Path("/proc/self/clear_refs").write_text("5")  # the resident high-water mark restarts at the current size
    before = _status_kb("VmRSS")
    result = work()
    return (_status_kb("VmHWM") - before) / 1024, result


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
