"""Hugging Face folders: Llama, ESM and remote-code models with dnalm's logits, and tokenizers with
dnalm's ids, all loaded by transformers in a process that cannot import dnalm."""

import json
import re
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
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_DNALM + script], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def chr20_stretch(chr20) -> str:
    """10 kb of chr20 with a soft-masked (lowercase) third and N runs of 1 and 5."""
    bases = chr20.bases[30_000_000:30_010_000].tobytes().decode()
    return bases[:3000] + "NNNNN" + bases[3000:6000].lower() + "N" + bases[6000:]


def test_tokenizers_give_dnalm_ids_through_auto_tokenizer(chr20, bpe_small, tmp_path):
    from dnalm.hf.tokenizer import save_hf_tokenizer

    sequence = chr20_stretch(chr20)
    tokenizers = {
        "nucleotide": NucleotideTokenizer(),
        "kmer6": KmerTokenizer(6),
        "kmer3": KmerTokenizer(3),
        "bpe": bpe_small,
    }
    for name, tokenizer in tokenizers.items():
        save_hf_tokenizer(tokenizer, tmp_path / name, 1024)
    (tmp_path / "sequence.txt").write_text(sequence)
    without_dnalm(
        f"""
import json
from transformers import AutoTokenizer
sequence = open("sequence.txt").read()
ids = {{name: AutoTokenizer.from_pretrained(name)(sequence)["input_ids"] for name in {list(tokenizers)}}}
json.dump(ids, open("ids.json", "w"))
""",
        tmp_path,
    )
    ids = json.loads((tmp_path / "ids.json").read_text())
    for name, tokenizer in tokenizers.items():
        assert ids[name] == tokenizer.encode(sequence).ids.tolist(), name
    assert len(ids["bpe"]) < len(sequence) / 3  # BPE really merged, across the lowercase stretch too


VIEWS = ViewTokenizer([NucleotideTokenizer(), KmerTokenizer(3)])
MODELS = {
    "encoder-alibi-remote": ("encoder-tiny", {}, "DnalmForMaskedLM"),
    "encoder-esm": ("encoder-small-esm", {"n_layers": 2, "d_model": 64}, "EsmForMaskedLM"),
    "encoder-learned-remote": (
        "encoder-tiny",
        {"positions": "learned", "mlp": "gelu", "norm": "rmsnorm"},
        "DnalmForMaskedLM",
    ),
    "encoder-views-remote": (
        "encoder-tiny",
        {"num_segments": 2, "vocab_size": VIEWS.vocab_size, "lm_head": "transform"},
        "DnalmForMaskedLM",
    ),
    # shaped like ESM but for its convolution stem, which EsmForMaskedLM has no place for
    "encoder-hybrid-remote": (
        "encoder-tiny",
        {"conv_layers": 5, "cnn_kernel": 5, "positions": "rope", "mlp": "gelu", "lm_head": "transform"},
        "DnalmForMaskedLM",
    ),
    "decoder-alibi-remote": ("decoder-tiny", {"positions": "alibi", "tie_embeddings": True}, "DnalmForCausalLM"),
    "decoder-llama": ("decoder-tiny", {}, "LlamaForCausalLM"),
    # RoPE with position interpolation and learned positions: not Llama's design, so remote code
    "decoder-rope-remote": ("decoder-tiny", {"rope_scale": 4.0, "attention": "eager"}, "DnalmForCausalLM"),
    "decoder-learned-remote": ("decoder-tiny", {"positions": "learned", "norm": "layernorm"}, "DnalmForCausalLM"),
    # Performer: the trained random features travel as buffers; the decoder's cache goes through prefix sums
    "encoder-performer-remote": (
        "encoder-tiny",
        {"attention": "performer", "positions": "rope", "performer_features": 32, "performer_kernel": "relu"},
        "DnalmForMaskedLM",
    ),
    "decoder-performer-remote": (
        "decoder-tiny",
        {"attention": "performer", "performer_features": 32, "performer_chunk": 16},
        "DnalmForCausalLM",
    ),
}


def readme_snippet(name: str = "AutoModelForMaskedLM") -> str:
    """docs/huggingface.md's first python block that uses ``name``, unindented (the page a user copies it from)."""
    readme = (REPO / "docs" / "huggingface.md").read_text()
    blocks = [chunk.split("```")[0] for chunk in readme.split("```python\n")[1:]]
    block = next(block for block in blocks if name in block)
    return "\n".join(line[2:] for line in block.splitlines())


def block_states(model, batch) -> list[torch.Tensor]:
    """dnalm's input to the first block and every block's output, the last one normalised."""
    states = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda module, args: states.append(args[0]))]
    hooks += [block.register_forward_hook(lambda module, args, out: states.append(out[0])) for block in model.blocks]
    with torch.no_grad():
        out = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            segment_ids=batch.get("token_type_ids"),
            positions=batch.get("position_ids"),
        )
    for hook in hooks:
        hook.remove()
    return states[:-1] + [out.hidden]


# one child process loads every folder with every class; the tests below read what it wrote
IN_TRANSFORMERS = """
import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification)
inputs, out = torch.load("inputs.pt"), {}
for name, batch in inputs.items():
    encoder = name.startswith("encoder")
    lm = (AutoModelForMaskedLM if encoder else AutoModelForCausalLM).from_pretrained(name,
    trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    torch.manual_seed(0)
    sequence = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=True, num_labels=3).eval()
    regression = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=True, num_labels=1).eval()
    tokens = AutoModelForTokenClassification.from_pretrained(name, trust_remote_code=True, num_labels=4).eval()
    length = batch["input_ids"].shape[1]
    with torch.no_grad():
        hidden = backbone(**batch, output_hidden_states=True)
        row = {"lm": (type(lm).__name__, lm(**batch).logits), "backbone": type(backbone).__name__,
               "last": hidden.last_hidden_state, "states": hidden.hidden_states,
               "sequence": (type(sequence).__name__, sequence(**batch, labels=torch.tensor([0, 2])).loss,
                            sequence(**batch).logits.shape, sequence.config.problem_type),
               "multi": AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=True, num_labels=3)(
                   **batch, labels=torch.tensor([[1.0, 0, 1], [0, 1, 0]])).loss,
               "regression": (regression(**batch, labels=torch.tensor([0.5, -1.0])).loss,
                              regression.config.problem_type),
               "tokens": (type(tokens).__name__, tokens(**batch).logits.shape,
                          tokens(**batch, labels=torch.randint(0, 4, (2, length))).loss)}
    if not encoder:
        prompts = batch["input_ids"][:, :12]
        with torch.no_grad():
            greedy = lm.generate(prompts[:1], max_new_tokens=10, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
            uncached = lm.generate(prompts[:1], max_new_tokens=10, do_sample=False, use_cache=False)
            # the second prompt 4 tokens shorter, left-padded: each row continues as it would alone
            padded = prompts.clone()
            padded[1] = torch.cat([torch.zeros(4, dtype=torch.long), prompts[1, :8]])
            mask = torch.ones_like(padded)
            mask[1, :4] = 0
            batched = lm.generate(padded, attention_mask=mask, max_new_tokens=6, do_sample=False)
            alone = lm.generate(prompts[1:, :8], max_new_tokens=6, do_sample=False)
            torch.manual_seed(1)
            sampled = lm.generate(prompts[:1], max_new_tokens=40, top_k=3, top_p=0.9, temperature=0.8)
        row["generate"] = {"greedy": greedy.sequences, "logits": torch.stack(greedy.logits, 1), "uncached": uncached,
                           "batched": batched, "alone": alone, "sampled": sampled}
    out[name] = row
torch.save(out, "results.pt")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every kind of export with random (not freshly initialised) weights, loaded by transformers in a process
    that cannot import dnalm; half of the second sequence is padding. The README's snippet runs as written
    on the ALiBi (remote code) and ESM folders."""
    tmp_path = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    models, inputs = {}, {}
    for name, (base, changes, _) in MODELS.items():
        model = build_model(get_config(base, **({"vocab_size": 10} | changes))).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        tokenizer = VIEWS if "views" in name else NucleotideTokenizer()
        export_hf(model, tokenizer, tmp_path / name)
        if "views" in name:
            enc = VIEWS.encode("ACGTTGCAAGGCTTAN" * 3)
            batch = {
                "input_ids": torch.tensor(np.stack([enc.ids] * 2)),
                "token_type_ids": torch.tensor(np.stack([enc.segment_ids] * 2)),
                "position_ids": torch.tensor(np.stack([enc.positions] * 2)).long(),
            }
        else:
            batch = {"input_ids": torch.randint(5, 10, (2, 60))}
        mask = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        mask[1, mask.shape[1] // 2 :] = False
        batch["attention_mask"] = mask
        inputs[name], models[name] = batch, model
    torch.save(inputs, tmp_path / "inputs.pt")
    done = without_dnalm(
        IN_TRANSFORMERS
        + f"""
import os
for name in ("encoder-alibi-remote", "encoder-esm"):
    os.makedirs(name + "-readme", exist_ok=True)
    os.chdir(name + "-readme")
    os.symlink("../" + name, "hf-folder")
    exec({readme_snippet()!r})
    print(name, type(model).__name__, tuple(logits.shape))
    exec({readme_snippet("AutoModelForSequenceClassification")!r})
    print(name, type(model).__name__, "loss", float(loss), all(p.grad is not None for n, p in model.named_parameters()
    if "classifier" in n))
    os.chdir("..")
""",
        tmp_path,
    )
    return {
        "folder": tmp_path,
        "models": models,
        "inputs": inputs,
        "stdout": done.stdout + done.stderr,
        "results": torch.load(tmp_path / "results.pt"),
    }


def test_every_transformer_exports_with_the_same_logits(exported):
    tmp_path, inputs, got = exported["folder"], exported["inputs"], exported["results"]
    assert "encoder-alibi-remote DnalmForMaskedLM (1, 9, 10)" in exported["stdout"]
    assert "encoder-esm EsmForMaskedLM (1, 9, 10)" in exported["stdout"]
    for name, cls in (
        ("encoder-alibi-remote", "DnalmForSequenceClassification"),
        ("encoder-esm", "EsmForSequenceClassification"),
    ):
        assert re.search(f"{name} {cls} loss [0-9.]+ True", exported["stdout"]), exported["stdout"][-2000:]
    assert "Do you wish" not in exported["stdout"]
    for name, (_, _, cls) in MODELS.items():
        batch = inputs[name]
        with torch.no_grad():
            expected = exported["models"][name](
                batch["input_ids"],
                attention_mask=batch["attention_mask"],
                segment_ids=batch.get("token_type_ids"),
                positions=batch.get("position_ids"),
            ).logits
        assert got[name]["lm"][0] == cls, name
        assert (got[name]["lm"][1] - expected)[batch["attention_mask"]].abs().max() < 1e-4, name
    readme = (tmp_path / "encoder-esm" / "README.md").read_text()
    assert "EsmForMaskedLM.from_pretrained(folder)" in readme and "AutoTokenizer.from_pretrained(folder)" in readme
    assert not (tmp_path / "encoder-esm" / "modeling_dnalm.py").exists()
    views_readme = (tmp_path / "encoder-views-remote" / "README.md").read_text()
    assert "No transformers tokenizer: nucleotide+kmer:3" in views_readme and "multi-view" in views_readme
    assert not (tmp_path / "encoder-views-remote" / "tokenizer.json").exists()


def test_every_export_has_the_auto_classes_of_transformers(exported):
    """AutoModel: the backbone, with dnalm's final hidden states and one state per layer; sequence and token
    classification with transformers' problem_type and num_labels conventions. Llama and ESM get them from
    transformers, the remote-code folders from modeling_dnalm.py through auto_map."""
    for name, (_, _, cls) in MODELS.items():
        got, batch, model = exported["results"][name], exported["inputs"][name], exported["models"][name]
        family = cls.removesuffix("ForMaskedLM").removesuffix("ForCausalLM")
        mask = batch["attention_mask"]
        expected = block_states(model, batch)
        assert got["backbone"] == f"{family}Model", name
        assert (got["last"] - expected[-1])[mask].abs().max() < 1e-4, name
        assert len(got["states"]) == model.config.n_layers + 1, name
        assert (got["states"][-1] - got["last"]).abs().max() < 1e-6, name
        if family == "Dnalm":  # every layer's state is dnalm's (Llama and ESM number theirs their own way)
            for i, (state, mine) in enumerate(zip(got["states"], expected)):
                assert (state - mine)[mask].abs().max() < 1e-4, (name, i)
            readme = (exported["folder"] / name / "README.md").read_text()
            for auto in ("AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
                assert f"model = {auto}.from_pretrained(folder, trust_remote_code=True" in readme, (name, auto)
        sequence_cls, loss, shape, problem = got["sequence"]
        assert sequence_cls == f"{family}ForSequenceClassification" and tuple(shape) == (2, 3), name
        assert torch.isfinite(loss) and problem == "single_label_classification", name
        assert torch.isfinite(got["multi"]), name
        assert torch.isfinite(got["regression"][0]) and got["regression"][1] == "regression", name
        token_cls, shape, loss = got["tokens"]
        assert token_cls == f"{family}ForTokenClassification" and tuple(shape) == (2, batch["input_ids"].shape[1], 4), (
            name
        )
        assert torch.isfinite(loss), name


def test_exported_decoders_generate_as_dnalm_does(exported):
    """model.generate with the key-value cache: greedy continuations and every step's logits are dnalm's,
    with or without the cache; a left-padded prompt continues as it would alone; sampling (top-k, top-p,
    temperature) never draws a special token, as dnalm generate never does."""
    from dnalm.tokenizers.base import NUM_SPECIAL
    from dnalm.use.generate import generate_ids

    for name in [n for n in MODELS if n.startswith("decoder")]:
        got, model = exported["results"][name]["generate"], exported["models"][name]
        prompt = exported["inputs"][name]["input_ids"][0, :12]
        mine = generate_ids(model, prompt, 10, temperature=0)
        assert torch.equal(got["greedy"], mine) and torch.equal(got["uncached"], mine), name
        with torch.no_grad():
            steps = model(mine[:, :-1]).logits[0, 11:]
        assert (got["logits"][0] - steps).abs().max() < 1e-4, name
        assert torch.equal(got["batched"][1, 4:], got["alone"][0]), name
        assert got["sampled"].shape == (1, 52) and int(got["sampled"][0, 12:].min()) >= NUM_SPECIAL, name
        assert len(set(got["sampled"][0, 12:].tolist())) > 1, name


def test_models_without_an_export_are_refused_naming_why(tmp_path):
    for config, reason in [
        (get_config("cnn-base", vocab_size=10), "arch=cnn"),
        (get_config("encoder-tiny", mlm_target="bases", vocab_size=10), "mlm_target=bases"),
    ]:
        with pytest.raises(HfExportError, match=f"cannot export this model: .*{reason}"):
            export_hf(build_model(config), NucleotideTokenizer(), tmp_path / "out")
        assert not (tmp_path / "out").exists()
