"""Checkpoints: ``RUN/checkpoints/step-N/``, written whole or not at all, durable once marked.

Every rank writes its DeepSpeed shard and its RNG state into ``.step-N.tmp``; after a barrier,
rank 0 adds the stream state, resolved config and tokenizer, checks that every rank's files are
there, syncs every file and folder to disk, writes the ``COMPLETE`` marker (synced too) and renames
the folder to ``step-N``. A folder without the marker (a run killed while saving) never counts,
and keep-last-K only ever deletes complete checkpoints older than the newest one. DeepSpeed's own
``latest`` file (written before its final barrier) is not used.

Branches: resuming from a checkpoint older than the newest (or starting afresh over old ones)
moves the newer ones into ``checkpoints/abandoned-…/`` with the run's metrics so far: nothing is
deleted, and ``--resume auto`` never continues the abandoned branch.

Cluster: rank 0 alone decides what a run resumes from (a shared filesystem's listing can lag on
another node) and tells the others; after loading, every rank checks it holds the same step and
checkpoint id as rank 0. A conversion to a universal checkpoint (another world size) runs on rank 0
outside any collective: the other ranks poll for its marker under their own deadline
(``dnalm.train.universal``).

Trust: our RNG files load with ``weights_only=True``; DeepSpeed's own shards (``state/*.pt``)
are unpickled by DeepSpeed, so resume or convert only checkpoints you trust.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dnalm.utils import faults
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import fsync_path, fsync_tree, rename_durably, write_atomic

MARKER = "COMPLETE"
TAG = "state"
UNIVERSAL_TAG = "universal"
UNIVERSAL_FAILED = ".universal.failed"
META = "meta.json"
_STEP = re.compile(r"^step-(\d+)$")


class CheckpointError(DnalmError):
    """A checkpoint that is missing, incomplete or cannot be loaded."""


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and (p / MARKER).is_file()]
    listed = [p for _, p in sorted(found)]
    return listed[:-1] if faults.hit("checkpoints.list", "stale", rank=_rank()) else listed


def decide_resume(run_dir: Path, resume: str | None) -> tuple[Path | None, Path | None]:
    """Collective: rank 0 resolves ``resume`` (``find_resume``) and sets newer checkpoints aside; every rank gets
    (its choice, the folder the newer ones went to). A refusal is raised on every rank."""

    def choose():
        chosen = find_resume(run_dir, resume)
        aside = set_aside_newer(run_dir, step_of(chosen) if chosen is not None else 0)
        return (str(chosen) if chosen else None, str(aside) if aside else None)

    chosen, aside = decided_by_rank0(choose)
    return (Path(chosen) if chosen else None), (Path(aside) if aside else None)


def decided_by_rank0(decide):
    """Collective: ``decide()`` runs on rank 0 alone and its result (or its DnalmError) reaches every rank."""
    answer = [None]
    if _rank() == 0:
        try:
            answer = [("ok", decide())]
        except DnalmError as exc:
            answer = [("error", exc)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise value
    return value


def identity(checkpoint: Path) -> dict:
    """What a rank loaded: the step and the checkpoint's id (older checkpoints have none: their folder's name)."""
    meta = read_meta(checkpoint)
    return {"step": meta["step"], "id": meta.get("id", Path(checkpoint).name)}


def check_same_checkpoint(loaded: list[dict]) -> None:
    """Every rank's ``identity`` (in rank order) must be rank 0's; a disagreement is named with both."""
    for rank, other in enumerate(loaded):
        if other != loaded[0]:
            raise CheckpointError(
                f"rank {rank} loaded step {other['step']} (checkpoint {other['id']}) but rank 0 "
                f"loaded step {loaded[0]['step']} (checkpoint {loaded[0]['id']}); stopping before "
                "the ranks train on different states. Check that every node sees the same run folder"
            )


def verify_loaded(checkpoint: Path) -> None:
    """Collective: every rank checks that it loaded the checkpoint rank 0 did."""
    loaded: list[dict] = [{}] * dist.get_world_size()  # all_gather_object replaces every slot
    dist.all_gather_object(loaded, identity(checkpoint))
    check_same_checkpoint(loaded)


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


def damaged(checkpoint: Path, tag: str = TAG, converting: bool = False) -> CheckpointError | None:
    """When loading ``checkpoint`` failed: a one-line error naming a damaged file in it (a torch file that is not a
    whole zip archive: cut short by a full disk or a copy) and the previous complete checkpoint to resume from, or
    None when every file looks whole (the failure is something else)."""
    import zipfile

    checkpoint = Path(checkpoint)
    files = sorted((checkpoint / tag).glob("*.pt")) + sorted(checkpoint.glob("rng-rank*.pt"))
    broken = next((f for f in files if not zipfile.is_zipfile(f)), None)
    if broken is None:
        return None

    def number(folder: Path) -> int:  # from the name: a damaged checkpoint's meta.json may be damaged too
        found = _STEP.match(folder.name)
        return int(found.group(1)) if found else -1

    earlier = [c for c in complete_checkpoints(checkpoint.parent.parent) if number(c) < number(checkpoint)]
    if not earlier:
        way_out = "no earlier complete checkpoint" + ("" if converting else ": --resume none starts afresh")
    elif converting:
        way_out = f"convert the previous complete checkpoint: dnalm convert {earlier[-1]} (training resumes from it "
        way_out += f"with --resume {earlier[-1]})"
    else:
        way_out = f"resume from the previous complete checkpoint: --resume {earlier[-1]}"
    return CheckpointError(
        f"{broken}: damaged ({broken.stat().st_size:,} bytes, not a whole torch file: cut short by a full disk, a "
        f"crash or a copy); {way_out}"
    )


def read_meta(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / META).read_text())


def rng_state() -> dict:
    """Every generator a rank draws from (Python, NumPy, torch's CPU one and, with CUDA, its GPU's), as plain
    numbers and tensors, so that ``torch.load(weights_only=True)`` reads it back."""
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state()
    assert isinstance(legacy, tuple)  # the global RandomState is MT19937, whose state is the legacy tuple
    _, keys, pos, has_gauss, cached = legacy
    state = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device: each rank drives one GPU
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: Path, step: int, meta: dict, files: Mapping[str, Path | str], keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the complete checkpoint folder."""
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = checkpoints_dir(run_dir)
    tmp, final = folder / f".step-{step}.tmp", folder / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    faults.strike("save.begun", step, rank)
    engine.save_checkpoint(
        str(tmp), tag=TAG, client_state={"step": step, "universal_checkpoint_info": {}}, save_latest=False
    )
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    _sync_own_files(tmp, rank)
    faults.strike("save.written", step, rank)
    dist.barrier()
    if rank == 0:
        missing = [r for r in range(world) if not (tmp / f"rng-rank{r}.pt").is_file()]
        if missing or not (tmp / TAG).is_dir():
            raise CheckpointError(f"{tmp}: ranks {missing} did not finish writing; not marking it complete")
        for name, source in files.items():
            source = Path(source)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp / name)
        (tmp / META).write_text(
            json.dumps(meta | {"step": step, "world_size": world, "id": uuid.uuid4().hex}, indent=1)
        )
        faults.strike("save.gathered", step, rank)
        fsync_tree(tmp)  # the data of every file first: a marker must never outlive what it vouches for
        write_atomic(tmp / MARKER, json.dumps({"step": step, "world_size": world}))
        faults.strike("save.marked", step, rank)
        if final.exists():  # only from an older dnalm's leftovers: keep it, never delete
            set_aside(run_dir, [final], f"replaced-step-{step}")
        rename_durably(tmp, final)
        faults.strike("save.renamed", step, rank)
        _prune(run_dir, keep_last)
    dist.barrier()
    return final


def _sync_own_files(tmp: Path, rank: int) -> None:
    """Sync the files this rank wrote (DeepSpeed names them ``…rank_R_…``; ours ``rng-rankR.pt``).

    On a local disk rank 0's sync of the whole folder would do, but on a cluster filesystem a
    node's unflushed pages can only be flushed by that node.
    """
    own = re.compile(rf"(^|[_-])rank_?{rank}(_|\.pt$)")
    for path in tmp.rglob("*"):
        if path.is_file() and own.search(path.name):
            fsync_path(path)


def _prune(run_dir: Path, keep_last: int) -> None:
    complete = complete_checkpoints(run_dir)
    for old in complete[: max(0, len(complete) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_dir(run_dir).glob(".step-*.tmp"):  # left by runs killed while saving
        shutil.rmtree(stale, ignore_errors=True)


def step_of(checkpoint: Path) -> int:
    return read_meta(checkpoint)["step"]


def set_aside_newer(run_dir: Path, step: int) -> Path | None:
    """Move this run's complete checkpoints newer than ``step`` (a branch being abandoned) aside; rank 0 only."""
    newer = [p for p in complete_checkpoints(run_dir) if (m := _STEP.match(p.name)) and int(m.group(1)) > step]
    return set_aside(run_dir, newer, f"from-step-{step}") if newer else None


def set_aside(run_dir: Path, checkpoints: list[Path], why: str) -> Path:
    """``checkpoints/abandoned-TIME-WHY/``: the given checkpoints and a copy of the metrics logged so far."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = checkpoints_dir(run_dir) / f"abandoned-{stamp}-{why}"
    suffix = 1
    while target.exists():
        target, suffix = target.with_name(f"abandoned-{stamp}-{why}-{suffix}"), suffix + 1
    target.mkdir(parents=True)
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        shutil.copy2(metrics, target / metrics.name)
    for checkpoint in checkpoints:
        os.rename(checkpoint, target / checkpoint.name)
    fsync_tree(target)
    fsync_path(checkpoints_dir(run_dir))
    return target


def check_data(checkpoint: Path, data_path: str, fingerprint: str, allow_changed: bool) -> bool:
    """Whether the checkpoint's stream position applies to this data folder (False: restart it at epoch 0).

    The position counts samples of one data plan; applied to re-prepared data it would silently skip
    and repeat samples, so a different plan is refused unless ``data.allow_changed`` says otherwise.
    """
    saved = read_meta(checkpoint).get("data", {})
    if saved.get("plan_fingerprint") == fingerprint:
        return True
    if not allow_changed:
        raise CheckpointError(
            f"{checkpoint}: was trained on data plan {saved.get('plan_fingerprint', '(not recorded)')} "
            f"({saved.get('path', 'unknown folder')}), but data.path {data_path} has plan {fingerprint}; "
            "its stream position would not mean the same samples. Use the original data folder, or "
            "override data.allow_changed=true to restart the data stream at epoch 0"
        )
    return False


def check_model(checkpoint: Path, model_config) -> None:
    """The checkpoint must hold the model this run builds (the same parameter names and shapes); otherwise one line
    names both, before DeepSpeed reports missing state-dict keys."""
    from dnalm.models import ModelConfig, build_model

    saved = read_meta(checkpoint).get("model")
    if saved is None:
        return
    saved_config = ModelConfig(**saved)

    def shapes(config):
        return {name: tuple(p.shape) for name, p in build_model(config, device="meta").named_parameters()}

    if shapes(saved_config) != shapes(model_config):
        raise CheckpointError(
            f"{checkpoint}: holds {_describe(saved_config)}, but this run builds "
            f"{_describe(model_config)}; resume it with the config it was trained with, or start this "
            "one afresh (--resume none, or another run_dir)"
        )


def _describe(config) -> str:
    return (
        (
            f"{config.name} (an {config.arch}, d_model {config.d_model}, {config.n_layers} layers, vocabulary "
            f"{config.vocab_size})"
        )
        .replace("an decoder", "a decoder")
        .replace("an cnn", "a cnn")
    )


def _base_optimizer(engine):
    """The torch optimizer under DeepSpeed's ZeRO wrapper (or the engine's own where there is none)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def place_steps(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter's Adam ``step`` its own tensor where the optimizer would have made it: on the
    parameter's device in float32 for fused or capturable Adam (CUDA's fused AdamW refuses a CPU step), else
    a CPU scalar. DeepSpeed's universal load leaves them on the CPU, shared between parameters."""
    from torch.optim.optimizer import _get_scalar_dtype

    # every state, not only the groups' current params: ZeRO-3 swaps each sub-group's partition into its group to step
    # it
    group_of = {id(param): group for group in optimizer.param_groups for param in group["params"]}
    for param, state in optimizer.state.items():
        group = group_of.get(id(param), optimizer.param_groups[0])
        if torch.is_tensor(state.get("step")):
            state["step"] = (
                state["step"]
                .detach()
                .to(
                    device=param.device if group.get("fused") or group.get("capturable") else "cpu",
                    dtype=_get_scalar_dtype(is_fused=bool(group.get("fused"))),
                    copy=True,
                )
            )


def load(engine, checkpoint: Path, universal: bool) -> None:
    tag = UNIVERSAL_TAG if universal else TAG
    groups = _base_optimizer(engine).param_groups
    decay = [group["weight_decay"] for group in groups]
    try:
        path, _ = engine.load_checkpoint(
            str(checkpoint), tag=tag, load_module_strict=True, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise damaged(checkpoint, tag) or exc from None
    if path is None:
        raise CheckpointError(f"{checkpoint}: DeepSpeed found no state under tag '{tag}'")
    # DeepSpeed 0.19.8's ZeRO-3 universal load (stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3) copies the
    # first parameter group's saved settings onto every group, which puts weight decay on norms and embeddings: the
    # groups' own decay is put back. It also hands every parameter's state one and the same `step` tensor, which torch's
    # Adam then advances once per sub-group step, so bias correction ran ahead from the second step after a resume on
    # another world size (2.8e-4 in decoder-tiny's loss): each state gets its own copy.
    for group, value in zip(groups, decay):
        group["weight_decay"] = value
    place_steps(_base_optimizer(engine))
    rank_file = Path(checkpoint) / f"rng-rank{dist.get_rank()}.pt"
    if not universal and rank_file.is_file():
        try:
            restore_rng(torch.load(rank_file, weights_only=True))
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{rank_file}: not loadable with weights_only=True (saved by an older dnalm, "
                "or not by dnalm); resume it with the dnalm that wrote it"
            ) from None
