"""``dnalm bench alibi``: what ALiBi costs over no position bias, fused path against the explicit bias, one run.

Attention alone (forward + backward, 1 × 4 heads × 32, the compare models' shape), for encoders
and decoders: ``none`` (what a RoPE model's attention runs), ``fused`` (ALiBi's path now,
``dnalm.models.alibi_fused``: for an unpadded encoder one pass reading one line of bias a head),
``causal passes`` (an encoder's path when keys are padded or positions restart: two causal passes on
(D+1)-wide heads; a decoder's ``fused`` is that one pass) and ``explicit bias`` (SDPA given a heads × L × L
bias), and at the longest length the fused path with denormals kept (no flush-to-zero). Then whole
training steps (forward, backward, AdamW) of the comparison's RoPE and ALiBi
encoders, of the ALiBi encoder with its heads handed to the kernel as strided views of the projection
(``attention.COPY_HEADS_ON_CPU`` off, as before the copies), and of RoPE and ALiBi decoders of the same
size. Every point runs in a fresh process, so peak memory is that point's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from dnalm.bench import report
from dnalm.bench.attention import best_forward_backward, plot_by_length
from dnalm.utils.devices import resolve, training_dtype

LENGTHS = (1024, 2048, 4096, 8192)
MODEL_LENGTHS = (1024, 8192)
HEADS, HEAD_DIM = 4, 32
PATHS = ("none", "fused", "causal passes", "explicit bias")
DENORMALS = "fused, denormals kept"  # the fused path without flush-to-zero, at the longest length only
STRIDED = "encoder alibi, heads strided"  # the attention kernel given views of the projection, as before
MODELS = {
    "encoder rope": ("transformer", {}),
    "encoder alibi": ("alibi", {}),
    STRIDED: ("alibi", {"strided": True}),
    "decoder rope": ("transformer", {"causal": True}),
    "decoder alibi": ("alibi", {"causal": True}),
}


def measure_attention(path: str, causal: bool, length: int, repeats: int, device: str) -> dict:
    from dnalm.models import alibi_flex, alibi_fused
    from dnalm.models.attention import ATTENTION
    from dnalm.models.positions import alibi_bias, alibi_slopes

    target = torch.device(device)
    if path == DENORMALS:
        torch.set_flush_denormal(False)  # before PyTorch's thread pool starts: its threads copy the setting
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(1, HEADS, length, HEAD_DIM, device=target, dtype=training_dtype(target), requires_grad=True)
        for _ in range(3)
    )
    positions, slopes = torch.arange(length, device=target)[None], alibi_slopes(HEADS, target)
    on_cpu = alibi_fused.applicable(q, k, positions, positions, 0.0, causal=True)
    if path in ("causal passes", DENORMALS) and not on_cpu:
        return {"skipped": "a path of the CPU kernel in fp32"}
    if path == "fused" and not (on_cpu or alibi_flex.applicable(q, k, 0.0)):
        return {
            "skipped": "no fused ALiBi path on this device and dtype (flash-attn takes alibi_slopes where installed)"
        }
    if path == "causal passes" and causal:
        return {"skipped": "a decoder's fused path is its one causal pass"}

    def run():
        if path == "none":
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if path == "fused":  # what an ALiBi model's sdpa backend runs here
            return ATTENTION["sdpa"](q, k, v, causal=causal, q_pos=positions, k_pos=positions, alibi=slopes)
        if path == DENORMALS:
            return alibi_fused.fused_alibi(q, k, v, slopes=slopes, positions=positions, key_mask=None, causal=causal)
        if path == "causal passes":
            return alibi_fused.by_causal_passes(
                q, k, v, slopes=slopes, positions=positions, key_mask=None, causal=causal
            )
        bias = alibi_bias(slopes, positions, positions, causal).to(q.dtype)
        if causal:
            bias = bias.masked_fill(positions[:, None, None, :] > positions[:, None, :, None], float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    return best_forward_backward(run, (q, k, v), target, repeats)


def measure_model(variant: str, changes: dict, length: int, device: str) -> dict:
    from dnalm.studies.compare import VARIANTS, measure_step

    base = VARIANTS[variant]
    if changes.get("causal"):
        base = replace(base, model="decoder-tiny")
    if changes.get("strided"):
        from dnalm.models import attention

        attention.COPY_HEADS_ON_CPU = False
    return measure_step(base, length, max(1, 8192 // length), device=device)


def _in_fresh_process(*args: str) -> dict:
    """One point (the arguments of this module's ``__main__``): in a fresh process on CPU, where the peak resident set
    cannot be reset; in this one on CUDA, whose allocator's peak is reset for the point."""
    if args[-1].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args[-1])
        try:
            return _point(*args)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory: the point says so, the others still run
            torch.cuda.empty_cache()
            return {"failed": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    done = subprocess.run(
        [sys.executable, "-m", "dnalm.bench.alibi", *args], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _point(kind: str, *args: str) -> dict:
    if kind == "attention":
        path, causal, length, repeats, device = args
        return measure_attention(path, bool(int(causal)), int(length), int(repeats), device)
    name, length, device = args
    variant, changes = MODELS[name]
    return measure_model(variant, changes, int(length), device)


def run(
    out_dir: Path, lengths=LENGTHS, model_lengths=MODEL_LENGTHS, repeats: int = 3, device: str = "auto", rounds: int = 3
) -> dict:
    target = resolve(device)
    attention = []
    for causal in (False, True):
        for length in lengths:
            for path in PATHS:
                row = {"path": path, "causal": causal, "length": length}
                attention.append(
                    row | _in_fresh_process("attention", path, str(int(causal)), str(length), str(repeats), str(target))
                )
                print(json.dumps(attention[-1]), file=sys.stderr, flush=True)
        if target.type != "cpu":
            continue  # flush-to-zero is a CPU setting
        attention.append(
            {"path": DENORMALS, "causal": causal, "length": max(lengths)}
            | _in_fresh_process("attention", DENORMALS, str(int(causal)), str(max(lengths)), str(repeats), str(target))
        )
    models = _model_steps(model_lengths, rounds, target)
    result = report.header("alibi", f"dnalm bench alibi --device {target.type}", target) | {
        "attention_shape": {"batch": 1, "heads": HEADS, "head_dim": HEAD_DIM},
        "models": "encoder-tiny (2 layers, d_model 128, 4 heads) as in bench compare; the decoders are decoder-tiny of "
        "the same size; 'heads strided' hands the attention kernel views of the projection (as before the "
        "copies); a step is forward, backward and AdamW on 8,192 tokens; each model's best step over "
        f"{rounds} interleaved rounds (a fresh process each, step times of every round in 'rounds')",
        "attention": attention,
        "model_steps": models,
        "ratios": _ratios(attention, models, max(lengths), max(model_lengths)),
    }
    report.write(result, out_dir, "alibi")
    _plot(result, out_dir)
    return result


def _model_steps(model_lengths, rounds: int, target: torch.device) -> list[dict]:
    """Each model's fastest step over ``rounds`` passes through all of them, so that a noisy minute on a shared
    machine slows one pass of every model rather than one model's every step."""
    passes = []
    names = [name for name in MODELS if name != STRIDED or target.type == "cpu"]  # the head copies are CPU-only
    for _ in range(rounds):
        for name in names:
            for length in model_lengths:
                passes.append(
                    {"model": name, "length": length, "batch": max(1, 8192 // length)}
                    | _in_fresh_process("model", name, str(length), str(target))
                )
                print(json.dumps(passes[-1]), file=sys.stderr, flush=True)
    models = []
    for name in names:
        for length in model_lengths:
            mine = [p for p in passes if p["model"] == name and p["length"] == length]
            timed = [p for p in mine if "step_seconds" in p]
            best = min(timed, key=lambda p: p["step_seconds"]) if timed else mine[0]
            models.append(best | {"rounds": [p.get("step_seconds") for p in mine]})
    return models


def _ratios(attention: list[dict], models: list[dict], length: int, model_length: int) -> dict:
    def point(rows, key, **match):
        found = [r for r in rows if all(r.get(k) == v for k, v in match.items()) and key in r]
        return found[0][key] if found else None

    out = {}
    for causal, kind in ((False, "encoder"), (True, "decoder")):
        none, fused, passes, bias = (point(attention, "seconds", path=p, causal=causal, length=length) for p in PATHS)
        mem = [point(attention, "peak_mb", path=p, causal=causal, length=length) for p in PATHS]
        kept = point(attention, "seconds", path=DENORMALS, causal=causal, length=length)
        if none and fused and bias:
            out[f"{kind}_attention_at_{length}"] = {
                "fused_over_none_time": round(fused / none, 2),
                "explicit_over_none_time": round(bias / none, 2),
                "explicit_over_fused_time": round(bias / fused, 2),
                **({"denormals_kept_over_fused_time": round(kept / fused, 2)} if kept else {}),
                **({"causal_passes_over_none_time": round(passes / none, 2)} if passes else {}),
                "fused_over_none_memory": round(mem[1] / max(mem[0], 1), 2),
                "explicit_over_none_memory": round(mem[3] / max(mem[0], 1), 2),
            }
        rope = point(models, "step_seconds", model=f"{kind} rope", length=model_length)
        alibi = point(models, "step_seconds", model=f"{kind} alibi", length=model_length)
        rope_mb = point(models, "peak_mb", model=f"{kind} rope", length=model_length)
        alibi_mb = point(models, "peak_mb", model=f"{kind} alibi", length=model_length)
        strided = point(models, "step_seconds", model=STRIDED, length=model_length) if kind == "encoder" else None
        if rope and alibi:
            out[f"{kind}_step_at_{model_length}"] = {
                "alibi_over_rope_time": round(alibi / rope, 2),
                "alibi_over_rope_memory": round(alibi_mb / max(rope_mb, 1), 2),
                **({"heads_strided_over_copied_time": round(strided / alibi, 2)} if strided else {}),
            }
    return out


def _plot(result: dict, out_dir: Path) -> None:
    plot_by_length(
        result["attention"],
        "path",
        (*PATHS, DENORMALS),
        ("encoder (symmetric)", "decoder (causal)"),
        f"dnalm bench alibi — 1×{HEADS} heads×{HEAD_DIM}, {report.device_label(result)}",
        out_dir,
        "alibi",
    )


if __name__ == "__main__":
    print(json.dumps(_point(*sys.argv[1:])))
