"""``dnalm bench leakage``: how much of GUE a chr20 prep's training split holds, and what the check costs.

1. ``--genome`` (chr20) prepared once into ``--work`` (nucleotide windows of ``--seq-len``, prep's default split);
2. ``dnalm data leakage`` of every GUE task folder under ``--gue`` (each split present) against its training split,
   in one pass: per file, the sequences sharing a 32-mer and those held whole; its wall and CPU time, training
   bases/s, the evaluation index's memory and the process's peak RSS;
3. exclusion: ``--genome`` prepared again with ``--exclude``, twice: the evaluation splits (every CSV but
   ``train.csv``), then every file; each timed against the plain prep (when that ran in the same invocation), its
   windows dropped counted, and checked again (nothing shared may be left);
4. scale: ``--copies`` rotated copies of chr20 in one FASTA (``bench scale``'s GRCh38-sized corpus, smaller),
   prepared likewise and checked with 1 and ``--jobs`` processes; the time for GRCh38 (3.1 Gb) is extrapolated
   from its bases/s, and says so.

Each check runs as ``python -m dnalm data leakage`` in a fresh process (its peak RSS is its own); CPU seconds are
the process's and its workers', taken beside the wall time because these machines are shared (the load average
before and after each run is in the JSON).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dnalm.bench import report

GRCH38_BASES = 3_100_000_000


def prepared(genome: Path, folder: Path, seq_len: int, jobs: int, exclude: list[str] | None = None) -> dict:
    """``genome`` prepared into ``folder``; reused when its manifest is there, except with ``exclude`` (whose cost is
    measured)."""
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm.data.manifest import Manifest

    started = time.perf_counter()
    if exclude and folder.exists():
        shutil.rmtree(folder)
    reused = (folder / "manifest.json").exists()
    if not reused:
        config = PrepConfig(genomes=[str(genome)], tokenizers=["nucleotide"], seq_len=seq_len, exclude=exclude or [])
        prep(config, folder, jobs=jobs)
    manifest = Manifest.load(folder)
    return {
        "genome": str(genome),
        "folder": str(folder),
        "seq_len": seq_len,
        "genome_bases": manifest.accounting.genome_bases,
        "train_samples": manifest.splits["train"].num_samples,
        "prep_seconds": None if reused else round(time.perf_counter() - started, 1),  # None: an earlier run's prep
        **({"exclusion": manifest.exclusion.model_dump(exclude={"files"})} if manifest.exclusion else {}),
    }


def leakage_run(folder: Path, gue: Path, jobs: int, out: Path) -> dict:
    """``dnalm data leakage FOLDER --eval GUE`` in a fresh process: its report, wall and CPU seconds, load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    command = [sys.executable, "-m", "dnalm", "data", "leakage", str(folder), "--eval", str(gue)]
    command += ["--jobs", str(jobs), "--examples", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.read_text())
    perf = result["performance"]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "command": f"dnalm data leakage PREP --eval GUE --jobs {jobs}",
        "jobs": jobs,
        "train_bases": result["training"]["bases_scanned"],
        "train_windows": result["training"]["windows_scanned"],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "index_seconds": perf["index_seconds"],
        "index_cpu_seconds": perf["index_cpu_seconds"],
        "scan_seconds": perf["scan_seconds"],
        "scan_cpu_seconds": perf["scan_cpu_seconds"],
        "train_bases_per_s": perf["bases_per_second"],
        "train_bases_per_cpu_s": perf["bases_per_cpu_second"],
        "eval_distinct_kmers": perf["eval_distinct_kmers"],
        "eval_index_mb": perf["eval_index_mb"],
        "eval_kmer_set_mb": perf["eval_kmer_set_mb"],
        "peak_rss_mb": perf["peak_rss_mb"],
        "load_average_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
        "report": result,
    }


def run(
    genome: Path,
    gue: Path,
    work: Path,
    out_dir: Path,
    *,
    copies: int = 5,
    jobs: int = 2,
    seq_len: int = 1024,
    exclude: bool = True,
) -> dict:
    from dnalm.bench.scale import grch38_sized

    work.mkdir(parents=True, exist_ok=True)
    chr20 = prepared(genome, work / "chr20", seq_len, jobs)
    base = leakage_run(work / "chr20", gue, 1, work / "chr20-leakage.json")
    runs = [{"corpus": Path(genome).name, **{k: v for k, v in base.items() if k != "report"}}]
    corpora = {"chr20": chr20}
    if exclude:  # the evaluation splits kept out (dev, test), then every file (the training splits too)
        every = sorted(Path(gue).rglob("*.csv"))
        for name, files in (("eval_splits", [p for p in every if p.stem != "train"]), ("all_files", every)):
            folder = work / f"chr20-excluded-{name}"
            done = prepared(genome, folder, seq_len, jobs, exclude=[str(p) for p in files])
            again = leakage_run(folder, gue, 1, work / f"chr20-excluded-{name}-leakage.json")
            done |= {"excluded_files": [f"{p.parent.name}/{p.name}" for p in files]}
            done["shared_after"] = {e["name"]: e["shared"] for e in again["report"]["evaluation"]}
            corpora[f"chr20_excluded_{name}"] = done
    if copies:
        fasta = grch38_sized(Path(genome), work / f"chr20x{copies}.fa", copies=copies)
        corpora["scaled"] = prepared(fasta, work / f"chr20x{copies}", seq_len, jobs)
        for j in sorted({1, jobs}):
            measured = leakage_run(work / f"chr20x{copies}", gue, j, work / f"chr20x{copies}-leakage-j{j}.json")
            runs.append({"corpus": f"{copies} rotated copies of {Path(genome).name}", **measured})
            runs[-1].pop("report")
    largest = runs[-1] if copies else runs[0]
    one_job = next(r for r in reversed(runs) if r["jobs"] == 1)
    extrapolation = {
        "bases": GRCH38_BASES,
        "from": f"{largest['corpus']} ({largest['train_bases']:,} training bases)",
        "minutes_1_job": round((one_job["index_seconds"] + GRCH38_BASES / one_job["train_bases_per_s"]) / 60, 1),
        f"minutes_{largest['jobs']}_jobs": round(
            (largest["index_seconds"] + GRCH38_BASES / largest["train_bases_per_s"]) / 60, 1
        ),
        "cpu_minutes": round((one_job["index_cpu_seconds"] + GRCH38_BASES / one_job["train_bases_per_cpu_s"]) / 60, 1),
        "eval_index_mb": largest["eval_index_mb"],
        "note": "extrapolated linearly in training bases from the largest corpus measured here, not run at 3.1 Gb; "
        "the evaluation index's memory does not grow with the genome (one contig's windows are held at a time)",
    }
    tasks = [
        {k: e[k] for k in ("name", "sequences", "shared", "shared_fraction", "contained", "contained_fraction")}
        | {"kmer_fraction": round(e["kmer_fraction"], 4), "examples": e["examples"]}
        for e in base["report"]["evaluation"]
    ]
    result = {
        "benchmark": "leakage",
        "command": f"dnalm bench leakage --copies {copies} --jobs {jobs} --seq-len {seq_len}"
        + ("" if exclude else " --no-exclude"),
        "machine": report.machine(),
        "k": base["report"]["k"],
        "gue": str(gue),
        "corpora": corpora,
        "tasks": tasks,
        "runs": runs,
        "extrapolation": extrapolation,
    }
    report.write(result, out_dir, "leakage")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    import numpy as np

    from dnalm.utils.plots import pyplot

    plt = pyplot()
    excluded = {k: v for k, v in result["corpora"].items() if "exclusion" in v}
    fig, axes = plt.subplots(
        1,
        3 if excluded else 2,
        figsize=(16 if excluded else 12, 4),
        gridspec_kw={"width_ratios": [3, 2, 1.3][: 3 if excluded else 2]},
    )
    fig.subplots_adjust(wspace=0.45)
    left, right = axes[0], axes[1]
    tasks = result["tasks"]
    x = np.arange(len(tasks))
    left.bar(x - 0.2, [100 * t["shared_fraction"] for t in tasks], 0.4, label="share a 32-mer", color="#3b7dd8")
    left.bar(x + 0.2, [100 * t["contained_fraction"] for t in tasks], 0.4, label="held whole", color="#d83b3b")
    left.set_xticks(x, [t["name"] for t in tasks], rotation=35, ha="right", fontsize=7)
    left.set_ylabel(f"% of sequences in the training split of {Path(result['corpora']['chr20']['genome']).name}")
    left.legend(fontsize=8)
    runs = result["runs"]
    labels = [f"{r['corpus'][:24]}\n{r['train_bases'] / 1e6:.0f} Mb, {r['jobs']} job(s)" for r in runs]
    y = np.arange(len(runs))
    right.barh(y - 0.2, [r["train_bases_per_s"] / 1e6 for r in runs], 0.4, label="wall clock", color="#3b7dd8")
    right.barh(y + 0.2, [r["train_bases_per_cpu_s"] / 1e6 for r in runs], 0.4, label="per CPU second", color="#999")
    right.set_yticks(y, labels, fontsize=7)
    right.set_xlabel("training Mbases/s scanned")
    ext = result["extrapolation"]
    right.set_title(
        f"GRCh38 (3.1 Gb), extrapolated: {ext['minutes_1_job']} min (1 job, this machine), {ext['cpu_minutes']} "
        f"CPU-min; evaluation index {ext['eval_index_mb']:.0f} MB",
        fontsize=7,
    )
    right.legend(fontsize=8)
    if excluded:
        plain = result["corpora"]["chr20"]["train_samples"]
        names = ["plain", *(k.removeprefix("chr20_excluded_").replace("_", " ") for k in excluded)]
        kept = [plain, *(v["train_samples"] for v in excluded.values())]
        axes[2].bar(np.arange(len(kept)), [100 * n / plain for n in kept], color=["#3b7dd8", "#d8a03b", "#d83b3b"])
        axes[2].set_xticks(np.arange(len(kept)), names, fontsize=7)
        axes[2].set_ylabel("% of training windows kept by prep --exclude", fontsize=8)
    fig.suptitle(
        f"dnalm bench leakage — {result['machine']['cpu']}, {result['machine']['cores_available']} cores, "
        f"{result['machine']['date']}",
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "leakage")
