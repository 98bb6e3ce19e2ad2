"""Run one training config under the ``deepspeed`` launcher from Python (the demo and ``bench compare`` use it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from dnalm.utils.errors import DnalmError


def free_port() -> int:
    """A TCP port free on this machine now, for a launcher's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_training(config: dict, config_path: Path, processes: int, log_file: Path) -> None:
    """Write ``config`` to ``config_path`` and train it on ``processes`` local ranks; output goes to ``log_file``.

    On CPU each rank gets an equal share of the cores (DS_ACCELERATOR=cpu, gloo).
    """
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = os.environ.copy()
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // processes)))
    command = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(processes),
        "--master_port",
        str(free_port()),
        "--module",
        "dnalm.train",
        "--config",
        str(config_path),
    ]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        done = subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise DnalmError(f"training {config['run_dir']} failed (exit {done.returncode}); its log: {log_file}")
