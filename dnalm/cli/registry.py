"""The command registry: each subcommand module registers its commands with ``@command``; shared option helpers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from dnalm.utils.errors import DnalmError


@dataclass
class Command:
    path: tuple[str, ...]
    help: str
    run: Callable[[argparse.Namespace], int | None]
    args: list[tuple[tuple, dict]] = field(default_factory=list)
    configure: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: list[Command] = []
BENCH_OUT = Path("runs/bench")  # benchmarks write here unless --out says otherwise
GROUP_HELP = {
    "genome": "read, validate and report on FASTA genomes",
    "tokenizer": "train tokenizers",
    "config": "write experiment configs",
    "data": "check prepared data folders",
    "bench": "benchmarks that print JSON and draw PNG plots",
    "eval": "evaluate models on benchmark task suites",
    "checkpoint": "work on training checkpoints",
}


def arg(*flags, **options) -> tuple[tuple, dict]:
    return flags, options


def command(*path: str, help: str, args: Sequence[tuple[tuple, dict]] = (), configure=None):
    def register(run: Callable[[argparse.Namespace], int | None]):
        COMMANDS.append(Command(path, help, run, list(args), configure))
        return run

    return register


def device_arg():
    from dnalm.utils.device_names import CHOICES

    return arg(
        "--device", choices=CHOICES, default="auto", help="where the model runs: auto (CUDA when present), cpu or cuda"
    )


def setting(model: type[BaseModel], name: str, **options):
    """An option whose type, default and help come from a field of a typed config."""
    spec = model.model_fields[name]
    if spec.annotation is bool:
        return arg(f"--{name.replace('_', '-')}", action="store_true", help=spec.description, **options)
    default = "" if spec.is_required() else f" (default {spec.default})"
    return arg(
        f"--{name.replace('_', '-')}",
        type=spec.annotation,
        default=None if spec.is_required() else spec.default,
        required=spec.is_required(),
        help=f"{spec.description or ''}{default}",
        **options,
    )


def integer(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DnalmError(f"{flag}: {text!r} is not a whole number") from None
