"""From checkpoint to use: convert (bundle, Hugging Face), generation, fine-tuning, the demo."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import dnalm
from dnalm import genome
from dnalm.convert import ConvertError, convert
from dnalm.eval.finetune import LabelledDataError, finetune, read_labelled
from dnalm.use.generate import GenerationError, generate, generate_ids
from tests.conftest import SHARED_DATA, needs_shared, refused_by_cli, run_cli
from tests.launching import run, torchrun_cmd

GUE = SHARED_DATA / "gue" / "prom_core_all"


def test_bundles_load_and_describe_their_training(bundles, trained):
    for name, folder in bundles.items():
        assert sorted(p.name for p in folder.iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "tokenizer",
        ]
        model, tokenizer = dnalm.load_pretrained(folder)
        assert model.config.arch == name and tokenizer.name == "nucleotide" and not model.training
        card = (folder / "README.md").read_text()
        assert "12 steps" in card and "tokens seen" in card and "val_loss" in card and "ecoli_k12_mg1655" in card
    # the bundle made from the ZeRO-3, 2-process checkpoint records the step it was taken at
    assert json.loads((bundles["encoder"] / "config.json").read_text())["training"]["step"] == 12


def test_continued_pretraining_from_a_bundle(trained, tmp_path):
    """A run that starts from the decoder begins where that model ended (ZeRO-3, 2 processes). The bundle it
    starts from went the long way: exported as LlamaForCausalLM, then imported back with `convert --from-hf`."""
    data, run_dir = trained["data"], trained["root"] / "continued"
    llama = convert(trained["decoder"], tmp_path / "llama", to="hf")
    imported = run_cli("convert", "--from-hf", llama, "--out", tmp_path / "imported")
    assert imported.returncode == 0, imported.stderr
    run(
        torchrun_cmd(
            2,
            data,
            run_dir,
            deepspeed="zero3",
            **{"model.init_from": tmp_path / "imported", "budget.steps": 3, "optim.warmup_steps": 1},
        )
    )
    first = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][0]
    fresh = [json.loads(line) for line in (trained["decoder"] / "metrics.jsonl").read_text().splitlines()][0]
    assert first["loss"] < fresh["loss"] - 0.3, (first["loss"], fresh["loss"])
    assert "name: llama\n" in (run_dir / "model.yaml").read_text()  # an imported model is named after its folder


def test_bf16_bundle(trained, tmp_path):
    folder = convert(trained["decoder"], tmp_path / "bf16", dtype="bfloat16")
    model, _ = dnalm.load_pretrained(folder)
    reference, _ = dnalm.load_pretrained(convert(trained["decoder"], tmp_path / "fp32"))
    ids = torch.randint(5, 10, (1, 40))
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max() < 0.1


def test_hugging_face_export_matches_logits(trained, bundles, tmp_path):
    """The trained decoder as LlamaForCausalLM; the ALiBi encoder trained on 2 processes (ZeRO-3) with remote code."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, LlamaForCausalLM

    folder = convert(trained["decoder"], tmp_path / "hf", to="hf")
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    model, tokenizer = dnalm.load_pretrained(bundles["decoder"])
    ids = torch.randint(5, 10, (2, 64))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids).logits).abs().max() < 1e-4
    assert AutoTokenizer.from_pretrained(folder)("ACGTNacgt")["input_ids"] == tokenizer.encode("ACGTNacgt").ids.tolist()

    result = run_cli("convert", trained["encoder"], "--to", "hf", "--out", tmp_path / "hf-encoder")
    assert result.returncode == 0, result.stderr
    assert "trust_remote_code=True" in result.stdout and "AutoTokenizer" in result.stdout
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf-encoder", trust_remote_code=True).eval()
    model, _ = dnalm.load_pretrained(bundles["encoder"])
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - model(ids).logits).abs().max() < 1e-4


def test_incomplete_checkpoints_are_refused_naming_the_piece(trained, tmp_path):
    source = trained["encoder"] / "checkpoints" / "step-12"
    broken = tmp_path / "step-12"
    shutil.copytree(source, broken)
    (broken / "state" / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ConvertError, match="state/zero_pp_rank_1_mp_rank_00_model_states.pt is missing"):
        convert(broken, tmp_path / "out")
    (broken / "COMPLETE").unlink()
    result = refused_by_cli("convert", broken, "--out", tmp_path / "out2")
    assert result.returncode == 1 and "no COMPLETE marker" in result.stderr and not (tmp_path / "out2").exists()


def test_generation_is_seeded_cached_and_bases_only(bundles):
    model, tokenizer = dnalm.load_pretrained(bundles["decoder"])
    a = generate(model, tokenizer, "ACGTACGTGG", 80, top_k=3, top_p=0.9, num_samples=3, seed=5)
    assert a == generate(model, tokenizer, "ACGTACGTGG", 80, top_k=3, top_p=0.9, num_samples=3, seed=5)
    assert a != generate(model, tokenizer, "ACGTACGTGG", 80, top_k=3, top_p=0.9, num_samples=3, seed=6)
    assert all(s.startswith("ACGTACGTGG") and len(s) == 90 and set(s) <= set("ACGTN") for s in a)
    prompt = torch.tensor([5, 6, 7, 8, 5, 6])
    cached = generate_ids(model, prompt, 60, temperature=0)
    assert torch.equal(cached, generate_ids(model, prompt, 60, temperature=0, use_cache=False))
    assert torch.equal(cached, generate_ids(model, prompt, 60, top_k=1))
    encoder, tok = dnalm.load_pretrained(bundles["encoder"])
    with pytest.raises(GenerationError, match="needs a decoder"):
        generate(encoder, tok, "ACGT", 5)


def test_generate_cli_writes_fasta(bundles, tmp_path):
    out = tmp_path / "samples.fa"
    result = run_cli(
        "generate",
        "--model",
        bundles["decoder"],
        "--prompt",
        "ACGTTGCA",
        "--max-new-tokens",
        "50",
        "--num-samples",
        "2",
        "--temperature",
        "0.8",
        "--top-k",
        "4",
        "--seed",
        "1",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    records = genome.read(out)
    assert records.names == ["sample_0", "sample_1"] and all(len(c) == 58 for c in records)
    bad = refused_by_cli("generate", "--model", bundles["decoder"], "--prompt", "ACGU")
    assert bad.returncode == 1 and "'U' is not one of A, C, G, T, N" in bad.stderr


def test_generate_bench(tmp_path):
    from dnalm.bench import generate as bench

    result = bench.run("decoder-tiny", 40, tmp_path)
    assert {r["attention"] for r in result["rows"]} == {"sdpa", "performer"}
    assert all(r["cached_tokens_per_s"] > 0 and r["recompute_tokens_per_s"] > 0 for r in result["rows"])
    assert (tmp_path / "generate.json").exists() and (tmp_path / "generate.png").exists()


def write_csv(path: Path, rows, header="sequence,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{sequence},{label}\n" for sequence, label in rows))
    return path


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("seq,label\nACGT,1\n", "line 1: header must name the columns 'sequence' and 'label'"),
        ("sequence,label\nACGT,1\nACGT,\n", "line 3: missing label"),
        ("sequence,label\nACGT,1\n,0\n", "line 3: empty sequence"),
        ("sequence,label\nACGT,1\nACXT,0\n", "line 3: 'X' is not a DNA letter"),
        ("sequence,label\nACGT,1\nACGT,1\n", "a classifier needs at least two classes"),
        ("", "file is empty"),
    ],
)
def test_bad_labelled_files(tmp_path, content, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(LabelledDataError, match=pattern):
        read_labelled(path)


def test_unknown_label_in_dev_names_the_line(tmp_path):
    train = read_labelled(write_csv(tmp_path / "train.csv", [("ACGT", 0), ("TTGA", 1)]))
    with pytest.raises(LabelledDataError, match=r"dev.csv: line 3: unknown label '2'"):
        read_labelled(write_csv(tmp_path / "dev.csv", [("ACGT", 0), ("ACGT", 2)]), train.classes)


def gue_subset(tmp_path, rows=800) -> dict:
    out = {}
    for split, n in (("train", rows), ("dev", rows // 4)):
        lines = (GUE / f"{split}.csv").read_text().splitlines()
        out[split] = tmp_path / f"{split}.csv"
        out[split].write_text("\n".join(lines[: n + 1]) + "\n")
    return out


@needs_shared(GUE)
def test_finetune_from_scratch_on_real_promoters(tmp_path):
    sets = gue_subset(tmp_path)
    result = finetune(
        sets["train"],
        sets["dev"],
        tmp_path / "out",
        arch="cnn",
        test_path=sets["dev"],
        seeds=2,
        epochs=2,
        batch_size=32,
    )
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["summary"]["test"]["mcc"]["mean"] == result["summary"]["test"]["mcc"]["mean"]
    assert len(saved["runs"]) == 2 and {"accuracy", "f1", "mcc", "auroc"} <= set(saved["summary"]["dev"])
    assert saved["summary"]["dev"]["auroc"]["mean"] > 0.55


@needs_shared(GUE)
def test_hybrid_finetunes_from_scratch(tmp_path):
    sets = gue_subset(tmp_path, rows=128)
    finetune(sets["train"], sets["dev"], tmp_path / "out", arch="hybrid", seeds=1, epochs=1, batch_size=32)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["arch"] == "hybrid" and len(saved["runs"]) == 1 and saved["runs"][0]["epochs_run"] == 1


@needs_shared(GUE)
def test_finetune_cli_from_a_bundle(bundles, tmp_path):
    sets = gue_subset(tmp_path, rows=300)
    for bundle in bundles.values():
        result = run_cli(
            "finetune",
            "--model",
            bundle,
            "--train",
            sets["train"],
            "--dev",
            sets["dev"],
            "--test",
            sets["dev"],
            "--out",
            tmp_path / bundle.name,
            "--epochs",
            "1",
        )
        assert result.returncode == 0, result.stderr
        assert "test: accuracy" in result.stdout and (tmp_path / bundle.name / "metrics.json").exists()
        assert "±" not in result.stdout, "one seed has no spread to show"
        assert "seed 0 epoch 1/1: dev mcc" in result.stderr, "fine-tuning says how each epoch scored on dev"
    both = refused_by_cli(
        "finetune",
        "--model",
        bundles["encoder"],
        "--arch",
        "cnn-small",
        "--train",
        sets["train"],
        "--dev",
        sets["dev"],
        "--out",
        tmp_path / "x",
    )
    assert both.returncode == 1 and "exactly one of --model BUNDLE and --arch" in both.stderr


@needs_shared(GUE)
def test_finetune_from_scratch_keeps_the_bundle_architecture_not_its_weights(bundles, tmp_path):
    from dnalm.eval.finetune import build_classifier

    pretrained = build_classifier(2, bundles["encoder"], None, 0, seed=0)
    fresh = build_classifier(2, bundles["encoder"], None, 0, seed=0, scratch=True)
    assert fresh.backbone.config == pretrained.backbone.config
    weights = [name for name, _ in pretrained.backbone.named_parameters()]
    differ = [
        n
        for n in weights
        if not torch.equal(dict(pretrained.backbone.named_parameters())[n], dict(fresh.backbone.named_parameters())[n])
    ]
    assert "embed.weight" in differ and len(differ) > len(weights) // 2

    sets = gue_subset(tmp_path, rows=300)
    result = run_cli(
        "finetune",
        "--model",
        bundles["encoder"],
        "--from-scratch",
        "--train-limit",
        "120",
        "--train",
        sets["train"],
        "--dev",
        sets["dev"],
        "--out",
        tmp_path / "scratch",
        "--epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "scratch" / "metrics.json").read_text())
    assert saved["pretrained"] is False and saved["train_rows"] == 120 and saved["settings"]["train_limit"] == 120
    alone = run_cli(
        "finetune",
        "--arch",
        "cnn-small",
        "--from-scratch",
        "--train",
        sets["train"],
        "--dev",
        sets["dev"],
        "--out",
        tmp_path / "y",
    )
    assert alone.returncode == 1 and "--from-scratch takes the architecture and tokenizer of --model" in alone.stderr


def test_train_limit_takes_the_same_rows_every_time(tmp_path):
    from dnalm.eval.finetune import limit, read_labelled

    path = tmp_path / "set.csv"
    path.write_text("sequence,label\n" + "".join(f"{'ACGT'[i % 4] * 8},{i % 2}\n" for i in range(50)))
    data = read_labelled(path)
    first, second = limit(data, 10), limit(data, 10)
    assert (
        first.sequences == second.sequences and len(first.sequences) == 10 and list(first.labels) == list(second.labels)
    )
    assert limit(data, 100) is data


def test_metrics_against_known_values():
    from dnalm.eval.finetune import metrics

    labels = torch.tensor([0, 0, 1, 1, 1, 0]).numpy()
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]).numpy()
    m = metrics(labels, probabilities)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["mcc"] == pytest.approx(1 / 3)  # TP 2, TN 2, FP 1, FN 1
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(7 / 9)


def test_demo_runs_the_whole_pipeline(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "--steps", "4", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["bundles"]) == {"encoder-tiny", "decoder-tiny"}
    assert genome.read(summary["generated"]).names == ["sample_0", "sample_1", "sample_2"]
    assert Path(summary["loss_plot"]).stat().st_size > 1000
    assert "bundles" in result.stdout and "loss curves" in result.stdout
