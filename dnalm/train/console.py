"""What a run says on the console, from rank 0 only: a start line, progress, each checkpoint and a final line.

Progress is a bar on a terminal and a line every ``logging.interval`` steps elsewhere (a launcher's pipe, a
scheduler's log file). DeepSpeed's and torch's own chatter (the CPU comm op's build line, deprecation warnings,
INFO logs) is silenced unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import warnings


def say(message: str) -> None:
    """One line on stderr from rank 0 (``RANK`` unset: a process of its own)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"dnalm: {message}", file=sys.stderr, flush=True)


VERBOSE = False


def quiet_libraries(verbose: bool) -> None:
    """Silence what DeepSpeed and torch print on every rank of every run, unless ``verbose``."""
    global VERBOSE
    VERBOSE = verbose
    if verbose:
        return
    warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\..*` is deprecated", category=FutureWarning)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def quietly():
    """A context whose prints to stdout are dropped unless verbose (DeepSpeed announces building its comm op)."""
    return contextlib.nullcontext() if VERBOSE else contextlib.redirect_stdout(io.StringIO())


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A loss line per logged record when stderr is not a terminal (the bar is ``MetricsLog``'s), with an ETA from
    this process's own pace."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool):
        self.total, self.first = total_steps, start_step
        self.enabled = enabled and not sys.stderr.isatty()
        self.started = time.monotonic()

    def line(self, record: dict) -> str:
        step, done = record["step"], record["step"] - self.first
        parts = [f"step {step}/{self.total}"]
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4f}")
        if record.get("skipped"):
            parts.append(f"skipped ({record['skip_reason']})")
        if "val_loss" in record:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        if "mfu" in record:
            parts.append(f"mfu {100 * record['mfu']:.1f}%")
        if done > 0:
            elapsed = time.monotonic() - self.started
            parts.append(f"eta {duration(elapsed / done * (self.total - step))}")
        return " | ".join(parts)

    def show(self, record: dict) -> None:
        if self.enabled:
            print(self.line(record), file=sys.stderr, flush=True)
