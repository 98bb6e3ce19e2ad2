"""``python -m data_prep merge DIR``: write the manifest once every job slice has finished."""

import argparse
import sys
from pathlib import Path

from data_prep.merge import merge
from dnalm.utils.errors import DnalmError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser = sub.add_parser("merge", help="check every shard of DIR against its checksum and write manifest.json")
    merge_parser.add_argument("folder", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    try:
        manifest = merge(args.folder)
    except DnalmError as exc:
        print(f"data_prep: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.folder}/manifest.json: {manifest.num_samples:,} samples in "
        f"{sum(len(s.shards) for s in manifest.splits.values())} shards"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
