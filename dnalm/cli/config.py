"""Experiment configs: ``dnalm config new``."""

from __future__ import annotations

import re
from pathlib import Path

from dnalm.cli.registry import arg, command
from dnalm.utils.errors import DnalmError

TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "configs" / "template.yaml"


def template(model: str | None = None) -> str:
    """The commented training template (``configs/train/template.yaml``, shipped with the package), with
    ``model.name`` set to ``model`` when one is given."""
    text = TEMPLATE.read_text()
    if model is None:
        return text
    return re.sub(
        r"(?m)^(  name: )(\S+)( *)", lambda m: m[1] + model + " " * max(1, len(m[2] + m[3]) - len(model)), text, count=1
    )


@command(
    "config",
    "new",
    help="write the commented training template (a run: model, data, optimizer, batch, budget, checkpoints) to PATH",
    args=[
        arg("path", type=Path, metavar="PATH", help="the YAML to create (refused if it exists)"),
        arg(
            "--model",
            default=None,
            metavar="NAME",
            help="model.name: a named size (encoder-tiny/small/base/large, decoder-tiny/small/medium/1.5b, cnn-base) "
            "or a model YAML (default: the template's encoder-small)",
        ),
    ],
)
def config_new(args) -> None:
    from dnalm.utils.files import write_atomic

    if args.path.exists() or args.path.is_symlink():
        raise DnalmError(f"{args.path}: exists; give a new file name (or edit that one)")
    if args.model is not None and not Path(args.model).is_file():
        from dnalm.models import get_config

        get_config(args.model)  # an unknown name is refused with the list of names
    write_atomic(args.path, template(args.model))
    print(f"wrote {args.path}: set data.path (what `dnalm prep` wrote) and run_dir in it, then")
    print(f"  dnalm train --config {args.path}")
