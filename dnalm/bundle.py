"""The portable model folder: ``config.json``, ``model.safetensors``, ``tokenizer/``, ``README.md`` (model card).

Knows nothing of DeepSpeed: ``dnalm.convert`` makes bundles from training checkpoints, and
fine-tuning and generation start from bundles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dnalm.utils.errors import DnalmError
from dnalm.utils.files import staged_folder

if TYPE_CHECKING:
    from dnalm.models import DnaModel

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer"
CARD = "README.md"
FORMAT = "dnalm-bundle-1"


class BundleError(DnalmError):
    """A bundle folder that is missing a piece or does not match its config."""


def save_bundle(
    folder: str | Path,
    model: DnaModel,
    tokenizer,
    *,
    card: str = "",
    extra: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a bundle atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    with staged_folder(folder, BundleError) as staging:
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("head.weight", None)
        save_file(state, str(staging / WEIGHTS), metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "model": model.config.model_dump(),
            "dtype": str(dtype).removeprefix("torch."),
            "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint},
        } | (extra or {})
        (staging / CONFIG).write_text(json.dumps(config, indent=1))
        tokenizer.save(staging / TOKENIZER)
        (staging / CARD).write_text(card)
    return Path(folder)


def is_bundle(folder: str | Path) -> bool:
    """Whether ``folder`` holds a dnalm bundle's config.json (not a transformers one)."""
    try:
        return json.loads((Path(folder) / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such bundle folder")
    if (folder / "checkpoints").is_dir() or (folder / "meta.json").is_file():
        raise BundleError(
            f"{folder}: a training run or checkpoint, not a bundle; make one with `dnalm convert {folder} --out BUNDLE`"
        )
    if (
        (folder / "config.json").is_file()
        and not (folder / TOKENIZER).exists()
        and json.loads((folder / "config.json").read_text()).get("format") != FORMAT
    ):
        raise BundleError(
            f"{folder}: a Hugging Face folder, not a dnalm bundle; import it with `dnalm convert --from-hf "
            f"{folder} --out BUNDLE`"
        )
    for piece in (CONFIG, WEIGHTS, TOKENIZER):
        if not (folder / piece).exists():
            raise BundleError(f"{folder}: not a dnalm bundle (missing {piece})")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise BundleError(f"{folder}/{CONFIG}: format {config.get('format')!r}, expected {FORMAT}")
    return config


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) from a bundle folder."""
    from safetensors.torch import load_file

    from dnalm.models import ModelConfig, build_model
    from dnalm.tokenizers import load_folder

    folder = Path(folder)
    config = read_config(folder)
    tokenizer = load_folder(folder / TOKENIZER)
    if tokenizer.fingerprint != config["tokenizer"]["fingerprint"]:
        raise BundleError(f"{folder}: tokenizer fingerprint {tokenizer.fingerprint} does not match config.json")
    model = build_model(ModelConfig(**config["model"]))
    state = load_file(str(folder / WEIGHTS))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    allowed_missing = {"head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise BundleError(
            f"{folder}: weights do not match the config (missing {sorted(set(missing) - allowed_missing)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), tokenizer
