"""ESM-shaped dnalm encoders (Nucleotide Transformer v1's design) → ``transformers.EsmForMaskedLM`` (no remote code).

dnalm's linear layers have no bias; ESM's biases are written as zeros. ESM's token dropout and
embedding LayerNorm are off, its rotary base is dnalm's ``rope_theta``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dnalm.hf.llama import query_key_value
from dnalm.tokenizers.base import MASK_ID, PAD_ID

WANTED = {"arch": "encoder", "positions": "rope", "norm": "layernorm", "mlp": "gelu", "num_segments": 1,
          "lm_head": "transform", "mlm_target": "tokens", "conv_layers": 0}


def mismatches(config) -> list[str]:
    wrong = [f"{k}={getattr(config, k)}" for k, v in WANTED.items() if getattr(config, k) != v]
    if config.rope_theta != 10_000:
        wrong.append(f"rope_theta={config.rope_theta:g} (transformers before 5 fix ESM's at 10000)")
    return wrong + (["attention=performer"] if config.attention == "performer" else [])


def write(model, folder: Path) -> str:
    from transformers import EsmConfig, EsmForMaskedLM

    config = model.config
    hf_config = EsmConfig(
        vocab_size=config.vocab_size, mask_token_id=MASK_ID, pad_token_id=PAD_ID, hidden_size=config.d_model,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, intermediate_size=config.hidden,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=config.max_seq_len,
        rope_theta=config.rope_theta, layer_norm_eps=config.norm_eps, position_embedding_type="rotary",
        emb_layer_norm_before=False, token_dropout=False, tie_word_embeddings=False,
    )
    hf = EsmForMaskedLM(hf_config)
    missing, unexpected = hf.load_state_dict(state_dict(model), strict=False)
    left = [k for k in missing if "contact_head" not in k and not k.endswith("inv_freq")]
    if left or unexpected:
        raise RuntimeError(f"ESM export: weights left unset {left[:3]}, unknown {unexpected[:3]}")
    hf.save_pretrained(folder, safe_serialization=True)
    return "`EsmForMaskedLM.from_pretrained(folder)` (or `AutoModelForMaskedLM`) loads it; no remote code."


def state_dict(model) -> dict:
    def linear(prefix, layer, weight=None):
        weight = layer.weight if weight is None else weight
        return {f"{prefix}.weight": weight, f"{prefix}.bias": torch.zeros(weight.shape[0])}

    def norm(prefix, layer):
        return {f"{prefix}.weight": layer.weight, f"{prefix}.bias": layer.bias}

    state = {"esm.embeddings.word_embeddings.weight": model.embed.weight}
    for i, block in enumerate(model.blocks):
        p = f"esm.encoder.layer.{i}"
        q, k, v = query_key_value(block, model.config)
        state |= linear(f"{p}.attention.self.query", None, q)
        state |= linear(f"{p}.attention.self.key", None, k)
        state |= linear(f"{p}.attention.self.value", None, v)
        state |= linear(f"{p}.attention.output.dense", block.attn.out)
        state |= norm(f"{p}.attention.LayerNorm", block.norm1)
        state |= norm(f"{p}.LayerNorm", block.norm2)
        state |= linear(f"{p}.intermediate.dense", block.mlp.up)
        state |= linear(f"{p}.output.dense", block.mlp.down)
    state |= norm("esm.encoder.emb_layer_norm_after", model.norm)
    state |= linear("lm_head.dense", model.head_transform.dense)
    state |= norm("lm_head.layer_norm", model.head_transform.norm)
    state["lm_head.decoder.weight"] = model.head.weight
    state["lm_head.bias"] = torch.zeros(model.config.vocab_size)
    return {k: v.detach().clone().float() for k, v in state.items()}
