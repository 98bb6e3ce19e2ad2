"""The process group a run trains in: the launcher's (deepspeed, torchrun, srun), or a group of one."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from dnalm.train import console
from dnalm.train.spawn import free_port
from dnalm.utils.devices import bind_local_gpu

_OWN_GROUP = False  # init_distributed made a group of one itself: no launcher to watch


def launched() -> bool:
    """Whether a launcher started this process (so it has a launcher to watch)."""
    return not _OWN_GROUP


def init_distributed(timeout_s: int = 600) -> tuple[int, int]:
    """Join the launcher's process group (deepspeed, torchrun, srun) or make a group of one.

    ``timeout_s`` bounds every collective: a rank whose peer died fails instead of waiting for the
    backend's default (30 minutes), and the launcher then ends the others.
    """
    global _OWN_GROUP
    if "RANK" not in os.environ:
        _OWN_GROUP = True
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    bind_local_gpu()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not dist.is_initialized():
        with console.quietly():
            deepspeed.init_distributed(
                dist_backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(seconds=timeout_s)
            )
    return dist.get_rank(), dist.get_world_size()


def exit_without_teardown(status: int = 0) -> None:
    """End a worker process whose results are printed, skipping interpreter teardown. After
    ``destroy_process_group`` a gloo rank's C++ shutdown aborted now and then ("terminate called without an active
    exception", SIGABRT): about 1 run in 4 at 2 ranks on these machines, before this module's callers existed too."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def release_shared_memory() -> None:
    """Remove this rank's DeepSpeed CPU comm buffer (``/dev/shm/deepspeed_*_ADDR_PORT_RANK``, ~66 MB).

    DeepSpeed's shared-memory all-reduce never deletes it, so every CPU run would leave one per
    rank behind until /dev/shm fills memory. Called after the last collective of the run.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port and dist.is_initialized():
        for path in Path("/dev/shm").glob(f"deepspeed_*_{addr}_{port}_{dist.get_rank()}"):
            path.unlink(missing_ok=True)
