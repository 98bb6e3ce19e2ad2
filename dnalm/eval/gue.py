"""``dnalm eval gue``: every task of a GUE-layout folder fine-tuned and scored, beside published results.

A task is a folder holding ``train.csv`` and ``dev.csv`` (and ``test.csv`` when given: it is then
scored with the epoch that was best on dev). Each task runs ``dnalm.eval.finetune`` with the same model
and recipe over the same seeds; ``gue.json``, ``gue.md`` and ``gue.png`` hold mean ± std of MCC per
task, beside the published test MCC below where the task has one.
"""

from __future__ import annotations

import json
from pathlib import Path

from dnalm.utils.errors import DnalmError
from dnalm.utils.files import write_atomic

# Test MCC × 100 on GUE, from the DNABERT-2 paper (Zhou et al. 2023, arXiv:2306.15006, GUE tables).
PUBLISHED = {
    "prom_core_all": {"DNABERT (3-mer)": 70.9, "NT-2500M-multi": 70.3, "DNABERT-2": 69.4},
    "prom_core_notata": {"NT-2500M-multi": 71.6},
    "prom_core_tata": {"DNABERT-2 (further pretrained)": 76.2},
    "prom_300_tata": {"NT-2500M-multi": 79.4, "DNABERT-2": 71.6},
    "tf0": {"DNABERT-2": 72.0},
}
SOURCE = "Zhou et al. 2023, DNABERT-2 (arXiv:2306.15006), GUE test MCC"


class GueError(DnalmError):
    """A GUE folder or task list that cannot be evaluated, with the folder named."""


def find_tasks(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GueError(f"{folder}: no such folder of GUE tasks")
    tasks = sorted(p for p in folder.iterdir() if (p / "train.csv").is_file())
    if names:
        known = {p.name: p for p in tasks}
        missing = [n for n in names if n not in known]
        if missing:
            raise GueError(
                f"{folder}: no task {missing[0]!r} (a folder with train.csv and dev.csv); have "
                f"{', '.join(known) or 'none'}"
            )
        tasks = [known[n] for n in names]
    if not tasks:
        if (Path(folder) / "train.csv").is_file():  # a task folder given as the suite
            raise GueError(
                f"{folder}: is itself a task; give the folder holding it with --tasks {Path(folder).name} "
                f"(`dnalm eval gue {Path(folder).parent} --tasks {Path(folder).name}`)"
            )
        raise GueError(f"{folder}: no task folders (each needs train.csv and dev.csv)")
    for task in tasks:
        if not (task / "dev.csv").is_file():
            raise GueError(f"{task}: has train.csv but no dev.csv")
    return tasks


def run(folder, out, *, tasks: list[str] | None = None, seeds: int = 3, **finetune_settings) -> dict:
    """``finetune_settings``: what ``dnalm.eval.finetune.finetune`` takes besides the paths and seeds."""
    from dnalm.eval.finetune import finetune

    out = Path(out)
    rows = []
    for task in find_tasks(folder, tasks):
        test = task / "test.csv"
        result = finetune(
            task / "train.csv",
            task / "dev.csv",
            out / task.name,
            test_path=test if test.is_file() else None,
            seeds=seeds,
            **finetune_settings,
        )
        rows.append(
            {
                "task": task.name,
                "train_rows": result["train_rows"],
                "seconds": result["seconds"],
                **{
                    f"{split}_mcc": result["summary"][split]["mcc"]
                    for split in ("dev", "test")
                    if split in result["summary"]
                },
                "published_test_mcc": PUBLISHED.get(task.name, {}),
            }
        )
        settings = result["settings"] | {
            "model": result["model"],
            "arch": result["arch"],
            "pretrained": result["pretrained"],
            "tokenizer": result["tokenizer"],
        }
    report = {"folder": str(folder), "settings": settings, "published_source": SOURCE, "tasks": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gue.json", json.dumps(report, indent=1))
    write_atomic(out / "gue.md", table(report))
    _plot(report, out / "gue.png")
    return report


def table(report: dict) -> str:
    def cell(value) -> str:
        return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}" if value else "—"

    lines = [
        f"GUE, MCC × 100, mean ± std over seeds {report['settings']['seeds']}; published: {report['published_source']}",
        "",
        "| task | train rows | dev | test | published test |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["tasks"]:
        published = ", ".join(f"{name} {mcc}" for name, mcc in row["published_test_mcc"].items()) or "—"
        lines.append(
            f"| {row['task']} | {row['train_rows']} | {cell(row.get('dev_mcc'))} | {cell(row.get('test_mcc'))} | "
            f"{published} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import numpy as np

    from dnalm.utils.plots import pyplot

    plt = pyplot()
    rows = report["tasks"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows)), 3.5))
    ax.bar(
        x - 0.2,
        [100 * r["dev_mcc"]["mean"] for r in rows],
        0.4,
        yerr=[100 * r["dev_mcc"]["std"] for r in rows],
        label="ours, dev",
        color="tab:blue",
    )
    best = [max(r["published_test_mcc"].values(), default=np.nan) for r in rows]
    ax.bar(x + 0.2, best, 0.4, label="best published, test", color="tab:gray")
    ax.set_xticks(x, [r["task"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("MCC × 100")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
