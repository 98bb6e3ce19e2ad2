"""Faults a cluster run meets, injected for real (``dnalm.utils.faults``): the launcher, 2 processes, gloo, on CPU.

Every rank and the launcher SIGKILLed at several points inside checkpoint writing, on data with
a corrupt shard read around (``on_error=skip``), then resumed: same losses, same samples. A rank
that raises ends the job. Resuming an older checkpoint sets the newer ones aside; resuming on
re-prepared data is refused unless allowed; the SLURM script passes overrides untouched.
docs/reliability.md lists them all.
"""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from dnalm.data.manifest import Manifest
from dnalm.data.shards import IndexedShard
from dnalm.data.stream import GenomeStream
from dnalm.train import checkpoint as ckpt
from dnalm.train.ownership import LOCK, read_owner
from tests.conftest import REPO, prep_folder
from tests.launching import (
    CONFIG,
    ENV,
    deepspeed_cmd,
    dnalm_train_cmd,
    free_port,
    gone_process,
    launch_cmd,
    losses,
    metrics,
    overrides,
    run,
    sample_keys,
    start,
    torchrun_cmd,
    wait_for_step,
)

SKIP = {"data.on_error": "skip", "logging.record_sample_keys": "true"}


@pytest.fixture(scope="module")
def damaged_data(ecoli128, tmp_path_factory) -> tuple[Path, set[str]]:
    """A copy of the E. coli windows of 128 where the shard of a sample drawn at step 25 is truncated and the sample
    drawn at step 15 has a flipped byte; returns the folder and the keys that can no longer be read."""
    folder = shutil.copytree(ecoli128, tmp_path_factory.mktemp("faults") / "ecoli128")
    stream = GenomeStream(folder, batch_size=4, world_size=2)
    (bad_shard, step25_shard), (bad_sample, _) = stream.order(0)(0, np.array([14 * 8 + 5, 24 * 8 + 2]))
    shards = stream.shards
    reader = IndexedShard(folder / shards[bad_shard].path, shards[bad_shard].num_samples)
    offset, length, _ = reader.entry(int(bad_sample))
    lost = {reader.key(int(bad_sample))}
    reader.close()
    with open(folder / shards[bad_shard].path, "r+b") as fh:
        fh.seek(offset + length - 600)  # inside the token array
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    truncated = folder / shards[step25_shard].path
    reader = IndexedShard(truncated, shards[step25_shard].num_samples)
    lost |= {reader.key(i) for i in range(shards[step25_shard].num_samples)}
    reader.close()
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    return folder, lost


@pytest.fixture(scope="module")
def uninterrupted(damaged_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(torchrun_cmd(2, damaged_data[0], folder, **SKIP))
    return folder


def _keys(run_dir: Path) -> list[list[str]]:
    return [[line.split("\t")[1] for line in rank] for rank in sample_keys(run_dir)]


def test_kills_inside_checkpoint_writing_lose_nothing(damaged_data, uninterrupted, tmp_path):
    """Killed at three points of step 20's save, one after another, then left to finish (rank 1's listing of the
    checkpoints stale): the losses and every rank's samples equal the uninterrupted run's, corrupt samples included
    (read around the same way)."""
    data, lost = damaged_data
    folder, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    cmd = deepspeed_cmd(2, data, folder, **SKIP)
    for point, newest in (("save.written", "step-10"), ("save.marked", "step-10"), ("save.renamed", "step-20")):
        killed = run(cmd, expect_ok=False, faults=f"kill@{point}:20")
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
        assert ckpt.complete_checkpoints(folder)[-1].name == newest, point
        if newest == "step-10":  # the partial save is there, and is never taken for a checkpoint
            assert (checkpoints / ".step-20.tmp").is_dir() and ckpt.find_resume(folder, "auto").name == "step-10"
    # resumed after the second save with rank 1's listing lagging one checkpoint behind (a stale NFS cache): rank 0's
    # choice, step 20, is every rank's
    run(cmd, faults="stale@checkpoints.list::1")
    assert losses(folder) == losses(uninterrupted)
    assert _keys(folder) == _keys(uninterrupted)
    consumed = {key for rank in _keys(folder) for key in rank}
    assert len(consumed) > 200 and not consumed & lost
    last = metrics(folder)[-1]
    assert last["stream_skipped"] == metrics(uninterrupted)[-1]["stream_skipped"] > 0
    assert [p.name for p in ckpt.complete_checkpoints(folder)] == ["step-10", "step-20", "step-30"]
    assert not list(checkpoints.glob(".step-*"))


def _survivors(run_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(run_dir) in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _gone_within(run_dir: Path, job: subprocess.Popen, seconds: float) -> float:
    """Seconds until the job and every process naming the run folder are gone (fails past ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if job.poll() is not None and not _survivors(run_dir):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"still running {seconds} s after the signal: {_survivors(run_dir)}")


def _lock_of_a_gone_job(run_dir: Path) -> int:
    """Leave the lock a job SIGKILLed on this host would leave; returns its pid."""
    pid, started = gone_process()
    (run_dir / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": started}))
    return pid


def test_a_signal_saves_at_the_next_step_and_the_run_resumes_exactly(damaged_data, uninterrupted, tmp_path):
    """checkpoint.on_signal=SIGTERM, SIGTERM to torchrun mid-run: every rank saves the same step and exits within 30 s;
    a second job on the folder meanwhile is refused with the owner named; the resume (taking over a lock whose owner is
    gone) has the uninterrupted run's losses."""
    data, folder, log = damaged_data[0], tmp_path / "run", tmp_path / "first.log"
    slow = ENV | {"DNALM_FAULTS": "sleep=0.7@train.step::0"}  # 30 steps outlast the second job's start
    job = start(torchrun_cmd(2, data, folder, **SKIP, **{"checkpoint.on_signal": "SIGTERM"}), log, slow)
    wait_for_step(folder, 4, job, log)
    second = run(
        dnalm_train_cmd(data, folder, **SKIP),
        expect_ok=False,
    )
    owner = read_owner(folder)
    assert second.returncode == 1 and f"is in use by another job (pid {owner.pid} on {owner.host}" in second.stderr
    assert [line for line in second.stderr.splitlines() if line.startswith("dnalm: error:")] == [
        second.stderr.strip().splitlines()[-1]
    ]
    job.send_signal(signal.SIGTERM)
    _gone_within(folder, job, 30)
    said = re.search(r"dnalm: SIGTERM: saved step (\d+) to (\S+) and stopped", log.read_text())
    assert said, log.read_text()[-3000:]
    step = int(said.group(1))
    assert ckpt.complete_checkpoints(folder)[-1].name == f"step-{step}" and 4 <= step < 30
    assert max(losses(folder)) == step and not (folder / LOCK).exists()
    gone = _lock_of_a_gone_job(folder)
    done = run(torchrun_cmd(2, data, folder, **SKIP))
    assert f"took over {folder / LOCK} from pid {gone} on {socket.gethostname()}" in done.stderr
    assert losses(folder) == losses(uninterrupted)


@pytest.mark.parametrize("launcher", ["deepspeed", "dnalm train"])
def test_sigterm_to_the_launcher_ends_every_rank(damaged_data, tmp_path, launcher):
    """Without checkpoint.on_signal: the deepspeed runner dies of SIGTERM and leaves its launch process, whose ranks
    see their launcher gone and exit; `dnalm train` stops at once. Within 30 s, the run folder's lock let go."""
    folder, log = tmp_path / "run", tmp_path / "job.log"
    settings = {**SKIP, "budget.steps": 5000, "checkpoint.interval": 5000, "eval.interval": 5000}
    cmd = (
        deepspeed_cmd(2, damaged_data[0], folder, **settings)
        if launcher == "deepspeed"
        else dnalm_train_cmd(damaged_data[0], folder, **settings)
    )
    job = start(cmd, log)
    wait_for_step(folder, 2, job, log)
    job.send_signal(signal.SIGTERM)
    _gone_within(folder, job, 30)
    assert not (folder / LOCK).exists(), log.read_text()[-2000:]
    expected = "dnalm: the launcher (pid" if launcher == "deepspeed" else "dnalm: SIGTERM: stopping now without saving"
    assert expected in log.read_text()


@pytest.mark.parametrize(
    "fault, launcher", [("raise@train.step:5:1", "torchrun"), ("raise@save.gathered:10:0", "deepspeed")]
)
def test_a_rank_that_fails_ends_every_rank(damaged_data, tmp_path, fault, launcher):
    """Rank 1 raising inside a step while rank 0 waits in the step's collective (under torchrun), or rank 0 raising
    mid-save while rank 1 waits at the save's last barrier (under deepspeed): the job ends non-zero within a minute,
    every rank gone."""
    folder = tmp_path / "run"
    started = time.monotonic()
    done = run(launch_cmd(launcher, 2, damaged_data[0], folder, **SKIP), expect_ok=False, timeout=300, faults=fault)
    assert done.returncode != 0 and "InjectedFault" in done.stdout + done.stderr
    assert time.monotonic() - started < 60
    assert not _survivors(folder)
    assert ckpt.complete_checkpoints(folder) == []


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(uninterrupted, damaged_data, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(uninterrupted, folder)
    older = folder / "checkpoints" / "step-10"
    done = run(torchrun_cmd(2, damaged_data[0], folder, "--resume", str(older), **SKIP, **{"budget.steps": 20}))
    aside = list((folder / "checkpoints").glob("abandoned-*-from-step-10"))
    assert len(aside) == 1 and f"moved to {aside[0]}" in done.stderr
    assert sorted(p.name for p in aside[0].iterdir()) == ["metrics.jsonl", "step-20", "step-30"]
    assert len(metrics(aside[0])) == len(metrics(uninterrupted)), "the abandoned branch's metrics are kept"
    assert [p.name for p in ckpt.complete_checkpoints(folder)] == ["step-10", "step-20"]
    assert ckpt.find_resume(folder, "auto") == folder / "checkpoints" / "step-20", "auto continues the new branch"
    assert losses(folder) == {s: v for s, v in losses(uninterrupted).items() if s <= 20}


def test_resuming_on_other_data_is_refused_unless_allowed(uninterrupted, damaged_data, tmp_path, ecoli):
    fasta = tmp_path / "slice.fa"  # data re-prepared from other inputs: a plan with another fingerprint
    fasta.write_text(f">slice\n{ecoli.sequence[:400_000]}\n")
    other = prep_folder(tmp_path / "other", [fasta], seq_len=128, val_fraction=0.05)
    old, new = (Manifest.load(d).plan_fingerprint for d in (damaged_data[0], other))
    folder = tmp_path / "run"
    shutil.copytree(uninterrupted, folder)
    cmd = torchrun_cmd(2, other, folder, **SKIP, **{"budget.steps": 32})
    refused = run(cmd, expect_ok=False)
    assert refused.returncode != 0
    assert f"trained on data plan {old}" in refused.stderr and f"has plan {new}" in refused.stderr
    assert "data.allow_changed=true" in refused.stderr
    done = run(cmd + ["data.allow_changed=true"])
    assert "the data stream restarts at epoch 0" in done.stderr
    records = {r["step"]: r for r in metrics(folder)}
    assert records[31]["data_restarted"] and (records[31]["data_epoch"], records[31]["data_index"]) == (0, 8)
    assert records[32]["data_index"] == 16


def test_slurm_script_passes_overrides_and_requeues_after_a_save_on_sigusr1(damaged_data, tmp_path):
    """launch/slurm_train.sbatch under stand-ins for srun and scontrol (no SLURM here) and the real torchrun: a value
    with a space and a $ reaches the config exactly as typed; SIGUSR1 to the script (what --signal=B:USR1@120 sends)
    reaches the ranks through launch/torchrun.sh, they save and exit, and the script requeues the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "requeued"
    shims = {
        "srun": '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n',
        "scontrol": f'#!/usr/bin/env bash\nif [[ "$1" == requeue ]]; then echo "$@" > {requeued}; '
        "else echo 127.0.0.1; fi\n",
    }
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    folder, log = tmp_path / "run", tmp_path / "job.log"
    name = "two words $HOME `id` ;x"
    env = ENV | {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_NNODES": "1",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_JOB_ID": "4242",
        "MASTER_PORT": str(free_port()),
        "DNALM_FAULTS": "sleep=0.5@train.step::0",
    }
    job = start(
        [
            "bash",
            str(REPO / "launch" / "slurm_train.sbatch"),
            str(CONFIG),
            *overrides(damaged_data[0], folder, **SKIP),
            f"logging.run_name={name}",
        ],
        log,
        env,
    )
    wait_for_step(folder, 3, job, log)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "dnalm: SIGUSR1: saved step" in log.read_text() and requeued.read_text().split() == ["requeue", "4242"]
    step = max(losses(folder))
    assert step < 30 and ckpt.complete_checkpoints(folder)[-1].name == f"step-{step}"
    import yaml

    assert yaml.safe_load((folder / "config.yaml").read_text())["logging"]["run_name"] == name


def test_checkpoints_and_prepared_data_are_synced_before_they_count(tmp_path):
    """Every file and folder of a checkpoint is fsynced before its COMPLETE marker, the checkpoints folder after
    the rename; every file prep writes is fsynced, and its folders (tests/scripts/fsync_audit.py)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "fsync_audit.py"), str(tmp_path)],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "checkpoint ok" in done.stdout and "prep ok" in done.stdout
