"""Mistakes a user makes, each answered by one line that names the thing and the way out (in-process, fast)."""

import json

import pytest

from dnalm.models import get_config
from dnalm.train import checkpoint as ckpt
from tests.conftest import refused_by_cli


def test_a_run_folder_or_a_hugging_face_folder_given_as_a_bundle_points_to_the_conversion(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    said = refused_by_cli("generate", "--model", run, "--prompt", "ACGT")
    assert said.returncode == 1 and f"`dnalm convert {run} --out BUNDLE`" in said.stderr
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "esm"}))
    (hf / "model.safetensors").write_bytes(b"")
    said = refused_by_cli("generate", "--model", hf, "--prompt", "ACGT")
    assert said.returncode == 1 and f"`dnalm convert --from-hf {hf} --out BUNDLE`" in said.stderr
    said = refused_by_cli("generate", "--model", tmp_path / "nowhere", "--prompt", "ACGT")
    assert said.returncode == 1 and "no such bundle folder" in said.stderr


def test_a_checkpoint_of_another_model_is_named_with_both_models(tmp_path):
    (tmp_path / ckpt.META).write_text(json.dumps({"step": 10, "model": get_config("decoder-tiny").model_dump()}))
    ckpt.check_model(tmp_path, get_config("decoder-tiny"))
    with pytest.raises(ckpt.CheckpointError) as refused:
        ckpt.check_model(tmp_path, get_config("encoder-tiny"))
    message = str(refused.value)
    assert "holds decoder-tiny (a decoder, d_model 128, 2 layers" in message
    assert "this run builds encoder-tiny (an encoder" in message and "--resume none" in message


def test_an_unknown_config_key_is_named_where_it_was_written(tmp_path):
    config = tmp_path / "x.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nbudgett:\n  steps: 3\ndata:\n  path: {tmp_path}\n")
    said = refused_by_cli("train", "--config", config)
    assert said.stderr.strip() == f"dnalm: error: {config}: unknown key budgett (did you mean budget?)"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nbudget:\n  steps: 3\ndata:\n  path: {tmp_path}\n")
    said = refused_by_cli("train", "--config", config, "optim.lrr=3e-4")
    assert (
        said.stderr.strip() == "dnalm: error: override 'optim.lrr=3e-4': unknown key optim.lrr (did you mean optim.lr?)"
    )
    assert not (tmp_path / "run").exists()


def test_a_run_without_checkpoints_says_so(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    said = refused_by_cli("convert", tmp_path / "run", "--out", tmp_path / "bundle")
    assert said.returncode == 1 and "the run has no complete checkpoint yet" in said.stderr


def test_an_output_in_a_folder_not_made_yet_is_written_there(tmp_path):
    from dnalm.utils.files import write_atomic

    assert write_atomic(tmp_path / "emb" / "deeper" / "x.txt", "rows").read_text() == "rows"


def test_commands_find_the_team_data_only_where_dnalm_data_says(tmp_path, monkeypatch):
    """No command assumes ../shared/data: a bench that needs human chr20 or GUE takes a flag or $DNALM_DATA, and says
    which in one line when it has neither; one that can fall back uses the bundled genome."""
    from dnalm import genome
    from dnalm.bench import report

    monkeypatch.delenv("DNALM_DATA", raising=False)
    said = refused_by_cli("bench", "scale", "--work", tmp_path / "w", "--out", tmp_path / "o")
    assert said.returncode == 1 and "--source not given and $DNALM_DATA is not set" in said.stderr
    assert report.chr20_or_bundled() == genome.DEFAULT_GENOME
    monkeypatch.setenv("DNALM_DATA", str(tmp_path))
    said = refused_by_cli("bench", "compare", "--work", tmp_path / "w", "--out", tmp_path / "o")
    assert said.returncode == 1 and f"$DNALM_DATA ({tmp_path}) has no genomes/hs37_chr20.fa.gz" in said.stderr
    (tmp_path / "genomes").mkdir()
    (tmp_path / "genomes" / "hs37_chr20.fa.gz").write_bytes(b"")
    assert report.chr20_or_bundled() == tmp_path / "genomes" / "hs37_chr20.fa.gz"
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
