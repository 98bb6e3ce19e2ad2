"""Data benchmarks: ``dnalm bench tokenize``, ``data``, ``stream``, ``scale`` and ``leakage`` (the others are in
``bench.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from dnalm.cli.registry import BENCH_OUT, arg, command, device_arg
from dnalm.utils.errors import DnalmError


@command(
    "bench",
    "tokenize",
    help="genome reading and tokenizer throughput (bases/s) on one core",
    args=[
        arg(
            "--genome",
            type=Path,
            default=None,
            help="FASTA to measure on (default: chr20 under $DNALM_DATA when set, else the bundled genome)",
        ),
        arg("--bases", type=int, default=20_000_000, help="bases per tokenizer measurement (default 20M)"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for tokenize.json and tokenize.png",
        ),
    ],
)
def bench_tokenize(args) -> None:
    from dnalm.bench import tokenize

    result = tokenize.run(args.genome, args.bases, args.out)
    print(json.dumps(result, indent=2))


@command(
    "bench",
    "data",
    help="prep throughput (1 and 2 processes) and stream throughput of one worker",
    args=[
        arg(
            "--genome",
            type=Path,
            default=None,
            help="FASTA to shard (default: chr20 under $DNALM_DATA when set, else the bundled genome)",
        ),
        arg("--seq-len", type=int, default=1024),
        arg("--tokenizers", default="nucleotide,kmer:6", help="views to prep (default nucleotide,kmer:6)"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for data.json and data.png",
        ),
        device_arg(),
    ],
)
def bench_data(args) -> None:
    from dnalm.bench import data

    result = data.run(
        args.genome, args.out, args.seq_len, tuple(t for t in args.tokenizers.split(",") if t), device=args.device
    )
    print(json.dumps(result, indent=2))


@command(
    "bench",
    "stream",
    help="shards read from object storage against local disk: one rank's samples/s and MB/s, "
    "bytes each rank downloads per epoch at W=1..8, cache hit rates, the masked input path against an encoder-small "
    "step",
    args=[
        arg(
            "--source",
            default=None,
            help="a remote data folder (s3://…, http(s)://…) holding the same prep as --work's; "
            "default: a loopback server started by the bench (--serve)",
        ),
        arg(
            "--serve",
            choices=("s3", "http"),
            default="s3",
            help="without --source: moto's S3 server (dev extra) or the "
            "standard library's HTTP server on 127.0.0.1 (default s3)",
        ),
        arg(
            "--genome",
            type=Path,
            default=None,
            help="FASTA to prep (default: chr20 under $DNALM_DATA when set, else the bundled genome)",
        ),
        arg("--seq-len", type=int, default=1024),
        arg("--shard-size-mb", type=float, default=2.0, help="shard size of the prep (default 2)"),
        arg("--samples", type=int, default=20_000, help="samples per throughput measurement (default 20000)"),
        arg("--work", type=Path, default=Path("runs/bench-stream"), help="the local prep (reused when present)"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for stream.json and stream.png",
        ),
    ],
)
def bench_stream(args) -> None:
    from dnalm.bench import stream
    from dnalm.data.sources import is_remote

    if args.source is not None and not is_remote(args.source):
        raise DnalmError(f"--source {args.source}: not a remote location (s3://, http://, https://)")
    if args.samples < 100 or args.seq_len < 8:
        raise DnalmError("--samples must be at least 100 and --seq-len at least 8")
    result = stream.run(
        args.out, args.work, args.source, args.serve, args.genome, args.seq_len, args.shard_size_mb, args.samples
    )
    print(json.dumps({k: result[k] for k in ("throughput", "shares", "pipeline", "diversity")}, indent=2))


@command(
    "bench",
    "scale",
    help="the data path at scale: a GRCh38-sized and a 100-genome corpus built from chr20; prep "
    "throughput, plan/manifest sizes, per-worker RSS and open files, bytes read per rank at W=1..8, batch diversity",
    args=[
        arg(
            "--source",
            type=Path,
            default=None,
            help="the real genome the corpora are built from (default: $DNALM_DATA/genomes/hs37_chr20.fa.gz)",
        ),
        arg(
            "--copies", type=int, default=49, help="contigs of the GRCh38-sized FASTA (default 49: 3.09 Gb from chr20)"
        ),
        arg("--genomes", type=int, default=100, help="genomes of the multi-genome corpus (default 100)"),
        arg("--jobs", type=int, default=2, help="prep processes (default 2)"),
        arg(
            "--work",
            type=Path,
            default=Path("runs/scale"),
            help="corpora and prepared folders (several GB; default runs/scale)",
        ),
        arg(
            "--stream-samples",
            type=int,
            default=20_000,
            help="samples one worker streams for its memory and files (default 20000)",
        ),
        arg(
            "--rank-steps",
            type=int,
            default=100,
            help="global steps each rank reads for the bytes-per-rank rows (default 100)",
        ),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for scale.json and scale.png",
        ),
    ],
)
def bench_scale(args) -> None:
    from dnalm.bench import report, scale

    if args.copies < 1 or args.genomes < 2 or args.jobs < 1:
        raise DnalmError("--copies and --jobs must be at least 1, --genomes at least 2")
    source = report.required_data(args.source, report.CHR20, "--source")
    if not Path(source).is_file():
        raise DnalmError(f"--source {source}: no such file")
    if args.stream_samples < 100 or args.rank_steps < 1:
        raise DnalmError("--stream-samples must be at least 100 and --rank-steps at least 1")
    print(
        json.dumps(
            scale.run(
                args.out,
                args.work,
                source,
                args.copies,
                args.genomes,
                jobs=args.jobs,
                stream_samples=args.stream_samples,
                rank_steps=args.rank_steps,
            ),
            indent=2,
        )
    )


@command(
    "bench",
    "leakage",
    help="evaluation leakage: the GUE sequences a chr20 prep's training split holds (shared 32-mer, whole), and the "
    "check's throughput and memory on chr20 and on rotated copies of it, extrapolated to GRCh38",
    args=[
        arg(
            "--genome",
            type=Path,
            default=None,
            help="the genome to prep (default: $DNALM_DATA/genomes/hs37_chr20.fa.gz)",
        ),
        arg("--gue", type=Path, default=None, help="GUE task folders (default: $DNALM_DATA/gue)"),
        arg("--copies", type=int, default=5, help="rotated copies in the scaling corpus (default 5; 0: none)"),
        arg("--jobs", type=int, default=2, help="prep processes, and the check's in the parallel run (default 2)"),
        arg("--seq-len", type=int, default=1024),
        arg("--no-exclude", action="store_true", help="skip the prep --exclude measurement"),
        arg(
            "--work",
            type=Path,
            default=Path("runs/bench-leakage"),
            help="the preps (reused when present) and reports",
        ),
        arg("--out", type=Path, default=BENCH_OUT, help="folder for leakage.json and leakage.png"),
    ],
)
def bench_leakage(args) -> None:
    from dnalm.bench import leakage, report

    if args.copies < 0 or args.jobs < 1 or args.seq_len < 8:
        raise DnalmError("--copies must be 0 or more, --jobs at least 1 and --seq-len at least 8")
    genome = report.required_data(args.genome, report.CHR20, "--genome")
    gue = report.required_data(args.gue, report.GUE, "--gue")
    for flag, path in (("--genome", genome), ("--gue", gue)):
        if not Path(path).exists():
            raise DnalmError(f"{flag} {path}: no such file or folder")
    result = leakage.run(
        genome,
        gue,
        args.work,
        args.out,
        copies=args.copies,
        jobs=args.jobs,
        seq_len=args.seq_len,
        exclude=not args.no_exclude,
    )
    print(json.dumps({k: result[k] for k in ("tasks", "runs", "extrapolation")}, indent=2))
