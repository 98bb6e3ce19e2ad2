"""Faults on purpose, for the tests that prove recovery: ``DNALM_FAULTS`` names where to strike.

``DNALM_FAULTS="kill@save.marked:20"`` SIGKILLs the whole process group (every rank and the
launcher, as a node failure or the scheduler would) when step 20's save reaches ``save.marked``;
``raise@save.written:10:1`` raises on rank 1 only; several faults are separated by commas. The
variable is set only by tests; unset, a strike point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DNALM_FAULTS"

# every point the code strikes at, in the order a run reaches them (docs/reliability.md's fault table)
POINTS = {
    "train.step": "inside a training step, before its first forward",
    "save.begun": "the checkpoint's temporary folder exists, nothing written yet",
    "save.written": "this rank's DeepSpeed shard and RNG state are written, other ranks may still be writing",
    "save.gathered": "every rank's files, the stream state, config and tokenizer are in the temporary folder",
    "save.marked": "the COMPLETE marker is written and synced, the folder not yet renamed",
    "save.renamed": "the folder has its final name, older checkpoints not yet pruned",
    "universal.converting": "DeepSpeed's universal-checkpoint converter is half-way through writing",
    "prep.uploaded": "`dnalm prep --out s3://…` has uploaded this many shards (the step number), not yet the manifest",
}


class InjectedFault(RuntimeError):
    """Raised where a test asked for a failure (not a DnalmError: it stands for an unexpected crash)."""


def strike(point: str, step: int, rank: int = 0) -> None:
    """Kill the process group or raise here if ``DNALM_FAULTS`` names this point (and step, and rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for action, where, at_step, at_rank in _parse(spec):
        if where == point and at_step in (None, step) and at_rank in (None, rank):
            if action == "kill":
                os.killpg(os.getpgrp(), signal.SIGKILL)
            raise InjectedFault(f"injected fault at {point} (step {step}, rank {rank})")


def armed(point: str) -> bool:
    """Whether ``DNALM_FAULTS`` names this point at all (for a strike that needs a poll to reach its moment)."""
    spec = os.environ.get(ENV)
    return bool(spec) and any(where == point for _, where, _, _ in _parse(spec))


def _parse(spec: str):
    for item in filter(None, (part.strip() for part in spec.split(","))):
        action, _, where = item.partition("@")
        name, *numbers = where.split(":")
        if action not in ("kill", "raise") or name not in POINTS or len(numbers) > 2:
            raise ValueError(f"{ENV}: cannot read {item!r} (ACTION@POINT[:STEP[:RANK]], ACTION kill|raise, "
                             f"POINT one of {', '.join(POINTS)})")
        at_step, at_rank = (int(n) if n else None for n in numbers + [""] * (2 - len(numbers)))
        yield action, name, at_step, at_rank
