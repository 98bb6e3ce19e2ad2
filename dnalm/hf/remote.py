"""Any other dnalm transformer → ``modeling_dnalm.py`` written beside its weights (``trust_remote_code=True``)."""

from __future__ import annotations

import shutil
from pathlib import Path

MODELING = Path(__file__).with_name("modeling_dnalm.py")


def mismatches(config) -> list[str]:
    wrong = []
    if config.arch == "cnn":
        wrong.append("arch=cnn")
    if config.attention == "performer":
        wrong.append("attention=performer (its random features are not exported)")
    if config.mlm_target != "tokens":
        wrong.append("mlm_target=bases (transformers' masked-LM heads predict token ids)")
    return wrong


def write(model, folder: Path) -> str:
    from dnalm.hf.modeling_dnalm import DnalmConfig, DnalmForCausalLM, DnalmForMaskedLM

    encoder = model.config.arch == "encoder"
    cls = DnalmForMaskedLM if encoder else DnalmForCausalLM
    auto = "AutoModelForMaskedLM" if encoder else "AutoModelForCausalLM"
    settings = model.config.model_dump()
    hf_config = DnalmConfig(**settings | {"tie_embeddings": False}, tie_word_embeddings=False, pad_token_id=0,
                            architectures=[cls.__name__],
                            auto_map={"AutoConfig": "modeling_dnalm.DnalmConfig", auto: f"modeling_dnalm.{cls.__name__}"})
    hf = cls(hf_config)
    state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    hf.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(MODELING, folder / MODELING.name)
    return (f"`{auto}.from_pretrained(folder, trust_remote_code=True)` loads it: `modeling_dnalm.py` here "
            f"is dnalm's {model.config.positions} {model.config.arch}, written for transformers.")
