"""World-size changes: a checkpoint converted to DeepSpeed's universal form (``CHECKPOINT/universal``), which any
number of ranks can load.

Rank 0 converts outside any collective, since a big model's conversion outlasts a collective's timeout; the other
ranks poll for its marker (or for the failure rank 0 writes) under ``checkpoint.convert_timeout_s``. DeepSpeed's
converter runs with extract and merge workers sized to the node's cores and free memory; its output counts only
once marked and renamed, so a conversion killed half-way restarts cleanly. ``dnalm checkpoint universal`` runs
the same conversion ahead of a relaunch, without a process group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from dnalm.train.checkpoint import (
    MARKER,
    TAG,
    UNIVERSAL_FAILED,
    UNIVERSAL_TAG,
    CheckpointError,
    decided_by_rank0,
    step_of,
)
from dnalm.utils import faults
from dnalm.utils.files import fsync_tree, rename_durably, write_atomic


def ensure_universal(checkpoint: Path, timeout_s: float, workers: int | None = None) -> None:
    """Collective: make sure the checkpoint has a universal form, so another world size can load it.

    Rank 0 converts (``convert_universal``) outside any collective, since a big model's conversion
    outlasts a collective's timeout; the other ranks poll for its marker, or for the failure rank 0
    writes, for at most ``timeout_s`` (``checkpoint.convert_timeout_s``).
    """
    checkpoint = Path(checkpoint)
    target, failed = checkpoint / UNIVERSAL_TAG, checkpoint / UNIVERSAL_FAILED

    def converted() -> bool:  # rank 0's view decides; a failure file from an earlier attempt goes first
        if (target / MARKER).is_file():
            return True
        failed.unlink(missing_ok=True)
        return False

    if decided_by_rank0(converted):
        return
    if dist.get_rank() == 0:
        try:
            convert_universal(checkpoint, workers)
        except CheckpointError as exc:
            write_atomic(failed, str(exc))
            raise
    else:
        _wait_for_conversion(checkpoint, timeout_s)
    dist.barrier()


def _wait_for_conversion(checkpoint: Path, timeout_s: float, poll_s: float = 1.0) -> None:
    target, failed = checkpoint / UNIVERSAL_TAG / MARKER, checkpoint / UNIVERSAL_FAILED
    deadline = time.monotonic() + timeout_s
    while not target.is_file():
        if failed.is_file():
            raise CheckpointError(f"rank 0 could not convert {checkpoint}: {failed.read_text().strip()}")
        if time.monotonic() > deadline:
            raise CheckpointError(
                f"{checkpoint}: rank 0's conversion to a universal checkpoint took over "
                f"checkpoint.convert_timeout_s={timeout_s:g} s; convert it ahead with `dnalm checkpoint "
                "universal` and relaunch, or raise checkpoint.convert_timeout_s"
            )
        time.sleep(poll_s)


def conversion_workers(checkpoint: Path) -> int:
    """DeepSpeed's extract and merge workers for this node: one a core, as many as memory holds at twice the largest
    rank's optimizer file each (a worker loads one such file, or one parameter's gathered states, smaller still)."""
    import psutil

    files = list((Path(checkpoint) / TAG).glob("*optim_states.pt"))
    largest = max((f.stat().st_size for f in files), default=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, len(files) or 1, psutil.virtual_memory().available // (2 * largest)))


def convert_universal(checkpoint: Path, workers: int | None = None) -> Path:
    """Convert a complete checkpoint to DeepSpeed's universal format in ``CHECKPOINT/universal`` (no process group).

    The converter writes into ``.universal.tmp``; only a finished conversion, marked and synced, is
    renamed to ``universal``, so one killed half-way leaves nothing that a later one trusts.
    """
    checkpoint = Path(checkpoint)
    target = checkpoint / UNIVERSAL_TAG
    if (target / MARKER).is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)  # a conversion without the marker (an older dnalm's) may be partial
    staging = checkpoint / f".{UNIVERSAL_TAG}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    workers = workers or conversion_workers(checkpoint)
    command = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(checkpoint / TAG),
        "--output_folder",
        str(staging),
        "--inject_missing_state",
        "--num_extract_workers",
        str(workers),
        "--num_merge_workers",
        str(workers),
    ]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while faults.armed("universal.converting") and process.poll() is None:  # tests: kill it half-way
            if any(staging.glob("zero/*")):
                faults.strike("universal.converting", step_of(checkpoint))
            time.sleep(0.05)
        process.wait()
        log.seek(0)
        lines = log.read().strip().splitlines()
    if process.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(
            f"{checkpoint}: conversion to a universal checkpoint failed: {lines[-1] if lines else process.returncode}"
        )
    faults.strike("universal.converted", step_of(checkpoint))
    write_atomic(staging / MARKER, "converted\n")
    fsync_tree(staging)
    rename_durably(staging, target)
    return target
