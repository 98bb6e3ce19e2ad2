"""Genomes and tokenizers: ``dnalm genome …`` and ``dnalm tokenizer …``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dnalm.cli.registry import arg, command, setting
from dnalm.utils.errors import DnalmError


def _genome_args():
    return [
        arg(
            "--min-n-run",
            type=int,
            default=100,
            metavar="N",
            help="N runs of at least N bases split a contig (default 100)",
        ),
        arg("--rna-to-dna", action="store_true", help="read U as T instead of refusing RNA"),
    ]


@command(
    "genome",
    "inspect",
    help="report contigs, lengths, N runs, soft-masking and ambiguity codes",
    args=[
        arg(
            "genomes",
            nargs="*",
            type=Path,
            metavar="GENOME",
            help="FASTA files (.fa/.fasta/.fna, gzip or bgzip); default: the bundled E. coli genome",
        ),
        arg("--json", action="store_true", help="print the report as JSON"),
        *_genome_args(),
    ],
)
def genome_inspect(args) -> None:
    from dnalm import genome

    reports = [
        genome.read(path, convert_u=args.rna_to_dna, progress=sys.stderr.isatty()).report(args.min_n_run)
        for path in args.genomes or [genome.DEFAULT_GENOME]
    ]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        print("\n\n".join(genome.format_report(r) for r in reports))


def _bpe_setting(name: str):
    from dnalm.tokenizers.bpe import BpeTrainingConfig

    return setting(BpeTrainingConfig, name)


@command(
    "tokenizer",
    "train-bpe",
    help="train a BPE tokenizer (sentencepiece) on chunks sampled within a memory budget",
    args=[
        arg("genomes", nargs="*", type=Path, metavar="GENOME", help="FASTA files; default: the bundled E. coli genome"),
        *(_bpe_setting(name) for name in ("vocab_size", "max_memory_gb", "sentence_length", "max_n_fraction", "seed")),
        arg("--out", type=Path, required=True, help="folder to create (must not exist or be empty)"),
    ],
)
def tokenizer_train_bpe(args) -> None:
    from dnalm import genome
    from dnalm.tokenizers import train_bpe

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise DnalmError(f"--out {args.out}: exists and is not an empty folder")
    tokenizer = train_bpe(
        args.genomes or [genome.DEFAULT_GENOME],
        args.vocab_size,
        args.max_memory_gb,
        sentence_length=args.sentence_length,
        max_n_fraction=args.max_n_fraction,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    tokenizer.save(args.out)
    report = tokenizer.training_report
    assert report is not None  # set by train()
    print(
        f"trained {tokenizer.name} (fingerprint {tokenizer.fingerprint}) on {report['sampled_bases']:,} of "
        f"{report['total_bases']:,} bases; peak memory {report['peak_rss_mb']:.0f} MB; saved to {args.out}"
    )
    for row in report["contigs"]:
        print(f"  {row['contig']:<24} {row['length']:>14,} bp  sampled {row['sampled_bases']:>12,}")
