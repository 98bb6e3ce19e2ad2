"""``dnalm bench probe``: what the in-training linear probe (``eval.probes``) costs against the training it interrupts.

A real ``dnalm train`` run (one process, the run's default device) of a realistic small config: ``encoder-small`` on
nucleotide windows of 1,024 tokens from 4 Mb of human chr20 (the bundled genome without ``$DNALM_DATA``), global batch
16, with the default probe (2,000 train + 1,000 dev rows of one GUE task) every 2 steps and at the last. The median
step's seconds (after the first) and the median probe's seconds give the probe's share of the training time at any
``eval.probe_interval``: probe seconds ÷ (interval × step seconds), and the interval where it is 5%.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dnalm.bench import report

BUDGET = 0.05


def run(
    out_dir: Path,
    task: Path | None = None,
    genome: Path | None = None,
    model: str = "encoder-small",
    seq_len: int = 1024,
    global_batch: int = 16,
    micro_batch: int = 8,
    steps: int = 5,
    rows: tuple[int, int] = (2000, 1000),
    interval: int = 500,
) -> dict:
    import torch

    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm import genome as genome_io
    from dnalm.data.labelled import read_labelled
    from dnalm.utils.devices import resolve

    task = report.required_data(task, f"{report.GUE}/prom_core_tata", "--task")
    source = Path(genome) if genome else report.chr20_or_bundled()
    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="dnalm-bench-probe-") as scratch:
        indexed = genome_io.IndexedGenome(source)
        name = max(indexed.lengths, key=lambda contig: indexed.lengths[contig])
        start = indexed.lengths[name] // 2
        piece = indexed.fetch(name, start, min(start + 4_000_000, indexed.lengths[name])).sequence
        fasta = Path(scratch) / "slice.fa"
        fasta.write_text(f">{name}_slice\n" + "\n".join(piece[i : i + 60] for i in range(0, len(piece), 60)) + "\n")
        data = Path(scratch) / "data"
        prep(PrepConfig(genomes=[str(fasta)], tokenizers=["nucleotide"], seq_len=seq_len, val_fraction=0.01), data)
        run_dir = Path(scratch) / "run"
        settings = {
            "run_dir": run_dir,
            "data.path": data,
            "model.name": model,
            "budget.steps": steps,
            "batch.micro_batch": micro_batch,
            "batch.global_batch": global_batch,
            "eval.interval": 10**6,
            "checkpoint.interval": 10**6,
            "logging.interval": 1,
            "logging.wandb": "disabled",
            "data.num_workers": 1,
            "eval.probes": f"[{task}]",
            "eval.probe_interval": 2,
            "eval.probe_rows": f"[{rows[0]},{rows[1]}]",
        }
        command = [
            sys.executable,
            "-m",
            "dnalm",
            "train",
            "--config",
            str(repo / "configs" / "train" / "encoder-small-ecoli.yaml"),
            *(f"{k}={v}" for k, v in settings.items()),
        ]
        env = os.environ | ({} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"})
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=repo)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = global_batch * seq_len
    step_seconds = sorted(tokens / r["tokens_per_s"] for r in records if r["step"] > 1)
    median = step_seconds[len(step_seconds) // 2]
    key = f"probe/{task.name}"
    probes = [
        {"step": r["step"], "seconds": r["probe/seconds"], "mcc": r[f"{key}/mcc"], "accuracy": r[f"{key}/accuracy"]}
        for r in records
        if "probe/seconds" in r
    ]
    probe_seconds = sorted(p["seconds"] for p in probes)[len(probes) // 2]
    read = [
        min(rows[0], len(read_labelled(task / "train.csv").sequences)),
        min(rows[1], len(read_labelled(task / "dev.csv").sequences)),
    ]
    result = report.header("probe", f"dnalm bench probe --interval {interval}", resolve("auto")) | {
        "model": model,
        "seq_len": seq_len,
        "global_batch": global_batch,
        "micro_batch": micro_batch,
        "processes": 1,
        "threads": torch.get_num_threads(),
        "source": str(source),
        "task": str(task),
        "rows": list(rows),
        "rows_read": read,
        "steps": steps,
        "step_seconds": [round(s, 3) for s in step_seconds],
        "median_step_seconds": round(median, 3),
        "probes": probes,
        "probe_seconds": probe_seconds,
        "interval": interval,
        "share_at_interval": round(probe_seconds / (interval * median), 5),
        "interval_at_5_percent": math.ceil(probe_seconds / (BUDGET * median)),
        "note": "share = the median probe's seconds / (interval x the median step's seconds); steps and probes ran "
        "in one process on the same machine, one after another",
    }
    report.write(result, out_dir, "probe")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    import numpy as np

    from dnalm.utils.plots import pyplot

    plt = pyplot()
    intervals = np.geomspace(10, 5000, 200)
    share = 100 * result["probe_seconds"] / (intervals * result["median_step_seconds"])
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.loglog(intervals, share, color="tab:blue", label="probe's share of training time")
    ax.axhline(100 * BUDGET, color="tab:red", linestyle="--", linewidth=1, label="5%")
    ax.plot([result["interval"]], [100 * result["share_at_interval"]], "o", color="tab:blue")
    ax.annotate(
        f"{100 * result['share_at_interval']:.2f}% at {result['interval']}",
        (result["interval"], 100 * result["share_at_interval"]),
        textcoords="offset points",
        xytext=(6, 6),
        fontsize=8,
    )
    ax.set_xlabel("eval.probe_interval (steps)")
    ax.set_ylabel("% of training time")
    rows = result["rows_read"]
    ax.set_title(
        f"{result['model']}, {result['global_batch']} x {result['seq_len']:,} tokens a step; probe {rows[0]:,}+"
        f"{rows[1]:,} rows\n{report.device_label(result)}",
        fontsize=8,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.save_plot(fig, out_dir, "probe")
