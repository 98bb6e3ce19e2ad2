"""Fine-tuning and evaluation: ``dnalm finetune`` and ``dnalm eval …``."""

from __future__ import annotations

import sys
from pathlib import Path

from dnalm.cli.registry import arg, command, device_arg
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import refuse_file_as_folder


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
    refuse_file_as_folder(args.out, "--out")  # before an epoch is spent


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
        device_arg(),
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
        device_arg(),
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
        device_arg(),
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
    refuse_file_as_folder(args.out, "--out")
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
    "eval",
    "probe",
    help="the trainer's linear probe (eval.probes) on a bundle: dev MCC and accuracy of a logistic regression on "
    "mean-pooled final hidden states, the same rows as in training (rebuild a probe curve from saved checkpoints)",
    args=[
        arg("bundle", type=Path, help="a bundle (dnalm convert RUN/checkpoints/step-N --out BUNDLE)"),
        arg(
            "--tasks",
            type=Path,
            nargs="+",
            required=True,
            metavar="DIR",
            help="task folders in GUE's layout, each with train.csv and dev.csv (sequence,label)",
        ),
        arg(
            "--rows",
            default="2000,1000",
            help="train and dev rows a probe reads, a fixed seeded subsample (default 2000,1000: eval.probe_rows')",
        ),
        arg("--out", type=Path, default=None, help="write the report as JSON here too"),
        device_arg(),
    ],
)
def eval_probe(args) -> None:
    import json

    from dnalm.train import probes
    from dnalm.utils.files import write_atomic

    try:
        rows = [int(x) for x in args.rows.split(",")]
    except ValueError:
        raise DnalmError(
            f"--rows takes the train and dev rows as two integers, e.g. 2000,1000, got {args.rows!r}"
        ) from None
    report = probes.probe_bundle(args.bundle, args.tasks, rows, device=args.device)
    step = f" (step {report['step']})" if report["step"] is not None else ""
    print(f"{args.bundle}{step}, {report['device']}, {report['seconds']:.1f} s")
    print(probes.table(report), end="")
    if args.out is not None:
        write_atomic(args.out, json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
