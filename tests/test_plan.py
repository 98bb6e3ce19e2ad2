"""``dnalm plan``: the arithmetic on cases worked by hand, the H200 runs' recorded peaks, one configuration measured
here, the command's output and its refusals. (The other CPU configurations are measured by
``python -m dnalm.bench.plan``: docs/benchmarks/plan.json.)"""

import json

import pytest

from dnalm.models import build_model, get_config
from dnalm.train import plan
from dnalm.train.config import REPO_CONFIGS, load_config
from dnalm.train.flops import NOMINAL
from dnalm.train.flops import flops_per_token as built_flops_per_token
from tests.conftest import refused_by_cli

DECODER_1_5B = REPO_CONFIGS / "train" / "decoder-1.5b-human.yaml"
SMALL = REPO_CONFIGS / "train" / "decoder-small-ecoli.yaml"
GIB = 2**30


def setup(config_path=SMALL, overrides=(), gpus=2, gpu="h100", seq_len=1024):
    config = load_config(config_path, ["data.path=/nonexistent", *overrides])
    model, seq_len, _ = plan.resolve_model(config, seq_len)
    return plan.evaluate(config, model, seq_len, gpus, plan.gpu_spec(gpu, gpus))


def test_parameters_flops_and_peaks_agree_with_the_model_and_the_mfu_table():
    for name in ("decoder-small", "encoder-small", "decoder-1.5b"):
        config = get_config(name)
        model = build_model(config, device="meta")
        assert plan.counts(config).parameters == sum(p.numel() for p in model.parameters())
        assert plan.flops_per_token(config, 2048) == built_flops_per_token(model, config, 2048)
    assert plan.GPUS["h100"].bf16_tflops == NOMINAL["H100 SXM"].tflops["bf16"]
    assert plan.GPUS["h200"].bf16_tflops == NOMINAL["H200 SXM"].tflops["bf16"]
    assert plan.GPUS["a100-80g"].bf16_tflops == plan.GPUS["a100-40g"].bf16_tflops == NOMINAL["A100"].tflops["bf16"]


def test_model_states_by_zero_stage_worked_by_hand():
    """bf16 weights 2N (ZeRO-3: 2N/W), fp32 gradients 4N/W (ZeRO-1: 4N), master + AdamW 12N/W; offload to host."""
    for stage, weights, grads in (("zero1", 2, 4), ("zero2", 2, 4 / 8), ("zero3", 2 / 8, 4 / 8)):
        s, _ = setup(overrides=[f"deepspeed={stage}", "batch.global_batch=32"], gpus=8)
        n = plan.counts(s.model).parameters
        parts = {part.name: part for part in plan.model_states(s)}
        assert parts["weights"].bytes == pytest.approx(weights * n)
        assert parts["gradients"].bytes == pytest.approx(grads * n)
        assert parts["optimizer states"].bytes == pytest.approx(12 * n / 8)
    s, mem = setup(overrides=["deepspeed=zero3-offload", "batch.global_batch=32"], gpus=8)
    n = plan.counts(s.model).parameters
    assert mem["host_per_rank"] == pytest.approx((2 + 4 + 12) * n / 8)
    assert "optimizer step" not in mem["moments"]


def test_activations_worked_by_hand_linear_in_the_window_and_split_by_sequence_parallelism():
    """decoder-small (d 384, h 1024, head dim 64, RMSNorm, RoPE, SwiGLU) in bf16: 11d + 4h + 64 elements a token a
    layer, 2d after the last; recomputation keeps d a layer; S = 2 halves what a rank keeps."""
    s, _ = setup(overrides=["batch.micro_batch=1", "batch.global_batch=2"], seq_len=1024)
    d, h, layers, tokens = 384, 1024, 6, 1024
    act = plan.activations(s)
    assert act.kept == 2 * tokens * (layers * (11 * d + 4 * h + 64) + 2 * d)
    assert act.kept_with_recompute == 2 * tokens * (layers * d + 2 * d)
    assert act.head == tokens * s.model.head_size * 14  # bf16 logits: 14 bytes each
    longer, _ = setup(overrides=["batch.micro_batch=1", "batch.global_batch=2"], seq_len=4096)
    assert plan.activations(longer).kept == 4 * act.kept  # linear in the window, never its square
    split, _ = setup(overrides=["batch.micro_batch=1", "batch.global_batch=1", "parallel.sequence=2"], seq_len=4096)
    assert plan.activations(split).kept == 2 * act.kept
    assert plan.activations(split).exchange == 2 * (4096 // 2) * 6 * d


def test_lean_step_bounds_the_head_and_the_mlp_by_their_chunks_and_tiles():
    whole, _ = setup(
        overrides=["activation_checkpointing=true", "batch.micro_batch=1", "batch.global_batch=2"], seq_len=65536
    )
    lean, _ = setup(
        overrides=[
            "activation_checkpointing=true",
            "batch.micro_batch=1",
            "batch.global_batch=2",
            "model.overrides.mlp_tile=1024",
            "model.overrides.loss_chunk=4096",
        ],
        seq_len=65536,
    )
    assert plan.activations(lean).head == plan.activations(whole).head * 4096 / 65536
    d, h = 384, 1024
    saved_by_tiles = 2 * (65536 - 1024) * (2 * d + 4 * h + 3 * d)  # the MLP's part and its gradients, all but a tile
    assert plan.activations(whole).block - plan.activations(lean).block == saved_by_tiles


def test_communication_bytes_worked_by_hand():
    s, _ = setup(overrides=["deepspeed=zero3", "batch.micro_batch=2", "batch.global_batch=8"], gpus=2)
    n = plan.counts(s.model).parameters  # 2 micro-batches a step: 2 gathers each, 1 reduce-scatter, half sent
    assert {r["what"]: r["bytes"] for r in plan.communication(s)} == {
        "ZeRO-3 weight all-gathers (2 × 2 micro-batches)": 2 * 2 * 0.5 * 2 * n,
        "ZeRO-3 gradient reduce-scatter (2 micro-batches)": 2 * 0.5 * 2 * n,
    }
    s, _ = setup(
        overrides=[
            "parallel.sequence=2",
            "activation_checkpointing=true",
            "batch.micro_batch=1",
            "batch.global_batch=1",
        ],
        gpus=2,
        seq_len=4096,
    )
    ulysses = [r for r in plan.communication(s) if r["what"].startswith("Ulysses")][0]
    assert ulysses["bytes"] == 3 * 6 * 4 * 2048 * 384 * 2 * 0.5  # 3 passes × 6 layers × (q, k, v + output) × half


def test_the_h200_runs_recorded_peaks_within_15_percent():
    """docs/benchmarks/gpu.json: decoder-1.5b on one H200 (ZeRO-3 micro-batch 16 and 32 with recomputation, ZeRO-2
    micro-batch 8 without), the CUDA allocator's high-water mark against the predicted tensors."""
    from dnalm.bench.plan import h200_check

    rows = h200_check()
    assert len(rows) == 3
    for row in rows:
        assert abs(row["error"]) <= 0.15, row


def test_a_measured_run_on_this_cpu_within_15_percent(ecoli_prepared, tmp_path):
    """One configuration measured here (decoder-small, ZeRO-2, one process, 2 steps); the others: the benchmark."""
    from dnalm.bench.plan import measure

    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"data.path={ecoli_prepared}",
        "data.num_workers=0",
        "logging.wandb=disabled",
        "budget.steps=2",
        "eval.interval=1000000",
        "deepspeed=zero2",
        "batch.micro_batch=2",
        "batch.global_batch=2",
    ]
    measured = measure(SMALL, overrides, processes=1, steps=2)
    assert "ranks" in measured, measured
    peak = max(measured["ranks"][0]["steps_mib"]) * 2**20
    predicted = plan.make_plan(load_config(SMALL, overrides), 1, "cpu")["memory"]["tensors_at_peak"]
    assert abs(predicted / peak - 1) <= 0.15, (predicted / 2**20, peak / 2**20)


def test_plan_reads_the_window_and_vocabulary_of_prepared_data_as_the_trainer_does(ecoli_prepared):
    from dnalm.data.manifest import Manifest
    from dnalm.train.setup import data_tokenizer, resolve_model

    config = load_config(SMALL, [f"data.path={ecoli_prepared}"])
    model, seq_len, notes = plan.resolve_model(config, None)
    manifest = Manifest.load(ecoli_prepared)
    assert seq_len == manifest.seq_len == 512
    assert model == resolve_model(config, manifest, data_tokenizer(ecoli_prepared, manifest))
    assert "the prepared data's" in notes[0]


def test_the_ladder_names_what_fits():
    """decoder-1.5b's config (micro-batch 8, ZeRO-3, recomputation) on 8 H100s fits at 2k tokens; at 128k only a
    smaller micro-batch does; at 1M no micro-batch does and the ladder climbs to sequence parallelism."""
    config = load_config(DECODER_1_5B)
    short = plan.make_plan(config, 8, "h100", seq_len=2048)
    assert short["memory"]["fits"] and "ladder" not in short
    assert short["time"]["tokens_per_s_per_gpu"] > 0 and short["time"]["mfu_source"].startswith("assumed: measured on")
    long = plan.make_plan(config, 8, "h100", seq_len=131072)
    assert not long["memory"]["fits"] and long["largest_micro_batch"] in (1, 2, 4)
    huge = plan.make_plan(config, 8, "h100", seq_len=1048576)
    assert huge["largest_micro_batch"] is None and huge["largest_window"] < 1048576
    assert huge["ladder"][-1]["micro_batch"] == 1 and "parallel.sequence" in huge["fits_with"]["overrides"]


def test_command_prints_the_table_and_json():
    done = refused_by_cli("plan", DECODER_1_5B, "--gpus", "8", "--gpu", "h100", "--seq-len", "2048")
    assert done.returncode == 0, done.stderr
    for text in (
        "8 × H100 SXM 80GB",
        "weights",
        "gradients",
        "optimizer states",
        "activations kept for the backward",
        "ZeRO-3 weight all-gathers",
        "tokens/s per GPU",
        ": fits",
        "assumes:",
        "leaves out:",
    ):
        assert text in done.stdout, text
    done = refused_by_cli(
        "plan", DECODER_1_5B, "batch.micro_batch=4", "--gpus", "64", "--gpu", "h200", "--seq-len", "32768", "--json"
    )
    result = json.loads(done.stdout)
    assert result["setup"]["micro_batch"] == 4 and result["nodes"] == 8 and result["device"] == "H200 SXM 141GB"


GPUS_8 = ["--gpus", "8", "--gpu", "h100"]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpus", "8", "--gpu", "h300", "--seq-len", "2048"],
            "--gpu 'h300': not a device this plan knows; choose from",
        ),
        (GPUS_8, "data.path data/grch38-bpe holds no prepared data: give the window with --seq-len"),
        (["--gpu", "h100", "--seq-len", "2048"], "plan needs --gpus N and --gpu KIND"),
        (["--gpus", "0", "--gpu", "h100", "--seq-len", "2048"], "--gpus 0: give 1 or more"),
        ([*GPUS_8, "--seq-len", "0"], "--seq-len 0: give 1 or more tokens"),
        ([*GPUS_8, "--seq-len", "2048", "--mfu", "1.5"], "--mfu 1.5: give a fraction in (0, 1]"),
        ([*GPUS_8, "--seq-len", "2048", "parallel.sequence=3"], "parallel.sequence 3 does not divide"),
        (
            ["--gpus", "6", "--gpu", "h100", "--seq-len", "2048"],
            "batch.global_batch 512 is not a multiple of micro_batch",
        ),
    ],
)
def test_command_refusals_are_one_line(args, message):
    overrides = [a for a in args if "=" in a]  # after CONFIG, as dnalm train takes them
    done = refused_by_cli("plan", DECODER_1_5B, *overrides, *[a for a in args if a not in overrides])
    assert done.returncode == 1
    assert done.stderr.startswith("dnalm: error: ") and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1


def test_a_config_that_is_not_there_is_named():
    done = refused_by_cli("plan", "configs/train/nope.yaml", "--gpus", "8", "--gpu", "h100", "--seq-len", "2048")
    assert done.returncode == 1 and "nope.yaml: no such training config" in done.stderr
