"""The one ``dnalm`` command: a registry of subcommands, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    "bench": "benchmarks that print JSON and draw PNG plots",
    "eval": "evaluate models on benchmark task suites",
    "checkpoint": "work on training checkpoints",
}


def arg(*flags, **options) -> tuple[tuple, dict]:
    return flags, options


def command(*path: str, help: str, args: list[tuple[tuple, dict]] = (), configure=None):
    def register(run: Callable[[argparse.Namespace], int | None]):
        COMMANDS.append(Command(path, help, run, list(args), configure))
        return run

    return register


def _device_arg():
    from dnalm.utils.device_names import CHOICES

    return arg(
        "--device", choices=CHOICES, default="auto", help="where the model runs: auto (CUDA when present), cpu or cuda"
    )


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


def _setting(model: type, name: str, **options):
    """An option whose type, default and help come from a field of a typed config."""
    field = model.model_fields[name]
    if field.annotation is bool:
        return arg(f"--{name.replace('_', '-')}", action="store_true", help=field.description, **options)
    default = "" if field.is_required() else f" (default {field.default})"
    return arg(
        f"--{name.replace('_', '-')}",
        type=field.annotation,
        default=None if field.is_required() else field.default,
        required=field.is_required(),
        help=f"{field.description or ''}{default}",
        **options,
    )


def _bpe_setting(name: str):
    from dnalm.tokenizers.bpe import BpeTrainingConfig

    return _setting(BpeTrainingConfig, name)


def _prep_setting(name: str):
    from data_prep.plan import PrepConfig

    return _setting(PrepConfig, name)


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
    print(
        f"trained {tokenizer.name} (fingerprint {tokenizer.fingerprint}) on {report['sampled_bases']:,} of "
        f"{report['total_bases']:,} bases; peak memory {report['peak_rss_mb']:.0f} MB; saved to {args.out}"
    )
    for row in report["contigs"]:
        print(f"  {row['contig']:<24} {row['length']:>14,} bp  sampled {row['sampled_bases']:>12,}")


@command(
    "prep",
    help="shard genomes into WebDataset token windows with a manifest (resumable, splits into jobs)",
    args=[
        arg(
            "genomes",
            nargs="*",
            type=Path,
            metavar="GENOME",
            help="FASTA files, or one corpus YAML (genomes with names, "
            "weights, tags and contig include/exclude patterns; see data_prep/corpus.py); default: the bundled E. coli "
            "genome",
        ),
        arg(
            "--out",
            required=True,
            help="the data folder (created; re-running resumes an unfinished prep), or s3://bucket/prefix: "
            "the prep runs in --work and uploads each finished shard, then the manifest last",
        ),
        arg(
            "--work",
            type=Path,
            default=None,
            help="with --out s3://…: the local work folder (default: under the node-local "
            "cache, $DNALM_CACHE, else $TMPDIR/dnalm-cache-$USER, else /tmp/dnalm-cache-$USER, one per URL)",
        ),
        arg(
            "--tokenizers",
            default="nucleotide",
            help="comma-separated: nucleotide, kmer:K[:1], bpe:PATH (default nucleotide)",
        ),
        *(
            _prep_setting(name)
            for name in (
                "seq_len",
                "views",
                "val_fraction",
                "val_block_bases",
                "reverse_complement",
                "shard_size_mb",
                "min_n_run",
                "seed",
                "pack_fragments",
            )
        ),
        arg("--jobs", type=int, default=1, help="local processes (default 1)"),
        arg("--job-index", type=int, default=None, help="run only slice I of the plan (SLURM array task id)"),
        arg("--num-jobs", type=int, default=None, help="number of slices when --job-index is given"),
    ],
)
def prep(args) -> None:
    from data_prep.corpus import is_corpus, load_corpus
    from data_prep.jobs import prep as run_prep
    from data_prep.jobs import summary
    from data_prep.plan import PrepConfig
    from data_prep.publish import work_folder
    from dnalm import genome
    from dnalm.data.sources import is_remote

    if (args.job_index is None) != (args.num_jobs is None):
        raise DnalmError("--job-index and --num-jobs go together")
    if args.num_jobs is not None and not 0 <= args.job_index < args.num_jobs:
        raise DnalmError(f"--job-index must be in 0..{args.num_jobs - 1}, got {args.job_index}")
    if args.jobs < 1:
        raise DnalmError(f"--jobs must be at least 1, got {args.jobs}")
    genomes, corpus = [str(p) for p in args.genomes or [genome.DEFAULT_GENOME]], []
    if any(is_corpus(p) for p in genomes):
        if len(genomes) > 1:
            raise DnalmError("give one corpus YAML or FASTA files, not both (list every genome in the corpus)")
        genomes, corpus = load_corpus(genomes[0])
    config = PrepConfig.checked(
        genomes=genomes,
        corpus=corpus,
        tokenizers=[t.strip() for t in args.tokenizers.split(",") if t.strip()],
        seq_len=args.seq_len,
        views=args.views,
        val_fraction=args.val_fraction,
        val_block_bases=args.val_block_bases,
        reverse_complement=args.reverse_complement,
        shard_size_mb=args.shard_size_mb,
        min_n_run=args.min_n_run,
        seed=args.seed,
        pack_fragments=args.pack_fragments,
    )
    remote = is_remote(args.out)
    if args.work is not None and not remote:
        raise DnalmError("--work goes with a remote --out (s3://…); a local --out is the work folder")
    folder = (args.work or work_folder(args.out)) if remote else Path(args.out)
    result = run_prep(
        config,
        folder,
        jobs=args.jobs,
        job_index=args.job_index,
        num_jobs=args.num_jobs,
        progress=sys.stderr.isatty(),
        publish_to=args.out if remote else None,
    )
    summary(result)


def _train_arguments(parser) -> None:
    from dnalm.train import add_arguments

    add_arguments(parser)


@command(
    "train",
    help="pretrain a model in one process (the same code launch/train.py runs under deepspeed/torchrun)",
    configure=_train_arguments,
)
def train(args) -> None:
    from dnalm.train import run_from_args

    run_from_args(args)  # the trainer says where the run went


@command(
    "plot",
    help="draw a run's training and validation loss curves to RUN/loss.png",
    args=[
        arg("run_dir", type=Path, metavar="RUN", help="a run folder (holds metrics.jsonl)"),
        arg("--out", type=Path, default=None, help="PNG path (default RUN/loss.png)"),
    ],
)
def plot(args) -> None:
    from dnalm.train.metrics import plot as draw

    print(f"wrote {draw(args.run_dir, args.out)}")


@command(
    "convert",
    help="turn a training checkpoint (any ZeRO stage or world size) into a bundle or a Hugging Face "
    "folder, or a Hugging Face folder into a bundle (--from-hf)",
    args=[
        arg(
            "source",
            type=Path,
            nargs="?",
            metavar="RUN_OR_CHECKPOINT",
            help="a run folder (its newest complete checkpoint) or a step-N folder",
        ),
        arg(
            "--from-hf",
            type=Path,
            metavar="FOLDER",
            help="instead: a transformers folder (EsmForMaskedLM, LlamaForCausalLM "
            "or a dnalm export) to import as a bundle",
        ),
        arg(
            "--tokenizer",
            metavar="SPEC|DIR",
            help="with --from-hf: the dnalm tokenizer whose ids the model's are (kept as they are)",
        ),
        arg("--out", type=Path, required=True, help="the folder to create"),
        arg(
            "--to",
            choices=("bundle", "hf"),
            default="bundle",
            help="bundle (default) or hf (a transformers folder: Llama, ESM or remote code, with its tokenizer)",
        ),
        arg(
            "--dtype",
            choices=("float32", "bfloat16"),
            default="float32",
            help="weights of the bundle (default float32)",
        ),
    ],
)
def convert(args) -> None:
    from dnalm.convert import convert as run_convert

    if (args.source is None) == (args.from_hf is None):
        raise DnalmError("convert: give either a run or checkpoint folder, or --from-hf FOLDER")
    if args.from_hf is not None:
        from dnalm.hf.importing import import_hf

        if args.to != "bundle":
            raise DnalmError("convert --from-hf writes a bundle; --to hf is for training checkpoints")
        print(f"wrote {import_hf(args.from_hf, args.out, args.tokenizer)}")
        return
    if args.tokenizer is not None:
        raise DnalmError("convert --tokenizer goes with --from-hf (a checkpoint carries its tokenizer)")
    out = run_convert(args.source, args.out, to=args.to, dtype=args.dtype)
    print(f"wrote {out}")
    if args.to == "hf":
        from dnalm.hf import how_to_load

        print(how_to_load(out))


@command(
    "checkpoint",
    "universal",
    help="convert a checkpoint to DeepSpeed's universal form ahead of a relaunch on "
    "another number of processes (no GPU needed: run it on a login node)",
    args=[
        arg(
            "source",
            type=Path,
            metavar="RUN_OR_CHECKPOINT",
            help="a run folder (its newest complete checkpoint) or a step-N folder",
        ),
        arg(
            "--workers",
            type=int,
            default=None,
            metavar="N",
            help="extract and merge workers (default: this machine's cores, as many as its free memory holds)",
        ),
    ],
)
def checkpoint_universal(args) -> None:
    from dnalm.convert import check_complete, resolve_checkpoint
    from dnalm.train.checkpoint import UNIVERSAL_TAG
    from dnalm.train.universal import conversion_workers, convert_universal

    checkpoint = resolve_checkpoint(args.source)
    check_complete(checkpoint)
    if args.workers is not None and args.workers < 1:
        raise DnalmError(f"--workers {args.workers}: give 1 or more")
    workers = args.workers or conversion_workers(checkpoint)
    print(f"converting {checkpoint} with {workers} worker{'s' * (workers > 1)} ...", file=sys.stderr, flush=True)
    target = convert_universal(checkpoint, workers)
    print(
        f"wrote {target} (a run on any number of processes now resumes from {checkpoint.name} without converting; "
        f"it reads {UNIVERSAL_TAG}/ whenever the world size differs)"
    )


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

    workers = tuple(_integer("--workers", w) for w in args.workers.split(","))
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
    "plan",
    help="what a training run needs before it is launched: memory per rank by component, communication "
    "and time per step, whether it fits the GPU and if not what would",
    args=[
        arg("config", type=Path, metavar="CONFIG", help="an experiment YAML (configs/train/*.yaml)"),
        arg("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as dnalm train takes them"),
        arg("--gpus", type=int, default=None, metavar="N", help="ranks (GPUs) of the run"),
        arg("--gpu", default=None, metavar="KIND", help="h100, h200, a100-80g, a100-40g, l40s, or cpu (this host)"),
        arg(
            "--seq-len",
            type=int,
            default=None,
            metavar="N",
            help="the window in tokens (default: the config's prepared "
            "data's; needed when the data is not prepared yet)",
        ),
        arg(
            "--mfu",
            type=float,
            default=None,
            help="model-FLOPs utilisation for the step time (default: the best "
            "measured in docs/benchmarks/gpu.json, else an assumption, named in the output)",
        ),
        arg("--json", action="store_true", help="print the plan as JSON"),
    ],
)
def plan(args) -> None:
    from dnalm.train.config import load_config
    from dnalm.train.plan import make_plan, render

    if args.gpus is None or args.gpu is None:
        raise DnalmError("plan needs --gpus N and --gpu KIND (h100, h200, a100-80g, a100-40g, l40s, cpu)")
    result = make_plan(
        load_config(args.config, args.overrides),
        args.gpus,
        args.gpu,
        seq_len=args.seq_len,
        mfu=args.mfu,
        config_name=str(args.config),
    )
    print(json.dumps(result, indent=2) if args.json else render(result))


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


@command(
    "generate",
    help="sample DNA from a decoder bundle (FASTA on stdout)",
    args=[
        arg("--model", type=Path, required=True, help="a decoder bundle (dnalm convert)"),
        arg("--prompt", required=True, help="the bases to continue (A, C, G, T, N)"),
        arg("--max-new-tokens", type=int, default=200),
        arg("--temperature", type=float, default=1.0, help="0 for greedy"),
        arg("--top-k", type=int, default=None, help="keep the k most likely tokens (an absolute count)"),
        arg("--top-p", type=float, default=None, help="nucleus sampling: keep the most likely tokens up to this mass"),
        arg("--num-samples", type=int, default=1),
        arg("--seed", type=int, default=0),
        arg("--out", type=Path, default=None, help="write FASTA here instead of stdout"),
        _device_arg(),
    ],
)
def generate(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.use.generate import generate as sample
    from dnalm.use.generate import to_fasta
    from dnalm.utils.devices import resolve

    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise DnalmError("--max-new-tokens and --num-samples must be at least 1")
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    sequences = sample(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    fasta = to_fasta(
        sequences,
        len(args.prompt),
        f"seed={args.seed} temperature={args.temperature} top_k={args.top_k} "
        f"top_p={args.top_p} model={args.model.name}",
    )
    if args.out:
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(fasta)
        tmp.replace(args.out)
        print(f"wrote {len(sequences)} sequences to {args.out}")
    else:
        print(fasta, end="")


@command(
    "embed",
    help="embeddings of FASTA records, BED regions or CSV sequences from a bundle (.npy/.npz + index)",
    args=[
        arg("--model", type=Path, required=True, help="a bundle (dnalm convert)"),
        arg("--fasta", type=Path, default=None, help="embed every record of this FASTA"),
        arg(
            "--bed", type=Path, default=None, help="embed these regions (minus strand reverse-complemented) of --genome"
        ),
        arg("--genome", type=Path, default=None, help="the FASTA the --bed regions refer to"),
        arg("--csv", type=Path, default=None, help="a CSV (or .tsv) with a sequence column, optional name and label"),
        arg("--out", type=Path, required=True, help=".npy (pooled) or .npz; OUT.index.tsv names the rows"),
        arg(
            "--pooling",
            choices=("mean", "max", "cls", "none"),
            default="mean",
            help="none: every token's row with its base span",
        ),
        arg(
            "--layer", type=int, default=-1, help="1…n_layers, or negative from the end (default -1, the final output)"
        ),
        arg(
            "--reverse-complement-average", action="store_true", help="average with the reverse complement's embedding"
        ),
        arg("--batch-size", type=int, default=8, help="windows per forward pass (default 8)"),
        _device_arg(),
    ],
)
def embed(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.use import sequences
    from dnalm.use.embedding import embed as run_embed
    from dnalm.use.embedding import save
    from dnalm.utils.devices import resolve

    given = [name for name in ("fasta", "bed", "csv") if getattr(args, name)]
    if len(given) != 1:
        raise DnalmError("embed: give exactly one of --fasta, --bed (with --genome) or --csv")
    if args.bed and not args.genome:
        raise DnalmError("embed: --bed needs --genome, the FASTA its regions refer to")
    if args.batch_size < 1:
        raise DnalmError("--batch-size must be at least 1")
    inputs = (
        sequences.from_fasta(args.fasta)
        if args.fasta
        else sequences.from_bed(args.bed, args.genome)
        if args.bed
        else sequences.from_csv(args.csv)
    )
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    result = run_embed(
        model,
        tokenizer,
        [s.sequence for s in inputs],
        pooling=args.pooling,
        layer=args.layer,
        reverse_complement_average=args.reverse_complement_average,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    out, index = save(result, inputs, args.out)
    print(
        f"wrote {len(inputs)} sequences' embeddings ({args.pooling} pooling, layer {args.layer}) to {out}; rows named "
        f"in {index}"
    )


@command(
    "score-variants",
    help="zero-shot variant-effect scores from a bundle: likelihood ratio (decoder) or "
    "masked marginal (encoder), both strands averaged",
    args=[
        arg(
            "--model",
            type=Path,
            required=True,
            help="a bundle (dnalm convert): decoder, or encoder with the nucleotide tokenizer",
        ),
        arg("--vcf", type=Path, required=True, help="VCF, plain or gzip/bgzip"),
        arg("--genome", type=Path, required=True, help="the FASTA the VCF refers to"),
        arg("--out", type=Path, required=True, help="TSV of scores (one row per allele); OUT.summary.json beside it"),
        arg("--window", type=int, default=512, help="bases of genome around each variant (default 512)"),
        arg("--batch-size", type=int, default=16, help="variants per forward pass (default 16)"),
        _device_arg(),
    ],
)
def score_variants(args) -> None:
    from dnalm.bundle import load_pretrained
    from dnalm.genome import IndexedGenome
    from dnalm.use.variants import read_vcf, write_results
    from dnalm.use.variants import score_variants as score
    from dnalm.utils.devices import resolve

    if args.batch_size < 1:
        raise DnalmError("--batch-size must be at least 1")
    variants = read_vcf(args.vcf)
    model, tokenizer = load_pretrained(args.model, device=resolve(args.device))
    score(model, tokenizer, variants, IndexedGenome(args.genome), window=args.window, batch_size=args.batch_size)
    summary = write_results(variants, args.out)
    counts = ", ".join(f"{n} {status}" for status, n in summary["by_status"].items())
    print(f"{summary['alleles']} alleles: {counts}; wrote {args.out}")
    if summary["not_scored_lines"]:
        print(
            f"not scored (see the status column): VCF lines {', '.join(map(str, summary['not_scored_lines'][:20]))}"
            + (" …" if len(summary["not_scored_lines"]) > 20 else "")
        )


def _recipe_args():
    return [
        arg(
            "--rc-augment",
            action="store_true",
            help="read training rows as their reverse complement half the time (for strand-free tasks; off: promoters "
            "are oriented)",
        ),
        arg(
            "--rc-average",
            action="store_true",
            help="average the predictions of both strands (default: the forward strand)",
        ),
        arg(
            "--patience",
            type=int,
            default=None,
            help="stop after this many epochs without a better dev MCC (default: none, every epoch runs)",
        ),
        arg(
            "--backbone-lr-scale",
            type=float,
            default=1.0,
            help="a pretrained backbone's rate relative to the head's (default 1: one rate; below 1: discriminative)",
        ),
        arg(
            "--freeze-backbone",
            action="store_true",
            help="train the head only (linear probing of a pretrained --model)",
        ),
        arg(
            "--pooling",
            default="mean",
            choices=["mean", "mean-max"],
            help="per-token states to one vector: their mean, or mean and max side by side (default mean)",
        ),
    ]


def _first_seed_arg():
    return arg(
        "--first-seed",
        type=int,
        default=0,
        metavar="F",
        help="run seeds F..F+S-1 instead of 0..S-1 (to add seeds to an earlier run; default 0)",
    )


def _check_counts(args) -> None:
    if args.seeds < 1 or args.epochs < 1 or args.batch_size < 1:
        raise DnalmError("--seeds, --epochs and --batch-size must be at least 1")
    if args.first_seed < 0:
        raise DnalmError(f"--first-seed must be 0 or more, got {args.first_seed}")


def _recipe(args) -> dict:
    return {
        "rc_augment": args.rc_augment,
        "rc_average": args.rc_average,
        "patience": args.patience,
        "backbone_lr_scale": args.backbone_lr_scale,
        "freeze_backbone": args.freeze_backbone,
        "pooling": args.pooling,
    }


@command(
    "finetune",
    help="sequence classification from a bundle or from scratch; metrics.json with accuracy, F1, MCC, AUROC",
    args=[
        arg("--model", type=Path, default=None, help="a bundle (encoder or decoder) to start from"),
        arg(
            "--arch",
            default=None,
            help="or train from scratch: transformer | performer | cnn-small | hybrid (cnn: the old name of cnn-small)",
        ),
        arg(
            "--from-scratch",
            action="store_true",
            help="with --model: its architecture and tokenizer, fresh weights (the no-pretraining baseline)",
        ),
        arg("--train", type=Path, required=True, help="CSV/TSV with columns sequence,label"),
        arg("--dev", type=Path, required=True, help="selects the best epoch"),
        arg("--test", type=Path, default=None, help="scored once with the selected epoch (any CSV of the same form)"),
        arg("--out", type=Path, required=True, help="folder for metrics.json"),
        arg(
            "--train-limit",
            type=int,
            default=None,
            metavar="N",
            help="train on a fixed random N rows of --train (the same rows for every model)",
        ),
        arg("--seeds", type=int, default=1, help="repeat with S seeds (0..S-1 unless --first-seed); report mean ± std"),
        _first_seed_arg(),
        arg("--epochs", type=int, default=5, help="passes over --train"),
        arg("--lr", type=float, default=1e-3, help="AdamW's learning rate (the head's; see --backbone-lr-scale)"),
        arg("--batch-size", type=int, default=64, help="rows per step"),
        *_recipe_args(),
        _device_arg(),
    ],
)
def finetune(args) -> None:
    from dnalm.eval.finetune import finetune as run_finetune

    _check_counts(args)
    result = run_finetune(
        args.train,
        args.dev,
        args.out,
        model=args.model,
        arch=args.arch,
        test_path=args.test,
        scratch=args.from_scratch,
        train_limit=args.train_limit,
        seeds=args.seeds,
        first_seed=args.first_seed,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        show_progress=sys.stderr.isatty(),
        report_epochs=True,
        device=args.device,
        **_recipe(args),
    )
    for split, values in result["summary"].items():
        spread = (lambda v: f" ± {v['std']:.4f}") if args.seeds > 1 else (lambda v: "")  # one seed has no spread
        print(f"{split}: " + ", ".join(f"{k} {v['mean']:.4f}{spread(v)}" for k, v in values.items()))
    print(f"metrics: {args.out / 'metrics.json'} ({result['seconds']:.0f} s)")


@command(
    "eval",
    "gue",
    help="fine-tune and score every task of a GUE-layout folder (dev, and test when present), "
    "mean ± std over seeds beside published MCC; gue.json, gue.md, gue.png",
    args=[
        arg(
            "folder",
            type=Path,
            metavar="DIR",
            help="task folders, each with train.csv, dev.csv and optionally test.csv",
        ),
        arg("--model", type=Path, default=None, help="a bundle to start from"),
        arg(
            "--arch",
            default=None,
            help="or from scratch: transformer | performer | cnn-small | hybrid (cnn: the old name of cnn-small)",
        ),
        arg("--from-scratch", action="store_true", help="with --model: its architecture, fresh weights"),
        arg("--tasks", default=None, help="comma-separated task names (default: every task folder)"),
        arg(
            "--out",
            type=Path,
            required=True,
            help="folder for gue.json, gue.md, gue.png and each task's metrics.json",
        ),
        arg("--train-limit", type=int, default=None, metavar="N", help="a fixed random N training rows of each task"),
        arg("--seeds", type=int, default=3, help="S seeds, 0..S-1 unless --first-seed (default 3)"),
        _first_seed_arg(),
        arg("--epochs", type=int, default=5, help="passes over --train"),
        arg("--lr", type=float, default=1e-3, help="AdamW's learning rate (the head's; see --backbone-lr-scale)"),
        arg("--batch-size", type=int, default=64, help="rows per step"),
        *_recipe_args(),
        _device_arg(),
    ],
)
def eval_gue(args) -> None:
    from dnalm.eval import gue as harness

    _check_counts(args)
    report = harness.run(
        args.folder,
        args.out,
        tasks=args.tasks.split(",") if args.tasks else None,
        seeds=args.seeds,
        first_seed=args.first_seed,
        model=args.model,
        arch=args.arch,
        scratch=args.from_scratch,
        train_limit=args.train_limit,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        show_progress=sys.stderr.isatty(),
        **_recipe(args),
    )
    print(harness.table(report), end="")
    print(f"wrote {args.out / 'gue.json'}, gue.md, gue.png")


@command(
    "eval",
    "context",
    help="the same held-out bases scored with more context: perplexity per base (decoders) or "
    "masked accuracy (encoders) by window length, past the training length too",
    args=[
        arg("bundle", type=Path, help="a bundle (dnalm convert)"),
        arg(
            "--genome",
            type=Path,
            required=True,
            help="FASTA whose longest contigs hold the windows (held out from training)",
        ),
        arg("--lengths", default="1024,4096,16384,65536", help="window lengths in tokens (comma-separated)"),
        arg("--windows", type=int, default=8, help="windows per length (default 8), ending at the same positions"),
        arg("--target", type=int, default=1024, help="tokens scored at the end of every window (default 1024)"),
        arg(
            "--out",
            type=Path,
            required=True,
            help="folder for context.json, context.md and context.png",
        ),
        _device_arg(),
    ],
)
def eval_context(args) -> None:
    from dnalm.eval import context as harness

    try:
        lengths = [int(x) for x in args.lengths.split(",") if x]
    except ValueError:
        raise DnalmError(f"--lengths takes comma-separated integers, got {args.lengths!r}") from None
    if args.windows < 1 or args.target < 1:
        raise DnalmError("--windows and --target must be at least 1")
    result = harness.run(
        args.bundle,
        args.genome,
        lengths,
        args.out,
        windows=args.windows,
        target=args.target,
        device=args.device,
        progress=sys.stderr.isatty(),
    )
    print(harness.table([result]), end="")
    print(f"wrote {args.out / 'context.json'}, context.md, context.png")


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
        _device_arg(),
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
        _device_arg(),
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
        _device_arg(),
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
        _device_arg(),
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
        _device_arg(),
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
        _device_arg(),
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
        _device_arg(),
    ],
)
def bench_embed(args) -> None:
    from dnalm.bench import embed

    print(json.dumps(embed.run(args.out, args.model, args.length, args.count, device=args.device), indent=2))


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
        _device_arg(),
    ],
)
def bench_compare(args) -> None:
    from dnalm.bench import report
    from dnalm.studies import compare
    from dnalm.utils.devices import resolve

    values = {
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
        values["lengths"] = tuple(_integer("--lengths", x) for x in args.lengths.split(",") if x)
    if args.tasks:
        tasks = {}
        for item in (x for x in args.tasks.split(",") if x):
            name, _, rows = item.partition("=")
            tasks[name] = _integer("--tasks", rows)
        values["tasks"] = tasks
    result = compare.run(
        compare.budget_from(values), args.work, args.out, gue=report.required_data(args.gue, report.GUE, "--gue")
    )
    print(f"\ndone in {result['seconds']['total'] / 60:.1f} min; report: {args.out / 'compare.md'}")


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


def _integer(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DnalmError(f"{flag}: {text!r} is not a whole number") from None


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
    groups = {(): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
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
        sub.set_defaults(run=cmd.run)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"dnalm: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        return args.run(args) or 0
    except DnalmError as exc:
        print(f"dnalm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
