"""A stranger's bad input to each command of the README, each answered by one line before any work (in-process)."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, refused_by_cli


def test_config_new_writes_the_packaged_template_and_refuses_an_existing_file(tmp_path, monkeypatch):
    shipped = REPO / "dnalm" / "assets" / "configs" / "template.yaml"
    assert (REPO / "configs" / "train" / "template.yaml").read_text() == shipped.read_text()
    monkeypatch.chdir(tmp_path)  # outside the repository, where `cp configs/train/template.yaml` fails
    said = refused_by_cli("config", "new", "my.yaml", "--model", "decoder-tiny")
    assert said.returncode == 0 and "wrote my.yaml" in said.stdout and "dnalm train --config my.yaml" in said.stdout
    written = Path("my.yaml").read_text()
    assert yaml.safe_load(written)["model"]["name"] == "decoder-tiny" and "# A training run, commented" in written
    said = refused_by_cli("config", "new", "my.yaml")
    assert (
        said.returncode == 1
        and said.stderr.strip() == "dnalm: error: my.yaml: exists; give a new file name (or edit that one)"
    )
    said = refused_by_cli("config", "new", "other.yaml", "--model", "encodr-tiny")
    assert said.returncode == 1 and "unknown model 'encodr-tiny'" in said.stderr and not Path("other.yaml").exists()


def test_plan_says_what_global_batch_to_set_and_takes_overrides_after_its_options(tmp_path):
    config = tmp_path / "my.yaml"
    refused_by_cli("config", "new", config)
    plan = ("plan", config, "--gpus", "8", "--gpu", "h100", "--seq-len", "128")
    said = refused_by_cli(*plan)
    assert said.returncode == 1 and said.stderr.strip().endswith(
        "set batch.global_batch to a multiple of 64, e.g. batch.global_batch=64"
    )
    said = refused_by_cli(*plan, "batch.global_batch=64")  # README's example, the override after the options
    assert said.returncode == 0 and "global batch 64" in said.stdout
    said = refused_by_cli(*plan, "batch.global_batch=64", "--bogus")
    assert said.returncode == 2 and "dnalm plan: error: unrecognized arguments: --bogus" in said.stderr


def test_train_takes_overrides_after_its_options(tmp_path):
    config = tmp_path / "my.yaml"
    refused_by_cli("config", "new", config)
    said = refused_by_cli("train", "--config", config, "--resume", "none", "optim.lrr=1e-3")
    assert said.returncode == 1 and "unknown key optim.lrr (did you mean optim.lr?)" in said.stderr
    said = refused_by_cli("train", "--config", config, "--resume", "none", "budget.steps=3", "--bogus")
    assert said.returncode == 2 and "dnalm train: error: unrecognized arguments: --bogus" in said.stderr


def test_demo_arguments_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "my.yaml"
    a_file.write_text("x: 1\n")
    for args, line in (
        (("--processes", "0"), "--processes 0: give 1 or more DeepSpeed processes (default 2)"),
        (("--steps", "0"), "--steps 0: give 1 or more pretraining steps (default 300)"),
        (("--out", a_file), f"--out {a_file}: is a file, not a folder; give a folder to create"),
    ):
        said = refused_by_cli("demo", "--out", tmp_path / "demo", *args)
        assert said.returncode == 1 and said.stderr == f"dnalm: error: {line}\n", args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml"]


def test_an_existing_file_given_as_an_output_folder_is_refused_up_front(tmp_path):
    a_file = tmp_path / "my.yaml"
    a_file.write_text("x: 1\n")
    csv = tmp_path / "rows.csv"
    csv.write_text("sequence,label\nACGT,0\n")
    line = f"dnalm: error: --out {a_file}: is a file, not a folder; give a folder to create\n"
    said = refused_by_cli("prep", "--out", a_file, "--seq-len", "128")
    assert said.returncode == 1 and said.stderr == line
    said = refused_by_cli("finetune", "--arch", "cnn-small", "--train", csv, "--dev", csv, "--out", a_file)
    assert said.returncode == 1 and said.stderr == line
    said = refused_by_cli("eval", "gue", tmp_path, "--arch", "cnn-small", "--out", a_file / "gue")
    assert said.returncode == 1 and f"lies under {a_file}, which is a file" in said.stderr
    config = tmp_path / "train.yaml"
    refused_by_cli("config", "new", config)
    said = refused_by_cli("train", "--config", config, f"data.path={tmp_path}", f"run_dir={a_file}")
    assert said.returncode == 1 and said.stderr == line.replace("--out", "run_dir")
    assert a_file.read_text() == "x: 1\n"


@pytest.fixture(scope="module")
def decoder_bundle(tmp_path_factory):
    """An untrained decoder-tiny bundle over nucleotides (in-process, well under a second)."""
    import torch

    from dnalm.bundle import save_bundle
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import load

    tokenizer = load("nucleotide")
    torch.manual_seed(0)
    model = build_model(get_config("decoder-tiny", vocab_size=tokenizer.vocab_size))
    return save_bundle(tmp_path_factory.mktemp("bundle") / "decoder", model, tokenizer)


def test_generate_makes_its_output_folder_and_refuses_bad_sampling_settings(decoder_bundle, tmp_path):
    base = ("generate", "--model", decoder_bundle, "--prompt", "ACGT", "--max-new-tokens", "4")
    said = refused_by_cli(*base, "--out", tmp_path / "nodir2" / "g.fa")
    assert said.returncode == 0, said.stderr
    assert (tmp_path / "nodir2" / "g.fa").read_text().startswith(">")
    for option, value, line in (
        ("--temperature", "-1", "--temperature -1.0: give 0 (greedy) or more"),
        ("--temperature", "nan", "--temperature nan: give 0 (greedy) or more"),
        ("--top-k", "-1", "--top-k -1: give 1 or more"),
        ("--top-k", "0", "--top-k 0: give 1 or more"),
        ("--top-p", "1.5", "--top-p 1.5: give a probability mass in (0, 1]"),
    ):
        said = refused_by_cli(*base, option, value, "--out", tmp_path / "refused" / "g.fa")
        assert said.returncode == 1 and said.stderr.startswith(f"dnalm: error: {line}"), said.stderr
    said = refused_by_cli(*base, "--out", tmp_path)
    assert said.returncode == 1 and "is a folder; give a file name" in said.stderr
    assert not (tmp_path / "refused").exists()


def test_a_gzip_file_where_text_is_expected_is_named_with_what_was_expected(tmp_path):
    from dnalm import genome
    from dnalm.data.manifest import DataError, Manifest

    gz = genome.DEFAULT_GENOME
    said = refused_by_cli("train", "--config", gz)
    assert (
        said.stderr == f"dnalm: error: {gz}: a gzip file, not a training config (YAML); `dnalm config new "
        "my.yaml` writes one\n"
    )
    said = refused_by_cli("finetune", "--arch", "cnn-small", "--train", gz, "--dev", gz, "--out", tmp_path / "ft")
    assert said.returncode == 1 and f"{gz}: a gzip file, not a CSV/TSV of sequence,label rows" in said.stderr
    with pytest.raises(DataError, match="a gzip file, not a dnalm manifest: give the folder `dnalm prep` wrote"):
        Manifest.load(gz)  # what data.path=genome.fa.gz reaches


def _checkpoint(run: Path, step: int, model_bytes: bytes | None = None) -> Path:
    """A checkpoint folder with the files `dnalm convert` checks for; its model states a whole torch file, or the
    given bytes (a cut-off one)."""
    import json

    import torch

    from dnalm.models import get_config
    from dnalm.tokenizers import load
    from dnalm.train import checkpoint as ckpt

    folder = run / "checkpoints" / f"step-{step}"
    (folder / ckpt.TAG).mkdir(parents=True)
    (folder / ckpt.META).write_text(json.dumps({"step": step, "world_size": 1}))
    (folder / "model.yaml").write_text(yaml.safe_dump(get_config("decoder-tiny", vocab_size=10).model_dump()))
    load("nucleotide").save(folder / "tokenizer")
    for name in ("rng-rank0.pt", f"{ckpt.TAG}/zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({}, folder / name)
    model = folder / ckpt.TAG / "mp_rank_00_model_states.pt"
    torch.save({"module": {}}, model)
    if model_bytes is not None:
        model.write_bytes(model_bytes)
    (folder / ckpt.MARKER).write_text("")
    return folder


def test_a_cut_off_checkpoint_file_is_named_with_the_previous_complete_checkpoint(tmp_path):
    from dnalm.train import checkpoint as ckpt

    run = tmp_path / "run"
    earlier = _checkpoint(run, 3)
    newest = _checkpoint(
        run, 6, model_bytes=earlier.joinpath(ckpt.TAG, "mp_rank_00_model_states.pt").read_bytes()[:100]
    )
    cut = newest / ckpt.TAG / "mp_rank_00_model_states.pt"
    said = refused_by_cli("convert", run, "--out", tmp_path / "bundle")
    assert said.returncode == 1 and said.stderr.count("\n") == 1, said.stderr
    assert said.stderr.startswith(f"dnalm: error: {cut}: damaged (100 bytes, not a whole torch file")
    assert f"dnalm convert {earlier} (training resumes from it with --resume {earlier})" in said.stderr
    assert f"resume from the previous complete checkpoint: --resume {earlier}" in str(ckpt.damaged(newest))
    assert "--resume none starts afresh" in str(ckpt.damaged(_checkpoint(tmp_path / "alone", 2, b"x" * 1000)))
    assert ckpt.damaged(earlier) is None and not (tmp_path / "bundle").exists()


def test_plot_skips_a_cut_off_last_line_and_refuses_an_empty_log(tmp_path):
    import json

    from dnalm.train.metrics import _drop_after

    run = tmp_path / "run"
    run.mkdir()
    log = run / "metrics.jsonl"
    whole = "".join(json.dumps({"step": s, "loss": 2.0 - s / 10}) + "\n" for s in (1, 2, 3))
    log.write_text(whole + '{"step": 4, "lo')
    with pytest.warns(UserWarning, match="line 4 is cut off \\(a run killed while writing it\\): skipped"):
        said = refused_by_cli("plot", run)
    assert said.returncode == 0 and (run / "loss.png").stat().st_size > 1000
    _drop_after(log, 3)  # a resume from step 3 drops it
    assert log.read_text() == whole
    log.write_text("")
    (run / "loss.png").unlink()
    said = refused_by_cli("plot", run)
    assert said.returncode == 1 and said.stderr == f"dnalm: error: no steps logged yet in {log}; nothing to draw\n"
    assert not (run / "loss.png").exists()


def test_convert_names_a_bundle_a_hugging_face_folder_and_an_existing_out_before_loading(decoder_bundle, tmp_path):
    import json

    said = refused_by_cli("convert", decoder_bundle, "--out", tmp_path / "b")
    assert said.returncode == 1 and f"{decoder_bundle}: already a dnalm bundle, nothing to convert" in said.stderr
    said = refused_by_cli("convert", "--from-hf", decoder_bundle, "--out", tmp_path / "b")
    assert said.returncode == 1 and f"{decoder_bundle}: already a dnalm bundle, nothing to import" in said.stderr
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "esm"}))
    said = refused_by_cli("convert", hf, "--out", tmp_path / "b")
    assert said.returncode == 1 and f"`dnalm convert --from-hf {hf} --out BUNDLE`" in said.stderr
    run = tmp_path / "run"
    _checkpoint(run, 2, model_bytes=b"x" * 1000)  # loading it would fail: the refusal comes first
    said = refused_by_cli("convert", run, "--out", hf)
    assert said.stderr == f"dnalm: error: --out {hf}: exists and is not empty; choose another folder\n"
    assert not (tmp_path / "b").exists()


def test_the_loading_note_of_a_remote_code_export_passes_trust_remote_code(tmp_path):
    pytest.importorskip("transformers")
    import torch

    from dnalm.hf import choose_exporter, export_hf, how_to_load
    from dnalm.models import build_model, get_config
    from dnalm.tokenizers import load

    tokenizer = load("nucleotide")
    torch.manual_seed(0)
    model = build_model(get_config("encoder-tiny", vocab_size=tokenizer.vocab_size))
    assert choose_exporter(model.config) == "remote"
    note = how_to_load(export_hf(model, tokenizer, tmp_path / "hf"))
    assert "`AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`" in note


def test_a_bad_override_value_is_named_as_the_command_line_s(tmp_path):
    config = tmp_path / "my.yaml"
    refused_by_cli("config", "new", config)
    said = refused_by_cli("train", "--config", config, "budget.steps=abc")
    assert said.stderr.startswith("dnalm: error: budget.steps=abc (command line): Input should be a valid integer")
    config.write_text(config.read_text().replace("steps: 1000 ", "steps: abc  "))
    said = refused_by_cli("train", "--config", config)
    assert said.stderr.startswith(f"dnalm: error: {config}: budget.steps: Input should be a valid integer")


def test_a_gue_task_folder_given_as_the_suite_says_to_give_its_parent(tmp_path):
    task = tmp_path / "gue" / "prom_x"
    task.mkdir(parents=True)
    for split in ("train", "dev"):
        (task / f"{split}.csv").write_text("sequence,label\nACGTACGT,0\nTTTTAAAA,1\n")
    refused = refused_by_cli("eval", "gue", str(task), "--out", str(tmp_path / "out"))
    assert "is itself a task; give the folder holding it with --tasks prom_x" in refused.stderr
    assert not (tmp_path / "out").exists()
