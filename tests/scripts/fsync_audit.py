"""Watch every fsync and rename while a real prep and a real checkpoint save run, then check their order.

``os.fsync``, ``os.rename`` and ``os.replace`` are wrapped to record, in order, which inode each sync
flushed and each rename moved (the work is still done by the real calls). Checks:

- checkpoint: every file and folder of ``step-2`` was synced before the first sync of its
  ``COMPLETE`` marker, and ``checkpoints/`` was synced after the rename to ``step-2``;
- prep: every file and folder of the prepared data was synced, and every file renamed into place
  had its data synced before the rename and its folder synced after.

Prints "checkpoint ok" and "prep ok", or exits 1 naming what was not synced.

    python tests/scripts/fsync_audit.py WORK_DIR
"""

import os
import sys
from pathlib import Path

events: list[tuple] = []  # ("sync", (dev, inode)) | ("rename", source, target)
_fsync, _rename, _replace = os.fsync, os.rename, os.replace


def _identity(stat) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def recording_fsync(fd):
    events.append(("sync", _identity(os.fstat(fd))))
    return _fsync(fd)


def recording_rename(src, dst, *args, **kwargs):
    events.append(("rename", str(src), str(dst)))
    return _rename(src, dst, *args, **kwargs)


def recording_replace(src, dst, *args, **kwargs):
    events.append(("rename", str(src), str(dst)))
    return _replace(src, dst, *args, **kwargs)


os.fsync, os.rename, os.replace = recording_fsync, recording_rename, recording_replace


def synced_at(identity) -> list[int]:
    return [i for i, event in enumerate(events) if event[0] == "sync" and event[1] == identity]


def everything(folder: Path) -> list[Path]:
    return [folder, *sorted(folder.rglob("*"))]


def audit_checkpoint(data: Path, run_dir: Path) -> list[str]:
    from dnalm.train.config import load_config
    from dnalm.train.run import train

    config = load_config(
        "configs/train/encoder-small-ecoli.yaml",
        [
            f"data.path={data}",
            f"run_dir={run_dir}",
            "model.name=encoder-tiny",
            "budget.steps=2",
            "batch.micro_batch=2",
            "batch.global_batch=2",
            "logging.wandb=disabled",
            "data.num_workers=0",
            "eval.interval=2",
            "eval.batches=1",
            "checkpoint.interval=2",
        ],
    )
    events.clear()
    train(config, resume="none")
    final = run_dir / "checkpoints" / "step-2"
    marker = synced_at(_identity((final / "COMPLETE").stat()))
    if not marker:
        return ["the COMPLETE marker was never synced"]
    problems = [
        f"{path.relative_to(run_dir)} not synced before the marker"
        for path in everything(final)
        if path.name != "COMPLETE" and not [i for i in synced_at(_identity(path.stat())) if i < marker[0]]
    ]
    renamed = [i for i, event in enumerate(events) if event[0] == "rename" and event[2] == str(final)]
    folder_synced = synced_at(_identity(final.parent.stat()))
    if not renamed or not [i for i in folder_synced if i > renamed[-1]]:
        problems.append("checkpoints/ not synced after the rename to step-2")
    return problems


def audit_prep(folder: Path) -> list[str]:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm import genome

    events.clear()
    prep(
        PrepConfig(
            genomes=[str(genome.DEFAULT_GENOME)],
            tokenizers=["nucleotide"],
            seq_len=128,
            shard_size_mb=2.0,
            val_fraction=0.05,
        ),
        folder,
    )
    problems = [
        f"{path.relative_to(folder.parent)} not synced"
        for path in everything(folder)
        if not synced_at(_identity(path.stat()))
    ]
    for i, event in enumerate(events):  # a file renamed into place: its data synced before, its folder after
        if event[0] != "rename" or not Path(event[2]).is_file() or folder not in Path(event[2]).parents:
            continue
        target = Path(event[2])
        if not [j for j in synced_at(_identity(target.stat())) if j < i]:
            problems.append(f"{target.relative_to(folder.parent)} renamed into place before its data was synced")
        if not [j for j in synced_at(_identity(target.parent.stat())) if j > i]:
            problems.append(f"{target.parent.relative_to(folder.parent)} not synced after {target.name} was renamed in")
    return problems


def main(work: str) -> int:
    work = Path(work)
    problems = audit_prep(work / "data")
    print("prep ok" if not problems else "\n".join(problems))
    checkpoint_problems = audit_checkpoint(work / "data", work / "run")
    print("checkpoint ok" if not checkpoint_problems else "\n".join(checkpoint_problems))
    return 1 if problems or checkpoint_problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
