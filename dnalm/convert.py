"""``dnalm convert``: a DeepSpeed checkpoint (any ZeRO stage, any world size) → a bundle, or a Hugging Face folder.

The checkpoint must be complete: its ``COMPLETE`` marker and every rank's files are checked
first, and a missing piece is named. The weights are consolidated with DeepSpeed's own
``zero_to_fp32`` reader. ``--to hf`` writes a ``LlamaForCausalLM`` folder for decoders that match
Llama's design (RoPE, RMSNorm, SwiGLU, softmax attention); other settings are refused, with the
supported ones listed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dnalm.bundle import BundleError, save_bundle
from dnalm.errors import DnalmError
from dnalm.files import staged_folder
from dnalm.train.checkpoint import MARKER, TAG, complete_checkpoints, read_meta



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
            raise ConvertError(f"{source}: no complete checkpoint under checkpoints/ (none has its {MARKER} marker)")
        return complete[-1]
    return source


def check_complete(checkpoint: Path) -> dict:
    if not (checkpoint / MARKER).is_file():
        raise ConvertError(f"{checkpoint}: incomplete checkpoint: no {MARKER} marker (the run stopped while saving it)")
    meta = read_meta(checkpoint)
    world = meta["world_size"]
    state = checkpoint / TAG
    stage3 = any(state.glob("zero_pp_rank_*_model_states.pt"))
    needed = [f"rng-rank{r}.pt" for r in range(world)]
    needed += [f"{TAG}/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in range(world)
               for kind in (("model", "optim") if stage3 else ("optim",))]
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
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=TAG)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise ConvertError(f"{checkpoint}: weights do not match model.yaml (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), load_folder(checkpoint / "tokenizer"), meta


def model_card(model, tokenizer, meta: dict, checkpoint: Path) -> str:
    from dnalm.models import count_parameters

    config = model.config
    run_dir = checkpoint.parent.parent
    last = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            last |= {k: record[k] for k in ("loss", "val_loss", "val_masked_accuracy", "val_perplexity") if k in record}
    data = meta.get("data", {})
    genomes = []
    manifest = Path(data.get("path", "")) / "manifest.json"
    if manifest.is_file():
        genomes = [g["path"] for g in json.loads(manifest.read_text())["genomes"]]
    lines = [
        f"# {config.name} ({'masked' if config.arch != 'decoder' else 'causal'} DNA language model, dnalm)", "",
        f"- architecture: {config.arch}, {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
        f"{config.attention} attention, {config.positions} positions, {config.norm}, {config.mlp}",
        f"- parameters: {count_parameters(model):,}",
        f"- tokenizer: {tokenizer.name} (vocab {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint})",
        f"- training data: {', '.join(genomes) or data.get('path', 'unknown')} (prep plan {data.get('plan_fingerprint', '?')})",
        f"- trained: {meta['step']} steps, {meta.get('tokens_seen', 0):,} tokens seen, {meta['world_size']} processes",
        f"- final losses: " + (", ".join(f"{k} {v:.4f}" for k, v in last.items()) or "not recorded"),
        f"- converted from: {checkpoint}", "",
        "Load it with `model, tokenizer = dnalm.load_pretrained(PATH)`.",
    ]
    return "\n".join(lines) + "\n"


def convert(source: str | Path, out: str | Path, to: str = "bundle", dtype: str = "float32") -> Path:
    checkpoint = resolve_checkpoint(source)
    model, tokenizer, meta = load_checkpoint_model(checkpoint)
    if to == "hf":
        return export_llama(model, tokenizer, Path(out), model_card(model, tokenizer, meta, checkpoint))
    return save_bundle(out, model, tokenizer, card=model_card(model, tokenizer, meta, checkpoint),
                       extra={"training": {"step": meta["step"], "tokens_seen": meta.get("tokens_seen")}},
                       dtype=getattr(torch, dtype))


HF_SUPPORTED = "arch decoder, positions rope, norm rmsnorm, mlp swiglu, attention eager/sdpa/flash, num_segments 1"


def export_llama(model, tokenizer, out: Path, card: str = "") -> Path:
    """A transformers ``LlamaForCausalLM`` folder with the same logits (fp32)."""
    config = model.config
    wanted = {"arch": "decoder", "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "num_segments": 1}
    wrong = [f"{k}={getattr(config, k)}" for k, v in wanted.items() if getattr(config, k) != v]
    if config.attention == "performer":
        wrong.append("attention=performer")
    if wrong:
        raise ConvertError(f"--to hf exports Llama-shaped models only ({HF_SUPPORTED}); this model has {', '.join(wrong)}. "
                           "Use the default bundle format instead")
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ConvertError("--to hf needs transformers: pip install -e '.[hf]'") from None
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.hidden,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    )
    hf = LlamaForCausalLM(hf_config)
    hf.load_state_dict(llama_state_dict(model), strict=not config.tie_embeddings)
    with staged_folder(out, BundleError) as staging:
        hf.save_pretrained(staging, safe_serialization=True)
        tokenizer.save(staging / "dnalm_tokenizer")
        (staging / "README.md").write_text(card + "\nExported to transformers' LlamaForCausalLM; token ids are dnalm's "
                                           "(see dnalm_tokenizer/).\n")
    return out


def llama_state_dict(model) -> dict:
    """dnalm decoder weights → Llama names. RoPE: dnalm rotates interleaved pairs, Llama rotates halves."""
    config = model.config
    heads, head_dim, d = config.n_heads, config.head_dim, config.d_model
    # within every head, dims (0,1),(2,3)… become (0, D/2),(1, D/2+1)…: take even dims first, then odd
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.head.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.view(3, heads, head_dim, d)
        prefix = f"model.layers.{i}"
        state[f"{prefix}.self_attn.q_proj.weight"] = q[:, order].reshape(d, d)
        state[f"{prefix}.self_attn.k_proj.weight"] = k[:, order].reshape(d, d)
        state[f"{prefix}.self_attn.v_proj.weight"] = v.reshape(d, d)
        state[f"{prefix}.self_attn.o_proj.weight"] = block.attn.out.weight
        gate, up = block.mlp.up.weight.chunk(2, dim=0)
        state[f"{prefix}.mlp.gate_proj.weight"] = gate
        state[f"{prefix}.mlp.up_proj.weight"] = up
        state[f"{prefix}.mlp.down_proj.weight"] = block.mlp.down.weight
        state[f"{prefix}.input_layernorm.weight"] = block.norm1.weight
        state[f"{prefix}.post_attention_layernorm.weight"] = block.norm2.weight
    return {k: v.detach().clone().float() for k, v in state.items()}
