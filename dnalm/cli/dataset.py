"""Checks on prepared data: ``dnalm data leakage``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dnalm.cli.registry import arg, command


@command(
    "data",
    "leakage",
    help="evaluation sequences the training split already holds: per file, the sequences sharing an exact k-mer "
    "with a training window and those held whole (both strands), with examples",
    args=[
        arg("prep", type=Path, metavar="PREP_DIR", help="a folder `dnalm prep` wrote (its manifest and plan)"),
        arg(
            "--eval",
            nargs="+",
            action="extend",
            required=True,
            type=Path,
            metavar="DIR_OR_FILE",
            help="CSV files with a sequence column, FASTA files, GUE task folders (train.csv, dev.csv, test.csv) "
            "or a folder of them",
        ),
        arg("--k", type=int, default=32, help="length of the exact matches, 8..32"),
        arg("--split", default="train", help="the split of the prep to check against"),
        arg("--examples", type=int, default=3, help="examples shown per evaluation file"),
        arg(
            "--genome",
            nargs="+",
            action="extend",
            type=Path,
            default=None,
            metavar="FASTA",
            help="the prep's genome FASTA where it is no longer at the path the manifest records (matched by sha256)",
        ),
        arg("--jobs", type=int, default=1, help="processes scanning the contigs in parallel (each holds the index)"),
        arg("--json", action="store_true", help="print the report as JSON instead of a table"),
        arg("--out", type=Path, default=None, help="also write the JSON report to this file"),
    ],
)
def leakage(args) -> None:
    from data_prep.leakage import check, format_report
    from dnalm.data.kmers import check_k
    from dnalm.utils.errors import DnalmError
    from dnalm.utils.files import write_atomic

    check_k(args.k)
    if args.examples < 0 or args.jobs < 1:
        raise DnalmError("--examples must be 0 or more and --jobs at least 1")
    report = check(
        args.prep,
        args.eval,
        args.k,
        split=args.split,
        examples=args.examples,
        genomes=args.genome or [],
        jobs=args.jobs,
        progress=sys.stderr.isatty(),
    )
    text = json.dumps(report, indent=1)
    if args.out is not None:
        write_atomic(args.out, text + "\n")
    print(text if args.json else format_report(report))
