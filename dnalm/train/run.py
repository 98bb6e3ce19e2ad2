"""A training run from start to end: own the run folder, train, say where everything went, let go."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist

from dnalm.train import checkpoint as ckpt
from dnalm.train import console
from dnalm.train.config import TrainConfig
from dnalm.train.distributed import init_distributed, release_shared_memory
from dnalm.train.ownership import RunLock
from dnalm.train.trainer import Trainer
from dnalm.utils.files import refuse_file_as_folder


def train(config: TrainConfig, resume: str | None = "auto") -> dict:
    """Own the run folder (one job at a time), train, and let go of it. A start that fails before its first step (a
    corrupt shard, a bad resume) leaves no run folder, if it made the folder."""
    refuse_file_as_folder(config.run_dir, "run_dir")  # every rank, before any work
    rank, _ = init_distributed(config.robust.collective_timeout_s)
    run_dir, lock = Path(config.run_dir), None
    created = rank == 0 and not run_dir.exists()

    def take() -> str | None:
        nonlocal lock
        lock = RunLock(run_dir).acquire()
        return lock.taken_over.describe() if lock.taken_over else None

    trainer = None
    try:
        taken_over = ckpt.decided_by_rank0(take)
        if taken_over and rank == 0:
            print(
                f"dnalm: took over {run_dir / '.dnalm-lock'} from {taken_over}, which is gone",
                file=sys.stderr,
                flush=True,
            )
        trainer = Trainer(config, resume, lock)
        started = time.monotonic()
        result = trainer.run()
        dist.barrier()
        if rank == 0:
            console.say(finished_line(trainer, result, time.monotonic() - started))
    finally:
        if lock is not None:
            lock.release()
        if created and (trainer is None or trainer.step == 0) and not ckpt.complete_checkpoints(run_dir):
            # a failed start: nothing there a later step could take for a run (no step, no checkpoint)
            shutil.rmtree(run_dir, ignore_errors=True)
    release_shared_memory()
    return result


def finished_line(trainer: Trainer, last: dict, seconds: float) -> str:
    """Where the run, its metrics and its loss plot are (drawn here), and how it ended."""
    from dnalm.train.metrics import METRICS, plot

    scores = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "val_loss") if isinstance(last.get(k), float))
    try:
        figure: Path | str = plot(trainer.run_dir)
    except Exception as exc:  # a plot is a convenience: never fail a finished run over it
        figure = f"not drawn ({type(exc).__name__}: {exc})"
    how = (
        f"stopped at step {trainer.step} of {trainer.total_steps}"
        if "stopped" in last
        else f"finished step {trainer.step} of {trainer.total_steps}"
    )
    return (
        f"{how} in {console.duration(seconds)}{': ' + scores if scores else ''}. Run folder {trainer.run_dir} "
        f"(metrics {trainer.run_dir / METRICS}, loss plot {figure})"
    )
