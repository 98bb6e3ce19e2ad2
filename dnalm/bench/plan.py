"""Checks ``dnalm plan`` against measured peaks: ``python -m dnalm.bench.plan [--out docs/benchmarks]``.

Each configuration is a real ``dnalm train`` run on the bundled E. coli genome, launched like any other
(``torchrun``, 2 processes on CPU, gloo, DeepSpeed with ``DS_ACCELERATOR=cpu``): every rank builds the trainer,
takes 3 optimizer steps and reports its resident high-water mark (``VmHWM``) above what it held just before the
trainer was built. A small trainer built and stepped first puts what a process loads once (modules, libraries,
DeepSpeed's and gloo's state) into that baseline. Freed tensors go back to the system (``MALLOC_MMAP_THRESHOLD_``),
so the mark follows live tensors as the CUDA allocator's count does. ``dnalm.train.plan`` predicts the same
configuration on ``--gpu cpu`` (fp32): its tensors at the peak against the larger rank's measured peak.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from dnalm.bench import report

REPO = Path(__file__).resolve().parents[2]


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (0 where the kernel does not give it)."""
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def worker(config_path: str, overrides: list[str], steps: int) -> None:
    """One rank: build the trainer, take ``steps`` steps, print (rank 0) every rank's peaks above the start, MiB."""
    import gc

    import torch.distributed as dist

    from dnalm.train.config import load_config
    from dnalm.train.distributed import init_distributed, release_shared_memory
    from dnalm.train.trainer import Trainer

    config = load_config(config_path, overrides)
    init_distributed(config.robust.collective_timeout_s)
    # a small run first, so that what the trainer loads once (modules, libraries, DeepSpeed's and gloo's state) is
    # in the baseline and not counted as the configuration's memory
    groups = dist.get_world_size() // config.parallel.sequence
    warm = load_config(
        config_path,
        [
            *overrides,
            f"run_dir={config.run_dir}-warmup",
            "batch.micro_batch=1",
            f"batch.global_batch={groups}",
            "model.overrides.d_model=64",
            "model.overrides.n_layers=1",
            "model.overrides.n_heads=4",
        ],
    )
    small = Trainer(warm, resume="auto")
    small.train_step(iter(small.loader))
    del small
    dist.barrier()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current size
    start = _status_kb("VmRSS")
    before = {f: _status_kb(f) for f in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
    trainer = Trainer(config, resume="auto")
    built = _status_kb("VmHWM") - start
    after = {f: _status_kb(f) for f in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
    batches, per_step = iter(trainer.loader), []
    for _ in range(steps):
        trainer.train_step(batches)
        per_step.append(_status_kb("VmHWM") - start)
    mine = {
        "built_mib": round(built / 1024, 1),
        "steps_mib": [round(kb / 1024, 1) for kb in per_step],
        "start_mib": round(start / 1024, 1),
        "after_build": after,
        "before": before,
        "end": {f: _status_kb(f) for f in ("VmRSS", "RssAnon", "RssFile", "RssShmem")},
    }
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        print(json.dumps({"ranks": gathered}), flush=True)
    release_shared_memory()
    dist.destroy_process_group()


# (label, base config, data (tokenizer, window), overrides): encoder and decoder, ZeRO-2 and 3, plain and lean,
# S = 1 and 2, and decoder-medium (303M parameters) where the model states and the optimizer step dominate
LEAN = ["activation_checkpointing=true", "model.overrides.mlp_tile=512", "model.overrides.loss_chunk=512"]
CONFIGS = [
    (
        "decoder-small, ZeRO-2, plain, S=1",
        "decoder-small-ecoli.yaml",
        ("nucleotide", 1024),
        ["deepspeed=zero2", "batch.micro_batch=4", "batch.global_batch=8"],
    ),
    (
        "decoder-small, ZeRO-3, lean, S=2",
        "decoder-small-ecoli.yaml",
        ("kmer:6", 4096),
        ["deepspeed=zero3", "parallel.sequence=2", "batch.micro_batch=2", "batch.global_batch=2", *LEAN],
    ),
    (
        "encoder-small, ZeRO-3, plain, S=1",
        "encoder-small-ecoli.yaml",
        ("kmer:6", 1024),
        ["deepspeed=zero3", "batch.micro_batch=4", "batch.global_batch=8"],
    ),
    (
        "encoder-small, ZeRO-2, lean, S=2",
        "encoder-small-ecoli.yaml",
        ("nucleotide", 4096),
        ["deepspeed=zero2", "parallel.sequence=2", "batch.micro_batch=2", "batch.global_batch=2", *LEAN],
    ),
    (
        "decoder-small, ZeRO-2, recomputation, S=1",
        "decoder-small-ecoli.yaml",
        ("nucleotide", 4096),
        ["deepspeed=zero2", "activation_checkpointing=true", "batch.micro_batch=2", "batch.global_batch=4"],
    ),
    (
        "decoder-medium, ZeRO-3, plain, S=1",
        "decoder-small-ecoli.yaml",
        ("nucleotide", 256),
        ["model.name=decoder-medium", "deepspeed=zero3", "batch.micro_batch=1", "batch.global_batch=2"],
    ),
    (
        "decoder-medium, ZeRO-2, plain, S=1",
        "decoder-small-ecoli.yaml",
        ("nucleotide", 256),
        ["model.name=decoder-medium", "deepspeed=zero2", "batch.micro_batch=1", "batch.global_batch=2"],
    ),
]
PROCESSES, STEPS = 2, 3
GOAL = 0.15  # the issue's: predicted peak within 15% of the measured one


def prepared(work: Path, tokenizer: str, seq_len: int) -> Path:
    """The bundled genome prepared for ``tokenizer`` and ``seq_len`` under ``work`` (reused when there)."""
    folder = work / f"ecoli-{tokenizer.replace(':', '')}-{seq_len}"
    if not (folder / "manifest.json").is_file():
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dnalm",
                "prep",
                "--out",
                str(folder),
                "--seq-len",
                str(seq_len),
                "--tokenizers",
                tokenizer,
                "--jobs",
                "2",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"prep {folder}: {done.stderr.strip()}")
    return folder


def measure(config: Path, overrides: list[str], processes: int = PROCESSES, steps: int = STEPS) -> dict:
    """Launch ``processes`` ranks of one configuration (torchrun; one process alone without it); every rank's
    numbers (or the error)."""
    from dnalm.train.spawn import free_port

    worker_args = ["-m", "dnalm.bench.plan", "--worker", str(config), json.dumps(overrides), str(steps)]
    launcher = (
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
        if processes > 1
        else []
    )
    command = [sys.executable, *launcher, *worker_args]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ | {
        "OMP_NUM_THREADS": str(max(1, cores // processes)),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "DS_ACCELERATOR": "cpu",
    }
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        errors = [line.strip() for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
        return {"error": errors[-1] if errors else f"exit {done.returncode}"}
    return lines[-1] | {"seconds": round(time.perf_counter() - started, 1)}


def predicted(config: Path, overrides: list[str]) -> dict:
    from dnalm.train.config import load_config
    from dnalm.train.plan import make_plan

    return make_plan(load_config(config, overrides), PROCESSES, "cpu")


def run(out_dir: Path, work: Path, only: list[str] | None = None) -> dict:
    from dnalm.utils.devices import describe

    result = {
        "benchmark": "plan",
        "command": "python -m dnalm.bench.plan",
        "machine": report.machine(),
        "device": describe("cpu") | {"threads": 1, "processes": PROCESSES},
        "dtype": "fp32",
        "what": __doc__.strip().split("\n\n")[1].replace("\n", " "),
        "goal": f"within {GOAL:.0%}",
    }
    rows: list[dict] = []
    for label, base, (tokenizer, seq_len), overrides in CONFIGS:
        if only and label not in only:
            continue
        data = prepared(work, tokenizer, seq_len)
        settings = [
            f"run_dir={work / 'runs' / label.replace(', ', '-').replace(' ', '_').replace('=', '')}",
            f"data.path={data}",
            "data.num_workers=0",
            "logging.wandb=disabled",
            f"budget.steps={STEPS}",
            "eval.interval=1000000",
            *overrides,
        ]
        config = REPO / "configs" / "train" / base
        plan = predicted(config, settings)
        measured = measure(config, settings)
        if "error" in measured:  # the machine is shared: a launch that failed is tried once more, and said so
            measured = measure(config, settings) | {"first_attempt": measured["error"]}
        row = {
            "configuration": label,
            "config": f"configs/train/{base}",
            "overrides": overrides,
            "data": {"tokenizer": tokenizer, "seq_len": seq_len},
            "predicted_mib": round(plan["memory"]["tensors_at_peak"] / 2**20, 1),
            "peak_moment": plan["memory"]["peak_moment"],
            "parts_mib": {p["name"]: round(p["bytes"] / 2**20, 1) for p in plan["memory"]["parts"]},
            "moments_mib": {name: round(total / 2**20, 1) for name, total in plan["memory"]["moments"].items()},
            "measured": measured,
        }
        if "ranks" in measured:
            peak = max(max(r["steps_mib"]) for r in measured["ranks"])
            row |= {"measured_mib": peak, "error": round(row["predicted_mib"] / peak - 1, 4)}
            row["within_goal"] = abs(row["error"]) <= GOAL
        rows.append(row)
        print(
            f"{label}: predicted {row['predicted_mib']} MiB, measured {row.get('measured_mib')} "
            f"({row.get('error', measured.get('error'))})",
            file=sys.stderr,
            flush=True,
        )
    result |= {"rows": rows, "h200": h200_check()}
    report.write(result, out_dir, "plan")
    plot(result, out_dir)
    return result


def plot(result: dict, out_dir: Path) -> Path:
    """Predicted against measured peak memory, the CPU configurations and the H200 runs side by side."""
    from dnalm.utils.plots import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rows, label, title in (
        (axes[0], result["rows"], "configuration", "CPU, 2 processes (MiB a rank)"),
        (axes[1], result.get("h200", []), "run", "H200, decoder-1.5b (MiB)"),
    ):
        names = [str(r[label]) for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["predicted_mib"] for r in rows], 0.4, label="predicted")
        ax.bar([i + 0.2 for i in x], [r["measured_mib"] for r in rows], 0.4, label="measured")
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    figure.suptitle("dnalm plan against measured peaks", fontsize=10)
    figure.tight_layout()
    return report.save_plot(figure, out_dir, "plan")


def h200_check() -> list[dict]:
    """The plan of each decoder-1.5b run docs/benchmarks/gpu.json records (one H200, bf16, 2,048 tokens, the
    nucleotide vocabulary of 10), against its recorded peak (the CUDA allocator's high-water mark)."""
    from dnalm.train.config import load_config
    from dnalm.train.plan import GPU_JSON, make_plan

    rows = []
    for run in json.loads(GPU_JSON.read_text())["training"]:
        if run["model"] != "decoder-1.5b" or not run.get("peak_memory_mb"):
            continue
        overrides = [
            "model.name=decoder-1.5b",
            "model.overrides.vocab_size=10",
            f"deepspeed={run['deepspeed']}",
            f"activation_checkpointing={str(run['activation_recomputation']).lower()}",
            f"batch.micro_batch={run['micro_batch']}",
            f"batch.global_batch={run['micro_batch']}",
        ]
        plan = make_plan(
            load_config(REPO / "configs/train/decoder-small-ecoli.yaml", overrides), 1, "h200", seq_len=run["seq_len"]
        )
        mib = plan["memory"]["tensors_at_peak"] / 2**20
        rows.append(
            {
                "run": run["run"],
                "deepspeed": run["deepspeed"],
                "micro_batch": run["micro_batch"],
                "recomputation": run["activation_recomputation"],
                "predicted_mib": round(mib),
                "measured_mib": run["peak_memory_mb"],
                "error": round(mib / run["peak_memory_mb"] - 1, 4),
            }
        )
    return rows


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dnalm.bench.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-plan")
    parser.add_argument("--only", action="append", help="only this configuration (its label; repeatable)")
    args = parser.parse_args(argv)
    result = run(args.out, args.work, args.only)
    print(
        json.dumps(
            [{k: r.get(k) for k in ("configuration", "predicted_mib", "measured_mib", "error")} for r in result["rows"]]
            + result["h200"],
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
        from dnalm.train.distributed import exit_without_teardown

        exit_without_teardown()
    else:
        sys.exit(main())
