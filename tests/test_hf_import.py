"""`dnalm convert --from-hf`: transformers folders (built here with random weights, since no hub is reachable)
become bundles whose logits are the transformers model's; bad folders are refused and leave nothing."""

import itertools
import json

import numpy as np
import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.hf import export_hf
from dnalm.models import build_model, get_config
from dnalm.tokenizers import KmerTokenizer, NucleotideTokenizer, ViewTokenizer
from dnalm.use.embedding import embed
from dnalm.use.generate import generate_ids
from tests.conftest import SHARED_DATA

# Nucleotide Transformer v1's vocabulary layout: its specials, every 6-mer, then single bases
NT_VOCAB = (
    ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    + ["".join(p) for p in itertools.product("ATCG", repeat=6)]
    + list("ATCGN")
)


def randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def convert_from_hf(folder, out, *extra, capsys=None) -> tuple[int, str]:
    if capsys is not None:
        capsys.readouterr()  # what came before (transformers' progress bars)
    code = main(["convert", "--from-hf", str(folder), "--out", str(out), *map(str, extra)])
    return code, capsys.readouterr().err if capsys is not None else ""


def nt_folder(tmp_path, positions: str):
    """An EsmForMaskedLM shaped like Nucleotide Transformer v1 (biases, GELU, tied decoder) with NT's vocab.txt."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    folder = tmp_path / f"nt-{positions}"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(NT_VOCAB) + "\n")
    EsmTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = EsmConfig(
        vocab_size=len(NT_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        position_embedding_type=positions,
        pad_token_id=1,
        mask_token_id=2,
        hidden_act="gelu",
        token_dropout=False,
        emb_layer_norm_before=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
    )
    randomised(EsmForMaskedLM(config)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("positions", ["rotary", "absolute"])
def test_nucleotide_transformer_layout_imports_with_its_logits(positions, tmp_path, capsys):
    """Rotary and absolute positions; the 6-mer vocabulary becomes kmer:6, its rows moved to dnalm's ids
    (NT's <bos> has no use in dnalm and is dropped); logits within 1e-5 in fp32, a padded row included."""
    from transformers import EsmForMaskedLM

    folder = nt_folder(tmp_path, positions)
    assert convert_from_hf(folder, tmp_path / "bundle", capsys=capsys)[0] == 0
    model, tokenizer = dnalm.load_pretrained(tmp_path / "bundle")
    assert (
        tokenizer.name == "kmer:6"
        and model.config.linear_bias
        and model.config.positions == {"rotary": "rope", "absolute": "learned"}[positions]
    )
    rows = json.loads((tmp_path / "bundle" / "config.json").read_text())["imported"]["token_rows"]
    assert [NT_VOCAB[r] for r in rows[:5]] == ["<pad>", "<cls>", "<eos>", "<mask>", "<unk>"]
    assert all(NT_VOCAB[r] == token for r, token in zip(rows[5:], tokenizer.vocab[5:]))

    bases = "ACGTTGCAAGGCTTAGGATCCATGCAAATTTGGGCCCAGT" * 8
    ids = torch.tensor(np.stack([tokenizer.encode(bases).ids[:40]] * 2)).long()
    ids[1, 30:] = 0  # padding
    mask = ids != 0
    hf_ids = torch.tensor(rows)[ids]
    hf = EsmForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = hf(input_ids=hf_ids, attention_mask=mask).logits[..., rows]
        ours = model(ids, attention_mask=mask).logits
    assert (ours - theirs)[mask].abs().max() < 1e-5
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "nt-" + positions in card and str(tmp_path) not in card and "reordered to dnalm's ids" in card


def test_an_imported_encoder_embeds_and_fine_tunes(tmp_path, capsys):
    assert convert_from_hf(nt_folder(tmp_path, "rotary"), tmp_path / "bundle", capsys=capsys)[0] == 0
    model, tokenizer = dnalm.load_pretrained(tmp_path / "bundle")
    pooled = embed(model, tokenizer, ["ACGT" * 60, "GGCCA" * 40])
    assert pooled.shape == (2, 32) and np.isfinite(pooled).all()
    gue = SHARED_DATA / "gue" / "prom_300_tata"
    if gue.exists():
        from dnalm.eval.finetune import finetune

        for name in ("train", "dev"):
            lines = (gue / f"{name}.csv").read_text().splitlines()
            (tmp_path / f"{name}.csv").write_text("\n".join(lines[:97]) + "\n")
        result = finetune(
            tmp_path / "train.csv",
            tmp_path / "dev.csv",
            tmp_path / "ft",
            model=tmp_path / "bundle",
            epochs=1,
            device="cpu",
        )
        assert "mcc" in json.dumps(result)


def test_llama_imports_with_a_given_tokenizer_and_generates(tmp_path, capsys):
    """No tokenizer files: refused unless --tokenizer names a dnalm tokenizer of the model's size, whose ids are kept.
    Linear RoPE scaling becomes rope_scale."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
    )
    folder = tmp_path / "llama"
    hf = randomised(LlamaForCausalLM(config))
    hf.save_pretrained(folder)
    code, err = convert_from_hf(folder, tmp_path / "refused", capsys=capsys)
    assert code == 1 and "no tokenizer files" in err and "--tokenizer" in err and not (tmp_path / "refused").exists()
    code, err = convert_from_hf(folder, tmp_path / "refused", "--tokenizer", "kmer:3", capsys=capsys)
    assert (
        code == 1 and "kmer:3 has 74 ids, config.json's vocab_size is 10" in err and not (tmp_path / "refused").exists()
    )
    assert convert_from_hf(folder, tmp_path / "bundle", "--tokenizer", "nucleotide", capsys=capsys)[0] == 0
    model, tokenizer = dnalm.load_pretrained(tmp_path / "bundle")
    assert model.config.rope_scale == 2.0 and model.config.rope_theta == 500.0
    ids = torch.randint(5, 10, (2, 50))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() < 1e-5
    continued = generate_ids(model, ids[0, :10], 8, temperature=0)
    assert continued.shape == (1, 18)


def test_dnalm_exports_import_back_exactly(tmp_path, capsys):
    views = ViewTokenizer([NucleotideTokenizer(), KmerTokenizer(3)])
    for name, (base, changes, tokenizer) in {
        "alibi": ("encoder-tiny", {}, NucleotideTokenizer()),
        "views": ("encoder-tiny", {"num_segments": 2, "vocab_size": views.vocab_size, "lm_head": "transform"}, views),
        "esm": ("encoder-small-esm", {"n_layers": 2, "d_model": 64, "linear_bias": True}, KmerTokenizer(6)),
    }.items():
        model = randomised(build_model(get_config(base, **({"vocab_size": tokenizer.vocab_size} | changes))))
        export_hf(model, tokenizer, tmp_path / f"hf-{name}")
        assert convert_from_hf(tmp_path / f"hf-{name}", tmp_path / name, capsys=capsys)[0] == 0
        back, back_tokenizer = dnalm.load_pretrained(tmp_path / name)
        assert back_tokenizer.fingerprint == tokenizer.fingerprint, name
        same = {"name": "", "mlp_hidden": None}  # ESM's config states the MLP width dnalm derived
        assert (
            back.config.model_dump() | same == model.config.model_dump() | same
            and back.config.hidden == model.config.hidden
        )
        for key, value in model.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), (name, key)


def test_bad_folders_are_refused_naming_the_file_and_field(tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    good = tmp_path / "good"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(good)

    def variant(name, edit_config=None, edit_weights=None):
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((good / "config.json").read_text())
        weights = load_file(str(good / "model.safetensors"))
        if edit_config:
            edit_config(config)
        if edit_weights:
            edit_weights(weights)
        (folder / "config.json").write_text(json.dumps(config))
        save_file(weights, str(folder / "model.safetensors"))
        return folder

    (tmp_path / "empty").mkdir()
    (tmp_path / "bpe").mkdir()
    (tmp_path / "bpe" / "config.json").write_text((good / "config.json").read_text())
    (tmp_path / "bpe" / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "config.json").write_text((good / "config.json").read_text())
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(["<pad>", "<unk>"] + [f"{b}" for b in "ACGTN"] * 3) + "\n")
    esm = {
        "model_type": "esm",
        "architectures": ["EsmForMaskedLM"],
        "vocab_size": 10,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "pad_token_id": 1,
    }
    (tmp_path / "dropout").mkdir()
    (tmp_path / "dropout" / "config.json").write_text(json.dumps(esm | {"token_dropout": True}))
    (tmp_path / "folding").mkdir()
    (tmp_path / "folding" / "config.json").write_text(json.dumps(esm | {"architectures": ["EsmForProteinFolding"]}))
    cases = {
        tmp_path / "missing": "missing: no such folder",
        tmp_path / "empty": "empty/config.json: missing",
        variant(
            "bert", lambda c: c.update(model_type="bert")
        ): "model_type 'bert' is not imported; dnalm imports EsmForMaskedLM",
        variant("gqa", lambda c: c.update(num_key_value_heads=2)): "config.json: num_key_value_heads 2",
        variant(
            "lost", edit_weights=lambda w: w.pop("model.layers.0.mlp.up_proj.weight")
        ): "model.safetensors: weight model.layers.0.mlp.up_proj.weight is missing",
        variant(
            "shape", lambda c: c.update(intermediate_size=48)
        ): "model.safetensors: blocks.0.mlp.up.weight has shape (128, 32), config.json makes it (96, 32)",
        tmp_path / "bpe": "tokenizer.json: a BPE tokenizer, which dnalm cannot map",
        tmp_path / "vocab": "vocab.txt: token id 16 is beyond config.json's vocab_size 10",
        tmp_path / "dropout": "config.json: token_dropout true",
        tmp_path / "folding": "config.json: architectures ['EsmForProteinFolding'] is not imported",
    }
    for folder, message in cases.items():
        extra = ["--tokenizer", "nucleotide"] if folder.name in ("gqa", "lost", "shape") else []
        code, err = convert_from_hf(folder, tmp_path / "out", *extra, capsys=capsys)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (folder.name, err)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), folder.name
