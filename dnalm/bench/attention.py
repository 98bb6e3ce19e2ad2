"""``dnalm bench attention``: forward+backward time and peak memory of each backend against sequence length.

Every point runs in a fresh process. On CPU (fp32) its peak memory is that process's peak resident
set minus what it held once its inputs were made; on CUDA (bf16) it is the allocator's peak above
the inputs. Points whose quadratic score matrices would not
fit the machine are skipped and say so. performer-pytorch's own non-CUDA causal path is
measured beside ours at the lengths where it finishes in reasonable time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from dnalm.bench import report
from dnalm.devices import peak_memory_mb, resolve, synchronize, training_dtype
from dnalm.memory import peak_rss_bytes

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
HEADS, HEAD_DIM, FEATURES = 8, 64, 256
BACKENDS = ("eager", "sdpa", "flash", "performer")
REFERENCE_LENGTHS = (1024, 2048, 4096)  # performer-pytorch's causal_linear_attention_noncuda
MEMORY_LIMIT = 0.6 * psutil.virtual_memory().total


def measure(backend: str, causal: bool, length: int, repeats: int, device: str = "cpu") -> dict:
    """One point, in this process: seconds (best of ``repeats``) and peak memory of forward+backward."""
    from dnalm.models.attention import ATTENTION
    from dnalm.models.performer import PerformerFeatures

    target = torch.device(device)
    dtype = training_dtype(target)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device=target, dtype=dtype, requires_grad=True) for _ in range(3))
    pos = torch.arange(length, device=target)[None]
    performer = PerformerFeatures(HEAD_DIM, FEATURES).to(target)
    if backend == "performer-pytorch":
        from performer_pytorch import FastAttention

        reference = FastAttention(HEAD_DIM, FEATURES, causal=causal).to(target)

        def run():
            return reference(q, k, v)
    else:
        def run():
            return ATTENTION[backend](q, k, v, causal=causal, q_pos=pos, k_pos=pos, performer=performer)

    return best_forward_backward(run, (q, k, v), target, repeats)


def best_forward_backward(run, inputs, target: torch.device, repeats: int) -> dict:
    """Seconds (best of ``repeats``) of ``run().sum().backward()`` and its peak memory above what is held now."""
    on_cuda = target.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(target)
        baseline = torch.cuda.memory_allocated(target)
    else:
        baseline = psutil.Process().memory_info().rss
    best = float("inf")
    for _ in range(repeats):
        synchronize(target)
        start = time.perf_counter()
        run().sum().backward()
        synchronize(target)
        best = min(best, time.perf_counter() - start)
        for x in inputs:
            x.grad = None
    peak = peak_memory_mb(target) * 2**20 if on_cuda else peak_rss_bytes()
    return {"seconds": round(best, 4), "peak_mb": round(max(peak - baseline, 0) / 2**20, 1)}


def _fits(backend: str, length: int, device: torch.device) -> bool:
    if backend in ("eager",):
        limit = 0.6 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else MEMORY_LIMIT
        return 5 * HEADS * length * length * 4 < limit  # scores, softmax and their gradients
    return True


def run(out_dir: Path, lengths=LENGTHS, repeats: int = 3, device: str = "auto") -> dict:
    target = resolve(device)
    rows = []
    series = [(b, c) for b in BACKENDS for c in (False, True)]
    series += [("performer-pytorch", True)]
    for backend, causal in series:
        for length in lengths:
            row = {"backend": backend, "causal": causal, "length": length}
            if backend == "performer-pytorch" and length not in REFERENCE_LENGTHS:
                continue
            if not _fits(backend, length, target):
                rows.append(row | {"skipped": "quadratic scores would not fit in memory"})
                continue
            reps = 1 if backend == "performer-pytorch" else (2 if length >= 8192 else repeats)
            command = [sys.executable, "-m", "dnalm.bench.attention", backend, str(int(causal)), str(length), str(reps),
                       str(target)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                rows.append(row | {"skipped": f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"})
                continue
            rows.append(row | json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = report.header("attention", f"dnalm bench attention --device {target.type}", target) | {
        "shape": {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM, "performer_features": FEATURES},
        "measure": "forward + backward of the attention alone (q, k, v require grad); peak memory above the inputs",
        "rows": rows,
        "findings": _findings(rows),
    }
    report.write(result, out_dir, "attention")
    _plot(result, out_dir)
    return result


def _point(rows, backend, causal, length):
    for row in rows:
        if row["backend"] == backend and row["causal"] == causal and row["length"] == length and "seconds" in row:
            return row
    return None


def _findings(rows) -> dict:
    ours, theirs = _point(rows, "performer", True, 4096), _point(rows, "performer-pytorch", True, 4096)
    findings = {}
    if ours and theirs:
        findings["causal_performer_speedup_vs_performer_pytorch_at_4096"] = round(theirs["seconds"] / ours["seconds"], 1)
        findings["causal_performer_memory_ratio_vs_performer_pytorch_at_4096"] = round(theirs["peak_mb"] / max(ours["peak_mb"], 0.1), 1)
    noncausal = {}
    for length in LENGTHS:
        p, s = _point(rows, "performer", False, length), _point(rows, "sdpa", False, length)
        if p and s:
            noncausal[str(length)] = round(s["seconds"] / p["seconds"], 2)
    findings["noncausal_sdpa_over_performer_time"] = noncausal
    causal_mem = {str(r["length"]): r["peak_mb"] for r in rows if r["backend"] == "performer" and r["causal"] and "peak_mb" in r}
    findings["causal_performer_peak_mb_by_length"] = causal_mem
    return findings


def _plot(result: dict, out_dir: Path) -> None:
    plot_by_length(result["rows"], "backend", (*BACKENDS, "performer-pytorch"), ("non-causal", "causal"),
                   f"dnalm bench attention — 1×{HEADS} heads×{HEAD_DIM}, {report.device_label(result)}", out_dir, "attention")


def plot_by_length(rows: list[dict], key: str, series, kinds: tuple[str, str], title: str, out_dir: Path, name: str) -> None:
    """Forward+backward seconds (top) and peak MB (bottom) against length, non-causal left and causal right; one line
    per value of ``row[key]`` in ``series``."""
    from dnalm.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for col, causal in enumerate((False, True)):
        for label in series:
            points = [r for r in rows if r[key] == label and r["causal"] == causal and "seconds" in r]
            if not points:
                continue
            xs = [r["length"] for r in points]
            axes[0, col].plot(xs, [r["seconds"] for r in points], marker="o", label=label)
            axes[1, col].plot(xs, [r["peak_mb"] for r in points], marker="o", label=label)
        axes[0, col].set_title(f"{kinds[col]}: forward+backward", fontsize=10)
        axes[1, col].set_title(f"{kinds[col]}: peak memory", fontsize=10)
        for row in (0, 1):
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_yscale("log")
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=8)
        axes[0, col].set_ylabel("seconds")
        axes[1, col].set_ylabel("MB")
        axes[1, col].set_xlabel("sequence length (tokens)")
    fig.suptitle(title, fontsize=10)
    report.save_plot(fig, out_dir, name)


if __name__ == "__main__":
    backend, causal, length, repeats = sys.argv[1], bool(int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(measure(backend, causal, length, repeats, sys.argv[5] if len(sys.argv) > 5 else "cpu")))
