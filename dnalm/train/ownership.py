"""One job owns a run folder at a time: ``RUN/.dnalm-lock`` names its host, pid, start and scheduler job.

Two jobs writing one run folder (a user resuming while the first still trains, a scheduler
starting a requeued job early) would interleave checkpoints and metrics. The lock is taken with
a hard link of a fully written file, which is atomic on NFS as on local disks, and released on
exit. A lock whose owner is gone is taken over and reported: its process no longer runs on this
host, or it names this same scheduler job (a requeued SLURM job comes back as the same job id,
perhaps on another node). An owner on another host cannot be checked from here; the refusal says
how to clear it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from dnalm.utils.errors import DnalmError
from dnalm.utils.files import write_atomic

LOCK = ".dnalm-lock"


class RunFolderInUse(DnalmError):
    """Another job owns the run folder."""


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # the process's start time (seconds since the epoch), so a reused pid is not taken for it
    job: str | None = None  # SLURM_JOB_ID

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), os.environ.get("SLURM_JOB_ID"))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        job = f", SLURM job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, started {since}"

    def gone(self, me: Owner) -> bool:
        """Whether this owner certainly no longer runs (seen from ``me``)."""
        if self.job and self.job == me.job:
            return True
        if self.host != me.host:
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) > 1
        except psutil.NoSuchProcess:
            return True


def read_owner(run_dir: Path) -> Owner | None:
    try:
        return Owner(**json.loads((Path(run_dir) / LOCK).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return Owner("unknown host", -1, 0.0)  # unreadable: treated as an owner we cannot check


class RunLock:
    """``acquire`` or refuse; ``release`` only removes a lock that still names this process."""

    def __init__(self, run_dir: Path):
        self.taken_over: Owner | None  # the stale owner whose lock ``acquire`` replaced
        self.run_dir, self.path, self.me, self.taken_over = (
            Path(run_dir),
            Path(run_dir) / LOCK,
            Owner.this_process(),
            None,
        )

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mine = self.path.with_name(f"{LOCK}.{self.me.host}.{self.me.pid}")
        write_atomic(mine, json.dumps(asdict(self.me)))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                    return self
                except FileExistsError:
                    owner = read_owner(self.run_dir)
                    if owner is None:
                        continue  # released between our link and our read
                    if not owner.gone(self.me):
                        raise RunFolderInUse(
                            f"{self.run_dir} is in use by another job ({owner.describe()}); wait for it to end or stop "
                            f"it, or train into another run_dir. If that job is gone, delete {self.path}"
                        ) from None
                    os.replace(mine, self.path)  # a stale owner: ours now
                    self.taken_over = owner
                    return self
            raise RunFolderInUse(f"{self.run_dir}: could not take {self.path}; try again")
        finally:
            mine.unlink(missing_ok=True)

    def release(self) -> None:
        if read_owner(self.run_dir) == self.me:
            self.path.unlink(missing_ok=True)
