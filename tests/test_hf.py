"""Hugging Face folders: Llama, ESM and remote-code models with dnalm's logits, and tokenizers with
dnalm's ids, all loaded by transformers in a process that cannot import dnalm."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dnalm.hf import HfExportError, export_hf
from dnalm.models import build_model, get_config
from dnalm.tokenizers import KmerTokenizer, NucleotideTokenizer, ViewTokenizer
from tests.conftest import REPO

# run in a child whose imports of dnalm fail, as on a machine with only transformers installed
WITHOUT_DNALM = """
import sys
class NoDnalm:
    def find_spec(self, name, path=None, target=None):
        if name == "dnalm" or name.startswith("dnalm."):
            raise ImportError("dnalm is not installed here")
sys.meta_path.insert(0, NoDnalm())
"""


def without_dnalm(script: str, tmp_path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", WITHOUT_DNALM + script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def chr20_stretch(chr20) -> str:
    """10 kb of chr20 with a soft-masked (lowercase) third and N runs of 1 and 5."""
    bases = chr20.bases[30_000_000:30_010_000].tobytes().decode()
    return bases[:3000] + "NNNNN" + bases[3000:6000].lower() + "N" + bases[6000:]


def test_tokenizers_give_dnalm_ids_through_auto_tokenizer(chr20, bpe_small, tmp_path):
    from dnalm.hf.tokenizer import save_hf_tokenizer

    sequence = chr20_stretch(chr20)
    tokenizers = {"nucleotide": NucleotideTokenizer(), "kmer6": KmerTokenizer(6), "kmer3": KmerTokenizer(3), "bpe": bpe_small}
    for name, tokenizer in tokenizers.items():
        save_hf_tokenizer(tokenizer, tmp_path / name, 1024)
    (tmp_path / "sequence.txt").write_text(sequence)
    without_dnalm(f"""
import json
from transformers import AutoTokenizer
sequence = open("sequence.txt").read()
ids = {{name: AutoTokenizer.from_pretrained(name)(sequence)["input_ids"] for name in {list(tokenizers)}}}
json.dump(ids, open("ids.json", "w"))
""", tmp_path)
    ids = json.loads((tmp_path / "ids.json").read_text())
    for name, tokenizer in tokenizers.items():
        assert ids[name] == tokenizer.encode(sequence).ids.tolist(), name
    assert len(ids["bpe"]) < len(sequence) / 3  # BPE really merged, across the lowercase stretch too


VIEWS = ViewTokenizer([NucleotideTokenizer(), KmerTokenizer(3)])
MODELS = {
    "encoder-alibi-remote": ("encoder-tiny", {}, "DnalmForMaskedLM"),
    "encoder-esm": ("encoder-small-esm", {"n_layers": 2, "d_model": 64}, "EsmForMaskedLM"),
    "encoder-learned-remote": ("encoder-tiny", {"positions": "learned", "mlp": "gelu", "norm": "rmsnorm"}, "DnalmForMaskedLM"),
    "encoder-views-remote": ("encoder-tiny", {"num_segments": 2, "vocab_size": VIEWS.vocab_size, "lm_head": "transform"},
                             "DnalmForMaskedLM"),
    # shaped like ESM but for its convolution stem, which EsmForMaskedLM has no place for
    "encoder-hybrid-remote": ("encoder-tiny", {"conv_layers": 5, "cnn_kernel": 5, "positions": "rope", "mlp": "gelu",
                                               "lm_head": "transform"}, "DnalmForMaskedLM"),
    "decoder-alibi-remote": ("decoder-tiny", {"positions": "alibi", "tie_embeddings": True}, "DnalmForCausalLM"),
    "decoder-llama": ("decoder-tiny", {}, "LlamaForCausalLM"),
}


def readme_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    block = next(block.split("```")[0] for block in readme.split("```python\n")[1:] if "AutoModelForMaskedLM" in block)
    return "\n".join(line[2:] for line in block.splitlines())


def test_every_transformer_exports_with_the_same_logits(tmp_path):
    """Random (not freshly initialised) weights; half of the second sequence is padding. The README's
    snippet runs as written on the ALiBi (remote code) and ESM folders."""
    torch.manual_seed(0)
    expected, inputs = {}, {}
    for name, (base, changes, _) in MODELS.items():
        model = build_model(get_config(base, **({"vocab_size": 10} | changes))).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        tokenizer = VIEWS if "views" in name else NucleotideTokenizer()
        export_hf(model, tokenizer, tmp_path / name)
        if "views" in name:
            enc = VIEWS.encode("ACGTTGCAAGGCTTAN" * 3)
            batch = {"input_ids": torch.tensor(np.stack([enc.ids] * 2)), "token_type_ids": torch.tensor(np.stack([enc.segment_ids] * 2)),
                     "position_ids": torch.tensor(np.stack([enc.positions] * 2)).long()}
        else:
            batch = {"input_ids": torch.randint(5, 10, (2, 60))}
        mask = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        mask[1, mask.shape[1] // 2 :] = False
        batch["attention_mask"] = mask
        inputs[name] = batch
        with torch.no_grad():
            expected[name] = model(batch["input_ids"], attention_mask=mask, segment_ids=batch.get("token_type_ids"),
                                   positions=batch.get("position_ids")).logits
    torch.save(inputs, tmp_path / "inputs.pt")
    done = without_dnalm("""
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
inputs, out = torch.load("inputs.pt"), {}
for name, batch in inputs.items():
    auto = AutoModelForMaskedLM if name.startswith("encoder") else AutoModelForCausalLM
    model = auto.from_pretrained(name, trust_remote_code=True).eval()
    with torch.no_grad():
        out[name] = (type(model).__name__, model(**batch).logits)
torch.save(out, "logits.pt")
""" + f"""
import os
for name in ("encoder-alibi-remote", "encoder-esm"):
    os.makedirs(name + "-readme", exist_ok=True)
    os.chdir(name + "-readme")
    os.symlink("../" + name, "hf-folder")
    exec({readme_snippet()!r})
    print(name, type(model).__name__, tuple(logits.shape))
    os.chdir("..")
""", tmp_path)
    assert "encoder-alibi-remote DnalmForMaskedLM (1, 9, 10)" in done.stdout and "encoder-esm EsmForMaskedLM (1, 9, 10)" in done.stdout
    assert "Do you wish" not in done.stdout + done.stderr
    got = torch.load(tmp_path / "logits.pt")
    for name, (_, _, cls) in MODELS.items():
        mask = inputs[name]["attention_mask"]
        assert got[name][0] == cls, name
        assert (got[name][1] - expected[name])[mask].abs().max() < 1e-4, name
    readme = (tmp_path / "encoder-esm" / "README.md").read_text()
    assert "EsmForMaskedLM.from_pretrained(folder)" in readme and "AutoTokenizer.from_pretrained(folder)" in readme
    assert not (tmp_path / "encoder-esm" / "modeling_dnalm.py").exists()
    views_readme = (tmp_path / "encoder-views-remote" / "README.md").read_text()
    assert "No transformers tokenizer: nucleotide+kmer:3" in views_readme and "multi-view" in views_readme
    assert not (tmp_path / "encoder-views-remote" / "tokenizer.json").exists()


def test_models_without_an_export_are_refused_naming_why(tmp_path):
    for config, reason in [(get_config("cnn", vocab_size=10), "arch=cnn"),
                           (get_config("encoder-tiny", attention="performer", positions="rope", vocab_size=10),
                            "attention=performer")]:
        with pytest.raises(HfExportError, match=f"cannot export this model: .*{reason}"):
            export_hf(build_model(config), NucleotideTokenizer(), tmp_path / "out")
        assert not (tmp_path / "out").exists()

