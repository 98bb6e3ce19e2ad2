"""``dnalm convert --to hf``: a Hugging Face folder for every transformer dnalm trains, with its tokenizer
(``dnalm.hf.importing`` is the other direction, ``dnalm convert --from-hf``).

The first exporter of ``EXPORTERS`` whose design matches the model writes it:

- ``llama``: decoders with RoPE, RMSNorm and SwiGLU → ``LlamaForCausalLM``, no remote code;
- ``esm``: encoders with RoPE, LayerNorm, GELU and the dense-GELU-norm LM head (``encoder-small-esm``)
  → ``EsmForMaskedLM``, no remote code;
- ``remote``: every other transformer (ALiBi, learned positions, multi-view segments, Performer, …) →
  ``modeling_dnalm.py`` beside the weights, loaded with ``trust_remote_code=True``, its ``auto_map``
  naming the backbone, the language model and sequence and token classification.

Each writes the same logits as dnalm in fp32 (tested), ``tokenizer.json`` for ``AutoTokenizer``
where one reproduces dnalm's ids (``dnalm.hf.tokenizer``), dnalm's own tokenizer under
``dnalm_tokenizer/``, and a README.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dnalm.bundle import BundleError
from dnalm.hf import esm, llama, remote
from dnalm.hf.tokenizer import NoHfTokenizer, save_hf_tokenizer
from dnalm.utils.errors import DnalmError
from dnalm.utils.files import staged_folder

HOW_TO_LOAD = "## Hugging Face"
EXPORTERS = {"llama": llama, "esm": esm, "remote": remote}


class HfExportError(DnalmError):
    """A model that no Hugging Face exporter writes, with the reason."""


def choose_exporter(config) -> str:
    """The name of the first exporter that takes ``config``; an error listing why each refused otherwise."""
    reasons = {}
    for name, exporter in EXPORTERS.items():
        mismatched = exporter.mismatches(config)
        if not mismatched:
            return name
        reasons[name] = ", ".join(mismatched)
    raise HfExportError(
        "--to hf cannot export this model: "
        + "; ".join(f"{k}: {v}" for k, v in reasons.items())
        + ". Use the default bundle format instead"
    )


def how_to_load(folder: Path) -> str:
    """The README's section on loading the folder in transformers."""
    return (Path(folder) / "README.md").read_text().split(HOW_TO_LOAD, 1)[-1].strip()


def export_hf(model, tokenizer, out: Path, card: str = "") -> Path:
    """Write the folder atomically; return it. Its README says which class loads it and how."""
    name = choose_exporter(model.config)
    if importlib.util.find_spec("transformers") is None:
        raise HfExportError("--to hf needs transformers: pip install -e '.[hf]'")
    with staged_folder(out, BundleError) as staging:
        loading = EXPORTERS[name].write(model, staging)
        tokenizer.save(staging / "dnalm_tokenizer")
        try:
            save_hf_tokenizer(tokenizer, staging, model.config.max_seq_len)
            flag = ", trust_remote_code=True" if name == "remote" else ""  # else transformers asks about the code
            tokenizer_note = (
                f"`AutoTokenizer.from_pretrained(folder{flag})` gives dnalm's ids (no special tokens added; "
                "letters other than A/C/G/T/N become [UNK])."
            )
        except NoHfTokenizer as exc:
            tokenizer_note = f"No transformers tokenizer: {exc}."
        (staging / "README.md").write_text(
            f"{card}\n{HOW_TO_LOAD}\n\n{loading}\n\n{tokenizer_note}\n"
            "dnalm's own tokenizer is under `dnalm_tokenizer/`.\n"
        )
    return out
