"""docs/benchmarks/gpu.json and gpu.png from the GPU calls' results (docs/benchmarks/gpu/call*/, made by run.sh).

    python scripts/gpu/summarize.py

MFU = tokens/s × FLOPs per token (dnalm.bench.mfu.flops_per_token: 6·N + 12·L·d·T, recomputation
not counted) ÷ the device's nominal dense bf16 peak (dnalm.bench.mfu.NOMINAL: 989 TFLOP/s for the
H200), the field's convention; ``mfu_of_measured_matmul`` divides by the bf16 matmul peak that
``dnalm bench train --device cuda`` timed in call 1 instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from dnalm.models import build_model, get_config
from dnalm.tokenizers import load
from dnalm.train.flops import SOURCE, flops_per_token, nominal_peak

HERE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "gpu"  # the calls' raw results
OUT = HERE.parent

# run folder -> (call, model, ZeRO stage, micro-batch, activation recomputation, what it is)
RUNS = {
    ("call1", "decoder-small"): (
        "decoder-small",
        "zero2",
        4,
        False,
        "50 steps, checkpoints at 20 and 40, uninterrupted",
    ),
    ("call1", "decoder-small-resumed"): (
        "decoder-small",
        "zero2",
        4,
        False,
        "the same, SIGKILL inside step 45, --resume auto",
    ),
    ("call1", "encoder-small"): ("encoder-small", "zero2", 4, False, "ALiBi as an explicit bias (before alibi_flex)"),
    ("call2", "encoder-small"): ("encoder-small", "zero2", 4, False, "ALiBi through FlexAttention (alibi_flex)"),
    ("call1", "decoder-1.5b"): ("decoder-1.5b", "zero3", 16, True, "10 steps"),
    ("call2", "decoder-1.5b-zero3-mb32"): ("decoder-1.5b", "zero3", 32, True, "10 steps"),
    ("call2", "decoder-1.5b-zero2-mb8-no-recompute"): ("decoder-1.5b", "zero2", 8, False, "10 steps"),
}


def records(call: str, run: str) -> list[dict]:
    return [json.loads(line) for line in (HERE / call / run / "metrics.jsonl").read_text().splitlines()]


def per_token(model: str, seq_len: int) -> float:
    config = get_config(model, vocab_size=load("nucleotide").vocab_size)
    with torch.device("meta"):
        return flops_per_token(build_model(config), config, seq_len)


def training(nominal: float, peak: float) -> list[dict]:
    rows = []
    for (call, run), (model, stage, micro, recompute, what) in RUNS.items():
        steps = [r for r in records(call, run) if "loss" in r]
        seq_len = 2048 if model == "decoder-1.5b" else 1024
        rates = sorted(r["tokens_per_s"] for r in steps[2:])  # the first steps compile and warm up
        median = rates[len(rates) // 2]
        evals = [r for r in records(call, run) if "val_loss" in r]
        rows.append(
            {
                "call": call,
                "run": run,
                "model": model,
                "deepspeed": stage,
                "micro_batch": micro,
                "seq_len": seq_len,
                "activation_recomputation": recompute,
                "what": what,
                "steps": len(steps),
                "median_tokens_per_s": median,
                "mfu": round(median * per_token(model, seq_len) / nominal, 4),
                "mfu_of_measured_matmul": round(median * per_token(model, seq_len) / peak, 4),
                "peak_memory_mb": steps[-1].get("peak_memory_mb"),
                "first_loss": round(steps[0]["loss"], 4),
                "last_loss": round(steps[-1]["loss"], 4),
                "non_finite_steps": sum(r.get("skipped", False) for r in records(call, run)),
                "val_loss": [round(r["val_loss"], 4) for r in evals],
                **(
                    {"val_masked_accuracy": [round(r["val_masked_accuracy"], 4) for r in evals]}
                    if evals and "val_masked_accuracy" in evals[0]
                    else {}
                ),
            }
        )
    return rows


def resume() -> dict:
    full, resumed = (
        {r["step"]: r["loss"] for r in records("call1", run) if "loss" in r}
        for run in ("decoder-small", "decoder-small-resumed")
    )
    gap = {s: abs(full[s] - resumed[s]) for s in full}
    return {
        "kill": "SIGKILL of the process group inside step 45 (DNALM_FAULTS=kill@train.step:45); checkpoints at 20 "
        "and 40; --resume auto from step-40",
        "steps_bit_identical": [s for s in sorted(gap) if gap[s] == 0],
        "max_abs_loss_gap_steps_1_to_40": max(gap[s] for s in gap if s <= 40),
        "max_abs_loss_gap_steps_41_to_50": max(gap[s] for s in gap if s > 40),
        "reading": "steps 1-40 of the two runs ran the same code with no kill or resume between them, so their gap "
        "is the GPU's run-to-run nondeterminism; the gap after the resume is no larger",
    }


def main() -> None:
    bench_train = json.loads((HERE / "call1" / "bench" / "train.json").read_text())
    attention = json.loads((HERE / "call1" / "bench" / "attention.json").read_text())
    alibi = json.loads((HERE / "call2" / "bench" / "alibi.json").read_text())
    profile = json.loads((HERE / "call2" / "profile-decoder-1.5b.json").read_text())
    env = (HERE / "call1" / "env.txt").read_text()
    peak = bench_train["peak"]["tflops"] * 1e12
    nominal_name, nominal = nominal_peak(bench_train["device"]["name"], "bf16")
    tests = re.search(r"(\d+) passed", (HERE / "call2" / "cuda-tests.log").read_text())
    result = {
        "benchmark": "gpu",
        "date": "2026-11-30",
        "device": bench_train["device"],
        "software": {
            "torch": bench_train["device"]["torch"],
            "cuda": bench_train["device"]["cuda"],
            "driver": bench_train["device"]["driver"],
            "deepspeed": re.search(r"deepspeed (\S+)", env).group(1),
            "python": re.search(r"^(3\.\d+\.\d+) ", env, re.M).group(1),
            "flash_attn": "not installed: the package index offers no flash-attn wheel for Python 3.12 "
            "manylinux (pip download --only-binary=:all: flash-attn finds none), and a source "
            "build was not attempted; the flash backend ran SDPA's kernels",
        },
        "commands": "bash scripts/gpu/run.sh (call 1, tree d9108d0); SECTIONS='cuda-tests encoder-small "
        "decoder-1.5b-zero2-mb8-no-recompute decoder-1.5b-zero3-mb32 bench-alibi profile' "
        "bash scripts/gpu/run.sh (call 2, tree 4a04bf6); then this script",
        "calls": "two device calls, each on a freshly started machine of the same kind",
        "matmul_peak_tflops": bench_train["peak"]["tflops"],
        "nominal_peak": {"device": nominal_name, "bf16_tflops": nominal / 1e12, "source": SOURCE},
        "mfu": "tokens/s × (6·N + 12·L·d·T) ÷ the nominal bf16 peak; mfu_of_measured_matmul: ÷ the measured matmul",
        "training": training(nominal, peak),
        "resume_after_sigkill": resume(),
        "cuda_tests": f"{tests.group(1) if tests else 0} passed (tests/test_attention.py -k cuda, call 2)",
        "profile_decoder_1.5b": {
            k: profile[k] for k in ("batch", "seq_len", "step_seconds", "gpu_busy_share", "groups")
        },
        "bench_train_rows": bench_train["rows"],
        "attention_rows": attention["rows"],
        "alibi_ratios": alibi["ratios"],
    }
    (OUT / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result)


def plot(result: dict) -> None:
    from dnalm.utils.plots import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    big = [r for r in result["training"] if r["model"] == "decoder-1.5b"]
    labels = [
        f"{r['deepspeed']}, micro "
        f"{r['micro_batch']}\n{'recompute' if r['activation_recomputation'] else 'no recompute'}"
        for r in big
    ]
    left.bar(labels, [100 * r["mfu"] for r in big], color="#3b7dd8")
    left.axhline(52, color="grey", linestyle="--", linewidth=1)  # the goal at 2,048 tokens: 48,000 tokens/s
    left.set_ylabel(f"MFU (% of {result['nominal_peak']['device']}'s nominal bf16 peak)")
    left.set_title("decoder-1.5b, 2,048 tokens, DeepSpeed, 1 GPU", fontsize=10)
    for series, style in (("sdpa", "o-"), ("sdpa+alibi", "s-"), ("flex+alibi", "^-"), ("performer", "d-")):
        points = [r for r in result["attention_rows"] if r["backend"] == series and not r["causal"] and "seconds" in r]
        right.plot([r["length"] for r in points], [r["seconds"] * 1000 for r in points], style, label=series)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("tokens")
    right.set_ylabel("ms, forward + backward (1 × 8 heads × 64, bf16)")
    right.set_title("encoder attention", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(
        f"{result['device']['name']}, torch {result['software']['torch']}, DeepSpeed {result['software']['deepspeed']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(OUT / "gpu.png", dpi=110)


if __name__ == "__main__":
    main()
