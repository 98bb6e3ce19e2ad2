"""Ulysses sequence parallelism: the attention exchange against whole-window attention on real process groups (gloo),
and real DeepSpeed training at S = 1, 2, 2 × data-parallel 2 and 4, on E. coli windows.

The training runs share three launches (1, 2 and 4 processes), each running several trainings in one process group
(tests/scripts/train_runs.py): an encoder with ALiBi on ZeRO-2 and a decoder with RoPE on ZeRO-3, 5 steps each.
"""

import itertools
import json
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnalm.models import get_config
from dnalm.train.sequence_parallel import SequenceParallelError, check, shard
from tests.conftest import PROBE_TASK, REPO, probe_settings
from tests.launching import free_port, losses, metrics, run_spec, train_runs

STEPS = 5


def _attention_cases():
    """(backend, causal, alibi, padded, restarting positions): the registry's backends on CPU, masks and positions."""
    for backend in ("eager", "sdpa", "flash"):
        for causal in (False, True):
            yield backend, causal, False, False, False
            yield backend, causal, True, False, False
            yield backend, causal, True, True, False
            yield backend, causal, False, True, True
    yield "performer", False, False, True, False
    yield "performer", True, False, False, False


def _compare_on_two_ranks(rank: int, port: int, results):
    from dnalm.models.attention import ATTENTION
    from dnalm.models.performer import PerformerFeatures
    from dnalm.models.positions import alibi_slopes
    from dnalm.train.sequence_parallel import UlyssesAttention

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    performer = PerformerFeatures(16, 32)
    errors = []
    for case in [(dtype, *c) for dtype in (torch.float64, torch.float32) for c in _attention_cases()]:
        dtype, backend, causal, alibi, padded, restart = case
        gen = torch.Generator().manual_seed(1)
        batch, heads, length, dim = 2, 4, 64, 16
        q, k, v = (torch.randn(batch, heads, length, dim, generator=gen, dtype=dtype) for _ in range(3))
        positions = torch.arange(length).expand(batch, length)
        if restart:  # two views of 32 tokens each, positions restarting at the second
            positions = (torch.arange(length) % 32).expand(batch, length)
        key_mask = torch.ones(batch, length, dtype=torch.bool)
        if padded:
            key_mask[1, 50:] = False
        mask = key_mask if padded else None
        slopes = alibi_slopes(heads) if alibi else None
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        reference = ATTENTION[backend](
            *full, causal=causal, q_pos=positions, k_pos=positions, key_mask=mask, alibi=slopes, performer=performer
        )
        reference.backward(torch.ones_like(reference))
        part = slice(rank * length // 2, (rank + 1) * length // 2)
        mine = [x[:, :, part].clone().requires_grad_() for x in (q, k, v)]
        wrapped = UlyssesAttention(ATTENTION[backend], dist.group.WORLD)
        out = wrapped(
            *mine,
            causal=causal,
            q_pos=positions[:, part],
            k_pos=positions[:, part],
            key_mask=None if mask is None else mask[:, part],
            alibi=slopes,
            performer=performer,
        )
        out.backward(torch.ones_like(out))
        difference = max(
            [float((out - reference[:, :, part]).abs().max())]
            + [float((m.grad - f.grad[:, :, part]).abs().max()) for m, f in zip(mine, full)]
        )
        errors.append((case, difference / (1e-9 if dtype == torch.float64 else 1e-4)))
    results[rank] = errors
    results[f"calls{rank}"] = _collectives_of_a_step(rank)
    dist.destroy_process_group()


def _collectives_of_a_step(rank: int) -> dict:
    """The collectives a recomputing 2-layer encoder makes at S = 2, counted by wrapping torch.distributed's."""
    from dnalm.models import build_model
    from dnalm.train.sequence_parallel import wrap_attention

    calls = {"all_to_all_single": 0, "all_gather": 0}
    originals = {name: getattr(dist, name) for name in calls}

    def counting(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    model = build_model(get_config("encoder-tiny", n_layers=2, activation_checkpointing=True, vocab_size=16))
    wrap_attention(model, dist.group.WORLD)
    ids = torch.randint(5, 16, (2, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[1, 28:] = 0
    part = slice(rank * 16, (rank + 1) * 16)
    positions = torch.arange(32).expand(2, 32)[:, part]
    for name in calls:
        setattr(dist, name, counting(name))
    try:
        out = model(ids[:, part], positions=positions, attention_mask=mask[:, part])
        forward = dict(calls)
        out.logits.sum().backward()
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
    return {"forward": forward, "backward": {name: calls[name] - forward[name] for name in calls}}


def test_the_exchange_attends_like_whole_windows_for_every_backend():
    """Two ranks, each with half of every window: outputs and q/k/v gradients equal whole-window attention (within
    1e-9 in float64; 1e-4 in float32, where sdpa takes the fused CPU kernels) for eager, sdpa and flash (causal or not,
    ALiBi on each rank's own heads, padded keys, restarting positions of views) and Performer (the projection shared
    by both ranks). A model's step makes 2 all-to-alls a layer a pass and gathers positions and masks once."""
    results = mp.Manager().dict()
    mp.spawn(_compare_on_two_ranks, args=(free_port(), results), nprocs=2)
    for rank in (0, 1):
        bad = [(case, err) for case, err in results[rank] if err > 1]  # errors in units of the dtype's tolerance
        assert len(results[rank]) == 2 * len(list(_attention_cases())) and not bad, bad
        # per layer: one all-to-all for q, k and v, one for the output; positions and key mask gathered once per
        # forward,
        # not per layer and not again when the backward recomputes each layer (2 more all-to-alls a layer, 2 for the
        # gradients' way back)
        assert results[f"calls{rank}"] == {
            "forward": {"all_to_all_single": 2 * 2, "all_gather": 2},
            "backward": {"all_to_all_single": 2 * 2 + 2 * 2, "all_gather": 0},
        }


def test_a_slice_keeps_global_positions_and_whole_window_labels():
    ids = torch.arange(12).view(2, 6)
    inputs = {"input_ids": ids, "labels": ids + 100, "attention_mask": None, "tokens": 12, "targets": 10}
    second = shard(inputs, 1, 3)
    assert second["input_ids"].tolist() == [[2, 3], [8, 9]] and second["positions"].tolist() == [[2, 3], [2, 3]]
    assert second["labels"].tolist() == [[102, 103], [108, 109]] and second["attention_mask"] is None
    assert second["targets"] == 10, "the loss divides by the whole windows' targets"


def test_settings_ulysses_cannot_split_are_refused_with_the_numbers():
    decoder = get_config("decoder-small")  # 6 heads
    with pytest.raises(SequenceParallelError, match="does not divide the model's n_heads 6"):
        check(4, 4, decoder, 1024)
    with pytest.raises(SequenceParallelError, match="does not divide the window length seq_len 1001"):
        check(2, 2, decoder, 1001)
    with pytest.raises(SequenceParallelError, match="does not divide the world size 3"):
        check(2, 3, decoder, 1024)
    with pytest.raises(SequenceParallelError, match="convolution stem"):
        check(2, 2, get_config("encoder-tiny", conv_layers=2), 1024)
    check(3, 6, decoder, 1026)


# --- real DeepSpeed training --------------------------------------------------------------------------------------
# ALiBi, RoPE; both weigh repeats (soft-masked human chr20 beside E. coli) at 0.1 and log per-genome metrics
MODELS = {
    "encoder": {"model.name": "encoder-tiny", "deepspeed": "zero2", "objective.repeat_weight": 0.1},
    "decoder": {"model.name": "decoder-tiny", "deepspeed": "zero3", "objective.repeat_weight": 0.1},
}

# the encoder's runs end with a linear probe (GUE prom_core_tata, where the team's data is): under 1 s each
MODELS["encoder"] = MODELS["encoder"] | probe_settings(rows="[200,100]", **{"eval.probe_interval": 2})


def _run(data, folder, model: str, sequence: int, resume: str = "none", **extra) -> dict:
    settings = (
        MODELS[model]
        | {
            "budget.steps": STEPS,
            "checkpoint.interval": 3,
            "eval.interval": STEPS,
            "data.num_workers": 0,
            "parallel.sequence": sequence,
            "precision": "fp32",
        }
        | extra
    )
    return run_spec(data, folder, resume, **settings)


def _without_overlap(model: str, root) -> str:
    """The model's DeepSpeed config with ``overlap_comm`` off (the shipped ZeRO-2 and ZeRO-3 configs turn it on)."""
    stage = MODELS[model]["deepspeed"]
    ds = json.loads((REPO / "configs" / "deepspeed" / f"{stage}.json").read_text())
    assert ds["zero_optimization"]["overlap_comm"] is True
    ds["zero_optimization"]["overlap_comm"] = False
    path = root / f"{stage}-no-overlap.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.fixture(scope="module")
def runs(softmasked128, tmp_path_factory):
    root = tmp_path_factory.mktemp("sequence")
    folder = {
        f"{model}-{name}": root / f"{model}-{name}"
        for model in MODELS
        for name in ("s1", "s2", "s1dp2", "s2dp2", "s2-to-s4", "s2-to-s1", "s1dp2-no-overlap")
    }
    train_runs(
        2,
        [_run(softmasked128, folder[f"{m}-s2"], m, 2) for m in MODELS]
        + [_run(softmasked128, folder[f"{m}-s1dp2"], m, 1) for m in MODELS]
        + [
            _run(softmasked128, folder[f"{m}-s1dp2-no-overlap"], m, 1, deepspeed=_without_overlap(m, root))
            for m in MODELS
        ],
        root / "runs-2.json",
    )
    step3 = "checkpoints/step-3"
    for m, resumed in itertools.product(MODELS, ("s2-to-s4", "s2-to-s1")):  # saved at step 3 by S = 2, continued at S'
        shutil.copytree(folder[f"{m}-s2"], folder[f"{m}-{resumed}"])

    def resume(m, resumed, sequence):
        return _run(softmasked128, folder[f"{m}-{resumed}"], m, sequence, resume=str(folder[f"{m}-{resumed}"] / step3))

    train_runs(
        4,
        [_run(softmasked128, folder[f"{m}-s2dp2"], m, 2) for m in MODELS] + [resume(m, "s2-to-s4", 4) for m in MODELS],
        root / "runs-4.json",
    )
    train_runs(
        1,
        [_run(softmasked128, folder[f"{m}-s1"], m, 1) for m in MODELS] + [resume(m, "s2-to-s1", 1) for m in MODELS],
        root / "runs-1.json",
    )
    return folder


def _curves(folder) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in metrics(folder) if "loss" in r}


def _assert_same(curve, reference, steps):
    for step in steps:
        for got, want in zip(curve[step], reference[step]):
            assert got == pytest.approx(want, rel=1e-5), (step, curve, reference)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("parallel, reference", [("s2", "s1"), ("s2dp2", "s1dp2")])
def test_sequence_parallel_training_matches_s1(runs, model, parallel, reference):
    """Losses and gradient norms of 5 fp32 steps at S = 2 (2 processes) equal S = 1's (1 process), and at
    S = 2 × data-parallel 2 (4 processes) those of data-parallel 2 (2 processes), within 1e-5 relative; the held-out
    loss too, over the same windows."""
    got, want = _curves(runs[f"{model}-{parallel}"]), _curves(runs[f"{model}-{reference}"])
    assert sorted(got) == list(range(1, STEPS + 1))
    _assert_same(got, want, range(1, STEPS + 1))
    last = [metrics(runs[f"{model}-{name}"])[-1] for name in (parallel, reference)]
    assert last[0]["val_loss"] == pytest.approx(last[1]["val_loss"], rel=1e-5)
    assert last[0]["val_windows"] == last[1]["val_windows"] and last[0]["tokens_seen"] == last[1]["tokens_seen"]
    assert losses(runs[f"{model}-{parallel}"])[STEPS] < losses(runs[f"{model}-{parallel}"])[1]
    # the repeat-weighted loss above, and beside it the held-out loss on repeats and the rest, and per genome
    split = [k for k in last[1] if k.startswith(("val_loss_", "val_masked_accuracy_", "val_genome/", "genome/"))]
    assert {"val_loss_repeat", "val_loss_nonrepeat", "val_repeat_fraction"} <= set(last[1])
    assert sum(k.startswith("genome/") and k.endswith("/loss") for k in split) == 2
    for key in split:
        assert last[0][key] == pytest.approx(last[1][key], rel=1e-5), key


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("resumed", ["s2-to-s4", "s2-to-s1"])
def test_a_checkpoint_saved_at_s2_resumes_at_another_s(runs, model, resumed):
    """The checkpoint of step 3 at S = 2 on 2 processes continues at S = 4 on 4 processes and at S = 1 on 1 process
    (both through universal checkpoints) with the next losses and gradient norms of the uninterrupted run: the
    encoder's masks too, which are drawn per data-parallel rank, and the ZeRO-3 decoder's Adam steps, which DeepSpeed's
    universal load would otherwise share between parameters (checkpoint.load)."""
    got, want = _curves(runs[f"{model}-{resumed}"]), _curves(runs[f"{model}-s1"])
    assert sorted(got) == list(range(1, STEPS + 1))
    _assert_same(got, want, range(4, STEPS + 1))
    # each genome's tokens since the run began come back with the checkpoint, and add up to the tokens seen
    last, reference = metrics(runs[f"{model}-{resumed}"])[-1], metrics(runs[f"{model}-s1"])[-1]
    tokens = {k: v for k, v in last.items() if k.startswith("genome/") and k.endswith("/tokens")}
    assert tokens == {k: reference[k] for k in tokens} and sum(tokens.values()) == last["tokens_seen"]


@pytest.mark.parametrize("model", list(MODELS))
def test_overlapped_gradient_reduction_trains_like_the_exposed_one(runs, model):
    """``overlap_comm: true`` (the shipped ZeRO-2 and ZeRO-3 configs) against the same config with it off, 2
    data-parallel
    processes on gloo: the same losses and gradient norms within fp32 tolerance."""
    _assert_same(_curves(runs[f"{model}-s1dp2"]), _curves(runs[f"{model}-s1dp2-no-overlap"]), range(1, STEPS + 1))


def test_the_loss_plot_draws_each_genome_and_the_repeat_split(runs):
    from dnalm.train.metrics import _curves, plot, read

    folder = runs["encoder-s1"]
    labels = [label for _, label, _ in _curves(read(folder))]
    assert len([x for x in labels if x.startswith("train loss, ")]) == 2
    assert {"validation loss, repeat", "validation loss, nonrepeat"} <= set(labels)
    assert plot(folder).stat().st_size > 10_000


@pytest.mark.skipif(not PROBE_TASK.exists(), reason=f"{PROBE_TASK} is absent (the team's shared data folder)")
@pytest.mark.parametrize("parallel, reference", [("s2", "s1"), ("s2dp2", "s1dp2"), ("s2-to-s4", "s1")])
def test_linear_probes_at_s2_and_s4_score_as_s1(runs, parallel, reference):
    """The encoder's probe at its last step (300 rows of prom_core_tata): at S = 2 and 4 each rank of a group embeds
    its slice of every forward and the group's sums are added; with S = 1's weights (within 1e-5) the dev accuracy is
    the same to a row of 100 and the MCC to 0.03."""
    key = "probe/prom_core_tata"
    got, want = (metrics(runs[f"encoder-{name}"])[-1] for name in (parallel, reference))
    assert got["step"] == want["step"] == STEPS and f"{key}/mcc" in want
    assert abs(got[f"{key}/accuracy"] - want[f"{key}/accuracy"]) <= 0.01 + 1e-9
    assert got[f"{key}/mcc"] == pytest.approx(want[f"{key}/mcc"], abs=0.03)


def test_the_encoder_on_chr20_logs_a_probe_curve(runs):
    """The encoder pretrained on soft-masked human chr20 (beside E. coli) logs its probe on prom_core_tata every 2
    steps and at the last: a curve in metrics.jsonl."""
    if not PROBE_TASK.exists():
        pytest.skip(f"{PROBE_TASK} is absent (the team's shared data folder)")
    curve = {r["step"]: r["probe/prom_core_tata/mcc"] for r in metrics(runs["encoder-s1"]) if "probe/seconds" in r}
    assert sorted(curve) == [2, 4, STEPS] and all(-1 <= mcc <= 1 for mcc in curve.values())
