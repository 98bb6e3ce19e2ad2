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
from functools import partial
from pathlib import Path

import psutil
import torch

from dnalm.bench import report
from dnalm.utils.devices import resolve, synchronize, training_dtype
from dnalm.utils.memory import allocator_peak_mb, peak_rss_bytes

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
HEADS, HEAD_DIM, FEATURES = 8, 64, 256
BACKENDS = ("eager", "sdpa", "flash", "performer")
ALIBI = "+alibi"  # a series name's suffix: the backend with ALiBi slopes
ERROR_LENGTH = 2048
SERIES = (
    *((b, c) for b in BACKENDS for c in (False, True)),
    ("performer-pytorch", True),
    ("sdpa" + ALIBI, False),
    ("sdpa" + ALIBI, True),
)
REFERENCE_LENGTHS = (1024, 2048, 4096)  # performer-pytorch's causal_linear_attention_noncuda
MEMORY_LIMIT = 0.6 * psutil.virtual_memory().total


def measure(backend: str, causal: bool, length: int, repeats: int, device: str = "cpu") -> dict:
    """One point, in this process: seconds (best of ``repeats``) and peak memory of forward+backward."""
    target = torch.device(device)
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(1, HEADS, length, HEAD_DIM, device=target, dtype=training_dtype(target), requires_grad=True)
        for _ in range(3)
    )
    run = attend(backend, causal, length, target, q.dtype)
    return best_forward_backward(lambda: run(q, k, v), (q, k, v), target, repeats)


def attend(series: str, causal: bool, length: int, target: torch.device, dtype: torch.dtype):
    """The function ``(q, k, v) -> out`` that a series names (its Performer features fixed by the seed)."""
    from dnalm.models.attention import ATTENTION
    from dnalm.models.performer import PerformerFeatures
    from dnalm.models.positions import alibi_slopes

    backend, with_alibi = series.removesuffix(ALIBI), series.endswith(ALIBI)
    slopes = alibi_slopes(HEADS, target) if with_alibi else None
    if backend == "performer-pytorch":
        from performer_pytorch import FastAttention

        return FastAttention(HEAD_DIM, FEATURES, causal=causal).to(target, dtype)  # its projection in the inputs' dtype
    pos = torch.arange(length, device=target)[None]
    performer = PerformerFeatures(HEAD_DIM, FEATURES).to(target)
    return partial(ATTENTION[backend], causal=causal, q_pos=pos, k_pos=pos, performer=performer, alibi=slopes)


def relative_error(series: str, causal: bool, length: int, target: torch.device) -> float:
    """‖out − ref‖ / ‖ref‖ of the series in the training dtype against eager attention (Performer: itself) in fp32,
    float64 on CPU; the same inputs, drawn in the reference's precision."""
    reference_dtype = torch.float32 if target.type == "cuda" else torch.float64
    reference = series if series.startswith("performer") else "eager" + (ALIBI if series.endswith(ALIBI) else "")
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device=target, dtype=reference_dtype) for _ in range(3))
    with torch.no_grad():
        torch.manual_seed(0)
        expected = attend(reference, causal, length, target, reference_dtype)(q, k, v).double()
        torch.manual_seed(0)
        dtype = training_dtype(target)
        got = attend(series, causal, length, target, dtype)(q.to(dtype), k.to(dtype), v.to(dtype)).double()
    return float((got - expected).norm() / expected.norm())


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
    cuda_peak = allocator_peak_mb(target)  # None off CUDA
    peak = cuda_peak * 2**20 if cuda_peak is not None else peak_rss_bytes()
    return {"seconds": round(best, 4), "peak_mb": round(max(peak - baseline, 0) / 2**20, 1)}


def _fits(backend: str, length: int, device: torch.device) -> bool:
    if backend in ("eager",):
        limit = 0.6 * torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else MEMORY_LIMIT
        return 5 * HEADS * length * length * 4 < limit  # scores, softmax and their gradients
    return True


def run(out_dir: Path, lengths=LENGTHS, repeats: int = 3, device: str = "auto") -> dict:
    target = resolve(device)
    rows = []
    for backend, causal in SERIES:
        for length in lengths:
            row = {"backend": backend, "causal": causal, "length": length}
            if backend == "performer-pytorch" and length not in REFERENCE_LENGTHS:
                continue
            if not _fits(backend, length, target):
                rows.append(row | {"skipped": "quadratic scores would not fit in memory"})
                continue
            reps = 1 if backend == "performer-pytorch" else (2 if length >= 8192 else repeats)
            rows.append(row | _point_in_place(backend, causal, length, reps, target))
            if length == ERROR_LENGTH and "seconds" in rows[-1]:
                rows[-1]["relative_error"] = float(f"{relative_error(backend, causal, length, target):.3g}")
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = report.header("attention", f"dnalm bench attention --device {target.type}", target) | {
        "shape": {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM, "performer_features": FEATURES},
        "measure": "forward + backward of the attention alone (q, k, v require grad); peak memory above the inputs; "
        f"relative_error at {ERROR_LENGTH} tokens: against eager in "
        f"{'fp32' if target.type == 'cuda' else 'float64'} (Performer: against itself)",
        "rows": rows,
        "findings": _findings(rows),
    }
    report.write(result, out_dir, "attention")
    _plot(result, out_dir)
    return result


def _point_in_place(backend: str, causal: bool, length: int, repeats: int, target: torch.device) -> dict:
    """The point measured in this process on CUDA (the allocator's peak resets), in a fresh one on CPU (the peak RSS
    does not); a failure is a skipped point that says why."""
    if target.type == "cuda":
        try:
            return measure(backend, causal, length, repeats, str(target))
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: the point says so, the others still run
            torch.cuda.empty_cache()
            return {"skipped": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    command = [
        sys.executable,
        "-m",
        "dnalm.bench.attention",
        backend,
        str(int(causal)),
        str(length),
        str(repeats),
        str(target),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return {
            "skipped": f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def _point(rows, backend, causal, length):
    for row in rows:
        if row["backend"] == backend and row["causal"] == causal and row["length"] == length and "seconds" in row:
            return row
    return None


def _findings(rows) -> dict:
    ours, theirs = _point(rows, "performer", True, 4096), _point(rows, "performer-pytorch", True, 4096)
    findings = {}
    if ours and theirs:
        findings["causal_performer_speedup_vs_performer_pytorch_at_4096"] = round(
            theirs["seconds"] / ours["seconds"], 1
        )
        findings["causal_performer_memory_ratio_vs_performer_pytorch_at_4096"] = round(
            theirs["peak_mb"] / max(ours["peak_mb"], 0.1), 1
        )
    noncausal = {}
    for length in LENGTHS:
        p, s = _point(rows, "performer", False, length), _point(rows, "sdpa", False, length)
        if p and s:
            noncausal[str(length)] = round(s["seconds"] / p["seconds"], 2)
    findings["noncausal_sdpa_over_performer_time"] = noncausal
    causal_mem = {
        str(r["length"]): r["peak_mb"] for r in rows if r["backend"] == "performer" and r["causal"] and "peak_mb" in r
    }
    findings["causal_performer_peak_mb_by_length"] = causal_mem
    return findings


def _plot(result: dict, out_dir: Path) -> None:
    plot_by_length(
        result["rows"],
        "backend",
        tuple(dict.fromkeys(backend for backend, _ in SERIES)),
        ("non-causal", "causal"),
        f"dnalm bench attention — 1×{HEADS} heads×{HEAD_DIM}, {report.device_label(result)}",
        out_dir,
        "attention",
    )


def plot_by_length(
    rows: list[dict], key: str, series, kinds: tuple[str, str], title: str, out_dir: Path, name: str
) -> None:
    """Forward+backward seconds (top) and peak MB (bottom) against length, non-causal left and causal right; one line
    per value of ``row[key]`` in ``series``."""
    from dnalm.utils.plots import pyplot

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
