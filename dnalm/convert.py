"""``dnalm convert``: a DeepSpeed checkpoint (any ZeRO stage, any world size) → a bundle, or a Hugging Face folder.

The checkpoint must be complete: its ``COMPLETE`` marker and every rank's files are checked
first, and a missing piece is named. The weights are consolidated with DeepSpeed's own
``zero_to_fp32`` reader. ``--to hf`` writes a Hugging Face folder (``dnalm.hf``).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from dnalm.bundle import is_bundle, save_bundle
from dnalm.train.checkpoint import MARKER, TAG, complete_checkpoints, damaged, read_meta
from dnalm.utils.errors import DnalmError


class ConvertError(DnalmError):
    """A checkpoint that cannot be converted, with the missing piece or unsupported setting named."""


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint folder, or the newest complete one of a run folder."""
    source = Path(source)
    if not source.is_dir():
        raise ConvertError(f"{source}: no such run or checkpoint folder")
    if (source / "checkpoints").is_dir():
        complete = complete_checkpoints(source)
        if not complete:
            raise ConvertError(
                f"{source}: the run has no complete checkpoint yet (none under checkpoints/ has its "
                f"{MARKER} marker); it saves every checkpoint.interval steps and at its end"
            )
        return complete[-1]
    if is_bundle(source):
        raise ConvertError(
            f"{source}: already a dnalm bundle, nothing to convert: use it as it is (--model {source}, "
            f"dnalm.load_pretrained), or export it with `dnalm convert RUN --to hf` from its run"
        )
    if (source / "config.json").is_file() and not (source / TAG).is_dir():
        raise ConvertError(
            f"{source}: a Hugging Face folder, not a training run; import it with `dnalm convert --from-hf {source} "
            "--out BUNDLE`"
        )
    if not (source / TAG).is_dir() and not (source / MARKER).is_file():
        raise ConvertError(
            f"{source}: neither a run folder (no checkpoints/) nor a checkpoint (no {TAG}/); give RUN "
            "or RUN/checkpoints/step-N"
        )
    return source


def check_complete(checkpoint: Path) -> dict:
    if not (checkpoint / MARKER).is_file():
        raise ConvertError(f"{checkpoint}: incomplete checkpoint: no {MARKER} marker (the run stopped while saving it)")
    meta = read_meta(checkpoint)
    world = meta["world_size"]
    state = checkpoint / TAG
    stage3 = any(state.glob("zero_pp_rank_*_model_states.pt"))
    needed = [f"rng-rank{r}.pt" for r in range(world)]
    needed += [
        f"{TAG}/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt"
        for r in range(world)
        for kind in (("model", "optim") if stage3 else ("optim",))
    ]
    if not stage3:
        needed.append(f"{TAG}/mp_rank_00_model_states.pt")
    needed += ["model.yaml", "tokenizer"]
    for piece in needed:
        if not (checkpoint / piece).exists():
            raise ConvertError(f"{checkpoint}: incomplete checkpoint: {piece} is missing")
    return meta


def load_checkpoint_model(checkpoint: Path):
    """(model with consolidated fp32 weights, tokenizer, meta) from a complete checkpoint."""
    meta = check_complete(checkpoint)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from dnalm.models import ModelConfig, build_model
    from dnalm.tokenizers import load_folder

    model = build_model(ModelConfig.from_yaml(checkpoint / "model.yaml"))
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=TAG)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise damaged(checkpoint, converting=True) or exc from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise ConvertError(
            f"{checkpoint}: weights do not match model.yaml (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval(), load_folder(checkpoint / "tokenizer"), meta


def model_card(model, tokenizer, meta: dict, checkpoint: Path) -> str:
    from dnalm.models import count_parameters

    config = model.config
    run_dir = checkpoint.parent.parent
    last: dict[str, float] = {}  # the newest value of each metric
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        from dnalm.train.metrics import read

        for record in read(run_dir):
            last |= {k: record[k] for k in ("loss", "val_loss", "val_masked_accuracy", "val_perplexity") if k in record}
    data = meta.get("data", {})
    genomes = []
    manifest = Path(data.get("path", "")) / "manifest.json"
    if manifest.is_file():
        genomes = [Path(g["path"]).name for g in json.loads(manifest.read_text())["genomes"]]
    lines = [
        f"# {config.name} ({'masked' if config.arch != 'decoder' else 'causal'} DNA language model, dnalm)",
        "",
        f"- architecture: {config.arch}, {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
        f"{config.attention} attention, {config.positions} positions, {config.norm}, {config.mlp}",
        f"- parameters: {count_parameters(model):,}",
        f"- tokenizer: {tokenizer.name} (vocab {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint})",
        f"- training data: {', '.join(genomes) or Path(data.get('path', 'unknown')).name} "
        f"(prep fingerprint {data.get('plan_fingerprint', '?')})",
        f"- trained: {meta['step']} steps, {meta.get('tokens_seen', 0):,} tokens seen, {meta['world_size']} processes",
        "- final losses: " + (", ".join(f"{k} {v:.4f}" for k, v in last.items()) or "not recorded"),
        f"- converted from: {run_dir.name}/checkpoints/{checkpoint.name}",
        "",
        "Load it with `model, tokenizer = dnalm.load_pretrained(PATH)`.",
    ]
    return "\n".join(lines) + "\n"


def convert(source: str | Path, out: str | Path, to: str = "bundle", dtype: str = "float32") -> Path:
    checkpoint = resolve_checkpoint(source)
    model, tokenizer, meta = load_checkpoint_model(checkpoint)
    if to == "hf":
        from dnalm.hf import export_hf

        return export_hf(model, tokenizer, Path(out), model_card(model, tokenizer, meta, checkpoint))
    return save_bundle(
        out,
        model,
        tokenizer,
        card=model_card(model, tokenizer, meta, checkpoint),
        extra={
            "training": {
                "step": meta["step"],
                "tokens_seen": meta.get("tokens_seen"),
                "seq_len": meta.get("data", {}).get("seq_len"),
            }
        },
        dtype=getattr(torch, dtype),
    )
