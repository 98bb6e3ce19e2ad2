"""The one ``dnalm`` command: a registry of subcommands (``registry.py``), each a thin call into the library."""

from __future__ import annotations

import argparse
import sys
import warnings

from dnalm.cli.registry import BENCH_OUT, COMMANDS, GROUP_HELP, Command
from dnalm.utils.errors import DnalmError

# isort: split
# Each module registers its commands on import, in the order of ``dnalm --help``.
from dnalm.cli import genome, data, dataset, config, training, use, evaluation, bench_data, bench, demo  # noqa: F401, I001

__all__ = ["BENCH_OUT", "COMMANDS", "Command", "build_parser", "main"]


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless the help already says it or there is none to say."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnalm", description="Pretrain DNA language models: genomes → tokens → models."
    )
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    }
    for cmd in COMMANDS:
        for depth in range(1, len(cmd.path)):
            prefix = cmd.path[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=GROUP_HELP.get(prefix[-1]), description=GROUP_HELP.get(prefix[-1])
                )
                groups[prefix] = group.add_subparsers(dest="_".join(prefix), metavar="COMMAND", required=True)
        sub = groups[cmd.path[:-1]].add_parser(
            cmd.path[-1], help=cmd.help, description=cmd.help, formatter_class=_HelpWithDefaults
        )
        for flags, options in cmd.args:
            sub.add_argument(*flags, **options)
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(run=cmd.run, _parser=sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, but a command's ``KEY=VALUE`` overrides may also come after its options (argparse takes
    a positional list once); anything else it does not know is refused under the command's own usage."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        own = getattr(args, "_parser", parser)
        unknown = [token for token in rest if not (hasattr(args, "overrides") and is_override(token))]
        if unknown:
            own.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*(args.overrides or []), *rest]
    return args


def is_override(token: str) -> bool:
    """A dotted ``KEY=VALUE`` override, not an option (``--flag=value``)."""
    return "=" in token and not token.startswith("-")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"dnalm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    warnings.formatwarning = _one_line_warning
    try:
        return args.run(args) or 0
    except DnalmError as exc:
        print(f"dnalm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        return 130
