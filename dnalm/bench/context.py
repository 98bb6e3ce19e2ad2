"""``dnalm bench context``: training-step throughput and peak memory by window length, in one process and per rank
of a sequence-parallel group (S = 2, 4 processes on the device asked for).

Each series (a model, a backend, S) is one launch of S processes (``torchrun``); every rank runs the memory-lean
step (activation checkpointing, MLP tiles, chunked head and loss) on its 1/S slice of the same window of real
sequence (the bundled E. coli genome, nucleotide tokens), with attention exchanged all-to-all (Ulysses), forward and
backward, and reports its seconds (the best of 3 steps up to 8k tokens, one step beyond) and its peak memory
above what it held before the step. A window's throughput is
its length over the slowest rank's step time. Gradient reduction across ranks (data parallelism) is not part of
the step measured here; `dnalm bench train` and the trainer's metrics measure whole steps.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from dnalm.bench import report

# (label, model, overrides): the field's default backends, and Performer where dense attention cannot reach
SERIES = {
    "decoder-small sdpa": ("decoder-small", {}),
    "encoder-small sdpa (ALiBi)": ("encoder-small", {}),
    "decoder-small performer": ("decoder-small", {"attention": "performer"}),
}
WARMUP = 1024
REPEATS, REPEAT_UP_TO = 3, 8192  # steps up to this length are timed 3 times (the fastest kept), longer ones once
# MLP tiles of 1,024 positions: a tile's (tile, 4·d) activations are held per rank whatever S is; measured on this
# CPU, tiles of 4,096 took decoder-small's 8k step from 241 to 316 MB (S = 1) and 141 to 212 MB (S = 2) at one speed
LEAN = dict(activation_checkpointing=True, mlp_tile=1024, loss_chunk=4096)


def window(length: int) -> torch.Tensor:
    """(1, length) nucleotide ids of the bundled genome's first ``length`` bases (4.6 Mb: up to 4M tokens)."""
    from dnalm import genome
    from dnalm.tokenizers import load

    bases = genome.read(genome.DEFAULT_GENOME).contigs[0].sequence[:length]
    if len(bases) < length:
        raise ValueError(f"the bundled genome has {len(bases):,} bases, fewer than a window of {length:,}")
    return torch.from_numpy(load("nucleotide").encode(bases).ids.astype("int64"))[None]


def worker(model_name: str, overrides: dict, lengths: list[int], device_name: str) -> None:
    """One rank of a series (launched by ``run``): a JSON line per length on rank 0, with every rank's numbers."""
    import torch.distributed as dist

    from dnalm.data.masking import mlm_batch, next_token_labels, view_ranges
    from dnalm.models import build_model, get_config
    from dnalm.train import sequence_parallel
    from dnalm.utils.devices import move, resolve, synchronize, training_dtype
    from dnalm.utils.memory import added_peak_mb

    device = resolve(device_name)  # cuda: this rank's LOCAL_RANK GPU, bound before the group starts
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    for length in [WARMUP, *lengths]:  # the first step pays one-time allocations and kernel set-up: not reported
        config = get_config(model_name, vocab_size=16, max_seq_len=length, **LEAN, **overrides)
        sequence_parallel.check(size, size, config, length)
        model = build_model(config).to(device, training_dtype(device)).train()
        if size > 1:
            sequence_parallel.wrap_attention(model, dist.group.WORLD)
        ids = window(length)
        if config.causal:
            inputs: dict = {"input_ids": ids, "labels": next_token_labels(ids), "attention_mask": None}
        else:
            import numpy as np

            spans = torch.stack([torch.arange(length), torch.arange(1, length + 1)], -1)[None]
            inputs = mlm_batch({"input_ids": ids, "spans": spans}, view_ranges([16]), np.random.default_rng(0))
        inputs = move(sequence_parallel.shard(inputs, rank, size) if size > 1 else inputs, device)
        targets = max(1, int((inputs["labels"] != -100).sum()))

        def step(model=model, inputs=inputs):
            out = model(inputs["input_ids"], positions=inputs.get("positions"), labels=inputs["labels"])
            (out.loss_sum / targets).backward()
            synchronize(device)

        seconds, peak = math.inf, 0.0
        for _ in range(REPEATS if length <= REPEAT_UP_TO else 1):  # short steps are noisy on a shared machine: the best
            dist.barrier()
            started = time.perf_counter()
            peak = max(peak, added_peak_mb(device, step)[0])
            seconds = min(seconds, time.perf_counter() - started)
            model.zero_grad(set_to_none=True)
        gathered: list[dict] = [{}] * size  # all_gather_object replaces every slot
        dist.all_gather_object(gathered, {"seconds": seconds, "peak_mb": peak})
        if rank == 0 and length in lengths:
            slowest = max(r["seconds"] for r in gathered)
            print(
                json.dumps(
                    {
                        "length": length,
                        "ranks": gathered,
                        "seconds": slowest,
                        "tokens_per_s": length / slowest,
                        "peak_mb_per_rank": max(r["peak_mb"] for r in gathered),
                    }
                ),
                flush=True,
            )
        del model, inputs
    dist.destroy_process_group()


def _launch(model_name: str, overrides: dict, lengths: list[int], size: int, device: str, threads: int) -> list[dict]:
    from dnalm.train.spawn import free_port

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(size),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "dnalm.bench.context",
        "--worker",
        model_name,
        json.dumps(overrides),
        ",".join(map(str, lengths)),
        device,
    ]
    # freed tensors go back to the system, so a rank's resident high-water mark measures its step (bench.memory)
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return [{"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run(
    out_dir: Path,
    lengths: tuple[int, ...],
    sizes: tuple[int, ...],
    device: str = "auto",
    long_lengths: tuple[int, ...] = (),
    series: list[str] | None = None,
) -> dict:
    """Each series (all, or those named) at ``lengths`` for each S in ``sizes`` (S = 1 included), Performer also at
    ``long_lengths``."""
    from dnalm.utils.devices import resolve

    target = resolve(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    result = report.header("context", "dnalm bench context", target) | {
        "what": __doc__.strip().split("\n\n")[1].replace("\n", " "),
        "lean": LEAN,
        "series": {},
    }
    for label, (model_name, overrides) in SERIES.items():
        if series and label not in series:
            continue
        series_lengths = sorted(
            set(lengths) | (set(long_lengths) if overrides.get("attention") == "performer" else set())
        )
        for size in sorted({1, *sizes}):
            from dnalm.models import get_config

            if get_config(model_name).n_heads % size:
                result["series"][f"{label}, S={size}"] = {
                    "skipped": f"{get_config(model_name).n_heads} heads do not split over {size} ranks"
                }
                continue
            threads = max(1, cores // size) if target.type == "cpu" else 1
            points = _launch(model_name, overrides, series_lengths, size, device, threads)
            result["series"][f"{label}, S={size}"] = {
                "model": model_name,
                "overrides": overrides,
                "sequence_parallel": size,
                "threads_per_rank": threads,
                "points": points,
            }
            print(f"{label} S={size}: {points}", file=sys.stderr, flush=True)
    result["findings"] = findings(result)
    report.write(result, out_dir, "context")
    plot(result, out_dir)
    return result


def _points(result: dict, key: str) -> dict[int, dict]:
    return {p["length"]: p for p in result["series"].get(key, {}).get("points", []) if "length" in p}


def findings(result: dict) -> dict:
    """The issue's goals, as ratios measured in this run."""
    out = {}
    for label in SERIES:
        one = _points(result, f"{label}, S=1")
        base = min(one) if one else None
        per_token = {n: p["seconds"] / n for n, p in one.items()}
        if base:
            out[f"{label}: time per token ÷ at {base}"] = {
                n: round(per_token[n] / per_token[base], 2) for n in sorted(one)
            }
        two = _points(result, f"{label}, S=2")
        for n in sorted(set(one) & set(two)):
            out.setdefault(f"{label}: S=2 ÷ S=1 at each length", {})[n] = {
                "peak_memory_per_rank": round(two[n]["peak_mb_per_rank"] / one[n]["peak_mb_per_rank"], 2),
                "throughput": round(two[n]["tokens_per_s"] / one[n]["tokens_per_s"], 2),
            }
    return out


def plot(result: dict, out_dir: Path) -> Path:
    from dnalm.utils.plots import pyplot

    plt = pyplot()

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, series in result["series"].items():
        points = [p for p in series.get("points", []) if "length" in p]
        if not points:
            continue
        lengths = [p["length"] for p in points]
        speed.plot(lengths, [p["tokens_per_s"] for p in points], marker="o", label=key)
        memory.plot(lengths, [p["peak_mb_per_rank"] for p in points], marker="o", label=key)
    for axis, title in ((speed, "tokens/s of one window (slowest rank)"), (memory, "peak memory per rank (MB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("window length (tokens)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    speed.legend(fontsize=7)
    figure.suptitle(
        f"Long-context training step, lean (checkpointing, tiles, chunked loss): {report.device_label(result)}"
    )
    return report.save_plot(figure, out_dir, "context")


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    name, overrides, lengths, device = sys.argv[2:6]
    worker(name, json.loads(overrides), [int(x) for x in lengths.split(",")], device)
    from dnalm.train.distributed import exit_without_teardown

    exit_without_teardown()
