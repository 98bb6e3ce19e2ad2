"""What a cluster adds, in-process: one resume decision checked on every rank, Adam's step after a universal load,
the run folder's lock, and the fault points that stand in for a lagging filesystem. The launches that exercise them
for real are in test_faults.py and test_train.py."""

import json
import os
import socket
import subprocess

import pytest
import torch

from dnalm.train import checkpoint as ckpt
from dnalm.train.ownership import LOCK, Owner, RunFolderInUse, RunLock, read_owner
from dnalm.utils import faults
from tests.launching import gone_process


def test_ranks_that_loaded_different_checkpoints_are_stopped_with_both_named():
    same = {"step": 20, "id": "a1"}
    ckpt.check_same_checkpoint([same, dict(same)])
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.check_same_checkpoint([same, {"step": 10, "id": "b2"}])
    message = str(refused.value)
    assert "rank 1 loaded step 10 (checkpoint b2)" in message and "rank 0 loaded step 20 (checkpoint a1)" in message


def test_a_stale_listing_misses_the_newest_checkpoint_on_the_rank_named(tmp_path, monkeypatch):
    for step in (10, 20):
        folder = tmp_path / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / ckpt.MARKER).write_text("{}")
    monkeypatch.setenv(faults.ENV, "stale@checkpoints.list::1")
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-10", "step-20"]  # rank 0 (no group)
    assert ckpt.find_resume(tmp_path, "auto").name == "step-20"


@pytest.mark.parametrize("fused", [True, False])
def test_adam_steps_get_their_own_tensor_where_the_optimizer_keeps_them(fused):
    """DeepSpeed's universal load hands every parameter one CPU ``step`` tensor; fused (and capturable) AdamW wants
    each on its parameter's device in float32, the plain one a CPU scalar."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=fused)
    shared = torch.tensor(7.0, dtype=torch.float64)
    for p in params:
        optimizer.state[p] = {"step": shared, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    ckpt.place_steps(optimizer)
    steps = [optimizer.state[p]["step"] for p in params]
    assert steps[0] is not steps[1] and steps[0].data_ptr() != steps[1].data_ptr()
    assert all(s.dtype == torch.float32 and float(s) == 7.0 and s.device == p.device for s, p in zip(steps, params))
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()  # each advances its own count once
    assert [float(optimizer.state[p]["step"]) for p in params] == [8.0, 8.0]


def test_adam_steps_follow_a_parameter_off_the_host():
    """The device comes from the parameter, never assumed: a fused group's step on the meta device stays there."""
    param = torch.nn.Parameter(torch.ones(4, device="meta"))
    optimizer = torch.optim.SGD([param], lr=0.1)  # any optimizer's state dict; the group says fused as AdamW's would
    optimizer.param_groups[0]["fused"] = True
    optimizer.state[param] = {"step": torch.tensor(3.0)}
    ckpt.place_steps(optimizer)
    assert optimizer.state[param]["step"].device.type == "meta"


def test_a_second_job_on_a_run_folder_is_refused_and_a_gone_owner_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    first = RunLock(tmp_path / "run").acquire()
    assert read_owner(tmp_path / "run") == Owner.this_process()
    with pytest.raises(RunFolderInUse) as refused:  # this very process is a live owner on this host
        RunLock(tmp_path / "run").acquire()
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused.value)
    assert str(tmp_path / "run" / LOCK) in str(refused.value) and "\n" not in str(refused.value)
    first.release()
    assert not (tmp_path / "run" / LOCK).exists()

    pid, started = gone_process()  # an owner on this host that no longer runs
    (tmp_path / "run" / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": started}))
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.taken_over.pid == pid and read_owner(tmp_path / "run") == Owner.this_process()
    lock.release()

    # another host cannot be checked from here: refused, unless it is this same (requeued) scheduler job
    other = {"host": "node-elsewhere", "pid": 4242, "started": 1.0, "job": "77"}
    (tmp_path / "run" / LOCK).write_text(json.dumps(other))
    with pytest.raises(RunFolderInUse, match="pid 4242 on node-elsewhere, SLURM job 77"):
        RunLock(tmp_path / "run").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock = RunLock(tmp_path / "run").acquire()
    assert lock.taken_over.host == "node-elsewhere"
    lock.release()
    assert list((tmp_path / "run").iterdir()) == []


def test_fault_actions_are_read_or_refused(monkeypatch):
    monkeypatch.setenv(faults.ENV, "sleep=0.01@universal.converted,stale@checkpoints.list::1")
    faults.strike("universal.converted", 3)
    assert faults.hit("checkpoints.list", "stale", rank=1) and not faults.hit("checkpoints.list", "stale", rank=0)
    monkeypatch.setenv(faults.ENV, "sleep=soon@universal.converted")
    with pytest.raises(ValueError, match="sleep=S"):
        faults.strike("universal.converted", 3)


def test_each_process_drives_its_launchers_local_rank_gpu():
    """The rule every CUDA process applies before its process group starts (trainer, benches, eval), as a function of
    the environment: no launcher, GPU 0; LOCAL_RANK 3 of 8, GPU 3; no GPU, none; more ranks than GPUs, one line."""
    from dnalm.utils.devices import local_gpu_index
    from dnalm.utils.errors import DnalmError

    assert local_gpu_index({}, 8) == 0 and local_gpu_index({"LOCAL_RANK": "3"}, 8) == 3
    assert local_gpu_index({"LOCAL_RANK": "3"}, 0) is None
    with pytest.raises(DnalmError, match="LOCAL_RANK 2, but this process sees 2 GPU"):
        local_gpu_index({"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, 2)


def test_a_zero3_rank_other_than_0_never_holds_the_bundle(tmp_path):
    """model.init_from under ZeRO-3 on 2 processes: rank 0 alone reads the bundle, a tensor at a time, and the weights
    arrive whole. Rank 1's added host memory stays flat from a 1.7 MB bundle to a 41 MB one (measured 3.5 and 6.0 MB;
    it held the whole bundle before). Rank 0's resident set takes in the file's pages as it reads them (mapped, not
    copied)."""
    from safetensors.torch import save_file

    from dnalm.models import build_model, get_config
    from tests.conftest import REPO
    from tests.launching import LAUNCH_ENV, LAUNCHERS

    pairs, sizes, sums = [], {}, {}
    for name in ("decoder-tiny", "decoder-small"):
        torch.manual_seed(1)
        model = build_model(get_config(name, vocab_size=16))
        folder = tmp_path / name
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        sizes[name] = (folder / "model.safetensors").stat().st_size / 2**20
        sums[name] = float(sum(p.double().sum() for p in model.parameters()))
        pairs.append(f"{name}={folder}")
    env = os.environ | LAUNCH_ENV | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [*LAUNCHERS["torchrun"](2), str(REPO / "tests" / "scripts" / "bundle_load_memory.py"), *pairs],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name in sizes:
        assert found[name]["checksum"] == pytest.approx(sums[name], rel=1e-6)
    small, large = (found[name]["added_mb"] for name in ("decoder-tiny", "decoder-small"))
    assert sizes["decoder-small"] > 40 and large[1] - small[1] < 0.15 * (
        sizes["decoder-small"] - sizes["decoder-tiny"]
    ), (found, sizes)
