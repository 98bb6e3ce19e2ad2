"""Any other dnalm transformer → ``modeling_dnalm.py`` written beside its weights (``trust_remote_code=True``).

``auto_map`` names every class a user of ``transformers`` reaches for: ``AutoModel`` (the backbone),
the language model of the model's kind, and sequence and token classification.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MODELING = Path(__file__).with_name("modeling_dnalm.py")
HEAD_KEYS = ("head.", "head_transform.")
BACKBONE = "dnalm."


def mismatches(config) -> list[str]:
    wrong = []
    if config.arch == "cnn":
        wrong.append("arch=cnn")
    if config.mlm_target != "tokens":
        wrong.append("mlm_target=bases (transformers' masked-LM heads predict token ids)")
    return wrong


def auto_classes(arch: str) -> dict[str, str]:
    """Auto class → the class of ``modeling_dnalm`` it loads."""
    lm = (
        ("AutoModelForMaskedLM", "DnalmForMaskedLM")
        if arch == "encoder"
        else ("AutoModelForCausalLM", "DnalmForCausalLM")
    )
    return {
        "AutoModel": "DnalmModel",
        lm[0]: lm[1],
        "AutoModelForSequenceClassification": "DnalmForSequenceClassification",
        "AutoModelForTokenClassification": "DnalmForTokenClassification",
    }


def state_dict(model) -> dict:
    """dnalm's weights under the names of ``modeling_dnalm``'s language models (backbone under ``dnalm.``)."""
    return {
        (k if k.startswith(HEAD_KEYS) else BACKBONE + k): v.detach().clone().float()
        for k, v in model.state_dict().items()
    }


def write(model, folder: Path) -> str:
    from dnalm.hf.modeling_dnalm import DnalmConfig, DnalmForCausalLM, DnalmForMaskedLM

    encoder = model.config.arch == "encoder"
    cls = DnalmForMaskedLM if encoder else DnalmForCausalLM
    classes = auto_classes(model.config.arch)
    settings = model.config.model_dump()
    # transformers' configs take any keyword at run time (their __post_init__ gets the ones that are not fields)
    hf_config = DnalmConfig(  # type: ignore[call-arg]
        **settings | {"tie_embeddings": False},
        tie_word_embeddings=False,
        pad_token_id=0,
        architectures=[cls.__name__],
        auto_map={"AutoConfig": "modeling_dnalm.DnalmConfig"}
        | {auto: f"modeling_dnalm.{name}" for auto, name in classes.items()},
    )
    hf = cls(hf_config)
    hf.load_state_dict(state_dict(model), strict=True)
    if not encoder:
        hf.generation_config = generation_config()
    hf.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(MODELING, folder / MODELING.name)
    return usage(classes, trust_remote_code=True) + (
        f"\n\n`modeling_dnalm.py` here is dnalm's {model.config.positions} {model.config.arch}, written for "
        "transformers. "
        "The sequence classifier mean-pools the final hidden states over real tokens, as `dnalm finetune` does; "
        + ("" if encoder else "the causal LM generates with a key-value cache (`model.generate`); ")
        + "`output_hidden_states=True` gives the embeddings' output and every block's."
    )


def generation_config():
    """``model.generate`` as ``dnalm generate`` samples: special tokens never drawn, no end token, sampling on."""
    from transformers import GenerationConfig

    from dnalm.tokenizers.base import NUM_SPECIAL, PAD_ID

    return GenerationConfig(
        do_sample=True,
        suppress_tokens=list(range(NUM_SPECIAL)),
        pad_token_id=PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
    )


def usage(classes, trust_remote_code: bool = False) -> str:
    """The README's snippet: one line per class."""
    remote = ", trust_remote_code=True" if trust_remote_code else ""
    lines = [
        f"model = {auto}.from_pretrained(folder{remote}{', num_labels=2' if 'Classification' in auto else ''})"
        f"  # {name}"
        for auto, name in classes.items()
    ]
    return "```python\nfrom transformers import " + ", ".join(classes) + "\n" + "\n".join(lines) + "\n```"


def config_from_hf(hf: dict) -> tuple[dict, list[str]]:
    """A dnalm remote-code export's config.json holds dnalm's settings as they were."""
    from dnalm.models import ModelConfig

    return {k: v for k, v in hf.items() if k in ModelConfig.model_fields}, []


def dnalm_state(hf: dict, config, hf_config: dict) -> dict:
    """The inverse of ``state_dict`` (folders written before the backbone prefix have none)."""
    return {k.removeprefix(BACKBONE): v for k, v in hf.items()}
