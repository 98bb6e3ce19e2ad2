"""Model and training benchmarks: ``dnalm bench …``, each printing JSON and drawing PNG plots under ``--out``.

The data benchmarks are in ``bench_data.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dnalm.cli.registry import BENCH_OUT, arg, command, device_arg, integer
from dnalm.utils.errors import DnalmError


@command(
    "bench",
    "attention",
    help="forward+backward time and peak memory of each attention backend, 512 to 16k tokens",
    args=[
        arg("--lengths", default="512,1024,2048,4096,8192,16384", help="comma-separated sequence lengths"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for attention.json and attention.png",
        ),
        device_arg(),
    ],
)
def bench_attention(args) -> None:
    from dnalm.bench import attention

    result = attention.run(args.out, tuple(int(x) for x in args.lengths.split(",")), device=args.device)
    print(json.dumps(result["findings"], indent=2))


@command(
    "bench",
    "alibi",
    help="ALiBi's cost over no position bias: the fused path against the explicit bias, "
    "attention alone and whole training steps",
    args=[
        arg("--lengths", default="1024,2048,4096,8192", help="comma-separated attention lengths"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for alibi.json and alibi.png",
        ),
        arg("--rounds", type=int, default=3, help="interleaved passes over the four models; each keeps its best step"),
        device_arg(),
    ],
)
def bench_alibi(args) -> None:
    from dnalm.bench import alibi

    if args.rounds < 1:
        raise DnalmError(f"--rounds must be at least 1, got {args.rounds}")
    result = alibi.run(args.out, tuple(int(x) for x in args.lengths.split(",")), device=args.device, rounds=args.rounds)
    print(json.dumps(result["ratios"], indent=2))


@command(
    "bench",
    "train",
    help="forward+backward tokens/s and MFU against a matmul peak measured in the same run "
    "(fp32 on CPU; bf16 on CUDA, with decoder-1.5b)",
    args=[
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for train.json and train.png",
        ),
        device_arg(),
    ],
)
def bench_train(args) -> None:
    from dnalm.bench import train

    print(json.dumps(train.run(args.out, device=args.device), indent=2))


@command(
    "bench",
    "context",
    help="long windows: lean training-step tokens/s and peak memory per rank by window length, "
    "in one process and at sequence-parallel S = 2, 4",
    args=[
        arg(
            "--lengths",
            default="2048,8192,32768",
            help="window lengths of every series (comma-separated; default 2k, 8k, 32k)",
        ),
        arg("--long-lengths", default="131072", help="further lengths for the Performer series only (default 128k)"),
        arg("--sizes", default="2,4", help="sequence-parallel sizes besides 1 (processes per window)"),
        arg(
            "--series",
            action="append",
            help="only the series of this label, as context.json names them (repeatable; default all)",
        ),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for context.json and context.png",
        ),
        device_arg(),
    ],
)
def bench_context(args) -> None:
    from dnalm.bench import context

    def numbers(text: str, flag: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x)
        except ValueError:
            raise DnalmError(f"{flag} takes comma-separated integers, got {text!r}") from None

    unknown = sorted(set(args.series or ()) - set(context.SERIES))
    if unknown:
        raise DnalmError(f"--series {unknown[0]!r} is not a series; choose from {', '.join(map(repr, context.SERIES))}")
    result = context.run(
        args.out,
        numbers(args.lengths, "--lengths"),
        numbers(args.sizes, "--sizes"),
        device=args.device,
        long_lengths=numbers(args.long_lengths, "--long-lengths"),
        series=args.series,
    )
    print(json.dumps(result["findings"], indent=2))


@command(
    "bench",
    "generate",
    help="tokens/s of cached decoding against full recomputation",
    args=[
        arg("--model", default="decoder-small", help="a named decoder size (random weights) or a decoder bundle"),
        arg("--new-tokens", type=int, default=1000),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for generate.json and generate.png",
        ),
        device_arg(),
    ],
)
def bench_generate(args) -> None:
    from dnalm.bench import generate as bench

    print(json.dumps(bench.run(args.model, args.new_tokens, args.out, device=args.device), indent=2))


@command(
    "bench",
    "embed",
    help="sequences/s of pooled embeddings (dnalm.embed) at three batch sizes",
    args=[
        arg("--model", default="encoder-small", help="a named encoder size (random weights)"),
        arg("--length", type=int, default=1000, help="bases per sequence (default 1000)"),
        arg("--count", type=int, default=64, help="sequences per measurement (default 64)"),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for embed.json and embed.png",
        ),
        device_arg(),
    ],
)
def bench_embed(args) -> None:
    from dnalm.bench import embed

    print(json.dumps(embed.run(args.out, args.model, args.length, args.count, device=args.device), indent=2))


@command(
    "bench",
    "probe",
    help="what the in-training linear probe (eval.probes, default rows) costs against encoder-small's training steps "
    "(1,024 tokens, global batch 16, one process): its share at --interval and the interval where it is 5%%",
    args=[
        arg("--task", type=Path, default=None, help="a GUE task folder (default: $DNALM_DATA/gue/prom_core_tata)"),
        arg(
            "--genome",
            type=Path,
            default=None,
            help="FASTA to train on (default: chr20 under $DNALM_DATA, else the "
            "bundled genome); 4 Mb of its longest record",
        ),
        arg("--steps", type=int, default=5, help="training steps (default 5; a probe every 2)"),
        arg("--interval", type=int, default=500, help="the eval.probe_interval to state the share at (default 500)"),
        arg("--out", type=Path, default=BENCH_OUT, help="folder for probe.json and probe.png"),
    ],
)
def bench_probe(args) -> None:
    from dnalm.bench import probe

    if args.steps < 3 or args.interval < 1:
        raise DnalmError("--steps must be at least 3 (two probes) and --interval at least 1")
    print(json.dumps(probe.run(args.out, args.task, args.genome, steps=args.steps, interval=args.interval), indent=2))


@command(
    "bench",
    "compare",
    help="the DNA_Performer comparison: pretrain Transformer, ALiBi, Performer, CNN and a "
    "multi-view encoder on the same budget, then held-out accuracy, throughput at 1k/8k, GUE fine-tuning",
    args=[
        arg(
            "--genome",
            type=Path,
            default=None,
            help="FASTA to pretrain on (default: $DNALM_DATA/genomes/hs37_chr20.fa.gz)",
        ),
        arg("--gue", type=Path, default=None, help="folder of GUE tasks (default: $DNALM_DATA/gue)"),
        arg("--variants", default=None, help="comma-separated subset of transformer,alibi,performer,cnn,views"),
        arg("--seeds", type=int, default=None, help="pretraining and fine-tuning seeds (default 2)"),
        arg(
            "--pretrain-tokens", type=int, default=None, help="tokens each pretraining run consumes (default 1,000,000)"
        ),
        arg("--seq-len", type=int, default=None, help="pretraining window in tokens (default 1024)"),
        arg("--processes", type=int, default=None, help="DeepSpeed processes per pretraining run (default 2)"),
        arg("--lengths", default=None, help="sequence lengths of the throughput measurement (default 1024,8192)"),
        arg(
            "--tasks",
            default=None,
            help="GUE task=training rows, comma-separated (default prom_core_all=5000,prom_300_tata=2000)",
        ),
        arg("--epochs", type=int, default=None, help="fine-tuning epochs (default 2)"),
        arg(
            "--work",
            type=Path,
            default=Path("runs/compare"),
            help="shards, runs, bundles and finished pieces (a rerun resumes)",
        ),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for compare.json, compare.md and the plots",
        ),
        device_arg(),
    ],
)
def bench_compare(args) -> None:
    from dnalm.bench import report
    from dnalm.studies import compare
    from dnalm.utils.devices import resolve

    values: dict[str, object] = {
        "genome": str(report.required_data(args.genome, report.CHR20, "--genome")),
        "device": resolve(args.device).type,
    }
    for key, value in (
        ("seeds", args.seeds),
        ("pretrain_tokens", args.pretrain_tokens),
        ("seq_len", args.seq_len),
        ("processes", args.processes),
        ("finetune_epochs", args.epochs),
    ):
        if value is not None:
            values[key] = value
    if args.variants:
        values["variants"] = tuple(v for v in args.variants.split(",") if v)
    if args.lengths:
        values["lengths"] = tuple(integer("--lengths", x) for x in args.lengths.split(",") if x)
    if args.tasks:
        tasks = {}
        for item in (x for x in args.tasks.split(",") if x):
            name, _, rows = item.partition("=")
            tasks[name] = integer("--tasks", rows)
        values["tasks"] = tasks
    result = compare.run(
        compare.budget_from(values), args.work, args.out, gue=report.required_data(args.gue, report.GUE, "--gue")
    )
    print(f"\ndone in {result['seconds']['total'] / 60:.1f} min; report: {args.out / 'compare.md'}")


@command(
    "bench",
    "universal",
    help="a world-size change's conversion: seconds and peak host memory by worker count, extrapolated to decoder-1.5b",
    args=[
        arg(
            "--model",
            default="decoder-medium",
            help="the model whose checkpoint one 2-process ZeRO-3 step writes (default decoder-medium)",
        ),
        arg("--checkpoint", type=Path, default=None, help="measure this complete checkpoint instead of writing one"),
        arg("--workers", default="1,2", help="worker counts to compare (default 1,2)"),
        arg(
            "--repeats",
            type=int,
            default=2,
            help="conversions per worker count, alternated; the fastest is kept (default 2)",
        ),
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for universal.json and universal.png",
        ),
    ],
)
def bench_universal(args) -> None:
    from dnalm.bench import universal

    workers = tuple(integer("--workers", w) for w in args.workers.split(","))
    if min(workers) < 1:
        raise DnalmError(f"--workers {args.workers}: every count must be 1 or more")
    checkpoint = None
    if args.checkpoint is not None:
        from dnalm.convert import check_complete, resolve_checkpoint

        checkpoint = resolve_checkpoint(args.checkpoint)
        check_complete(checkpoint)
    if args.repeats < 1:
        raise DnalmError(f"--repeats {args.repeats}: give 1 or more")
    result = universal.run(args.out, args.model, workers, checkpoint, args.repeats)
    print(universal.summary(result))
    print(f"wrote {args.out / 'universal.json'} and {args.out / 'universal.png'}", file=sys.stderr)


@command(
    "bench",
    "plan",
    help="dnalm plan's predicted peak memory against real 2-process CPU runs of several configurations, and against "
    "the recorded H200 peaks (about 4 minutes)",
    args=[
        arg(
            "--out",
            type=Path,
            default=BENCH_OUT,
            help="folder for plan.json and plan.png",
        ),
        arg("--work", type=Path, default=Path("runs/bench-plan"), help="where the configurations' data and runs go"),
        arg("--only", action="append", default=None, help="only this configuration (its label; repeatable)"),
    ],
)
def bench_plan(args) -> None:
    from dnalm.bench import plan as plan_bench

    result = plan_bench.run(args.out, args.work, args.only)
    worst = max(abs(row["error"]) for row in result["rows"])
    print(
        f"{len(result['rows'])} configurations, the worst {worst:+.1%} off; wrote {args.out / 'plan.json'} and "
        f"{args.out / 'plan.png'}"
    )
