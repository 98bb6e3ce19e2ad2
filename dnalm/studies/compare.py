"""``dnalm bench compare``: the DNA_Performer comparison (Performer, Transformer, CNN) on a real genome.

Every variant is pretrained with masked LM on the same shards, token budget and seeds by the real
trainer (DeepSpeed ZeRO-2 under the ``deepspeed`` launcher), converted to a bundle, scored on the
held-out blocks (masked-base accuracy), timed at two sequence lengths in fresh processes
(training tokens/s, peak memory), then fine-tuned on GUE promoter tasks from its bundle and from
the same architecture freshly initialised. Each finished piece is written under ``--work`` as it
completes, so an interrupted comparison resumes where it stopped; the report goes to ``--out``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dnalm.bench import report
from dnalm.utils.devices import describe
from dnalm.utils.memory import allocator_peak_mb, peak_rss_bytes

if TYPE_CHECKING:
    from dnalm.models import DnaModel


from dnalm.studies.compare_budget import (  # noqa: F401
    VARIANTS,
    Budget,
    CompareError,
    Variant,
    budget_from,
    check_inputs,
    command_line,
)


# --- stages ---------------------------------------------------------------------------------
class Pieces:
    """Finished pieces of a comparison as JSON under ``work/results``, reused on a rerun; failures are retried."""

    def __init__(self, work: Path):
        self.folder = work / "results"
        self.reused, self.reused_seconds = 0, 0.0

    def get(self, name: str, compute) -> dict:
        path = self.folder / f"{name}.json"
        if path.exists():
            value = json.loads(path.read_text())
            self.reused += 1
            self.reused_seconds += value.get("piece_seconds", 0.0)
            return value
        started = time.perf_counter()
        value = compute()
        value["piece_seconds"] = round(time.perf_counter() - started, 1)
        if "failed" not in value:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(value, indent=1))
            tmp.replace(path)
        return value


def prepare(budget: Budget, work: Path) -> dict:
    """Shards of the genome, once with the nucleotide tokenizer and once with nucleotide + kmer:6 views."""
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig

    folders = {}
    for name, tokenizers in (("nucleotide", ["nucleotide"]), ("views", ["nucleotide", "kmer:6"])):
        if name == "views" and not any(VARIANTS[v].views for v in budget.variants):
            continue
        folder = work / "data" / name
        config = PrepConfig(
            genomes=[budget.genome], tokenizers=tokenizers, seq_len=budget.seq_len, views=len(tokenizers) > 1
        )
        result = prep(config, folder, jobs=2)
        manifest = result["manifest"]
        folders[name] = {
            "path": str(folder),
            "seconds": round(result["seconds"], 1),
            "train_samples": manifest.splits["train"].num_samples,
            "val_samples": manifest.splits["val"].num_samples if "val" in manifest.splits else 0,
        }
    return folders


def throughput(variant: Variant, length: int, batch: int, device: str) -> dict:
    """Training step (forward, backward, AdamW) tokens/s and peak memory, measured in a fresh process."""
    command = [sys.executable, "-m", "dnalm.studies.compare", variant.name, str(length), str(batch), device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return {"failed": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_step(variant: Variant, length: int, batch: int, steps: int = 3, device: str = "cpu") -> dict:
    """In this process: best of ``steps`` training steps after one warm-up; peak memory above the start (resident
    set on CPU, the allocator's peak on CUDA)."""
    import psutil

    from dnalm.bench.train import step_tokens_per_s
    from dnalm.utils.devices import training_dtype

    target = torch.device(device)
    baseline = psutil.Process().memory_info().rss if target.type == "cpu" else torch.cuda.memory_allocated(target)
    model = build_variant(variant, max_seq_len=max(length, 1024)).to(target, training_dtype(target))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rate = step_tokens_per_s(
        model, batch, length, model.config.vocab_size, steps=steps, device=target, optimizer=optimizer
    )
    cuda_peak = allocator_peak_mb(target)  # None off CUDA
    peak = cuda_peak * 2**20 if cuda_peak is not None else peak_rss_bytes()
    return {
        "tokens_per_s": round(rate, 1),
        "step_seconds": round(batch * length / rate, 3),
        "peak_mb": round((peak - baseline) / 2**20, 1),
    }


def build_variant(variant: Variant, **changes) -> DnaModel:
    """The variant's model with fresh weights (seed 0), sized for its tokenizer's vocabulary."""
    from dnalm.data.masking import sized_head
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import load

    tokenizer = load("nucleotide+kmer:6" if variant.views else "nucleotide")
    torch.manual_seed(0)
    return build_model(
        sized_head(
            get_config(variant.model, vocab_size=tokenizer.vocab_size, **variant.overrides, **changes), tokenizer.vocab
        )
    )


def pretrain(variant: Variant, seed: int, budget: Budget, data: Path, work: Path) -> dict:
    """Masked-LM pretraining by the trainer under the deepspeed launcher, then a bundle (dnalm convert)."""
    from dnalm.convert import convert
    from dnalm.train.metrics import read
    from dnalm.train.spawn import spawn_training

    name = f"{variant.name}-seed{seed}"
    run_dir, bundle = work / "runs" / name, work / "bundles" / name
    steps = budget.pretrain_steps
    config = {
        "run_dir": str(run_dir),
        "model": {"name": variant.model, "overrides": dict(variant.overrides)},
        "data": {"path": str(data), "num_workers": 1},
        "optim": {"lr": budget.lr, "warmup_steps": max(1, steps // 10)},
        "batch": {"micro_batch": budget.micro_batch, "global_batch": budget.global_batch},
        "budget": {"tokens": budget.pretrain_tokens},
        "eval": {"interval": max(1, steps // 5), "batches": 4},
        "checkpoint": {"interval": steps, "keep_last": 1},
        "logging": {"interval": 1, "wandb": "disabled"},
        "deepspeed": "zero2",
        "seed": seed,
    }
    started = time.perf_counter()
    spawn_training(config, work / "configs" / f"{name}.yaml", budget.processes, work / "logs" / f"{name}.log")
    seconds = time.perf_counter() - started
    convert(run_dir, bundle)
    records = read(run_dir)
    curve = [{"step": r["step"], "tokens_seen": r["tokens_seen"], "loss": r["loss"]} for r in records if "loss" in r]
    val = [
        {"step": r["step"], "tokens_seen": r["tokens_seen"], "val_loss": r["val_loss"]}
        for r in records
        if "val_loss" in r
    ]
    return {
        "variant": variant.name,
        "seed": seed,
        "bundle": str(bundle),
        "steps": steps,
        "tokens_seen": curve[-1]["tokens_seen"],
        "seconds": round(seconds, 1),
        "final_loss": curve[-1]["loss"],
        "curve": curve,
        "val_curve": val,
    }


@torch.no_grad()
def masked_accuracy(bundle: Path, data: Path, windows: int, seed: int = 1234, device: str = "cpu") -> dict:
    """Masked-base accuracy and loss on the held-out split, counted on nucleotide tokens only.

    The same windows and masks for every model (the masks depend on ``seed`` and the window's
    position only); with views, the masked bases are hidden in every view and scored in the
    nucleotide view, so single- and multi-view encoders are scored on the same bases.
    """
    from dnalm.bundle import load_pretrained
    from dnalm.data.masking import IGNORE, base_targets, mlm_batch, view_ranges
    from dnalm.data.stream import GenomeStream, StreamLoader
    from dnalm.utils.devices import model_device, move

    model, tokenizer = load_pretrained(bundle, device=device)
    base_table = base_targets(tokenizer.vocab) if model.config.mlm_target == "bases" else None
    batch_size = 8
    stream = GenomeStream(data, "val", batch_size=batch_size, seed=0, epochs=1)  # windows drawn across the whole split
    ranges = view_ranges([t.vocab_size for t in stream.manifest.tokenizers])
    correct = targets = scored_windows = 0
    loss_sum = 0.0
    for i, batch in enumerate(StreamLoader(stream)):
        if i * batch_size >= windows:
            break
        scored_windows += len(batch["input_ids"])
        inputs = move(mlm_batch(batch, ranges, np.random.default_rng([seed, i]), base_table), model_device(model))
        extra = {k: inputs[k] for k in ("segment_ids", "positions") if k in inputs}
        logits = model(inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra).logits
        scored = inputs["labels"] != IGNORE  # (B, T), or (B, T, bases per token) for mlm_target bases
        if "segment_ids" in inputs:
            nucleotide_view = inputs["segment_ids"] == 0
            scored &= nucleotide_view.view(*nucleotide_view.shape, *[1] * (scored.dim() - 2))
        labels = inputs["labels"][scored]
        picked = logits[scored].float()
        correct += int((picked.argmax(-1) == labels).sum())
        targets += int(scored.sum())
        loss_sum += float(torch.nn.functional.cross_entropy(picked, labels, reduction="sum"))
    if targets == 0:
        raise CompareError(f"{data}: the held-out split gave no masked bases to score")
    return {
        "masked_accuracy": correct / targets,
        "masked_loss": loss_sum / targets,
        "scored_bases": targets,
        "scored_windows": scored_windows,
    }


def finetune_one(
    task: str,
    rows: int,
    variant: Variant,
    seed: int,
    bundle: Path,
    pretrained: bool,
    budget: Budget,
    gue: Path,
    work: Path,
) -> dict:
    from dnalm.eval.finetune import finetune

    out = work / "finetune" / task / f"{variant.name}-{'pretrained' if pretrained else 'scratch'}-seed{seed}"
    result = finetune(
        gue / task / "train.csv",
        gue / task / "dev.csv",
        out,
        model=bundle,
        scratch=not pretrained,
        first_seed=seed,
        train_limit=rows,
        epochs=budget.finetune_epochs,
        lr=budget.finetune_lr,
        device=budget.device,
    )
    run = result["runs"][0]
    return {
        "task": task,
        "variant": variant.name,
        "pretrained": pretrained,
        "seed": seed,
        "train_rows": result["train_rows"],
        "best_epoch": run["best_epoch"],
        "seconds": result["seconds"],
        **{f"dev_{k}": v for k, v in run["dev"].items()},
    }


# --- the whole comparison -------------------------------------------------------------------
def run(budget: Budget, work: Path, out_dir: Path, gue: Path, log=print) -> dict:
    from dnalm.studies import compare_report

    check_inputs(budget, gue)
    work = Path(work).resolve()
    _claim(work, budget)
    pieces = Pieces(work)
    variants = [VARIANTS[v] for v in budget.variants]
    started, seconds = time.perf_counter(), {}

    def stage(name: str, compute):
        t = time.perf_counter()
        value = compute()
        seconds[name] = round(time.perf_counter() - t, 1)
        return value

    log(f"[1/5] prep {Path(budget.genome).name} (seq_len {budget.seq_len}) → {work / 'data'}")
    data = stage("prep", lambda: prepare(budget, work))
    log(f"[2/5] throughput and peak memory at {', '.join(map(str, budget.lengths))} tokens")
    speed = stage("throughput", lambda: throughput_stage(variants, budget, pieces, log))
    log(
        f"[3/5] pretrain {len(variants)} variants × {budget.seeds} seeds, {budget.pretrain_tokens:,} tokens each "
        f"({budget.pretrain_steps} steps of {budget.global_batch}×{budget.seq_len}), then score the held-out split"
    )
    pretrained = stage("pretrain", lambda: pretrain_stage(variants, budget, data, work, pieces, log))
    log(
        f"[4/5] fine-tune on {', '.join(f'{k} ({v} rows)' for k, v in budget.tasks.items())}, "
        f"{budget.finetune_epochs} epochs, with and without pretraining"
    )
    tuned = stage("finetune", lambda: finetune_stage(variants, budget, pretrained, gue, work, pieces, log))

    log(f"[5/5] report → {out_dir}")
    result = {
        "benchmark": "compare",
        "command": command_line(budget),
        "machine": report.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": describe(budget.device),
        "dtype": "fp32",
        "budget": budget.model_dump(),
        "variants": {
            v.name: {
                "model": v.model,
                "overrides": v.overrides,
                "views": v.views,
                "description": v.description,
                "parameters": _parameters(v),
            }
            for v in variants
        },
        "data": data,
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
        "reused_pieces": {"count": pieces.reused, "their_seconds": round(pieces.reused_seconds, 1)},
        "throughput": speed,
        "pretrain": pretrained,
        "finetune": tuned,
    }
    result["summary"] = compare_report.summarise(result)
    compare_report.write(result, Path(out_dir))
    return result


def throughput_stage(variants: list[Variant], budget: Budget, pieces: Pieces, log) -> list[dict]:
    rows = []
    for variant in variants:
        for length in budget.lengths:
            batch = max(1, budget.tokens_per_step // length)
            row = pieces.get(
                f"throughput-{variant.name}-{length}",
                lambda: {
                    "variant": variant.name,
                    "length": length,
                    "batch": batch,
                    **throughput(variant, length, batch, budget.device),
                },
            )
            rows.append(row)
            log(
                f"      {variant.name:<12} {length:>6}: "
                + (
                    f"{row['tokens_per_s']:>9,.0f} tokens/s  {row['peak_mb']:>7,.0f} MB"
                    if "tokens_per_s" in row
                    else row["failed"]
                )
            )
    return rows


def pretrain_stage(variants: list[Variant], budget: Budget, data: dict, work: Path, pieces: Pieces, log) -> list[dict]:
    rows = []
    for variant in variants:
        folder = Path(data["views" if variant.views else "nucleotide"]["path"])
        for seed in range(budget.seeds):
            row = pieces.get(
                f"pretrain-{variant.name}-seed{seed}", lambda: _pretrain_and_score(variant, seed, budget, folder, work)
            )
            rows.append(row)
            log(
                f"      {variant.name:<12} seed {seed}: loss {row['final_loss']:.3f}, held-out masked accuracy "
                f"{row['masked_accuracy']:.4f} ({row['seconds']:.0f} s)"
            )
    return rows


def finetune_stage(
    variants: list[Variant], budget: Budget, pretrained: list[dict], gue: Path, work: Path, pieces: Pieces, log
) -> list[dict]:
    bundles = {(r["variant"], r["seed"]): Path(r["bundle"]) for r in pretrained}
    rows = []
    for task, limit in budget.tasks.items():
        for variant in variants:
            for is_pretrained in (True, False):
                for seed in range(budget.seeds):
                    tag = f"{task}-{variant.name}-{'pretrained' if is_pretrained else 'scratch'}-seed{seed}"
                    row = pieces.get(
                        f"finetune-{tag}",
                        lambda: finetune_one(
                            task, limit, variant, seed, bundles[variant.name, seed], is_pretrained, budget, gue, work
                        ),
                    )
                    rows.append(row)
                    log(f"      {tag}: dev MCC {row['dev_mcc']:.4f} ({row['seconds']:.0f} s)")
    return rows


def _pretrain_and_score(variant: Variant, seed: int, budget: Budget, data: Path, work: Path) -> dict:
    row = pretrain(variant, seed, budget, data, work)
    return row | masked_accuracy(Path(row["bundle"]), data, budget.eval_windows, device=budget.device)


def _parameters(variant: Variant) -> int:
    from dnalm.models import count_parameters

    return count_parameters(build_variant(variant))


def _claim(work: Path, budget: Budget) -> None:
    """A work folder holds one budget's results; reusing it with another budget would mix them."""
    path = work / "budget.json"
    wanted = json.loads(budget.model_dump_json())
    if path.exists():
        had = json.loads(path.read_text())
        if had != wanted:
            changed = sorted(k for k in wanted.keys() | had.keys() if had.get(k) != wanted.get(k))
            raise CompareError(
                f"{work} holds a comparison with another budget ({', '.join(changed)} differ); "
                f"use a new --work folder or delete it"
            )
        return
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / ".budget.json.tmp"
    tmp.write_text(json.dumps(wanted, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    name, length, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure_step(VARIANTS[name], length, batch, device=sys.argv[4] if len(sys.argv) > 4 else "cpu")))
