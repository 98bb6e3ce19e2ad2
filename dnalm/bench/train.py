"""``dnalm bench train``: model forward+backward tokens/s and model-FLOPs utilisation (MFU).

FLOPs per token = 6·N + 12·L·d·T (``dnalm.train.flops``). ``mfu`` divides the achieved FLOP/s by the
device's nominal dense peak for the precision (``dnalm.train.flops.NOMINAL``: H100, H200, A100), the
field's convention; where the table has no entry (CPUs) by a large matmul in the training dtype timed
on the same device in the same run, and ``mfu_basis`` says which. ``mfu_of_measured_matmul`` is
always beside it. On CUDA decoder-1.5b at 2048 tokens with activation checkpointing is measured too. Each small
model is measured again under ``torch.compile`` (what a training config's ``compile: true`` does),
with the compilation's seconds apart. The JSON names the device it measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dnalm.bench import report
from dnalm.train.flops import SOURCE, device_peak, flops_per_token
from dnalm.utils.devices import resolve, synchronize, training_dtype
from dnalm.utils.memory import allocator_peak_mb

MODELS: tuple[tuple[str, int, int, dict], ...] = (("encoder-small", 8, 1024, {}), ("decoder-small", 4, 1024, {}))
CUDA_MODELS = MODELS + (("decoder-1.5b", 4, 2048, {"activation_checkpointing": True}),)


def matmul_flops(n: int = 4096, repeats: int = 3, device="cpu", dtype=torch.float32) -> float:
    """FLOP/s of the best of ``repeats`` n×n matmuls (n 8192 and 20 repeats on CUDA, where one is ~1 ms)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def step_tokens_per_s(
    model: torch.nn.Module,
    batch: int,
    seq_len: int,
    vocab_size: int,
    steps: int = 3,
    device="cpu",
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """Best forward+backward (cross-entropy on every position), plus ``optimizer``'s step when given, tokens/s over
    ``steps`` after one warm-up; the model is already on ``device`` in its dtype."""
    model.train()
    ids = torch.randint(5, vocab_size, (batch, seq_len), device=device)
    targets = None  # the ids, or as many random classes as the head's outputs (a per-base head)
    best = float("inf")
    for i in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        logits = model(ids).logits
        if targets is None:
            targets = ids if logits.dim() == 3 else torch.randint(0, logits.shape[-1], logits.shape[:-1], device=device)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return batch * seq_len / best


def compiled_tokens_per_s(
    model: torch.nn.Module, batch: int, seq_len: int, vocab_size: int, device
) -> tuple[float, float]:
    """(tokens/s, seconds of the first step) of ``torch.compile(model)``: the first step pays the compilation, from
    a cold cache (inductor's on-disk cache would otherwise hold an earlier run's kernels)."""
    import os
    import tempfile

    torch._dynamo.reset()
    with tempfile.TemporaryDirectory(prefix="dnalm-inductor-") as cache:
        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            # a compiled Module is an OptimizedModule (a Module); torch.compile's annotations say only Callable
            compiled: torch.nn.Module = torch.compile(model)  # type: ignore[assignment]
            ids = torch.randint(5, vocab_size, (batch, seq_len), device=device)
            synchronize(device)
            start = time.perf_counter()
            logits = compiled(ids).logits
            F.cross_entropy(logits.float().view(-1, logits.shape[-1]), ids.view(-1)).backward()
            model.zero_grad(set_to_none=True)
            synchronize(device)
            first = time.perf_counter() - start
            return step_tokens_per_s(compiled, batch, seq_len, vocab_size, device=device), first
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def _mlm_setup(data: Path, model_name: str, micro_batch: int):
    """The trainer's MLM data path over a prepared folder, in one process: (model, next batch's inputs, seq_len).

    ``next_inputs(seed)`` takes the stream's next batch (DataLoader, 1 worker) and masks it as the trainer does.
    """
    import numpy as np

    from dnalm.data.manifest import Manifest
    from dnalm.data.masking import mlm_batch, view_ranges
    from dnalm.data.stream import GenomeStream, StreamLoader
    from dnalm.models import build_model, get_config
    from dnalm.train.setup import data_tokenizer

    manifest = Manifest.load(data)
    torch.manual_seed(0)
    model = build_model(
        get_config(
            model_name, vocab_size=data_tokenizer(data, manifest).vocab_size, max_seq_len=max(1024, manifest.seq_len)
        )
    )
    ranges = view_ranges([t.vocab_size for t in manifest.tokenizers])
    loader = iter(StreamLoader(GenomeStream(data, batch_size=micro_batch, epochs=None), num_workers=1))

    def next_inputs(seed: int) -> dict:
        return mlm_batch(next(loader), ranges, np.random.default_rng(seed))

    return model, next_inputs, manifest.seq_len


def _mlm_loss(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    from dnalm.data.masking import IGNORE

    out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    return out.loss_sum / (inputs["labels"] != IGNORE).sum().clamp(min=1)


def plain_loop_tokens_per_s(data: Path, model_name: str, micro_batch: int, steps: int) -> float:
    """The same data path (stream, masking) and model in a bare single-process PyTorch loop with AdamW."""
    model, next_inputs, _ = _mlm_setup(data, model_name, micro_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, tokens = [], 0
    for step in range(steps + 1):
        start = time.perf_counter()
        inputs = next_inputs(step)
        _mlm_loss(model, inputs).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - start)
            tokens = inputs["tokens"]
    return tokens / float(sorted(times)[len(times) // 2])


def mlm_step_overhead(data: Path, model_name: str, micro_batch: int, steps: int) -> dict:
    """Forward + backward alone on one prepared batch, against the same with the trainer's data path in front
    (the next batch from the stream's DataLoader, masking, the move to the model's device), step after step in
    one process; medians."""
    import numpy as np

    from dnalm.utils.devices import model_device, move

    model, next_inputs, seq_len = _mlm_setup(data, model_name, micro_batch)
    device = model_device(model)

    def step(inputs: dict) -> None:
        _mlm_loss(model, inputs).backward()
        model.zero_grad(set_to_none=True)

    fixed = move(next_inputs(0), device)
    bare, full = [], []
    for i in range(steps + 1):
        start = time.perf_counter()
        step(fixed)
        middle = time.perf_counter()
        step(move(next_inputs(i), device))
        end = time.perf_counter()
        if i:
            bare.append(middle - start)
            full.append(end - middle)
    tokens = micro_batch * seq_len
    bare_rate, full_rate = tokens / float(np.median(bare)), tokens / float(np.median(full))
    return {
        "model": model_name,
        "batch": micro_batch,
        "seq_len": seq_len,
        "forward_backward_tokens_per_s": round(bare_rate, 1),
        "mlm_step_tokens_per_s": round(full_rate, 1),
        "ratio": round(full_rate / bare_rate, 4),
        "what": "mlm step = next stream batch (DataLoader, 1 worker) + masking + move + forward + backward; "
        "forward_backward = the same on one batch prepared beforehand; alternated, medians",
    }


def zero2_tokens_per_s(data: Path, model_name: str, micro_batch: int, steps: int, processes: int = 2) -> float:
    """The trainer under the deepspeed launcher, ZeRO-2 on CPU: median tokens/s over its steps after the first."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from dnalm.train.spawn import free_port

    repo = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="dnalm-bench-zero2-") as run_dir:
        overrides = {
            "run_dir": run_dir,
            "data.path": data,
            "model.name": model_name,
            "budget.steps": steps + 1,
            "batch.micro_batch": micro_batch,
            "batch.global_batch": micro_batch * processes,
            "eval.interval": 10**6,
            "checkpoint.interval": 10**6,
            "logging.interval": 1,
            "logging.wandb": "disabled",
            "deepspeed": "zero2",
            "optim.warmup_steps": 1,
        }
        command = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(processes),
            "--master_port",
            str(free_port()),
            str(repo / "launch" / "train.py"),
            "--config",
            str(repo / "configs" / "train" / "encoder-small-ecoli.yaml"),
            *(f"{k}={v}" for k, v in overrides.items()),
        ]
        env = os.environ | {
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // processes)),
        }
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=repo)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        rates = [
            json.loads(line)["tokens_per_s"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        ][1:]
        # the checkpoint written after the last step is not part of a step's time
        return float(sorted(rates)[len(rates) // 2])


def distribution_cost(out: dict, model_name: str = "encoder-small", micro_batch: int = 8, steps: int = 6) -> dict:
    import shutil
    import tempfile

    from data_prep.jobs import prep
    from data_prep.plan import PrepConfig
    from dnalm import genome
    from dnalm.models import build_model, get_config

    scratch = Path(tempfile.mkdtemp(prefix="dnalm-bench-train-"))
    try:
        data = scratch / "ecoli1024"
        prep(PrepConfig(genomes=[str(genome.DEFAULT_GENOME)], tokenizers=["nucleotide"], seq_len=1024), data)
        plain = plain_loop_tokens_per_s(data, model_name, micro_batch, steps)
        zero2 = zero2_tokens_per_s(data, model_name, micro_batch // 2, steps)
        masking = mlm_step_overhead(data, model_name, micro_batch, steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    config = get_config(model_name, vocab_size=10)
    per_token = flops_per_token(build_model(config), config, 1024)
    peak = out["peak"]["tflops"] * 1e12
    return {
        "model": model_name,
        "seq_len": 1024,
        "global_batch": micro_batch,
        "data": "bundled E. coli, nucleotide, MLM",
        "plain_pytorch_1_process": {"tokens_per_s": round(plain, 1), "mfu": round(plain * per_token / peak, 4)},
        "deepspeed_zero2_2_processes": {
            "tokens_per_s": round(zero2, 1),
            "mfu": round(zero2 * per_token / peak, 4),
            "threads_per_process": max(1, torch.get_num_threads() // 2),
        },
        "ratio_zero2_over_plain": round(zero2 / plain, 3),
        "mlm_step": masking,
        "note": "same cores in both: one process with all threads against two with half each; both include "
        "the stream, masking and the AdamW step",
    }


def run(
    out_dir: Path, models=None, with_distribution: bool = True, device: str = "auto", with_compile: bool = True
) -> dict:
    from dnalm.models import build_model, count_parameters, get_config

    target = resolve(device)
    dtype, on_cuda = training_dtype(target), target.type == "cuda"
    size, repeats = (8192, 20) if on_cuda else (4096, 3)
    peak = matmul_flops(size, repeats, target, dtype)
    nominal = device_peak(target, dtype)
    basis, divisor = (
        (f"nominal {report.dtype_name(dtype)} peak of {nominal[0]}", nominal[1])
        if nominal
        else (f"measured {size}x{size} matmul (no nominal peak for this device)", peak)
    )
    rows = []
    for name, batch, seq_len, changes in models or (CUDA_MODELS if on_cuda else MODELS):
        config = get_config(name, **changes)
        torch.manual_seed(0)
        with target:
            model = build_model(config).to(dtype)
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(target)
        rate = step_tokens_per_s(model, batch, seq_len, config.vocab_size, device=target)
        per_token = flops_per_token(model, config, seq_len)
        peak_mb = allocator_peak_mb(target)
        rows.append(
            {
                "model": name,
                "parameters": count_parameters(model),
                "batch": batch,
                "seq_len": seq_len,
                "attention": config.attention,
                "positions": config.positions,
                **changes,
                "tokens_per_s": round(rate, 1),
                "flops_per_token": per_token,
                "achieved_tflops": round(rate * per_token / 1e12, 4),
                "mfu": round(rate * per_token / divisor, 4),
                "mfu_of_measured_matmul": round(rate * per_token / peak, 4),
                **({"peak_memory_mb": round(peak_mb)} if peak_mb is not None else {}),
            }
        )
        # the training config's `compile` switch, measured on the same model in the same run; decoder-1.5b is
        # measured eager only (its compilation time is unknown)
        if with_compile and (name, batch, seq_len, changes) in MODELS:
            compiled, first = compiled_tokens_per_s(model, batch, seq_len, config.vocab_size, target)
            rows[-1]["compiled"] = {
                "tokens_per_s": round(compiled, 1),
                "over_eager": round(compiled / rate, 3),
                "compile_seconds": round(first - batch * seq_len / rate, 1),
            }
        del model
    result = report.header("train", f"dnalm bench train --device {target.type}", target) | {
        "flop_formula": "6*N + 12*L*d*T per token (N: matmul parameters incl. output head, not the embedding lookup)",
        "peak": {
            "what": f"{size}x{size} {report.dtype_name(dtype)} matmul on this device, best of {repeats}, in this run",
            "tflops": round(peak / 1e12, 4),
            "nominal": {"device": nominal[0], "tflops": nominal[1] / 1e12, "source": SOURCE} if nominal else None,
        },
        "mfu_basis": basis,
        "rows": rows,
    }
    if with_distribution and not on_cuda:  # a 2-process ZeRO-2 run against one process on the same CPU cores
        result["distribution_cost"] = distribution_cost(result)
    report.write(result, out_dir, "train")
    _plot(result, out_dir)
    return result


def _plot(result: dict, out_dir: Path) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["model"] for r in rows]
    left.bar(names, [r["tokens_per_s"] for r in rows], color="#3b7dd8")
    left.set_ylabel("tokens / s (forward+backward)")
    right.bar(names, [100 * r["mfu"] for r in rows], color="#3b7dd8")
    right.set_ylabel("MFU (%, " + ("nominal peak" if result["peak"].get("nominal") else "measured matmul peak") + ")")
    fig.suptitle(
        f"dnalm bench train — {report.device_label(result)}; "
        f"measured matmul peak {result['peak']['tflops'] * 1000:.0f} GFLOP/s",
        fontsize=9,
    )
    report.save_plot(fig, out_dir, "train")
