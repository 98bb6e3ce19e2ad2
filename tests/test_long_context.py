"""Long windows on one device: the memory-lean step (MLP tiles, chunked head and loss) changes no result and grows
linearly in memory; RoPE position interpolation."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dnalm.bundle import load_pretrained
from dnalm.data.masking import IGNORE, next_token_labels
from dnalm.models import build_model, get_config
from dnalm.models.positions import Rotary
from tests.conftest import REPO


def _loss_and_grads(config, ids, labels):
    torch.manual_seed(0)
    model = build_model(config).train()
    out = model(ids, labels=labels)
    (out.loss_sum / (labels != IGNORE).sum()).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "name, extra", [("decoder-tiny", {}), ("encoder-tiny", {"mlm_target": "bases", "bases_per_token": 3})]
)
def test_tiles_and_chunks_change_no_result(name, extra):
    """A decoder (vocabulary head) and an encoder with the per-base head: loss and every gradient with the MLP in
    tiles of 64, the head and loss in chunks of 48 (not a divisor of 256) and activation checkpointing equal the
    whole-window step; the chunked step returns no logits."""
    base = get_config(name, vocab_size=64, **extra)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (2, 256), generator=gen)
    labels = next_token_labels(ids) if base.causal else torch.randint(0, 5, (2, 256, 3), generator=gen)
    if not base.causal:
        labels[:, ::3] = IGNORE
    plain, plain_grads = _loss_and_grads(base, ids, labels)
    lean, lean_grads = _loss_and_grads(
        base.replace(mlp_tile=64, loss_chunk=48, activation_checkpointing=True), ids, labels
    )
    assert lean.logits is None and plain.logits is not None
    assert torch.allclose(lean.loss_sum, plain.loss_sum, rtol=1e-6)
    assert int(lean.correct) == int(plain.correct)
    assert plain_grads.keys() == lean_grads.keys()
    for key, grad in plain_grads.items():
        assert torch.allclose(lean_grads[key], grad, rtol=1e-5, atol=1e-7), key


def _peaks(mode: str, lengths: str) -> dict[int, dict]:
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "scripts" / "lean_memory.py"), mode, lengths],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {r["length"]: r for r in map(json.loads, done.stdout.splitlines())}


def test_a_lean_step_grows_linearly_in_memory_and_never_holds_the_whole_logits():
    """decoder-tiny (d_model 128, vocabulary 4,096) at 2,048 and 8,192 tokens: the lean step's peak grows by at most
    4 KB a token (8 floats per d_model), stays below the (T, vocab) fp32 logits of 8,192 tokens (134 MB), and is
    below a plain step's peak at a quarter of the length."""
    lean, plain = _peaks("lean", "2048,8192"), _peaks("plain", "2048")
    logits_mb = 8192 * 4096 * 4 / 2**20
    growth_per_token = (lean[8192]["peak_mb"] - lean[2048]["peak_mb"]) * 2**20 / (8192 - 2048)
    assert growth_per_token <= 4096, (lean, plain)
    assert lean[8192]["peak_mb"] < logits_mb and lean[8192]["logits_chunked"]
    assert lean[8192]["peak_mb"] < plain[2048]["peak_mb"], (lean, plain)


def test_rope_interpolation_maps_a_longer_window_onto_the_trained_angles():
    x = torch.randn(1, 2, 8, 16)
    positions = torch.arange(8)[None]
    scaled = Rotary(16, 10_000.0, scale=4.0)(x, positions * 4)
    assert torch.allclose(scaled, Rotary(16, 10_000.0)(x, positions), atol=1e-5)
    with pytest.raises(Exception, match="rope_scale"):
        get_config("decoder-tiny", rope_scale=0.5)


# --- long inputs at use time ------------------------------------------------------------------------------------
class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest storage (bytes) any operation produced while active: a (T, T) score matrix or (T, vocab) fp32
    logits at 32k tokens would be gigabytes; activations of a tiny model at 32k tokens are tens of MB."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.untyped_storage().nbytes())
        return out


LONG = 32_768  # tokens: 196,608 bases of 6-mers


@pytest.fixture(scope="module")
def long_models():
    """decoder-tiny (RoPE) and encoder-tiny (ALiBi) cut to one layer of 2 × 32 heads (attention at 32k tokens is
    what costs), over 6-mers (vocabulary 4,101), and the encoder over nucleotides (an encoder's variant score needs
    one token per base), built for 32k-token windows."""
    from dnalm.tokenizers import load

    tokenizers = {"kmer": load("kmer:6"), "nucleotide": load("nucleotide")}
    torch.manual_seed(0)
    models = {
        (name, kind): (
            build_model(
                get_config(name, vocab_size=tok.vocab_size, max_seq_len=LONG, n_layers=1, d_model=64, n_heads=2)
            ).eval(),
            tok,
        )
        for name, kind in (("decoder-tiny", "kmer"), ("encoder-tiny", "kmer"), ("encoder-tiny", "nucleotide"))
        for tok in [tokenizers[kind]]
    }
    return models


def _watched(work):
    with torch.no_grad(), LargestTensor() as watch:
        result = work()
    return result, watch.largest


def test_long_inputs_embed_score_and_generate_in_one_pass(long_models, ecoli, tmp_path):
    """32,768-token inputs (196,608 bases of E. coli): per-token embeddings in one window, variant scores of a
    decoder and an encoder over a 196k-base window, and generation from a 32k-token prompt. No operation makes a
    (T, T) tensor or (T, vocab) fp32 logits: the largest tensor made is smaller than one row's logits (the decoder's
    variant score runs 4 windows at once: alt, ref and their reverse complements)."""
    from dnalm.genome import IndexedGenome
    from dnalm.use.embedding import embed
    from dnalm.use.generate import generate_ids
    from dnalm.use.variants import Variant, score_variants

    bases = ecoli.sequence[: 6 * LONG]
    limit = LONG * 4101 * 4  # one row's (T, vocab) fp32 logits of the 6-mer models: 537 MB; a (T, T) bool mask is 1 GB
    model, kmers = long_models[("encoder-tiny", "kmer")]
    rows, largest = _watched(lambda: embed(model, kmers, [bases], pooling="none"))
    assert rows[0].rows.shape == (LONG, 64) and largest < limit, largest

    fasta = tmp_path / "slice.fa"
    fasta.write_text(f">slice\n{ecoli.sequence[:400_000]}\n")
    position = 200_001
    reference = ecoli.sequence[position - 1]
    variant = dict(chrom="slice", pos=position, id="v", ref=reference, alt="A" if reference != "A" else "C", line=1)
    for key, window in ((("decoder-tiny", "kmer"), 6 * LONG), (("encoder-tiny", "nucleotide"), LONG)):
        model, tokenizer = long_models[key]
        [scored], largest = _watched(
            lambda: score_variants(
                model, tokenizer, [Variant(**variant)], IndexedGenome(fasta), window=window, batch_size=1
            )
        )
        assert scored.status == "scored" and math.isfinite(scored.score) and largest < limit, (key, largest)

    model, kmers = long_models[("decoder-tiny", "kmer")]
    prompt = torch.from_numpy(kmers.encode(bases).ids.astype("int64"))
    out, largest = _watched(lambda: generate_ids(model, prompt, 4, top_k=4))
    assert out.shape == (1, LONG + 4) and largest < limit, largest


def test_learned_positions_refuse_inputs_past_their_limit():
    from dnalm.use.generate import GenerationError, generate_ids

    model = build_model(get_config("decoder-tiny", positions="learned", max_seq_len=64, vocab_size=16)).eval()
    with pytest.raises(GenerationError, match="learned positions stop at 64 tokens"):
        generate_ids(model, torch.full((60,), 5), 10)
    with pytest.raises(ValueError, match="beyond max_seq_len 64"):
        model(torch.full((1, 80), 5))


@pytest.fixture(scope="module")
def random_bundles(tmp_path_factory):
    """Untrained decoder-tiny and encoder-tiny bundles over nucleotides, and one with learned positions."""
    from dnalm.bundle import save_bundle
    from dnalm.tokenizers import load

    tokenizer, root = load("nucleotide"), tmp_path_factory.mktemp("context-bundles")
    torch.manual_seed(0)
    made = {}
    for name, extra in (
        ("decoder-tiny", {}),
        ("encoder-tiny", {}),
        ("learned", {"positions": "learned", "max_seq_len": 512}),
    ):
        config = get_config("decoder-tiny" if name == "learned" else name, vocab_size=tokenizer.vocab_size, **extra)
        made[name] = save_bundle(root / name, build_model(config), tokenizer, extra={"training": {"seq_len": 256}})
    return made


def test_eval_context_scores_the_same_bases_at_every_length(random_bundles, tmp_path):
    """E. coli windows of 256 and 1,024 tokens ending at the same positions, their last 128 tokens scored: perplexity
    per base of a decoder, masked accuracy of an encoder, as JSON, markdown and a plot; the CLI prints the table."""
    from dnalm.eval import context as eval_context
    from dnalm.genome import DEFAULT_GENOME, IndexedGenome

    genome = IndexedGenome(DEFAULT_GENOME)
    decoder = eval_context.run(
        random_bundles["decoder-tiny"], DEFAULT_GENOME, [256, 1024], tmp_path / "d", windows=3, target=128
    )
    assert decoder["metric"] == "perplexity_per_base" and len(decoder["windows"]) == 3
    for point in decoder["lengths"].values():  # untrained: about 4-way uncertain per base, and 3 × 128 bases scored
        assert 2 < point["perplexity_per_base"] < 20 and point["bases_scored"] == 3 * 128
    assert all((tmp_path / "d" / f"context.{ext}").stat().st_size > 0 for ext in ("json", "md", "png"))
    assert json.loads((tmp_path / "d" / "context.json").read_text())["genome"] == DEFAULT_GENOME.name

    model, tokenizer = load_pretrained(random_bundles["encoder-tiny"])
    encoder = eval_context.score(model, tokenizer, genome, [256, 1024], windows=3, target=128)
    assert encoder["metric"] == "masked_accuracy"
    assert [p["targets_scored"] for p in encoder["lengths"].values()] == [3 * 19, 3 * 19]
    assert all(0 <= p["masked_accuracy"] <= 1 for p in encoder["lengths"].values())

    from tests.conftest import run_cli

    done = run_cli(
        "eval",
        "context",
        random_bundles["learned"],
        "--genome",
        DEFAULT_GENOME,
        "--lengths",
        "256,1024",
        "--target",
        "128",
        "--out",
        tmp_path / "l",
    )
    assert done.returncode == 1 and "learned positions stop at max_seq_len 512" in done.stderr
    assert not (tmp_path / "l" / "context.json").exists() and "Traceback" not in done.stderr
    done = run_cli(
        "eval",
        "context",
        random_bundles["decoder-tiny"],
        "--genome",
        DEFAULT_GENOME,
        "--lengths",
        "256",
        "--target",
        "128",
        "--windows",
        "2",
        "--out",
        tmp_path / "c",
    )
    assert done.returncode == 0 and "perplexity per base by context length" in done.stdout, done.stderr
