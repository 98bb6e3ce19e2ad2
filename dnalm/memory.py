"""This process's own peak resident set.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not it on Linux: a parent's peak carries into a child it
spawns (across fork and exec), so a small process started by a large one reports the large one's
peak. The kernel's ``VmHWM`` (``/proc/self/status``) belongs to the process's own memory map.
"""

from __future__ import annotations

import resource
import sys


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
