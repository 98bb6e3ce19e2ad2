"""``dnalm bench universal``: how long a world-size change's conversion takes, and how much host memory it needs.

A checkpoint of ``--model`` (default decoder-medium, ZeRO-3 as the decoder-1.5b recipe trains) is written by one
step of 2-process training on the bundled genome, or ``--checkpoint`` names one. It is then converted to DeepSpeed's
universal form with each worker count (``checkpoint.convert_universal``), timing the conversion and sampling the
resident memory of the converter and its workers. Seconds and memory per GB of checkpoint extrapolate to a larger
model linearly; the JSON says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from dnalm.bench.report import machine, save_plot, write
from dnalm.train import checkpoint as ckpt
from dnalm.train.universal import convert_universal


def write_checkpoint(model: str, scratch: Path, processes: int = 2) -> Path:
    """One training step of ``model`` under ZeRO-3 on ``processes`` CPU ranks; the checkpoint folder it saved."""
    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm import genome
    from dnalm.train.spawn import spawn_training

    data = scratch / "ecoli128"
    prep(PrepConfig(genomes=[str(genome.DEFAULT_GENOME)], tokenizers=["nucleotide"], seq_len=128), data)
    run_dir = scratch / "run"
    config = {
        "run_dir": str(run_dir),
        "model": {"name": model},
        "data": {"path": str(data), "num_workers": 0},
        "batch": {"micro_batch": 1, "global_batch": processes},
        "budget": {"steps": 1},
        "eval": {"interval": 10**6},
        "checkpoint": {"interval": 1, "keep_last": 1},
        "logging": {"wandb": "disabled"},
        "deepspeed": "zero3",
        "precision": "fp32",
    }
    spawn_training(config, scratch / "config.yaml", processes, scratch / "train.log")
    return ckpt.complete_checkpoints(run_dir)[-1]


class _PeakResident:
    """The largest summed resident memory of this process's descendants (the converter and its workers)."""

    def __init__(self, every_s: float = 0.05):
        self.peak, self._every, self._done = 0, every_s, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.wait(self._every):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def measure(checkpoint: Path, workers: int) -> dict:
    shutil.rmtree(checkpoint / ckpt.UNIVERSAL_TAG, ignore_errors=True)
    started = time.perf_counter()
    with _PeakResident() as memory:
        convert_universal(checkpoint, workers)
    return {
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_resident_gb": round(memory.peak / 1e9, 3),
    }


def run(
    out_dir: Path,
    model: str = "decoder-medium",
    workers: tuple[int, ...] = (1, 2),
    checkpoint: Path | None = None,
    repeats: int = 2,
) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="dnalm-bench-universal-"))
    try:
        if checkpoint is None:
            checkpoint = write_checkpoint(model, scratch)
        meta = ckpt.read_meta(checkpoint)
        state_bytes = sum(f.stat().st_size for f in (checkpoint / ckpt.TAG).rglob("*") if f.is_file())
        largest = max(f.stat().st_size for f in (checkpoint / ckpt.TAG).glob("*optim_states.pt"))
        parameters = _parameters(meta)
        stage = 3 if any((checkpoint / ckpt.TAG).glob("zero_pp_rank_*_model_states.pt")) else "1/2"
        tries = [measure(checkpoint, n) for _ in range(repeats) for n in workers]  # alternated: drift hits all alike
        rows = [
            min((t for t in tries if t["workers"] == n), key=lambda t: t["seconds"])
            | {"all_seconds": [t["seconds"] for t in tries if t["workers"] == n]}
            for n in workers
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scale = _parameters({"model": _named("decoder-1.5b")}) / parameters
    result = {
        "benchmark": "universal",
        "command": f"dnalm bench universal --model {model} --workers {','.join(map(str, workers))} --repeats {repeats}",
        "machine": machine(),
        "model": meta["model"].get("name", model),
        "parameters": parameters,
        "zero_stage": stage,
        "world_size": meta["world_size"],
        "checkpoint_gb": round(state_bytes / 1e9, 3),
        "largest_rank_file_gb": round(largest / 1e9, 3),
        "rows": rows,
        "decoder_1_5b_extrapolated": [
            {
                "workers": r["workers"],
                "seconds": round(r["seconds"] * scale),
                "peak_resident_gb": round(r["peak_resident_gb"] * scale, 1),
            }
            for r in rows
        ],
        "repeats": repeats,
        "note": f"the fastest of {repeats} alternated conversions per worker count; decoder-1.5b figures scale this "
        "run's by its parameter count ({scale:.2f}x): linear in the "
        "checkpoint's bytes, on the same disk and cores, at the same world size; more ranks write smaller "
        "files, which more workers then convert in parallel",
    }
    write(result, out_dir, "universal")
    _plot(result, out_dir)
    return result


def _named(name: str) -> dict:
    from dnalm.models import get_config

    return get_config(name).model_dump()


def _plot(result: dict, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [str(r["workers"]) for r in result["rows"]]
    left.bar(labels, [r["seconds"] for r in result["rows"]])
    left.set(xlabel="workers", ylabel="seconds", title="conversion time")
    right.bar(labels, [r["peak_resident_gb"] for r in result["rows"]])
    right.set(xlabel="workers", ylabel="GB", title="peak resident memory")
    figure.suptitle(
        f"universal conversion of {result['model']} ({result['checkpoint_gb']} GB, ZeRO-"
        f"{result['zero_stage']}, {result['world_size']} ranks) on {result['machine']['cpu']}",
        fontsize=9,
    )
    figure.tight_layout()
    return save_plot(figure, out_dir, "universal")


def _parameters(meta: dict) -> int:
    from dnalm.models import ModelConfig, build_model, count_parameters

    return count_parameters(build_model(ModelConfig(**meta["model"]), device="meta"))


def summary(result: dict) -> str:
    return json.dumps(
        {"rows": result["rows"], "decoder_1_5b_extrapolated": result["decoder_1_5b_extrapolated"]}, indent=1
    )
