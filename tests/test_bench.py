"""The model benchmarks run end to end at small sizes and write JSON + PNG."""

import json

from dnalm.bench import attention, train
from tests.conftest import run_cli


def test_attention_point_measures_time_and_memory():
    point = attention.measure("performer", True, 256, 1)
    assert point["seconds"] > 0 and point["peak_mb"] >= 0


def test_attention_bench_cli(tmp_path):
    result = run_cli("bench", "attention", "--lengths", "128,256", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "attention.json").read_text())
    measured = {(r["backend"], r["causal"]) for r in saved["rows"] if "seconds" in r}
    assert measured >= {(b, c) for b in attention.BACKENDS for c in (False, True)}
    assert (tmp_path / "attention.png").stat().st_size > 1000


def test_train_bench_reports_mfu(tmp_path):
    result = train.run(tmp_path, models=(("encoder-tiny", 2, 64, {}), ("decoder-tiny", 2, 64, {})), with_distribution=False)
    assert [r["model"] for r in result["rows"]] == ["encoder-tiny", "decoder-tiny"]
    for row in result["rows"]:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1.5
    assert result["peak"]["tflops"] > 0 and "6*N + 12*L*d*T" in result["flop_formula"]
    assert (tmp_path / "train.json").exists() and (tmp_path / "train.png").exists()


def test_plot_draws_the_loss_curves(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 3 - s / 10} | ({"val_loss": 3 - s / 12} if s % 5 == 0 else {})) + "\n"
        for s in range(1, 21)))
    result = run_cli("plot", run_dir)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "loss.png").stat().st_size > 1000
    missing = run_cli("plot", tmp_path)
    assert missing.returncode == 1 and "no metrics.jsonl" in missing.stderr
