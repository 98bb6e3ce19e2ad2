"""The report of ``dnalm bench compare``: summary tables (mean ± std over seeds), markdown, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnalm.bench import report
from dnalm.utils.plots import pyplot

# 5-mer logistic regression on GUE dev (../shared/data/README.md): what a k-mer count alone reaches
KMER_BASELINE_DEV_MCC = {
    "prom_core_all": 0.557,
    "prom_core_notata": 0.599,
    "prom_core_tata": 0.468,
    "prom_300_tata": 0.454,
    "tf0": 0.553,
}


def _stats(values) -> dict:
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarise(result: dict) -> dict:
    variants = list(result["variants"])
    pretrain = {
        v: {
            key: _stats(r[key] for r in result["pretrain"] if r["variant"] == v)
            for key in ("masked_accuracy", "masked_loss", "final_loss", "seconds")
        }
        for v in variants
    }
    speed = {
        v: {
            str(r["length"]): {k: r.get(k) for k in ("batch", "tokens_per_s", "peak_mb", "failed") if k in r}
            for r in result["throughput"]
            if r["variant"] == v
        }
        for v in variants
    }
    tuned: dict[str, dict[str, dict]] = {}  # task → variant → dev MCC statistics
    for task in result["budget"]["tasks"]:
        tuned[task] = {}
        for v in variants:
            rows = [r for r in result["finetune"] if r["task"] == task and r["variant"] == v]
            pre = _stats(r["dev_mcc"] for r in rows if r["pretrained"])
            scratch = _stats(r["dev_mcc"] for r in rows if not r["pretrained"])
            tuned[task][v] = {"pretrained": pre, "scratch": scratch, "gain": pre["mean"] - scratch["mean"]}
    return {"pretrain": pretrain, "throughput": speed, "finetune_dev_mcc": tuned}


def _pm(stats: dict, digits: int = 4) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def markdown(result: dict) -> str:
    summary, budget = result["summary"], result["budget"]
    seeds = budget["seeds"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores_available']} cores, "
        f"{result['torch_threads']} torch threads; measured on {report.device_label(result)}, "
        f"{result['machine']['date']}  ",
        f"Wall time: {result['seconds']['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in result['seconds'].items() if k != 'total')} min)"
        + _resumed(result.get("reused_pieces")),
        "",
        f"Pretraining (masked LM), {budget['pretrain_tokens']:,} tokens per run ({result['pretrain'][0]['steps']} "
        "steps of "
        f"{budget['micro_batch'] * budget['processes']}×{budget['seq_len']}), {seeds} seeds, DeepSpeed ZeRO-2 on "
        f"{budget['processes']} processes; held-out accuracy on {budget['eval_windows']} validation windows, "
        f"nucleotide tokens only, mean ± std over seeds:",
        "",
        "| variant | parameters | held-out masked-base accuracy | held-out loss (nats/base) | final train loss | "
        "pretrain seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in summary["pretrain"].items():
        lines.append(
            f"| {name} ({result['variants'][name]['description']}) | {result['variants'][name]['parameters']:,} | "
            f"{_pm(row['masked_accuracy'])} | {_pm(row['masked_loss'], 3)} | {_pm(row['final_loss'], 3)} | "
            f"{row['seconds']['mean']:.0f} |"
        )
    lengths = [str(x) for x in budget["lengths"]]
    lines += [
        "",
        f"Training step (forward, backward, AdamW) in a fresh process, {budget['tokens_per_step']:,} tokens per step "
        f"(batch × length); peak memory is the process's peak resident set above its start:",
        "",
        "| variant | "
        + " | ".join(f"tokens/s @ {n}" for n in lengths)
        + " | "
        + " | ".join(f"peak MB @ {n}" for n in lengths)
        + " |",
        "| --- | " + " | ".join("---:" for _ in range(2 * len(lengths))) + " |",
    ]
    for name, row in summary["throughput"].items():
        rate = [
            f"{row[n]['tokens_per_s']:,.0f}" if "tokens_per_s" in row.get(n, {}) else row.get(n, {}).get("failed", "—")
            for n in lengths
        ]
        memory = [f"{row[n]['peak_mb']:,.0f}" if "peak_mb" in row.get(n, {}) else "—" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(rate + memory) + " |")
    for task, table in summary["finetune_dev_mcc"].items():
        lines += [
            "",
            f"Fine-tuning on GUE `{task}` ({budget['tasks'][task]:,} training rows, {budget['finetune_epochs']} "
            "epochs, "
            f"lr {budget['finetune_lr']}), dev MCC, mean ± std over {seeds} seeds "
            f"(5-mer logistic regression on dev: {KMER_BASELINE_DEV_MCC.get(task, float('nan')):.3f}):",
            "",
            "| variant | pretrained | from scratch | gain |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in table.items():
            lines.append(f"| {name} | {_pm(row['pretrained'])} | {_pm(row['scratch'])} | {row['gain']:+.4f} |")
    return "\n".join(lines) + "\n"


def _resumed(reused: dict | None) -> str:
    if not reused or not reused["count"]:
        return ""
    return (
        f"; resumed: {reused['count']} finished pieces came from an earlier invocation "
        f"(their own recorded time: {reused['their_seconds'] / 60:.1f} min, not counted above)"
    )


def write(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write(result, out_dir, "compare")
    text = markdown(result)
    tmp = out_dir / ".compare.md.tmp"
    tmp.write_text(text)
    tmp.replace(out_dir / "compare.md")
    _plot_curves(result, out_dir)
    _plot_throughput(result, out_dir)
    _plot_finetune(result, out_dir)


def _title(result: dict, what: str) -> str:
    return f"dnalm bench compare — {what}\n{report.device_label(result)}"


def _plot_curves(result: dict, out_dir: Path) -> None:
    plt = pyplot()
    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, name in enumerate(result["variants"]):
        color = f"C{i}"
        for j, row in enumerate(r for r in result["pretrain"] if r["variant"] == name):
            label = name if j == 0 else None
            train_ax.plot(
                [p["tokens_seen"] for p in row["curve"]],
                [p["loss"] for p in row["curve"]],
                color=color,
                alpha=0.75,
                linewidth=1,
                label=label,
            )
            val_ax.plot(
                [p["tokens_seen"] for p in row["val_curve"]],
                [p["val_loss"] for p in row["val_curve"]],
                "o-",
                color=color,
                alpha=0.75,
                markersize=3,
                label=label,
            )
    for ax, what in ((train_ax, "training loss (each seed)"), (val_ax, "validation loss (held-out blocks)")):
        ax.set_yscale("log")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("masked-LM cross-entropy (nats/token)")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(result, "pretraining loss (views: averaged over nucleotide and 6-mer tokens)"), fontsize=9)
    report.save_plot(fig, out_dir, "compare_loss")


def _plot_throughput(result: dict, out_dir: Path) -> None:
    plt = pyplot()
    fig, (rate_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(result["variants"]):
        points = [r for r in result["throughput"] if r["variant"] == name and "tokens_per_s" in r]
        if points:
            xs = [r["length"] for r in points]
            rate_ax.plot(xs, [r["tokens_per_s"] for r in points], "o-", color=f"C{i}", label=name)
            memory_ax.plot(xs, [r["peak_mb"] for r in points], "o-", color=f"C{i}", label=name)
    for ax, label in ((rate_ax, "training tokens / s"), (memory_ax, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        _title(result, f"throughput against sequence length ({result['budget']['tokens_per_step']:,} tokens per step)"),
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "compare_throughput")


def _plot_finetune(result: dict, out_dir: Path) -> None:
    plt = pyplot()
    table = result["summary"]["finetune_dev_mcc"]
    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 4), squeeze=False)
    for ax, (task, rows) in zip(axes[0], table.items()):
        names = list(rows)
        x = np.arange(len(names))
        for offset, key, color in ((-0.2, "pretrained", "#3b7dd8"), (0.2, "scratch", "#bbbbbb")):
            ax.bar(
                x + offset,
                [rows[n][key]["mean"] for n in names],
                0.4,
                yerr=[rows[n][key]["std"] for n in names],
                color=color,
                capsize=3,
                label="pretrained" if key == "pretrained" else "from scratch",
            )
        if task in KMER_BASELINE_DEV_MCC:
            ax.axhline(
                KMER_BASELINE_DEV_MCC[task],
                color="black",
                linestyle="--",
                linewidth=1,
                label="5-mer logistic regression",
            )
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylabel("dev MCC")
        ax.set_title(task, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(_title(result, "fine-tuning, mean ± std over seeds"), fontsize=9)
    report.save_plot(fig, out_dir, "compare_finetune")
