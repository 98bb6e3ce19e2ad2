"""``dnalm plan``: what a training run needs before it is launched, and what would fit when it does not.

``footprint.py`` counts one setup's memory per rank, communication and time per step (its docstring says how);
``gpus.py`` holds the GPUs and their MFU. Here: a config resolved into a setup, the largest micro-batch and window
that fit, the out-of-memory ladder's next rungs, and the plan as JSON or text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dnalm.models import ModelConfig, get_config
from dnalm.train.config import TrainConfig, apply_override, deepspeed_config
from dnalm.train.footprint import (  # noqa: F401 (some re-exported: callers use plan.activations, plan.counts, …)
    ASSUMES,
    LEAVES_OUT,
    Setup,
    activations,
    communication,
    counts,
    flops_per_token,
    memory,
    model_states,
    setup_from,
    timing,
)
from dnalm.train.gpus import (  # noqa: F401
    GIB,
    GPU_JSON,
    GPUS,
    LEAN_CHUNK,
    LEAN_TILE,
    Gpu,
    PlanError,
    gpu_spec,
)
from dnalm.utils.errors import DnalmError


# --- the plan ----------------------------------------------------------------------------------------------------
def resolve_model(config: TrainConfig, seq_len: int | None) -> tuple[ModelConfig, int, list[str]]:
    """(the model the trainer would build, the window, what was assumed). The window is ``seq_len`` or the prepared
    data's, the vocabulary the data's tokenizer's or else the model config's."""
    from dnalm.data.manifest import MANIFEST_FILE
    from dnalm.data.sources import is_remote

    if seq_len is not None and seq_len < 1:
        raise PlanError(f"--seq-len {seq_len}: give 1 or more tokens")
    folder = None if is_remote(config.data.path) else Path(config.data.path)
    if folder is not None and (folder / MANIFEST_FILE).is_file():
        from dnalm.data.manifest import Manifest
        from dnalm.train.setup import data_tokenizer
        from dnalm.train.setup import resolve_model as trainer_model

        manifest = Manifest.load(folder)
        model = trainer_model(config, manifest, data_tokenizer(folder, manifest))
        notes = [f"vocabulary {model.vocab_size:,}: the tokenizer of {folder}"]
        if seq_len is None:
            seq_len = manifest.seq_len
            notes.insert(0, f"window {seq_len:,} tokens: the prepared data's ({folder})")
    else:
        where = "is in object storage (not read)" if folder is None else "holds no prepared data"
        if seq_len is None:
            raise PlanError(f"data.path {config.data.path} {where}: give the window with --seq-len N")
        name = config.model.name
        if config.model.init_from:
            from dnalm.bundle import read_config

            base = ModelConfig(**read_config(config.model.init_from)["model"])
        else:
            base = ModelConfig.from_yaml(name) if name.endswith((".yaml", ".yml")) else get_config(name)
        model = base.replace(activation_checkpointing=config.activation_checkpointing, **config.model.overrides)
        notes = [f"vocabulary {model.vocab_size:,}: the model config's (data.path {config.data.path} {where})"]
    if model.arch == "cnn":
        raise PlanError(
            f"model {model.name}: dnalm plan counts a transformer's blocks; the CNN (arch cnn) is not planned"
        )
    if seq_len is not None and notes and not notes[0].startswith("window"):
        notes.insert(0, f"window {seq_len:,} tokens: --seq-len")
    return model.replace(max_seq_len=max(model.max_seq_len, seq_len)), seq_len, notes


def with_overrides(config: TrainConfig, overrides: dict) -> TrainConfig:
    """``config`` with dotted overrides applied (``{"model.overrides.mlp_tile": 1024}``)."""
    values = json.loads(config.model_dump_json())
    for key, value in overrides.items():
        apply_override(values, f"{key}={json.dumps(value)}")
    return TrainConfig(**values)


def evaluate(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> tuple[Setup, dict]:
    """The Setup and memory of ``config`` (whose recomputation, tiles and chunks override ``model``'s)."""
    lean = {k: v for k, v in config.model.overrides.items() if k in ("mlp_tile", "loss_chunk")}
    model = model.replace(activation_checkpointing=config.activation_checkpointing, **lean)
    s = setup_from(config, model, seq_len, gpus, on_gpu=not gpu.host)
    return s, memory(s, gpu)


def largest_micro_batch(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> int | None:
    """The largest micro-batch up to the configured one that fits and divides the global batch, or None."""
    groups = gpus // config.parallel.sequence
    for micro in range(config.batch.micro_batch, 0, -1):
        if config.batch.global_batch % (micro * groups) == 0:
            if evaluate(with_overrides(config, {"batch.micro_batch": micro}), model, seq_len, gpus, gpu)[1]["fits"]:
                return micro
    return None


def largest_window(config: TrainConfig, model: ModelConfig, gpus: int, gpu: Gpu, unit: int = 1024) -> int | None:
    """The longest window, a multiple of ``unit`` × S tokens, that fits at micro-batch 1, or None."""
    unit *= config.parallel.sequence
    trial = with_overrides(config, {"batch.micro_batch": 1})

    def fits(units: int) -> bool:
        return evaluate(trial, model, units * unit, gpus, gpu)[1]["fits"]

    if not fits(1):
        return None
    low, high = 1, 2
    while high <= 2**20 and fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low * unit


def rungs(config: TrainConfig, model: ModelConfig, gpus: int, gpu: Gpu) -> list[tuple[str, dict]]:
    """The out-of-memory ladder's rungs not yet taken, in order, each with the overrides that take it (the first,
    a smaller micro-batch, is tried on every rung)."""
    out: list[tuple[str, dict]] = []
    if not config.activation_checkpointing:
        out.append(("recomputation", {"activation_checkpointing": True}))
    if not (model.mlp_tile and model.loss_chunk):
        out.append(
            (
                "lean step",
                {
                    "model.overrides.mlp_tile": model.mlp_tile or LEAN_TILE,
                    "model.overrides.loss_chunk": model.loss_chunk or LEAN_CHUNK,
                },
            )
        )
    zero = deepspeed_config(config, gpus, not gpu.host).get("zero_optimization", {})
    if int(zero.get("stage", 0)) < 3:
        out.append(("ZeRO-3", {"deepspeed": "zero3"}))
    if not gpu.host and not ("offload_optimizer" in zero and "offload_param" in zero):
        out.append(("offload", {"deepspeed": "zero3-offload"}))
    size = config.parallel.sequence * 2
    while size <= min(gpus, gpu.per_node) and model.n_heads % size == 0 and gpus % size == 0:
        out.append((f"sequence parallel {size}", {"parallel.sequence": size}))
        size *= 2
    return out


def ladder(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu) -> list[dict]:
    """Each rung taken on top of those before it, with the largest micro-batch that then fits (None: none does),
    up to the first rung where one does."""
    rows: list[dict] = []
    taken: dict = {}
    for name, overrides in rungs(config, model, gpus, gpu):
        taken = {**taken, **overrides}
        trial = with_overrides(config, taken)
        try:
            micro = largest_micro_batch(trial, model, seq_len, gpus, gpu)
        except DnalmError as exc:  # e.g. a global batch the rung's data-parallel size does not divide
            rows.append({"rung": name, "overrides": dict(taken), "refused": str(exc)})
            continue
        rows.append({"rung": name, "overrides": dict(taken), "micro_batch": micro})
        if micro is not None:
            fitted = with_overrides(trial, {"batch.micro_batch": micro})
            rows[-1]["total"] = evaluate(fitted, model, seq_len, gpus, gpu)[1]["total"]
            break
    return rows


def summary(config: TrainConfig, model: ModelConfig, seq_len: int, gpus: int, gpu: Gpu, mfu: float | None) -> dict:
    s, mem = evaluate(config, model, seq_len, gpus, gpu)
    return {
        "setup": {
            "seq_len": seq_len,
            "micro_batch": s.micro_batch,
            "global_batch": s.global_batch,
            "accumulation": s.accumulation,
            "data_parallel": s.groups,
            "sequence_parallel": s.sequence,
            "zero_stage": s.stage,
            "deepspeed": s.deepspeed,
            "precision": s.precision,
            "recomputation": s.recompute,
            "mlp_tile": s.model.mlp_tile,
            "loss_chunk": s.model.loss_chunk,
            "offload": s.offload_optimizer,
        },
        "memory": mem,
        "time": timing(s, gpu, mfu),
    }


def make_plan(
    config: TrainConfig,
    gpus: int,
    gpu_name: str,
    seq_len: int | None = None,
    mfu: float | None = None,
    config_name: str = "",
) -> dict:
    """The plan of ``config`` on ``gpus`` devices of kind ``gpu_name`` (a key of GPUS, or cpu), as a dict: memory
    per rank, communication, step time, and when it does not fit, what would."""
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: give 1 or more")
    if mfu is not None and not 0 < mfu <= 1:
        raise PlanError(f"--mfu {mfu}: give a fraction in (0, 1]")
    gpu = gpu_spec(gpu_name, gpus)
    model, seq_len, notes = resolve_model(config, seq_len)
    c = counts(model)
    plan = {
        "config": config_name,
        "gpu": gpu_name,
        "device": gpu.label,
        "gpus": gpus,
        "nodes": math.ceil(gpus / gpu.per_node),
        "model": {
            "name": model.name,
            "arch": model.arch,
            "parameters": c.parameters,
            "vocab_size": model.vocab_size,
            "d_model": model.d_model,
            "n_layers": model.n_layers,
            "n_heads": model.n_heads,
            "hidden": model.hidden,
        },
        **summary(config, model, seq_len, gpus, gpu, mfu),
        "notes": notes,
        "assumes": ASSUMES,
        "leaves_out": LEAVES_OUT,
    }
    if not plan["memory"]["fits"]:
        micro = largest_micro_batch(config, model, seq_len, gpus, gpu)
        plan["largest_micro_batch"] = micro
        if micro is None:
            plan["largest_window"] = largest_window(config, model, gpus, gpu)
            plan["ladder"] = ladder(config, model, seq_len, gpus, gpu)
            fitting = plan["ladder"][-1] if plan["ladder"] and plan["ladder"][-1].get("micro_batch") else None
            overrides = {**fitting["overrides"], "batch.micro_batch": fitting["micro_batch"]} if fitting else None
        else:
            overrides = {"batch.micro_batch": micro}
        if overrides:
            fitted = summary(with_overrides(config, overrides), model, seq_len, gpus, gpu, mfu)
            plan["fits_with"] = {
                "overrides": overrides,
                "total": fitted["memory"]["total"],
                "step_s": fitted["time"]["step_s"],
                "tokens_per_s_per_gpu": fitted["time"]["tokens_per_s_per_gpu"],
            }
    return plan


# --- the table ---------------------------------------------------------------------------------------------------
def _gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def _count(value: int) -> str:
    return f"{value / 1e9:.2f} B" if value >= 1e9 else f"{value / 1e6:.1f} M"


def _seconds(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _override_text(overrides: dict) -> str:
    return " ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in overrides.items()
    )


def render(plan: dict) -> str:
    """The plan as the command prints it."""
    m, st, mem, t = plan["model"], plan["setup"], plan["memory"], plan["time"]
    unit = "rank" if plan["gpu"] == "cpu" else "GPU"
    zero = f"ZeRO-{st['zero_stage']} ({st['deepspeed']}{', offload' if st['offload'] else ''})"
    lean = ", ".join(f"{k} {st[k]}" for k in ("mlp_tile", "loss_chunk") if st[k])
    nodes = f"{plan['nodes']} node{'s' * (plan['nodes'] > 1)}"
    lines = [
        f"dnalm plan {plan['config']}: {plan['gpus']} × {plan['device']} ({nodes})",
        f"  model  {m['name']} ({m['arch']}): {_count(m['parameters'])} parameters, d {m['d_model']}, "
        f"{m['n_layers']} layers, {m['n_heads']} heads, MLP {m['hidden']}",
        *(f"         {note}" for note in plan["notes"]),
        f"  step   {st['seq_len']:,}-token windows: micro-batch {st['micro_batch']} × {st['data_parallel']} "
        f"data-parallel × {st['accumulation']} accumulated = global batch {st['global_batch']}; "
        f"sequence parallel {st['sequence_parallel']}",
        f"         {st['precision']}, {zero}, recomputation {'on' if st['recomputation'] else 'off'}"
        + (f", {lean}" if lean else ""),
        "",
        f"  memory per rank at its peak ({mem['peak_moment']})".ljust(58) + "GiB",
    ]
    for part in mem["parts"]:
        lines.append(f"    {part['name']:<52}{_gib(part['bytes']):>8}   {part['note']}")
    lines += [
        f"    {'tensors':<52}{_gib(mem['tensors_at_peak']):>8}",
        f"    {'runtime and allocator headroom':<52}{_gib(mem['headroom']):>8}",
        f"    {'total':<52}{_gib(mem['total']):>8}   of {_gib(mem['device_memory'])}: "
        + ("fits" if mem["fits"] else "DOES NOT FIT"),
        "    other moments: "
        + ", ".join(f"{name} {_gib(total)}" for name, total in mem["moments"].items() if name != mem["peak_moment"]),
        f"    activations kept: {_gib(mem['activations_with_recompute'])} with recomputation, "
        f"{_gib(mem['activations_without_recompute'])} without",
    ]
    if mem["host_per_rank"]:
        lines.append(f"    offloaded to the host: {_gib(mem['host_per_rank'])} a rank")
    lines += ["", "  communication per step per rank".ljust(58) + "GB"]
    for row in t["communication"] or [{"what": "none (one rank)", "bytes": 0}]:
        lines.append(f"    {row['what']:<52}{row['bytes'] / 1e9:>8.2f}")
    lines += [
        "",
        f"  time   compute {_seconds(t['compute_s'])} s + communication not hidden "
        f"{_seconds(t['exposed_comm_s'])} s = {_seconds(t['step_s'])} s a step: "
        f"{t['tokens_per_s_per_gpu']:,.0f} tokens/s per {unit}",
        f"         MFU {t['mfu']:.2f}: {t['mfu_source']}; links {t['zero_link_gb_s']:g} GB/s for ZeRO, "
        f"{t['sequence_link_gb_s']:g} GB/s for Ulysses",
    ]
    if not mem["fits"]:
        lines.append("")
        micro, window = plan.get("largest_micro_batch"), plan.get("largest_window")
        if micro:
            lines.append(f"  fits at micro-batch {micro} (batch.micro_batch={micro})")
        else:
            longest = (
                f"the longest window that fits at micro-batch 1: {window:,} tokens"
                if window
                else "no window of 1,024 tokens fits either"
            )
            lines.append(f"  no micro-batch fits; {longest}")
            for row in plan.get("ladder", []):
                outcome = row.get("refused") or (
                    f"fits at micro-batch {row['micro_batch']}: {_gib(row['total'])} GiB"
                    if row.get("micro_batch")
                    else "still does not fit"
                )
                lines.append(f"  ladder: + {row['rung']:<22} {outcome}")
        if plan.get("fits_with"):
            fitted = plan["fits_with"]
            lines.append(
                f"  next: {_override_text(fitted['overrides'])} → {_gib(fitted['total'])} GiB, "
                f"{fitted['tokens_per_s_per_gpu']:,.0f} tokens/s per {unit}"
            )
    lines += ["", f"  assumes: {plan['assumes']}", f"  leaves out: {plan['leaves_out']}"]
    return "\n".join(lines)
