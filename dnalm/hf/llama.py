"""Llama-shaped dnalm decoders → ``transformers.LlamaForCausalLM`` (no remote code)."""

from __future__ import annotations

from pathlib import Path

import torch

from dnalm.hf.remote import generation_config, usage

WANTED = {
    "arch": "decoder",
    "positions": "rope",
    "norm": "rmsnorm",
    "mlp": "swiglu",
    "num_segments": 1,
    "lm_head": "linear",
    "mlm_target": "tokens",
    "linear_bias": False,
    "rope_scale": 1.0,
}
CLASSES = {
    "AutoModel": "LlamaModel",
    "AutoModelForCausalLM": "LlamaForCausalLM",
    "AutoModelForSequenceClassification": "LlamaForSequenceClassification",
    "AutoModelForTokenClassification": "LlamaForTokenClassification",
}


def mismatches(config) -> list[str]:
    wrong = [f"{k}={getattr(config, k)}" for k, v in WANTED.items() if getattr(config, k) != v]
    return wrong + (["attention=performer"] if config.attention == "performer" else [])


def halves_order(head_dim: int) -> torch.Tensor:
    """dnalm rotates interleaved pairs (0,1),(2,3)…; Llama and ESM rotate halves (0, D/2),(1, D/2+1)…:
    within every head, the even dims first, then the odd. ``argsort`` of it is the way back."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def query_key_value(block, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's (d, d) query, key and value weights, queries and keys permuted for rotation by halves."""
    heads, head_dim, d = config.n_heads, config.head_dim, config.d_model
    order = halves_order(head_dim)
    q, k, v = block.attn.qkv.weight.view(3, heads, head_dim, d)
    return q[:, order].reshape(d, d), k[:, order].reshape(d, d), v.reshape(d, d)


def query_key_value_bias(block, config) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The biases of ``query_key_value``, permuted the same way (None without ``linear_bias``)."""
    if block.attn.qkv.bias is None:
        return None, None, None
    order = halves_order(config.head_dim)
    q, k, v = block.attn.qkv.bias.view(3, config.n_heads, config.head_dim)
    return q[:, order].reshape(-1), k[:, order].reshape(-1), v.reshape(-1)


def write(model, folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = model.config
    # transformers' configs take any keyword at run time (their __post_init__ gets the ones that are not fields)
    hf_config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    hf = LlamaForCausalLM(hf_config)
    hf.load_state_dict(state_dict(model), strict=not config.tie_embeddings)
    hf.generation_config = generation_config()
    hf.save_pretrained(folder, safe_serialization=True)
    return (
        "`LlamaForCausalLM.from_pretrained(folder)` (or `AutoModelForCausalLM`) loads it; no remote code.\n\n"
        + usage(CLASSES)
    )


def state_dict(model) -> dict:
    state = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.head.weight,
    }
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}"
        q, k, v = query_key_value(block, model.config)
        state[f"{prefix}.self_attn.q_proj.weight"] = q
        state[f"{prefix}.self_attn.k_proj.weight"] = k
        state[f"{prefix}.self_attn.v_proj.weight"] = v
        state[f"{prefix}.self_attn.o_proj.weight"] = block.attn.out.weight
        gate, up = block.mlp.up.weight.chunk(2, dim=0)
        state[f"{prefix}.mlp.gate_proj.weight"] = gate
        state[f"{prefix}.mlp.up_proj.weight"] = up
        state[f"{prefix}.mlp.down_proj.weight"] = block.mlp.down.weight
        state[f"{prefix}.input_layernorm.weight"] = block.norm1.weight
        state[f"{prefix}.post_attention_layernorm.weight"] = block.norm2.weight
    return {k: v.detach().clone().float() for k, v in state.items()}


def config_from_hf(hf: dict) -> tuple[dict, list[str]]:
    """dnalm ModelConfig settings for a ``LlamaForCausalLM`` config.json, and what dnalm's decoder lacks."""
    heads, d = hf["num_attention_heads"], hf["hidden_size"]
    wrong = []
    if hf.get("num_key_value_heads", heads) != heads:
        wrong.append(
            f"num_key_value_heads {hf['num_key_value_heads']} ≠ num_attention_heads {heads} (grouped-query "
            "attention is not in dnalm)"
        )
    if (hf.get("head_dim") or d // heads) != d // heads:
        wrong.append(f"head_dim {hf['head_dim']} ≠ hidden_size / num_attention_heads")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            wrong.append(f"{flag} true (dnalm's decoder has biases everywhere or nowhere)")
    if hf.get("hidden_act", "silu") != "silu":
        wrong.append(f"hidden_act {hf['hidden_act']!r} (dnalm's SwiGLU is silu)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        wrong.append(f"rope type {kind!r} (dnalm has plain RoPE and linear position interpolation)")
    settings = dict(
        arch="decoder",
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        lm_head="linear",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        mlp_hidden=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10_000.0)),
        rope_scale=rope.get("factor", 1.0) if kind == "linear" else 1.0,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    return settings, wrong


def dnalm_state(hf: dict, config, hf_config: dict) -> dict:
    """The inverse of ``state_dict``: Llama's weight names → dnalm's (a tied head reads the embedding)."""
    back = torch.argsort(halves_order(config.head_dim))
    heads, head_dim, d = config.n_heads, config.head_dim, config.d_model
    state = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    state["head.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
    for i in range(config.n_layers):
        p = f"model.layers.{i}"
        q, k = (hf[f"{p}.self_attn.{n}_proj.weight"].view(heads, head_dim, d)[:, back].reshape(d, d) for n in "qk")
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, hf[f"{p}.self_attn.v_proj.weight"]])
        state[f"blocks.{i}.attn.out.weight"] = hf[f"{p}.self_attn.o_proj.weight"]
        state[f"blocks.{i}.mlp.up.weight"] = torch.cat([hf[f"{p}.mlp.gate_proj.weight"], hf[f"{p}.mlp.up_proj.weight"]])
        state[f"blocks.{i}.mlp.down.weight"] = hf[f"{p}.mlp.down_proj.weight"]
        state[f"blocks.{i}.norm1.weight"] = hf[f"{p}.input_layernorm.weight"]
        state[f"blocks.{i}.norm2.weight"] = hf[f"{p}.post_attention_layernorm.weight"]
    return state
