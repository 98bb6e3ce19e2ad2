"""``dnalm bench compare`` end to end on a real genome and real GUE promoters, on a budget a test can afford."""

import json
import math

import pytest

from dnalm import genome
from tests.conftest import SHARED_DATA, needs_shared, refused_by_cli, run_cli, write_slice

GUE = SHARED_DATA / "gue"
TASK = "prom_300_tata"


def small(root) -> list[str]:
    """A budget a test can afford, on real data: 600 kb of the bundled E. coli genome (the pretraining reads 4,096
    tokens of it) and GUE prom_300_tata's first 64 training and 150 dev rows (each pass of a fine-tuning evaluates all
    its dev rows)."""
    fasta = root / "ecoli_600k.fa"
    if not fasta.exists():
        write_slice(genome.DEFAULT_GENOME, fasta, 0, 600_000)
        (root / "gue" / TASK).mkdir(parents=True)
        for split, rows in (("train", 64), ("dev", 150)):
            lines = (GUE / TASK / f"{split}.csv").read_text().splitlines()
            (root / "gue" / TASK / f"{split}.csv").write_text("\n".join(lines[: rows + 1]) + "\n")
    return [
        "--genome",
        str(fasta),
        "--gue",
        str(root / "gue"),
        "--variants",
        "views-bases",
        "--seeds",
        "1",
        "--pretrain-tokens",
        "4096",
        "--seq-len",
        "256",
        "--lengths",
        "128",
        "--tasks",
        f"{TASK}=64",
        "--epochs",
        "1",
    ]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    done = run_cli("bench", "compare", *small(root), "--work", root / "work", "--out", root / "out", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


@needs_shared(GUE / TASK)
def test_compare_reports_every_stage(compared):
    root, done = compared
    result = json.loads((root / "out" / "compare.json").read_text())
    assert set(result["variants"]) == {"views-bases"}  # views with the per-base head: its trainer, scoring, timing
    assert set(result["data"]) == {"nucleotide", "views"}  # one prep per input form
    for row in result["pretrain"]:
        assert row["steps"] == 2 and row["tokens_seen"] > 0 and math.isfinite(row["final_loss"])
        assert 0 < row["masked_accuracy"] < 1 and row["scored_bases"] > 1000 and row["scored_windows"] > 8
    assert {(r["variant"], r["length"]) for r in result["throughput"]} == {("views-bases", 128)}
    assert all(r["tokens_per_s"] > 0 and r["peak_mb"] > 0 for r in result["throughput"])
    assert {(r["variant"], r["pretrained"]) for r in result["finetune"]} == {("views-bases", p) for p in (True, False)}
    assert all(-1 <= r["dev_mcc"] <= 1 and r["train_rows"] == 64 for r in result["finetune"])
    table = (root / "out" / "compare.md").read_text()
    assert "held-out masked-base accuracy" in table and "| views-bases | " in table and "prom_300_tata" in table
    assert result["command"].startswith("dnalm bench compare --genome") and "--seeds 1" in result["command"]
    for plot in ("compare_loss", "compare_throughput", "compare_finetune"):
        assert (root / "out" / f"{plot}.png").stat().st_size > 5000
    assert "[5/5] report" in done.stdout


@needs_shared(GUE / TASK)
def test_compare_resumes_from_finished_pieces_and_refuses_another_budget(compared):
    root, _ = compared
    before = json.loads((root / "out" / "compare.json").read_text())
    logs = {p: p.stat().st_mtime_ns for p in (root / "work" / "logs").iterdir()}
    again = run_cli("bench", "compare", *small(root), "--work", root / "work", "--out", root / "out2")
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((root / "out2" / "compare.json").read_text())
    for key in ("pretrain", "finetune", "throughput"):
        assert after[key] == before[key]
    assert {p: p.stat().st_mtime_ns for p in (root / "work" / "logs").iterdir()} == logs  # nothing retrained

    other = run_cli("bench", "compare", *small(root)[:-1], "2", "--work", root / "work", "--out", root / "out3")
    assert other.returncode == 1 and "another budget (finetune_epochs differ)" in other.stderr
    assert not (root / "out3").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--variants", "transformer,lstm"], "unknown variant lstm"),
        (["--genome", "/nonexistent/genome.fa"], "--genome /nonexistent/genome.fa: no such file"),
        (["--tasks", "prom_core_all=many"], "--tasks: 'many' is not a whole number"),
        (["--gue", "/nonexistent"], "no prom_core_all/train.csv"),
        (["--seeds", "0"], "seeds"),
        (["--tasks", "prom_core_all=1"], "at least 2 training rows"),
        (["--lengths", "1024,4"], "at least 8 tokens"),
    ],
)
def test_compare_refuses_bad_input_before_writing_anything(tmp_path, flags, message):
    done = refused_by_cli(
        "bench",
        "compare",
        "--genome",
        str(genome.DEFAULT_GENOME),
        *flags,
        "--work",
        tmp_path / "work",
        "--out",
        tmp_path / "out",
    )
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
