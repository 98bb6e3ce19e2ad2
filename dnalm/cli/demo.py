"""``dnalm demo``: the whole pipeline on the bundled genome."""

from __future__ import annotations

from pathlib import Path

from dnalm.cli.registry import arg, command
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import refuse_file_as_folder


@command(
    "demo",
    help="the whole pipeline on the bundled E. coli genome: prep, 2-process pretraining, convert, generate",
    args=[
        arg("--out", type=Path, default=Path("runs/demo"), help="where everything goes (default runs/demo)"),
        arg("--steps", type=int, default=300, help="pretraining steps of each model (default 300)"),
        arg("--processes", type=int, default=2, help="DeepSpeed processes (default 2)"),
    ],
)
def demo(args) -> None:
    from dnalm.demo import run as run_demo

    if args.steps < 1:
        raise DnalmError(f"--steps {args.steps}: give 1 or more pretraining steps (default 300)")
    if args.processes < 1:
        raise DnalmError(f"--processes {args.processes}: give 1 or more DeepSpeed processes (default 2)")
    refuse_file_as_folder(args.out, "--out")
    summary = run_demo(args.out, steps=args.steps, processes=args.processes)

    def shown(value) -> str:  # a dict of models as "name value, name value", numbers to 4 places
        if isinstance(value, dict):
            return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        return str(value)

    print(f"\ndone in {summary['seconds']:.0f} s")
    for label, key in (
        ("shards", "data"),
        ("training runs", "runs"),
        ("bundles", "bundles"),
        ("generated", "generated"),
        ("loss curves", "loss_plot"),
        ("final losses", "final_loss"),
        ("final validation losses", "final_val_loss"),
    ):
        print(f"  {label:<24} {shown(summary[key])}")
