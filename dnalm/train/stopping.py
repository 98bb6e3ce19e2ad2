"""Ending a run on purpose: a chosen signal saves first, and a rank whose launcher died exits by itself.

Schedulers send a signal ahead of preemption or the time limit (SLURM: ``--signal=B:USR1@120``).
With ``checkpoint.on_signal`` set, every rank notes the signal; the ranks agree on it in the next
step's collective (so all stop at the same step), save a checkpoint and exit cleanly.

A launcher can die while its ranks go on: DeepSpeed's runner, killed with SIGTERM on one node,
leaves its ``deepspeed.launcher.launch`` child and every rank training. Each rank therefore watches
its launcher processes (its parent, and above DeepSpeed's ``launch`` the runner) and, when one is
gone, stops: after saving where a signal would have saved, else at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import psutil

POLL_S = 1.0


def launcher_processes() -> list[psutil.Process]:
    """The processes whose death means this rank's job is over: the parent, and the runner above DeepSpeed's launch."""
    try:
        parent = psutil.Process().parent()
        if parent is None or parent.pid == 1:
            return []
        found = [parent]
        if any("deepspeed.launcher.launch" in part for part in parent.cmdline()):
            runner = parent.parent()
            if runner is not None and runner.pid != 1 and any("deepspeed" in part for part in runner.cmdline()):
                found.append(runner)
        return found
    except psutil.Error:
        return []


class StopRequests:
    """Notes a stop asked for by ``on_signal`` (``SIGUSR1``, ``SIGTERM`` or ``none``) or by a launcher's death.

    ``reason`` is None until then. Without ``on_signal`` a launcher's death calls ``exit_now`` (which
    should release what the rank holds) and ends the process.
    """

    def __init__(self, on_signal: str, watch_launcher: bool, exit_now: Callable[[str], None]):
        self.reason: str | None = None
        self.save_first = on_signal != "none"
        self._exit_now = exit_now
        if threading.current_thread() is threading.main_thread():
            if self.save_first:
                signal.signal(getattr(signal, on_signal), self._noted)
            if on_signal != "SIGTERM":  # end at once, but through the finally blocks (the run folder's lock is let go)
                signal.signal(signal.SIGTERM, _terminated)
        if watch_launcher and (launchers := launcher_processes()):
            threading.Thread(target=self._watch, args=(launchers,), daemon=True, name="dnalm-launcher-watch").start()

    def _noted(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name

    def _watch(self, launchers: list[psutil.Process]) -> None:
        stopped = threading.Event()
        while not stopped.wait(POLL_S):
            gone = next((p for p in launchers if not _alive(p)), None)
            if gone is None:
                continue
            why = f"the launcher (pid {gone.pid}) ended"
            if self.save_first:
                self.reason = why
                return
            self._exit_now(why)
            if os.environ.get("RANK", "0") == "0":
                print(f"dnalm: {why}; every rank exits", file=sys.stderr, flush=True)
            os._exit(1)


def _terminated(signum, frame) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(
            "dnalm: SIGTERM: stopping now without saving (checkpoint.on_signal=SIGTERM saves first)",
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + signum)


def _alive(process: psutil.Process) -> bool:
    try:  # a killed launcher its parent has not reaped yet is a zombie: gone all the same
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
