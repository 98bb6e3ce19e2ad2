"""Llama-shaped dnalm decoders → ``transformers.LlamaForCausalLM`` (no remote code)."""

from __future__ import annotations

from pathlib import Path

import torch

WANTED = {"arch": "decoder", "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "num_segments": 1, "lm_head": "linear",
          "mlm_target": "tokens"}


def mismatches(config) -> list[str]:
    wrong = [f"{k}={getattr(config, k)}" for k, v in WANTED.items() if getattr(config, k) != v]
    return wrong + (["attention=performer"] if config.attention == "performer" else [])


def query_key_value(block, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's (d, d) query, key and value weights, queries and keys permuted for rotation by halves.

    dnalm rotates interleaved pairs (0,1),(2,3)…; Llama and ESM rotate halves (0, D/2),(1, D/2+1)…:
    within every head, take the even dims first, then the odd.
    """
    heads, head_dim, d = config.n_heads, config.head_dim, config.d_model
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    q, k, v = block.attn.qkv.weight.view(3, heads, head_dim, d)
    return q[:, order].reshape(d, d), k[:, order].reshape(d, d), v.reshape(d, d)


def write(model, folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = model.config
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.hidden,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    )
    hf = LlamaForCausalLM(hf_config)
    hf.load_state_dict(state_dict(model), strict=not config.tie_embeddings)
    hf.save_pretrained(folder, safe_serialization=True)
    return "`LlamaForCausalLM.from_pretrained(folder)` (or `AutoModelForCausalLM`) loads it; no remote code."


def state_dict(model) -> dict:
    state = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.head.weight}
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
