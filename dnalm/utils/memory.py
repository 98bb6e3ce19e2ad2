"""Peak memory, measured three ways, each named for what it measures.

- ``peak_rss_bytes``: this process's own resident high-water mark (``VmHWM``). ``getrusage``'s
  ``ru_maxrss`` is not it on Linux: a parent's peak carries into a child it spawns (across fork and
  exec), so a small process started by a large one reports the large one's peak.
- ``added_peak_mb(device, work)``: what one piece of work added at its peak: the CUDA allocator's
  high-water mark, or on CPU the resident high-water mark (reset through ``/proc/self/clear_refs``)
  above what the process held before.
- ``allocator_peak_mb(device)``: the CUDA allocator's high-water mark so far; None elsewhere.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def added_peak_mb(device, work) -> tuple[float, object]:
    """(peak MB that ``work()`` added on ``device``, its result)."""
    import torch  # here, not at the top: the tokenizers read peak_rss_bytes and never import torch

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


def allocator_peak_mb(device) -> float | None:
    """The CUDA allocator's high-water mark on ``device`` (a torch.device) so far, in MB; None on other devices."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def _status_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    assert match is not None, f"/proc/self/status has no {field} line"  # Linux always writes VmRSS and VmHWM
    return int(match.group(1))
