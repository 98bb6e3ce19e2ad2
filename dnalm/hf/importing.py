"""``dnalm convert --from-hf FOLDER --out BUNDLE``: a ``transformers`` folder → a dnalm bundle.

The folder is read as files (``config.json``, safetensors or ``pytorch_model.bin``), never run: a
remote-code folder's Python is not executed. ``model_type`` picks the layout (``IMPORTERS``):

- ``esm``: ``EsmForMaskedLM``, Nucleotide Transformer v1's layout (absolute or rotary positions,
  biases in every linear layer, GELU) → an encoder with ``linear_bias``;
- ``llama``: ``LlamaForCausalLM`` → a decoder;
- ``dnalm``: dnalm's own remote-code exports, exactly.

The tokenizer comes from ``dnalm.hf.vocab``. The bundle is written only once every weight has been
placed with its shape checked; anything missing names the file and the field, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dnalm.bundle import is_bundle, save_bundle
from dnalm.hf import esm, llama, remote
from dnalm.hf.vocab import from_folder
from dnalm.utils.errors import DnalmError

IMPORTERS = {"esm": esm, "llama": llama, "dnalm": remote}
# the architectures each model_type imports as; None: any of dnalm's own
ARCHITECTURES = {"esm": {"EsmForMaskedLM"}, "llama": {"LlamaForCausalLM"}, "dnalm": None}
SUPPORTED = "EsmForMaskedLM (Nucleotide Transformer v1), LlamaForCausalLM, or a dnalm remote-code export"


class HfImportError(DnalmError):
    """A folder that cannot become a bundle, naming the file and the field."""


def read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not folder.is_dir():
        raise HfImportError(f"{folder}: no such folder")
    if not path.is_file():
        raise HfImportError(f"{path}: missing (a transformers folder has its config.json)")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise HfImportError(f"{path}: not JSON ({exc})") from None
    kind = config.get("model_type")
    if kind not in IMPORTERS:
        raise HfImportError(f"{path}: model_type {kind!r} is not imported; dnalm imports {SUPPORTED}")
    wanted, named = ARCHITECTURES[kind], set(config.get("architectures") or [])
    if wanted and named and not named & wanted:
        raise HfImportError(f"{path}: architectures {sorted(named)} is not imported; dnalm imports {SUPPORTED}")
    return config


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the folder in fp32, and the file(s) they came from."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}, "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state |= {k: v.float() for k, v in load_file(str(folder / shard)).items()}
        return state, index.name
    if (folder / "pytorch_model.bin").is_file():
        return {
            k: v.float() for k, v in torch.load(folder / "pytorch_model.bin", weights_only=True).items()
        }, "pytorch_model.bin"
    raise HfImportError(f"{folder}: no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


# buffers and heads that carry no weights dnalm uses (rotary frequencies, ESM's contact head and pooler)
IGNORED = ("inv_freq", "position_ids", "contact_head.", "pooler.")


def normalized(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight names as transformers' modules hold them: LayerNorm's legacy gamma/beta (which transformers 5
    still writes for ESM) read as weight/bias; buffers and unused heads dropped."""
    out = {}
    for key, tensor in weights.items():
        if any(part in key for part in IGNORED):
            continue
        out[
            key.removesuffix(".gamma") + ".weight"
            if key.endswith(".gamma")
            else key.removesuffix(".beta") + ".bias"
            if key.endswith(".beta")
            else key
        ] = tensor
    return out


def build(folder: Path, tokenizer_spec: str | None = None):
    """(dnalm model with the folder's weights in eval mode, the mapped tokenizer, the folder's config.json)."""
    from dnalm.models import ModelConfig, build_model
    from dnalm.models.config import ModelConfigError
    from dnalm.utils.errors import validated

    folder = Path(folder)
    hf_config = read_hf_config(folder)
    kind = hf_config["model_type"]
    layout = IMPORTERS[kind]
    try:
        settings, lacking = layout.config_from_hf(hf_config)
    except KeyError as exc:
        raise HfImportError(f"{folder / 'config.json'}: {exc.args[0]} is missing") from None
    if lacking:
        raise HfImportError(f"{folder / 'config.json'}: {lacking[0]}; dnalm imports {SUPPORTED}")
    mapped = from_folder(folder, settings["vocab_size"], tokenizer_spec)
    settings |= {"name": settings.get("name") or folder.name, "vocab_size": mapped.tokenizer.vocab_size}
    config = validated(ModelConfig, settings, ModelConfigError, str(folder / "config.json"))
    weights, source = read_weights(folder)
    weights = normalized(weights)
    try:
        state = layout.dnalm_state(weights, config, hf_config)
    except KeyError as exc:
        raise HfImportError(f"{folder / source}: weight {exc.args[0]} is missing") from None
    if mapped.rows is not None:
        state = _reordered(state, mapped.rows, folder / source)
    model = build_model(config)
    _load(model, state, folder / source)
    return model.eval(), mapped, hf_config


def _reordered(state: dict, rows: list[int], where: Path) -> dict:
    index = torch.tensor(rows)
    out = dict(state)
    for key in ("embed.weight", "head.weight", "head.bias"):
        if key in state:
            if state[key].shape[0] <= int(index.max()):
                raise HfImportError(
                    f"{where}: {key} has {state[key].shape[0]} rows, the tokenizer needs row {int(index.max())}"
                )
            out[key] = state[key][index]
    return out


def _load(model, state: dict, where: Path) -> None:
    expected = model.state_dict()
    if model.config.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "head.weight"}
        expected.pop("head.weight", None)
    for key, tensor in expected.items():
        if key not in state:
            raise HfImportError(f"{where}: no weight for {key}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise HfImportError(
                f"{where}: {key} has shape {tuple(state[key].shape)}, config.json makes it {tuple(tensor.shape)}"
            )
    unused = sorted(set(state) - set(expected))
    if unused:
        raise HfImportError(f"{where}: weights dnalm has no place for, such as {unused[0]}")
    model.load_state_dict(state, strict=not model.config.tie_embeddings)


def import_hf(folder: str | Path, out: str | Path, tokenizer_spec: str | None = None) -> Path:
    folder = Path(folder)
    if is_bundle(folder):
        raise DnalmError(f"{folder}: already a dnalm bundle, nothing to import: use it as it is (--model {folder})")
    model, mapped, hf_config = build(folder, tokenizer_spec)
    config = model.config
    card = (
        "\n".join(
            [
                f"# {config.name} ({'masked' if config.arch == 'encoder' else 'causal'} DNA language model, imported "
                "into dnalm)",
                "",
                f"- imported from: the transformers folder `{folder.name}` ({hf_config['model_type']}, "
                f"{', '.join(hf_config.get('architectures') or ['architecture not named'])})",
                f"- architecture: {config.arch}, {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} "
                "heads, "
                f"{config.positions} positions, {config.norm}, {config.mlp}"
                + (", linear biases" if config.linear_bias else ""),
                f"- tokenizer: {mapped.tokenizer.name} (fingerprint {mapped.tokenizer.fingerprint}), from "
                f"{Path(mapped.source).name}"
                + (": the vocabulary reordered to dnalm's ids" if mapped.rows is not None else ": ids kept"),
                "",
                "Continue pretraining with `model.init_from: BUNDLE`; load it with `model, tokenizer = "
                "dnalm.load_pretrained(BUNDLE)`.",
            ]
        )
        + "\n"
    )
    extra = {
        "imported": {
            "folder": folder.name,
            "model_type": hf_config["model_type"],
            "architectures": hf_config.get("architectures"),
            "token_rows": mapped.rows,
        }
    }
    return save_bundle(out, model, mapped.tokenizer, card=card, extra=extra)
