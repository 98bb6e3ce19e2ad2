"""Faults on purpose, for the tests that prove recovery: ``DNALM_FAULTS`` names where to strike.

``DNALM_FAULTS="kill@save.marked:20"`` SIGKILLs the whole process group (every rank and the
launcher, as a node failure or the scheduler would) when step 20's save reaches ``save.marked``;
``raise@save.written:10:1`` raises on rank 1 only; ``sleep=15@universal.converted`` waits 15 s there
(a slow filesystem or a big model); ``stale@checkpoints.list::1`` makes rank 1's listing of the
checkpoints miss the newest one, as a lagging NFS attribute cache would (points that ask
``faults.hit``). Several faults are separated by commas. The variable is set only by tests; unset,
a strike point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "DNALM_FAULTS"

# every point the code strikes at, in the order a run reaches them (docs/reliability.md's fault table)
POINTS = {
    "cache.flock": "the node's shard cache takes a file lock (refuse: a filesystem without flock, e.g. Lustre)",
    "train.step": "inside a training step, before its first forward",
    "save.begun": "the checkpoint's temporary folder exists, nothing written yet",
    "save.written": "this rank's DeepSpeed shard and RNG state are written, other ranks may still be writing",
    "save.gathered": "every rank's files, the stream state, config and tokenizer are in the temporary folder",
    "save.marked": "the COMPLETE marker is written and synced, the folder not yet renamed",
    "save.renamed": "the folder has its final name, older checkpoints not yet pruned",
    "universal.converting": "DeepSpeed's universal-checkpoint converter is half-way through writing",
    "universal.converted": "the converter finished, its output not yet marked complete (rank 0)",
    "checkpoints.list": "a rank lists the run's complete checkpoints (stale: the newest is missing from the listing)",
    "prep.uploaded": "`dnalm prep --out s3://…` has uploaded this many shards (the step number), not yet the manifest",
}


class InjectedFault(RuntimeError):
    """Raised where a test asked for a failure (not a DnalmError: it stands for an unexpected crash)."""


# actions a strike carries out itself; the others (stale, refuse) are answers the code asks for with ``hit``
STRIKES = ("kill", "raise", "sleep")
ANSWERS = ("stale", "refuse")


def strike(point: str, step: int, rank: int = 0) -> None:
    """Kill the process group, raise or sleep here if ``DNALM_FAULTS`` names this point (and step, and rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for action, where, at_step, at_rank in _parse(spec):
        if where == point and at_step in (None, step) and at_rank in (None, rank):
            if action == "kill":
                os.killpg(os.getpgrp(), signal.SIGKILL)
            if action.startswith("sleep="):
                time.sleep(float(action.partition("=")[2]))
            elif action == "raise":
                raise InjectedFault(f"injected fault at {point} (step {step}, rank {rank})")


def hit(point: str, action: str, step: int | None = None, rank: int = 0) -> bool:
    """Whether ``DNALM_FAULTS`` asks for ``action`` (stale, refuse) at this point, step and rank: the code then
    behaves as the fault would make it (a stale listing, a refused lock)."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    return any(
        a == action and where == point and at_step in (None, step) and at_rank in (None, rank)
        for a, where, at_step, at_rank in _parse(spec)
    )


def armed(point: str) -> bool:
    """Whether ``DNALM_FAULTS`` names this point at all (for a strike that needs a poll to reach its moment)."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    return any(where == point for _, where, _, _ in _parse(spec))


def _parse(spec: str):
    for item in filter(None, (part.strip() for part in spec.split(","))):
        action, _, where = item.partition("@")
        name, *numbers = where.split(":")
        known = action in STRIKES + ANSWERS or (action.startswith("sleep=") and _seconds(action))
        if not known or name not in POINTS or len(numbers) > 2:
            raise ValueError(
                f"{ENV}: cannot read {item!r} (ACTION@POINT[:STEP[:RANK]], ACTION kill|raise|sleep=S|"
                f"stale|refuse, POINT one of {', '.join(POINTS)})"
            )
        at_step, at_rank = (int(n) if n else None for n in numbers + [""] * (2 - len(numbers)))
        yield action, name, at_step, at_rank


def _seconds(action: str) -> bool:
    try:
        return float(action.partition("=")[2]) >= 0
    except ValueError:
        return False
