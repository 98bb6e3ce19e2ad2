"""The `dnalm` command as a user runs it: help, the main job on the bundled genome, bad arguments."""

import json

import pytest

from dnalm import genome
from dnalm.cli import COMMANDS, main
from tests.conftest import refused_by_cli, run_cli


def test_every_command_explains_itself(capsys):
    """The top-level help as a user runs it; every command's help in-process (one interpreter, not one each)."""
    assert run_cli("--help").returncode == 0
    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([*cmd.path, "--help"])
        assert done.value.code == 0 and cmd.help.split()[0] in capsys.readouterr().out, cmd.path


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for option in (
        "passes over --train (default: 5)",
        "rows per step (default: 64)",
        "(default: 0.001)",
        "report mean ± std (default: 1)",
    ):
        assert option in shown, option


def test_unknown_command_fails():
    result = refused_by_cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_inspect_bundled_genome_json():
    result = run_cli("genome", "inspect", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == str(genome.DEFAULT_GENOME) and report["format"] == "gzip"
    assert report["contigs"][0]["length"] == 4_639_675
    assert report["sha256"] == "ae952b2873ef8badc956925a61c5b536d4e40322b4e8b15dde3d8eda7ce3c879"


def test_inspect_table_names_every_contig(write_fasta):
    path = write_fasta(">a\nACGTNNNN\n>b\nGGCC\n")
    result = run_cli("genome", "inspect", path, "--min-n-run", "2")
    assert result.returncode == 0
    assert "\na " in result.stdout and "\nb " in result.stdout and "2 contigs" in result.stdout


def test_train_bpe_cli_and_existing_output(tmp_path):
    out = tmp_path / "bpe"
    result = run_cli("tokenizer", "train-bpe", "--vocab-size", "256", "--max-memory-gb", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "K-12-MG1655" in result.stdout and (out / "tokenizer.json").exists() and (out / "bpe.model").exists()
    again = refused_by_cli("tokenizer", "train-bpe", "--vocab-size", "256", "--out", out)
    assert again.returncode == 1 and "exists and is not an empty folder" in again.stderr
    bad = refused_by_cli("tokenizer", "train-bpe", tmp_path / "missing.fa", "--out", tmp_path / "other")
    assert bad.returncode == 1 and "no such file" in bad.stderr and not (tmp_path / "other").exists()


def test_bench_tokenize_writes_json_and_plot(tmp_path):
    result = run_cli("bench", "tokenize", "--genome", genome.DEFAULT_GENOME, "--bases", "2000000", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "tokenize.json").read_text())
    assert saved == json.loads(result.stdout)
    assert {row["tokenizer"] for row in saved["encode"]} >= {"nucleotide", "kmer:6", "kmer:6:1", "bpe:4096"}
    assert all(row["mbases_per_s"] > 0 for row in saved["encode"]) and saved["machine"]["cpu"]
    assert (tmp_path / "tokenize.png").stat().st_size > 1000
