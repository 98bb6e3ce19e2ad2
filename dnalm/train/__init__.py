"""Training: the DeepSpeed engine loop, checkpoints, metrics. ``run_from_args`` is what every launcher calls."""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="an experiment YAML (configs/train/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4 budget.steps=100"
    )
    parser.add_argument(
        "--resume", default="auto", help="auto (newest complete checkpoint, default), none, or a checkpoint folder"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="keep DeepSpeed's and torch's own messages (silenced by default)"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher


def run_from_args(args) -> dict:
    from dnalm.train.console import quiet_libraries

    quiet_libraries(getattr(args, "verbose", False))  # before DeepSpeed is imported
    from dnalm.train.config import load_config
    from dnalm.train.run import train

    return train(load_config(args.config, args.overrides), resume=args.resume)


def main(argv=None) -> int:
    from dnalm.utils.errors import DnalmError

    parser = argparse.ArgumentParser(description="dnalm training (run by deepspeed, torchrun or srun)")
    add_arguments(parser)
    args, rest = parser.parse_known_args(argv)
    unknown = [token for token in rest if "=" not in token or token.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *rest]  # KEY=VALUE after the options too
    try:
        run_from_args(args)
    except DnalmError as exc:
        rank = os.environ.get("RANK", "0")
        if rank != "0":  # a refusal every rank makes is rank 0's to say: the launcher ends this rank meanwhile
            time.sleep(3)
            print(f"dnalm: error (rank {rank}): {exc}", file=sys.stderr)
            return 1
        print(f"dnalm: error: {exc}", file=sys.stderr)
        return 1
    except (
        KeyboardInterrupt
    ):  # Ctrl-C reaches every rank of the terminal's process group: one line, not a traceback each
        if os.environ.get("RANK", "0") == "0":
            print("dnalm: interrupted", file=sys.stderr)
        return 130
    return 0
