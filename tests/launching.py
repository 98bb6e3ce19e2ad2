"""Launching real training runs from tests: the deepspeed launcher on CPU (gloo), their metrics and sample keys."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dnalm.train.spawn import free_port  # noqa: F401 (the tests take it from here)
from tests.conftest import REPO

LAUNCH_ENV = {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV = os.environ | LAUNCH_ENV
CONFIG = REPO / "configs" / "train" / "encoder-small-ecoli.yaml"


def overrides(data: Path, run: Path, **extra) -> list[str]:
    settings = {
        "data.path": data,
        "run_dir": run,
        "model.name": "encoder-tiny",
        "budget.steps": 30,
        "eval.interval": 10,
        "checkpoint.interval": 10,
        "logging.interval": 1,
        "logging.wandb": "disabled",
        "batch.micro_batch": 4,
        "batch.global_batch": 8,
        "data.num_workers": 1,
    } | extra
    return [f"{k}={v}" for k, v in settings.items()]


# Both run launch/train.py on n local ranks. torchrun starts ranks ~4.6 s sooner than the deepspeed runner (which
# imports
# DeepSpeed twice, in the runner and in its launcher), so tests whose subject is not the launcher use it.
LAUNCHERS = {
    "deepspeed": lambda n: [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--master_port",
        str(free_port()),
        "--num_gpus",
        str(n),
    ],
    "torchrun": lambda n: [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(n),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ],
}


def launch_cmd(launcher: str, n: int, data: Path, run: Path, *args: str, **extra) -> list[str]:
    return [
        *LAUNCHERS[launcher](n),
        str(REPO / "launch" / "train.py"),
        "--config",
        str(CONFIG),
        *overrides(data, run, **extra),
        *args,
    ]


def deepspeed_cmd(n: int, data: Path, run: Path, *args: str, **extra) -> list[str]:
    return launch_cmd("deepspeed", n, data, run, *args, **extra)


def torchrun_cmd(n: int, data: Path, run: Path, *args: str, **extra) -> list[str]:
    return launch_cmd("torchrun", n, data, run, *args, **extra)


def dnalm_train_cmd(data: Path, run: Path, *args: str, **extra) -> list[str]:
    """One process, no launcher: `dnalm train` as a user runs it."""
    return [sys.executable, "-m", "dnalm", "train", "--config", str(CONFIG), *overrides(data, run, **extra), *args]


def run_spec(data: Path, run: Path, resume: str = "auto", **extra) -> dict:
    """One training of a ``train_runs`` launch: the tests' config with these overrides."""
    return {"config": str(CONFIG), "resume": resume, "overrides": overrides(data, run, **extra)}


def train_runs(processes: int, runs: list[dict], spec: Path) -> subprocess.CompletedProcess:
    """Several trainings one after another in one torchrun launch of ``processes`` ranks (tests/scripts/train_runs.py):
    a launch's start-up is paid once. ``spec`` is where the list is written."""
    spec.write_text(json.dumps(runs))
    return run([*LAUNCHERS["torchrun"](processes), str(REPO / "tests" / "scripts" / "train_runs.py"), str(spec)])


def gone_process() -> tuple[int, float]:
    """(pid, start time) of a process that ran on this host and is gone: a lock's owner killed with SIGKILL."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


def run(cmd, expect_ok=True, timeout=600, faults: str | None = None) -> subprocess.CompletedProcess:
    """Run a launch in its own process group (a fault that kills its group never reaches pytest)."""
    env = os.environ | LAUNCH_ENV | ({"DNALM_FAULTS": faults} if faults else {})  # as it is now (a test may set AWS_*)
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO, start_new_session=True
    )
    if expect_ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def sample_keys(run_dir: Path, ranks: int = 2) -> list[list[str]]:
    """Each rank's consumed sample keys, in order (``logging.record_sample_keys``)."""
    return [(run_dir / f"sample-keys-rank{r}.txt").read_text().splitlines() for r in range(ranks)]


def start(cmd, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a launch in its own session, its output to ``log`` (read it with ``log.read_text()``)."""
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, env=env or ENV, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )


def wait_for_step(run_dir: Path, step: int, job: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until the run has logged ``step`` (``logging.interval=1``); fails with the log if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert job.poll() is None, log.read_text()[-3000:]
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(f'"step": {step},' in line for line in path.read_text().splitlines()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout} s: " + log.read_text()[-3000:])
