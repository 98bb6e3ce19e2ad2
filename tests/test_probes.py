"""Linear probes during pretraining (``eval.probes``) and offline (``dnalm eval probe``).

The solver and the MCC against scikit-learn; the probe's pooling against ``dnalm.embed`` (one view and several); the
in-training probe of the shared ZeRO-3 encoder run (conftest's ``trained``: 2 ranks, GUE prom_core_tata at steps 6
and 12) rebuilt exactly from its converted bundle; bad folders, files and settings refused in one line. The probe
across a resume is in tests/test_train.py (the ZeRO-3 decoder killed and resumed), under sequence parallelism in
tests/test_sequence_parallel.py. No launch of its own: about 10 s beside the shared fixtures.
"""

import json

import numpy as np
import pytest
import torch

from dnalm.bundle import save_bundle
from dnalm.models import build_model, get_config
from dnalm.tokenizers import NucleotideTokenizer, ViewTokenizer, load
from dnalm.train import probes
from dnalm.train.config import TrainConfigError, load_config
from tests.conftest import PROBE_TASK, needs_shared, refused_by_cli
from tests.launching import CONFIG, metrics

ROWS = (400, 200)  # conftest's probe_settings


def write_task(folder, rows, header="sequence,label", name="train.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(header + "\n" + "".join(f"{s},{y}\n" for s, y in rows))
    return folder


def promoter_like(count: int, seed: int) -> list[tuple[str, int]]:
    """Random 40-base rows; label 1 rows carry TATAAA at a random place (enough for a probe to find)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        bases = "".join(rng.choice(list("ACGT"), 40))
        if i % 2:
            at = int(rng.integers(0, 34))
            bases = bases[:at] + "TATAAA" + bases[at + 6 :]
        rows.append((bases, i % 2))
    return rows


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    """A randomly initialised encoder-tiny bundle (nucleotide): enough for layouts and refusals."""
    tokenizer = NucleotideTokenizer()
    torch.manual_seed(0)
    model = build_model(get_config("encoder-tiny", vocab_size=tokenizer.vocab_size))
    return save_bundle(tmp_path_factory.mktemp("probe") / "bundle", model, tokenizer)


def test_mcc_and_the_fit_agree_with_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import matthews_corrcoef
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    for classes in (2, 3):
        truth, predicted = rng.integers(0, classes, 500), rng.integers(0, classes, 500)
        predicted[:300] = truth[:300]
        assert probes.mcc(truth, predicted) == pytest.approx(matthews_corrcoef(truth, predicted), abs=1e-12)
        # correlated features on very different scales, as pooled hidden states are
        centres = rng.normal(size=(classes, 64))
        labels = rng.integers(0, classes, 1200)
        x = (centres[labels] + rng.normal(size=(1200, 64)) * 3) @ rng.normal(size=(64, 64)) * rng.uniform(0.01, 100, 64)
        train, dev = slice(0, 800), slice(800, None)
        predict = probes.fit(torch.from_numpy(x[train]), torch.from_numpy(labels[train]), classes)
        ours = predict(torch.from_numpy(x[dev]))
        scaler = StandardScaler().fit(x[train])
        theirs = LogisticRegression(max_iter=5000).fit(scaler.transform(x[train]), labels[train])
        reference = theirs.predict(scaler.transform(x[dev]))
        assert (ours.numpy() == reference).mean() > 0.98, classes
        assert abs(probes.mcc(labels[dev], ours.numpy()) - matthews_corrcoef(labels[dev], reference)) < 0.03
    assert probes.mcc(np.array([0, 0, 1]), np.array([0, 0, 0])) == 0.0  # undefined: 0, as scikit-learn says


def test_the_rows_are_fixed_and_pooled_as_embed_pools_them(tmp_path, monkeypatch):
    """The same seeded rows every time; each row's mean-pooled final states are ``dnalm.embed``'s mean pooling, for
    one view and for nucleotide + kmer:3 views ([CLS] and [SEP] left out), whatever rows share its forward."""
    from dnalm.use.embedding import embed

    chosen = probes.subsample(1000, 10).tolist()
    assert chosen == probes.subsample(1000, 10).tolist() == sorted(set(chosen)) and len(chosen) == 10
    assert probes.subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = promoter_like(60, 0)
    rows[3] = (rows[3][0][:25], rows[3][1])  # a shorter row: the task's forwards carry a key mask
    folder = write_task(tmp_path / "task", rows)
    write_task(folder, promoter_like(30, 1), name="dev.csv")
    for tokenizer in (NucleotideTokenizer(), ViewTokenizer([NucleotideTokenizer(), load("kmer:3")])):
        multi = isinstance(tokenizer, ViewTokenizer)
        torch.manual_seed(0)
        config = get_config("encoder-tiny", vocab_size=tokenizer.vocab_size, num_segments=2 if multi else 1)
        model = build_model(config).eval()
        task = probes.load_task(folder, tokenizer, (50, 30))
        assert task.padded and task.train.rows.tolist() == probes.subsample(60, 50).tolist()
        sequences = [rows[i][0] for i in task.train.rows]
        monkeypatch.setattr(probes, "TOKENS_PER_FORWARD", 8 * task.length)  # 8 rows a forward
        with torch.no_grad():
            ours = probes.pooled_features(probes.model_hidden(model), task, task.train, torch.device("cpu"), multi)
            # rank 1 of 3 data-parallel ranks: forwards 1, 4 and a filler
            sums = probes.pooled_sums(
                probes.model_hidden(model), task, task.train, torch.device("cpu"), multi, shard=(1, 3)
            )
        theirs = embed(model, tokenizer, sequences, pooling="mean", batch_size=7)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-5)
        assert sums.shape[0] == 3 * 8  # ceil(ceil(50 / 8) / 3) forwards on every rank
        assert torch.equal(sums[:16, :-1] / sums[:16, -1:], ours[[*range(8, 16), *range(32, 40)]])


@needs_shared(PROBE_TASK)
def test_training_logs_a_probe_curve_that_a_bundle_rebuilds_exactly(trained, bundles, tmp_path):
    """The ZeRO-3 encoder (2 ranks) logged prom_core_tata's dev MCC and accuracy at steps 6 and 12; `dnalm eval probe`
    on the bundle converted from step 12 (one process, other row blocks per forward) gives the same MCC, and
    `dnalm plot` draws the curve beside the loss."""
    from dnalm.train.metrics import plot

    records = [r for r in metrics(trained["encoder"]) if "probe/seconds" in r]
    assert [r["step"] for r in records] == [6, 12]
    for r in records:
        assert -1 <= r["probe/prom_core_tata/mcc"] <= 1 and 0.4 < r["probe/prom_core_tata/accuracy"] <= 1
        assert r["probe/seconds"] > 0 and r["probe/share"] > 0
    out = tmp_path / "probe.json"
    done = refused_by_cli(
        "eval", "probe", bundles["encoder"], "--tasks", PROBE_TASK, "--rows", ",".join(map(str, ROWS)), "--out", out
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    offline = report["tasks"]["prom_core_tata"]
    assert report["step"] == 12 and (offline["train_rows"], offline["dev_rows"]) == ROWS
    assert round(offline["mcc"], 6) == records[-1]["probe/prom_core_tata/mcc"]
    assert round(offline["accuracy"], 6) == records[-1]["probe/prom_core_tata/accuracy"]
    assert "prom_core_tata" in done.stdout and f"{offline['mcc']:.4f}" in done.stdout and "(step 12)" in done.stdout
    figure = plot(trained["encoder"], tmp_path / "loss.png")
    assert figure.is_file()


def test_bad_probe_folders_files_and_settings_are_refused_in_one_line(tmp_path, random_bundle):
    good = promoter_like(20, 0)
    cases = {
        "no-dev": (write_task(tmp_path / "no-dev", good), "no-dev/dev.csv: no such file"),
        "no-label": (
            write_task(write_task(tmp_path / "no-label", good, "sequence,class"), good, name="dev.csv"),
            "header must name the columns 'sequence' and 'label'",
        ),
        "one-class": (
            write_task(write_task(tmp_path / "one-class", good), [(s, 1) for s, _ in good], name="dev.csv"),
            "one-class/dev.csv: the 20 rows a probe reads all have label '1'; a probe needs at least two classes",
        ),
    }
    for folder, message in cases.values():
        with pytest.raises(TrainConfigError, match=f"^eval.probes: .*{message}"):
            probes.load_tasks([folder], NucleotideTokenizer(), (50, 50), error=TrainConfigError, where="eval.probes")
        done = refused_by_cli("eval", "probe", random_bundle, "--tasks", folder)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and message in lines[0], done.stderr
    refusal = r"eval.probe_rows=\[0,1000\] \(command line\): the train and dev rows a probe reads must both be"
    with pytest.raises(TrainConfigError, match=refusal):
        load_config(CONFIG, ["data.path=x", "run_dir=y", "eval.probe_rows=[0,1000]"])
    for rows in ("0,10", "10", "ten,5"):
        done = refused_by_cli("eval", "probe", random_bundle, "--tasks", cases["no-dev"][0], "--rows", rows)
        assert done.returncode == 1 and "--rows" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    long = write_task(tmp_path / "long", [("A" * 600, i % 2) for i in range(4)])
    write_task(long, good, name="dev.csv")
    with pytest.raises(
        probes.ProbeError, match=r"long/train.csv: line 2: 600 tokens, longer than the model.s max_seq_len 512"
    ):
        probes.load_task(long, NucleotideTokenizer(), (4, 4), max_tokens=512)
