"""ESM-shaped dnalm encoders (Nucleotide Transformer v1's design) → ``transformers.EsmForMaskedLM`` (no remote code).

ESM's linear layers have biases: dnalm's (``linear_bias``) or zeros. ESM's token dropout and
embedding LayerNorm are off, its rotary base is dnalm's ``rope_theta``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dnalm.hf.llama import query_key_value, query_key_value_bias
from dnalm.hf.remote import usage
from dnalm.tokenizers.base import MASK_ID, PAD_ID

WANTED = {
    "arch": "encoder",
    "positions": "rope",
    "norm": "layernorm",
    "mlp": "gelu",
    "num_segments": 1,
    "lm_head": "transform",
    "mlm_target": "tokens",
    "conv_layers": 0,
}
CLASSES = {
    "AutoModel": "EsmModel",
    "AutoModelForMaskedLM": "EsmForMaskedLM",
    "AutoModelForSequenceClassification": "EsmForSequenceClassification",
    "AutoModelForTokenClassification": "EsmForTokenClassification",
}


def mismatches(config) -> list[str]:
    wrong = [f"{k}={getattr(config, k)}" for k, v in WANTED.items() if getattr(config, k) != v]
    if config.rope_scale != 1:
        wrong.append(f"rope_scale={config.rope_scale:g} (ESM has no position interpolation)")
    if config.rope_theta != 10_000:
        wrong.append(f"rope_theta={config.rope_theta:g} (transformers before 5 fix ESM's at 10000)")
    return wrong + (["attention=performer"] if config.attention == "performer" else [])


def write(model, folder: Path) -> str:
    from transformers import EsmConfig, EsmForMaskedLM

    config = model.config
    hf_config = EsmConfig(
        vocab_size=config.vocab_size,
        mask_token_id=MASK_ID,
        pad_token_id=PAD_ID,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=config.max_seq_len,
        rope_theta=config.rope_theta,
        layer_norm_eps=config.norm_eps,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=False,
        tie_word_embeddings=False,
    )
    hf = EsmForMaskedLM(hf_config)
    missing, unexpected = hf.load_state_dict(state_dict(model), strict=False)
    left = [k for k in missing if "contact_head" not in k and not k.endswith("inv_freq")]
    if left or unexpected:
        raise RuntimeError(f"ESM export: weights left unset {left[:3]}, unknown {unexpected[:3]}")
    hf.save_pretrained(folder, safe_serialization=True)
    return "`EsmForMaskedLM.from_pretrained(folder)` (or `AutoModelForMaskedLM`) loads it; no remote code.\n\n" + usage(
        CLASSES
    )


def state_dict(model) -> dict:
    def linear(prefix, layer, weight=None, bias=None):
        weight = layer.weight if weight is None else weight
        if bias is None:
            bias = layer.bias if layer is not None and layer.bias is not None else torch.zeros(weight.shape[0])
        return {f"{prefix}.weight": weight, f"{prefix}.bias": bias}

    def norm(prefix, layer):
        return {f"{prefix}.weight": layer.weight, f"{prefix}.bias": layer.bias}

    state = {"esm.embeddings.word_embeddings.weight": model.embed.weight}
    for i, block in enumerate(model.blocks):
        p = f"esm.encoder.layer.{i}"
        (q, k, v), (q_bias, k_bias, v_bias) = (
            query_key_value(block, model.config),
            query_key_value_bias(block, model.config),
        )
        state |= linear(f"{p}.attention.self.query", None, q, q_bias)
        state |= linear(f"{p}.attention.self.key", None, k, k_bias)
        state |= linear(f"{p}.attention.self.value", None, v, v_bias)
        state |= linear(f"{p}.attention.output.dense", block.attn.out)
        state |= norm(f"{p}.attention.LayerNorm", block.norm1)
        state |= norm(f"{p}.LayerNorm", block.norm2)
        state |= linear(f"{p}.intermediate.dense", block.mlp.up)
        state |= linear(f"{p}.output.dense", block.mlp.down)
    state |= norm("esm.encoder.emb_layer_norm_after", model.norm)
    state |= linear("lm_head.dense", model.head_transform.dense)
    state |= norm("lm_head.layer_norm", model.head_transform.norm)
    state["lm_head.decoder.weight"] = model.head.weight
    state["lm_head.bias"] = model.head.bias if model.head.bias is not None else torch.zeros(model.config.vocab_size)
    return {k: v.detach().clone().float() for k, v in state.items()}


def config_from_hf(hf: dict) -> tuple[dict, list[str]]:
    """dnalm ModelConfig settings for an ``EsmForMaskedLM`` config.json (Nucleotide Transformer v1), and what dnalm
    lacks."""
    wrong = []
    if hf.get("is_folding_model"):
        wrong.append("is_folding_model true (ESMFold)")
    if hf.get("token_dropout"):
        wrong.append("token_dropout true (ESM's rescaling of masked inputs is not in dnalm)")
    if hf.get("emb_layer_norm_before"):
        wrong.append("emb_layer_norm_before true (dnalm has no norm after the embedding)")
    if hf.get("hidden_act", "gelu") != "gelu":
        wrong.append(f"hidden_act {hf['hidden_act']!r} (dnalm's ESM-shaped MLP is GELU)")
    kind = hf.get("position_embedding_type", "absolute")
    positions = {"absolute": "learned", "rotary": "rope"}.get(kind)
    if positions is None:
        wrong.append(f"position_embedding_type {kind!r} (dnalm imports absolute and rotary)")
    max_len = hf.get("max_position_embeddings", 1026)
    if positions == "learned":
        if hf.get("pad_token_id") is None:
            wrong.append("pad_token_id missing (ESM's absolute positions start after it)")
        else:
            max_len -= hf["pad_token_id"] + 1  # ESM numbers real tokens from pad_token_id + 1
    rope = hf.get("rope_parameters") or {}
    settings = dict(
        arch="encoder",
        positions=positions or "rope",
        norm="layernorm",
        mlp="gelu",
        lm_head="transform",
        linear_bias=True,
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        mlp_hidden=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        max_seq_len=max(max_len, 8),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10_000.0)),
    )
    return settings, wrong


def dnalm_state(hf: dict, config, hf_config: dict) -> dict:
    """The inverse of ``state_dict``: ESM's weight names → dnalm's (a tied decoder reads the embedding)."""
    from dnalm.hf.llama import halves_order

    if not any(k.startswith("esm.") for k in hf):
        hf = {f"esm.{k}" if not k.startswith("lm_head.") else k: v for k, v in hf.items()}
    back = torch.argsort(halves_order(config.head_dim))
    heads, head_dim = config.n_heads, config.head_dim
    rotated = config.positions == "rope"

    def unrotated(tensor):
        """Query or key rows (weights or biases) from ESM's rotation by halves to dnalm's interleaved pairs, per
        head."""
        return tensor.view(heads, head_dim, -1)[:, back].reshape(tensor.shape) if rotated else tensor

    def pair(target, source):
        return {f"{target}.{n}": hf[f"{source}.{n}"] for n in ("weight", "bias")}

    embed = hf["esm.embeddings.word_embeddings.weight"]
    state = {"embed.weight": embed}
    if config.positions == "learned":
        state["positions.weight"] = hf["esm.embeddings.position_embeddings.weight"][hf_config["pad_token_id"] + 1 :]
    for i in range(config.n_layers):
        p = f"esm.encoder.layer.{i}"
        for n in ("weight", "bias"):
            q, k, v = (hf[f"{p}.attention.self.{name}.{n}"] for name in ("query", "key", "value"))
            state[f"blocks.{i}.attn.qkv.{n}"] = torch.cat([unrotated(q), unrotated(k), v])
        state |= pair(f"blocks.{i}.attn.out", f"{p}.attention.output.dense")
        state |= pair(f"blocks.{i}.norm1", f"{p}.attention.LayerNorm")
        state |= pair(f"blocks.{i}.norm2", f"{p}.LayerNorm")
        state |= pair(f"blocks.{i}.mlp.up", f"{p}.intermediate.dense")
        state |= pair(f"blocks.{i}.mlp.down", f"{p}.output.dense")
    state |= pair("norm", "esm.encoder.emb_layer_norm_after")
    state |= pair("head_transform.dense", "lm_head.dense")
    state |= pair("head_transform.norm", "lm_head.layer_norm")
    state["head.weight"] = hf.get("lm_head.decoder.weight", embed)
    state["head.bias"] = hf["lm_head.bias"]
    return state
