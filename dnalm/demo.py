"""``dnalm demo``: the whole pipeline on the bundled E. coli genome, on a laptop-sized budget.

prep → 2-process DeepSpeed pretraining of a tiny encoder (masked LM) and a tiny decoder (causal LM)
→ convert both to bundles → generate a few sequences from the decoder → loss curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run(out: Path, steps: int = 300, processes: int = 2, seq_len: int = 256, log=print) -> dict:
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm import genome
    from dnalm.bundle import load_pretrained
    from dnalm.convert import convert
    from dnalm.use.generate import generate, to_fasta

    out = Path(out).resolve()
    started = time.perf_counter()
    data = out / "data"
    log(f"[1/5] prep {genome.DEFAULT_GENOME.name} → {data}")
    prep(
        PrepConfig(genomes=[str(genome.DEFAULT_GENOME)], tokenizers=["nucleotide"], seq_len=seq_len, shard_size_mb=4),
        data,
    )
    runs, bundles = {}, {}
    for step_no, (kind, name) in enumerate((("encoder", "encoder-tiny"), ("decoder", "decoder-tiny")), start=2):
        run_dir = out / "runs" / name
        log(
            f"[{step_no}/5] pretrain {name} ({'masked' if kind == 'encoder' else 'causal'} LM), {processes} DeepSpeed "
            f"processes, {steps} steps → {run_dir}"
        )
        _train(out, data, run_dir, name, steps, processes)
        runs[name] = run_dir
    log(f"[4/5] convert → {out / 'bundles'}")
    for name, run_dir in runs.items():
        bundles[name] = (
            convert(run_dir, out / "bundles" / name)
            if not (out / "bundles" / name).exists()
            else out / "bundles" / name
        )
    log("[5/5] generate 3 sequences from decoder-tiny")
    model, tokenizer = load_pretrained(bundles["decoder-tiny"])
    prompt = "ATGACCATGATTACG"
    sequences = generate(model, tokenizer, prompt, 120, temperature=0.9, top_k=4, num_samples=3, seed=0)
    fasta = out / "generated.fasta"
    fasta.write_text(to_fasta(sequences, len(prompt), "decoder-tiny demo, temperature=0.9 top_k=4 seed=0"))
    curves = _plot(runs, out / "loss.png")
    summary = {
        "out": str(out),
        "data": str(data),
        "runs": {k: str(v) for k, v in runs.items()},
        "bundles": {k: str(v) for k, v in bundles.items()},
        "generated": str(fasta),
        "loss_plot": str(curves),
        "final_loss": {k: _last(v, "loss") for k, v in runs.items()},
        "final_val_loss": {k: _last(v, "val_loss") for k, v in runs.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _train(out: Path, data: Path, run_dir: Path, model: str, steps: int, processes: int) -> None:
    from dnalm.train.spawn import spawn_training

    config = {
        "run_dir": str(run_dir),
        "model": {"name": model},
        "data": {"path": str(data), "num_workers": 1},
        "optim": {"lr": 2e-3, "warmup_steps": max(1, steps // 10)},
        "batch": {"micro_batch": 8, "global_batch": 8 * processes},
        "budget": {"steps": steps},
        "eval": {"interval": max(1, steps // 5), "batches": 4},
        "checkpoint": {"interval": max(1, steps // 2), "keep_last": 2},
        "logging": {"interval": max(1, steps // 50)},
        "deepspeed": "zero2",
    }
    spawn_training(config, out / "configs" / f"{model}.yaml", processes, run_dir.parent / f"{model}.log")


def _last(run_dir: Path, key: str):
    from dnalm.train.metrics import read

    values = [r[key] for r in read(run_dir) if key in r]
    return round(values[-1], 4) if values else None


def _plot(runs: dict, path: Path) -> Path:
    from dnalm.train.metrics import read
    from dnalm.utils.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run_dir in runs.items():
        records = read(run_dir)
        ax.plot(
            [r["step"] for r in records if "loss" in r],
            [r["loss"] for r in records if "loss" in r],
            label=f"{name} train",
        )
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if val:
            ax.plot(*zip(*val), "o--", label=f"{name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("dnalm demo — bundled E. coli genome")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
