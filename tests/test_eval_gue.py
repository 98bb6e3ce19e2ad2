"""``dnalm eval gue`` on real GUE promoters (small slices), and the fine-tuning recipe's switches."""

import json

import pytest

from dnalm.eval.finetune import finetune
from dnalm.eval.gue import PUBLISHED, GueError, find_tasks
from tests.conftest import SHARED_DATA, needs_shared, refused_by_cli, run_cli

GUE = SHARED_DATA / "gue"


def slice_task(source, target, rows: int, with_test: bool):
    target.mkdir(parents=True)
    for split, n in (("train", rows), ("dev", rows // 2)):
        lines = (source / f"{split}.csv").read_text().splitlines()
        (target / f"{split}.csv").write_text("\n".join(lines[: n + 1]) + "\n")
    if with_test:  # GUE's test splits are not shipped here: the dev slice stands in, to show a test.csv is scored
        (target / "test.csv").write_text((target / "dev.csv").read_text())


@needs_shared(GUE / "prom_300_tata")
def test_every_task_is_run_and_reported_beside_published_numbers(tmp_path):
    folder = tmp_path / "gue"
    slice_task(GUE / "prom_300_tata", folder / "prom_300_tata", 96, with_test=True)
    slice_task(GUE / "tf0", folder / "tf0", 96, with_test=False)
    (folder / "not_a_task").mkdir()
    result = run_cli(
        "eval",
        "gue",
        folder,
        "--arch",
        "cnn-small",
        "--seeds",
        "1",
        "--first-seed",
        "2",
        "--epochs",
        "2",
        "--patience",
        "1",
        "--rc-augment",
        "--out",
        tmp_path / "out",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gue.json").read_text())
    assert [r["task"] for r in report["tasks"]] == ["prom_300_tata", "tf0"]
    first, second = report["tasks"]
    assert set(first) >= {"dev_mcc", "test_mcc"} and "test_mcc" not in second
    assert first["published_test_mcc"] == PUBLISHED["prom_300_tata"] and first["train_rows"] == 96
    settings = report["settings"]
    assert (
        settings["seeds"] == [2] and settings["rc_augment"] and not settings["rc_average"] and settings["patience"] == 1
    )
    table = (tmp_path / "out" / "gue.md").read_text()
    assert "| prom_300_tata | 96 |" in table and "NT-2500M-multi 79.4" in table and table in result.stdout
    assert (tmp_path / "out" / "gue.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "out" / "tf0" / "metrics.json").read_text())
    assert all(run["epochs_run"] <= 2 for run in metrics["runs"])

    bad = refused_by_cli(
        "eval", "gue", folder, "--arch", "cnn-small", "--first-seed", "-1", "--out", tmp_path / "never"
    )
    assert bad.returncode != 0 and "--first-seed must be 0 or more, got -1" in bad.stderr
    assert not (tmp_path / "never").exists()

    with pytest.raises(GueError, match="no task 'prom_core_all'"):
        find_tasks(folder, ["prom_core_all"])
    (folder / "broken").mkdir()
    (folder / "broken" / "train.csv").write_text("sequence,label\nACGT,0\n")
    with pytest.raises(GueError, match="broken: has train.csv but no dev.csv"):
        find_tasks(folder)


@needs_shared(GUE / "prom_300_tata")
def test_recipe_switches_change_what_is_trained(bundles, tmp_path):
    task = tmp_path / "task"
    slice_task(GUE / "prom_300_tata", task, 64, with_test=False)
    common = dict(epochs=1, batch_size=32)
    plain = finetune(task / "train.csv", task / "dev.csv", tmp_path / "a", arch="cnn", **common)
    assert (
        not plain["settings"]["rc_augment"] and not plain["settings"]["rc_average"]
    )  # promoters are oriented: off by default
    recipe = finetune(
        task / "train.csv", task / "dev.csv", tmp_path / "b", arch="cnn", rc_augment=True, rc_average=True, **common
    )
    assert plain["runs"][0]["dev"] != recipe["runs"][0]["dev"]
    probe = finetune(
        task / "train.csv", task / "dev.csv", tmp_path / "c", model=bundles["encoder"], freeze_backbone=True, **common
    )
    assert probe["settings"]["freeze_backbone"] is True
    from dnalm.eval.finetune import _parameter_groups, build_classifier

    model = build_classifier(2, bundles["encoder"], None, 0, seed=0)
    groups = _parameter_groups(model, 1e-3, pretrained=True, backbone_lr_scale=0.1)
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert len(_parameter_groups(model, 1e-3, pretrained=True, freeze_backbone=True)) == 1
    assert not any(p.requires_grad for p in model.backbone.parameters())
    with pytest.raises(Exception, match="--freeze-backbone probes a pretrained backbone"):
        finetune(task / "train.csv", task / "dev.csv", tmp_path / "d", arch="cnn", freeze_backbone=True)


def test_mean_max_pooling_reads_real_tokens_only():
    import torch

    from dnalm.eval.finetune import build_classifier

    model = build_classifier(2, None, "cnn-small", 8, seed=0, pooling="mean-max").eval()
    assert model.head.in_features == 2 * model.backbone.config.d_model
    ids = torch.randint(3, 8, (1, 40))
    padded = torch.cat([ids, torch.zeros(1, 25, dtype=torch.long)], 1)  # PAD_ID is 0
    positions = torch.arange(65)[None]
    with torch.no_grad():
        alone = model(ids, ids != 0, torch.zeros_like(ids), positions[:, :40])
        with_padding = model(padded, padded != 0, torch.zeros_like(padded), positions)
        hidden = model.backbone(padded, attention_mask=padded != 0).hidden
    assert hidden[0, 40:].abs().amax(0).gt(hidden[0, :40].abs().amax(0)).any()  # padded states could win a max
    torch.testing.assert_close(with_padding, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="--pooling must be one of mean, mean-max"):
        finetune("x.csv", "y.csv", "out", arch="cnn", pooling="sum")
