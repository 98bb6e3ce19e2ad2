"""The model benchmarks run end to end at small sizes and write JSON + PNG."""

import json

import torch

from dnalm.bench import alibi, attention, train
from tests.conftest import refused_by_cli, run_cli


def test_attention_point_measures_time_and_memory():
    point = attention.measure("performer", True, 256, 1)
    assert point["seconds"] > 0 and point["peak_mb"] >= 0


def test_alibi_bench_measures_every_path_and_writes_its_ratios(tmp_path, monkeypatch):
    """Each point in this process (the command runs each in a fresh one): the attention paths (an encoder's causal
    passes only for encoders: a decoder's fused path is its one pass) and the four models, then the ratios, JSON
    and plot."""
    from dnalm.models import attention

    monkeypatch.setattr(attention, "COPY_HEADS_ON_CPU", True)  # the strided-heads model turns it off in this process
    monkeypatch.setattr(alibi, "_in_fresh_process", alibi._point)
    try:
        result = alibi.run(tmp_path, lengths=(128,), model_lengths=(128,), repeats=1, device="cpu", rounds=2)
    finally:
        torch.set_flush_denormal(True)  # the denormals-kept point turned it off in this process
    assert {(r["path"], r["causal"]) for r in result["attention"] if r.get("seconds", 0) > 0} == {
        (p, c) for p in (*alibi.PATHS, alibi.DENORMALS) for c in (False, True)
    } - {("causal passes", True)}
    assert {r["model"] for r in result["model_steps"] if r["tokens_per_s"] > 0} == set(alibi.MODELS)
    assert all(len(r["rounds"]) == 2 and r["step_seconds"] == min(r["rounds"]) for r in result["model_steps"])
    assert set(result["ratios"]) == {
        "encoder_attention_at_128",
        "decoder_attention_at_128",
        "encoder_step_at_128",
        "decoder_step_at_128",
    }
    assert json.loads((tmp_path / "alibi.json").read_text())["device"]["type"] == "cpu"
    assert (tmp_path / "alibi.png").stat().st_size > 1000


def test_attention_bench_cli(tmp_path):
    result = run_cli("bench", "attention", "--lengths", "128", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "attention.json").read_text())
    measured = {(r["backend"], r["causal"]) for r in saved["rows"] if "seconds" in r}
    assert measured >= {(b, c) for b in attention.BACKENDS for c in (False, True)}
    assert (tmp_path / "attention.png").stat().st_size > 1000


def test_context_bench_cli_measures_a_series_at_s1_and_s2(tmp_path):
    """One series at one length, in one process and split over 2 (torchrun, gloo): tokens/s and a peak per rank, the
    S = 2 ÷ S = 1 ratios the issue's goals are read from, and the plot. An unknown series is refused by name."""
    label = "encoder-small sdpa (ALiBi)"
    result = run_cli(
        "bench",
        "context",
        "--series",
        label,
        "--lengths",
        "512",
        "--long-lengths",
        "",
        "--sizes",
        "2",
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "context.json").read_text())
    assert sorted(saved["series"]) == [f"{label}, S=1", f"{label}, S=2"]
    for size in (1, 2):
        [point] = saved["series"][f"{label}, S={size}"]["points"]
        assert "error" not in point, point
        assert point["length"] == 512 and point["tokens_per_s"] > 0 and len(point["ranks"]) == size
        assert all(rank["peak_mb"] > 0 for rank in point["ranks"])
    ratios = saved["findings"][f"{label}: S=2 ÷ S=1 at each length"]["512"]
    assert ratios["peak_memory_per_rank"] > 0 and ratios["throughput"] > 0
    assert (tmp_path / "context.png").stat().st_size > 1000
    refused = refused_by_cli("bench", "context", "--series", "decoder-huge", "--out", tmp_path / "other")
    assert refused.returncode == 1 and "'decoder-huge' is not a series" in refused.stderr
    assert not (tmp_path / "other").exists()


def test_train_bench_reports_mfu(tmp_path):
    result = train.run(
        tmp_path,
        models=(("encoder-tiny", 2, 64, {}), ("decoder-tiny", 2, 64, {})),
        with_distribution=False,
        with_compile=False,
    )  # compiling costs ~20 s a model here; tests/test_train.py trains compiled
    assert [r["model"] for r in result["rows"]] == ["encoder-tiny", "decoder-tiny"]
    for row in result["rows"]:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1.5
    assert result["peak"]["tflops"] > 0 and "6*N + 12*L*d*T" in result["flop_formula"]
    # a CPU has no nominal peak: MFU is against the matmul measured in the run, and says so
    assert result["peak"]["nominal"] is None and result["mfu_basis"].startswith("measured 4096x4096 matmul")
    assert all(row["mfu"] == row["mfu_of_measured_matmul"] for row in result["rows"])
    assert (tmp_path / "train.json").exists() and (tmp_path / "train.png").exists()


def test_mfu_uses_the_nominal_peak_of_the_device_by_the_fields_formula():
    """The table matches CUDA device names; the H200 run of decoder-1.5b (34,410 tokens/s, ZeRO-2, 2,048 tokens)
    with nucleotide tokens is 36.9% of 989 TFLOP/s by 6·N + 12·L·d·T, where it was 46.6% of the measured 784.3 TFLOP/s
    matmul."""
    from dnalm.models import build_model, get_config
    from dnalm.train.flops import flops_per_token, nominal_peak

    assert nominal_peak("NVIDIA H200", "bf16") == ("H200 SXM", 989e12)
    assert nominal_peak("NVIDIA H100 80GB HBM3", "fp8") == ("H100 SXM", 1979e12)
    assert nominal_peak("NVIDIA H100 PCIe", "bf16") == ("H100 PCIe", 756e12)
    assert nominal_peak("NVIDIA A100-SXM4-80GB", "bf16") == ("A100", 312e12)
    assert nominal_peak("NVIDIA A100-SXM4-80GB", "fp8") is None and nominal_peak("Tesla V100-SXM2-32GB", "bf16") is None
    config = get_config("decoder-1.5b", vocab_size=10)
    per_token = flops_per_token(build_model(config, device="meta"), config, 2048)
    assert round(34_410 * per_token / 989e12, 3) == 0.369 and round(34_410 * per_token / 784.3e12, 3) == 0.466


def test_plot_draws_the_loss_curves(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "loss": 3 - s / 10} | ({"val_loss": 3 - s / 12} if s % 5 == 0 else {})) + "\n"
            for s in range(1, 21)
        )
    )
    result = run_cli("plot", run_dir)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "loss.png").stat().st_size > 1000 and result.stdout.strip() == f"wrote {run_dir / 'loss.png'}"
    missing = run_cli("plot", tmp_path)
    assert missing.returncode == 1 and "no metrics.jsonl" in missing.stderr


def test_embed_bench_writes_json_and_plot(tmp_path):
    from dnalm.bench import embed as embed_bench

    result = embed_bench.run(tmp_path, "encoder-tiny", length=200, count=4, batch_sizes=(1, 2))
    assert [r["batch_size"] for r in result["rows"]] == [1, 2] and all(r["sequences_per_s"] > 0 for r in result["rows"])
    assert result["device"]["type"] == "cpu" and result["machine"]["cpu"]
    assert (
        json.loads((tmp_path / "embed.json").read_text()) == result and (tmp_path / "embed.png").stat().st_size > 1000
    )
