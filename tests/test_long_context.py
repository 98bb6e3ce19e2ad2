"""Long windows on one device: the memory-lean step (MLP tiles, chunked head and loss) changes no result and grows
linearly in memory; RoPE position interpolation."""

import json
import os
import subprocess
import sys

import pytest
import torch

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


@pytest.mark.parametrize("name, extra", [("decoder-tiny", {}), ("encoder-tiny", {"mlm_target": "bases", "bases_per_token": 3})])
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
    lean, lean_grads = _loss_and_grads(base.replace(mlp_tile=64, loss_chunk=48, activation_checkpointing=True), ids, labels)
    assert lean.logits is None and plain.logits is not None
    assert torch.allclose(lean.loss_sum, plain.loss_sum, rtol=1e-6)
    assert int(lean.correct) == int(plain.correct)
    assert plain_grads.keys() == lean_grads.keys()
    for key, grad in plain_grads.items():
        assert torch.allclose(lean_grads[key], grad, rtol=1e-5, atol=1e-7), key


def _peaks(mode: str, lengths: str) -> dict[int, dict]:
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "lean_memory.py"), mode, lengths],
                          capture_output=True, text=True, env=env, timeout=300)
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
