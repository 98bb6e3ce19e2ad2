"""Training and its checkpoints: ``dnalm train``, ``plot``, ``convert``, ``checkpoint …`` and ``plan``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dnalm.cli.registry import arg, command
from dnalm.utils.errors import DnalmError


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
    help="draw a run's training and validation loss curves (and its linear probes' dev MCC) to RUN/loss.png",
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
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise DnalmError(f"--out {args.out}: exists and is not empty; choose another folder")
    if args.from_hf is not None:
        from dnalm.hf.importing import import_hf

        if args.to != "bundle":
            raise DnalmError("convert --from-hf writes a bundle; --to hf is for training checkpoints")
        print(f"wrote {import_hf(args.from_hf, args.out, args.tokenizer)}")
        return
    if args.tokenizer is not None:
        raise DnalmError("convert --tokenizer goes with --from-hf (a checkpoint carries its tokenizer)")
    from dnalm.convert import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.source)
    out = run_convert(checkpoint, args.out, to=args.to, dtype=args.dtype)
    print(f"wrote {out} from {checkpoint} ({'a Hugging Face folder' if args.to == 'hf' else 'a bundle'})")
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
