"""Checkpoints: ``RUN/checkpoints/step-N/``, written whole or not at all.

Every rank writes its DeepSpeed shard and its RNG state into ``.step-N.tmp``; after a barrier,
rank 0 adds the stream state, resolved config and tokenizer, checks that every rank's files are
there, writes the ``COMPLETE`` marker and renames the folder to ``step-N``. A folder without the
marker (a run killed while saving) never counts, and keep-last-K only ever deletes complete
checkpoints older than the newest one. DeepSpeed's own ``latest`` file (written before its
final barrier) is not used.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dnalm.errors import DnalmError

MARKER = "COMPLETE"
TAG = "state"
UNIVERSAL_TAG = "universal"
META = "meta.json"
_STEP = re.compile(r"^step-(\d+)$")


class CheckpointError(DnalmError):
    """A checkpoint that is missing, incomplete or cannot be loaded."""


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``auto``: the newest complete checkpoint (or None); a path: that checkpoint, which must be complete."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker: the run stopped while saving it)")
    return path


def read_meta(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / META).read_text())


def rng_state() -> dict:
    """Every generator a rank draws from: Python, NumPy, torch's CPU one and, where CUDA is present, its GPU's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: each rank drives one GPU
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: Path, step: int, meta: dict, files: dict[str, Path | str], keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the complete checkpoint folder."""
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = checkpoints_dir(run_dir)
    tmp, final = folder / f".step-{step}.tmp", folder / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    engine.save_checkpoint(str(tmp), tag=TAG, client_state={"step": step, "universal_checkpoint_info": {}},
                           save_latest=False)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        missing = [r for r in range(world) if not (tmp / f"rng-rank{r}.pt").is_file()]
        if missing or not (tmp / TAG).is_dir():
            raise CheckpointError(f"{tmp}: ranks {missing} did not finish writing; not marking it complete")
        for name, source in files.items():
            source = Path(source)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp / name)
        (tmp / META).write_text(json.dumps(meta | {"step": step, "world_size": world}, indent=1))
        _write_synced(tmp / MARKER, json.dumps({"step": step, "world_size": world}))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _prune(run_dir, keep_last)
    dist.barrier()
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _prune(run_dir: Path, keep_last: int) -> None:
    complete = complete_checkpoints(run_dir)
    for old in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_dir(run_dir).glob(".step-*.tmp"):  # left by runs killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def ensure_universal(checkpoint: Path) -> None:
    """Convert a checkpoint to DeepSpeed's universal format (rank 0), so another world size can load it."""
    target = Path(checkpoint) / UNIVERSAL_TAG
    if dist.get_rank() == 0 and not (target / "zero").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(Path(checkpoint) / TAG), "--output_folder", str(target), "--inject_missing_state",
                               "--num_extract_workers", "1", "--num_merge_workers", "1"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise CheckpointError(f"{checkpoint}: conversion to a universal checkpoint failed: "
                                  f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    dist.barrier()


def load(engine, checkpoint: Path, universal: bool) -> None:
    tag = UNIVERSAL_TAG if universal else TAG
    path, _ = engine.load_checkpoint(str(checkpoint), tag=tag, load_module_strict=True, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{checkpoint}: DeepSpeed found no state under tag '{tag}'")
    rank_file = Path(checkpoint) / f"rng-rank{dist.get_rank()}.pt"
    if not universal and rank_file.is_file():
        restore_rng(torch.load(rank_file, weights_only=False))
